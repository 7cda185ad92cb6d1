"""CTAugment operations as fused Numba kernels: one source compiled for CPU and CUDA.

Public entry points: :func:`apply_ops` (the K strong views: each view its own chain of ops and
levels) and :func:`weak_augment` (flip, reflect-pad, crop). The ops themselves are declared once in
:mod:`remixmatch.kernels.ops` (one record per op: name, kind, levels' bins and constants) and
:mod:`remixmatch.kernels.pixel_math` (level mappings and pixel math).
"""

from .api import AugmentInputError, apply_ops, weak_augment
from .ops import MAX_DEPTH, NUM_OPS, OP_ID, OP_NAMES, OPS, RESCALE_FILTERS, Kind, Level, OpSpec
from .threads import start_numba_threads

# Before anything sets a thread count or runs a kernel: Numba's OpenMP workers then wait passively
# unless the user chose a wait policy (the reason and the figures: kernels/threads.py).
start_numba_threads()

__all__ = [
    "AugmentInputError", "apply_ops", "weak_augment", "compile_all", "serial_warm_up_arguments",
    "MAX_DEPTH", "NUM_OPS", "OP_ID", "OP_NAMES", "OPS", "RESCALE_FILTERS", "Kind", "Level", "OpSpec",
]


def compile_all() -> float:
    """Compiles every CPU kernel into its on-disk cache now (a first call would otherwise pay it);
    returns the seconds spent: the kernels behind :func:`apply_ops` and :func:`weak_augment`, and
    their one-thread twin, which DALI's in-graph kernel calls
    (``remixmatch.kernels.cpu.apply_ops_cpu_serial``). The twin reuses the view function the
    parallel kernel compiled, so it costs seconds here."""
    import time

    import numpy as np

    from .cpu import apply_ops_cpu_serial

    start = time.perf_counter()
    images = np.zeros((1, 8, 8, 3), np.uint8)
    apply_ops(images, np.zeros((1, 1), np.int32), np.zeros((1, 1, 2), np.float32), np.zeros((1, 2, 2), np.float32))
    weak_augment(images, np.zeros(1, np.int32), np.zeros((1, 2), np.int32), pad=2)
    apply_ops_cpu_serial(*serial_warm_up_arguments())
    return time.perf_counter() - start


def serial_warm_up_arguments() -> tuple:
    """Tiny arguments of the types every caller of the serial twin passes (``kernels.args.apply_args``'s),
    so that :func:`compile_all` compiles and caches the one specialisation they all use."""
    import numpy as np

    from .args import apply_args
    from .tables import kernel_tables, level_form_table

    image = np.zeros((1, 8, 8, 3), np.uint8)
    return tuple(apply_args(image, np.zeros((1, 1), np.int32), np.zeros((1, 1, 2), np.float32),
                            np.zeros((1, 2, 2), np.float32), level_form_table("corrected"), None, None,
                            np.zeros(1, np.int32), np.zeros((1, 2), np.int32), 2, np.empty_like(image),
                            kernel_tables(8, 8).arrays(), np.asarray))
