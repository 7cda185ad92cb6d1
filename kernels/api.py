"""The public entry points: validate, pick the backend from where the images live, launch.

Images on the host (NumPy) run on the CPU backend; images exposing ``__cuda_array_interface__``
(torch CUDA tensors, DALI GPU buffers, CuPy, Numba device arrays) run on the CUDA backend with no
copy. The per-view arrays (op ids, levels, random numbers, sources, flips, offsets) may be NumPy or
device arrays for the CUDA backend; they are small.
"""

from __future__ import annotations

import numpy as np

from remixmatch.common.errors import RemixMatchError

from .args import apply_args, weak_args
from .ops import LEVELS_PER_OP, MAX_DEPTH, NUM_OPS, SEMANTICS
from .tables import kernel_tables, level_form_table

# Pillow's fixed-point affine path (16.16) holds coordinates below 32768; half of it leaves room for
# the largest shear and rotation.
MAX_SIDE = 16384


class AugmentInputError(RemixMatchError, ValueError):
    """An argument of apply_ops / weak_augment is malformed; the message says which and how."""


def _is_cuda(array) -> bool:
    if isinstance(array, np.ndarray):
        return False
    return hasattr(array, "__cuda_array_interface__") or _is_simulated_device_array(array)


def _is_simulated_device_array(array) -> bool:
    # The CUDA simulator's device arrays carry no __cuda_array_interface__.
    from numba import config

    if not config.ENABLE_CUDASIM:
        return False
    from .numba_internals import is_simulator_array

    return is_simulator_array(array)


def _describe(array) -> tuple[tuple[int, ...], np.dtype, bool]:
    """shape, dtype and C-contiguity of a NumPy or CUDA array, without touching its data."""
    if isinstance(array, np.ndarray):
        return array.shape, array.dtype, array.flags.c_contiguous
    if _is_simulated_device_array(array):
        return array.shape, array.dtype, array.strides == _c_strides(array.shape, array.dtype.itemsize)
    if _is_cuda(array):
        cai = array.__cuda_array_interface__
        shape = tuple(cai["shape"])
        dtype = np.dtype(cai["typestr"])
        strides = cai.get("strides")
        contiguous = strides is None or tuple(strides) == _c_strides(shape, dtype.itemsize)
        return shape, dtype, contiguous
    raise AugmentInputError(f"expected a NumPy array or a CUDA array, got {type(array).__name__}")


def _c_strides(shape, itemsize) -> tuple[int, ...]:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def _check(name, array, dtype, shape, fn):
    try:
        actual_shape, actual_dtype, contiguous = _describe(array)
    except AugmentInputError as error:
        hint = " (a CPU tensor: pass tensor.numpy())" if type(array).__module__.startswith("torch") else ""
        raise AugmentInputError(f"{fn}: {name}: {error}{hint}") from None
    if actual_dtype != np.dtype(dtype):
        raise AugmentInputError(f"{fn}: {name} must be {np.dtype(dtype).name}, got {actual_dtype.name}")
    if len(actual_shape) != len(shape) or any(
        want is not None and got != want for got, want in zip(actual_shape, shape)
    ):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise AugmentInputError(f"{fn}: {name} must have shape {want}, got {tuple(actual_shape)}")
    if not contiguous:
        raise AugmentInputError(f"{fn}: {name} must be C-contiguous")
    return actual_shape


def _host_values(array) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    if _is_simulated_device_array(array):
        return array.copy_to_host()
    from numba import cuda

    return cuda.as_cuda_array(array).copy_to_host()


def _check_range(name, array, low, high, fn, high_inclusive=True, check_values=True):
    if not check_values:
        return
    values = _host_values(array)
    if values.size == 0:
        return
    bad = ~((values >= low) & ((values <= high) if high_inclusive else (values < high)))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        bracket = "]" if high_inclusive else ")"
        raise AugmentInputError(
            f"{fn}: {name}{list(where)} = {values[where]} is outside [{low}, {high}{bracket}")


def _check_images(images, fn):
    shape = _check("images", images, np.uint8, (None, None, None, None), fn)
    batch, height, width, channels = shape
    if channels != 3:
        raise AugmentInputError(f"{fn}: images must be (N, H, W, 3) RGB uint8 (channels last), got {channels} channels in {tuple(shape)}")
    if not (1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE) or batch < 1:
        raise AugmentInputError(f"{fn}: images of shape {tuple(shape)} are empty or larger than {MAX_SIDE} px")
    return batch, height, width


def _check_weak(flips, offsets, n_views, pad, height, width, fn, check_values=True):
    if (flips is None) != (offsets is None):
        raise AugmentInputError(f"{fn}: flips and offsets go together; got only one of them")
    if flips is None:
        return
    if not (0 <= pad < min(height, width)):
        raise AugmentInputError(f"{fn}: pad must be in [0, {min(height, width) - 1}] for {height}x{width} images, got {pad}")
    _check("flips", flips, np.int32, (n_views,), fn)
    _check("offsets", offsets, np.int32, (n_views, 2), fn)
    _check_range("flips", flips, 0, 1, fn, check_values=check_values)
    _check_range("offsets", offsets, 0, 2 * pad, fn, check_values=check_values)


def _check_sources(sources, n_views, batch, fn, check_values=True):
    if sources is None:
        if n_views != batch:
            raise AugmentInputError(f"{fn}: {n_views} views of {batch} images need sources (view -> image index)")
        return
    _check("sources", sources, np.int32, (n_views,), fn)
    _check_range("sources", sources, 0, batch - 1, fn, check_values=check_values)


def _check_out(out, n_views, height, width, fn):
    if out is not None:
        _check("out", out, np.uint8, (n_views, height, width, 3), fn)


def _validate_ops(images, op_ids, levels, rand, cutout_level, sources, flips, offsets, pad, out,
                  check_values):
    fn = "apply_ops"
    batch, height, width = _check_images(images, fn)
    shape = _check("op_ids", op_ids, np.int32, (None, None), fn)
    n_views, depth = shape
    if not 1 <= depth <= MAX_DEPTH:
        raise AugmentInputError(f"{fn}: depth (op_ids.shape[1]) must be 1..{MAX_DEPTH}, got {depth}")
    _check("levels", levels, np.float32, (n_views, depth, LEVELS_PER_OP), fn)
    _check("rand", rand, np.float32, (n_views, depth + 1, 2), fn)
    _check_range("op_ids", op_ids, 0, NUM_OPS - 1, fn, check_values=check_values)
    _check_range("levels", levels, 0.0, 1.0, fn, check_values=check_values)
    _check_range("rand", rand, 0.0, 1.0, fn, high_inclusive=False, check_values=check_values)
    if cutout_level is not None and not (0.0 <= float(cutout_level) <= 1.0):
        raise AugmentInputError(f"{fn}: cutout_level must be in [0, 1] or None, got {cutout_level}")
    _check_sources(sources, n_views, batch, fn, check_values)
    _check_weak(flips, offsets, n_views, pad, height, width, fn, check_values)
    _check_out(out, n_views, height, width, fn)
    return n_views, height, width


def apply_ops(images, op_ids, levels, rand, *, cutout_level=None, sources=None, flips=None,
              offsets=None, pad=4, out=None, stream=None, check_values=True, semantics="corrected"):
    """Applies each view's CTAugment ops, fused in one pass over the batch.

    images: (B, H, W, 3) uint8, C-contiguous; NumPy (CPU backend) or a CUDA array (CUDA backend).
    op_ids: (N, depth) int32 op ids (positions in ``ops.OPS``), depth 1..4, applied in order.
    levels: (N, depth, 2) float32 in [0, 1]: each op's levels (the second only used by rescale).
    rand:   (N, depth + 1, 2) float32 in [0, 1): per-view random numbers; row d for op d (cutout's
            centre), the last row for the appended cutout.
    cutout_level: if given, a cutout at this level follows every view's ops (the FixMatch variant).
    sources: (N,) int32 image index of each view (default: view n reads image n), so K views of B
            images need no copies.
    flips, offsets: (N,) and (N, 2) int32: a weak augmentation (flip, reflect-pad ``pad``, crop at
            the offset) applied to the source first, in the same pass.
    out: optional (N, H, W, 3) uint8 array on the same device to write into.
    stream: CUDA backend only: a Numba stream or a torch.cuda.Stream (default: torch's current stream
            for torch tensors, else the default stream).
    check_values: shapes and dtypes are always checked; the values (op ids, levels, random
            numbers, sources, flips, offsets in range) too unless False. Checking per-view arrays
            that live on the GPU copies them to the host and waits for the stream: a caller whose
            arrays come from a trusted sampler turns it off. Out-of-range values then give wrong
            views but never an out-of-bounds access (the kernels clamp every index they derive).
    semantics: "corrected" (default) or "reference": which level mappings translate, rescale and
            cutout use (``ops.OpSpec.reference_args``: the published code's, defects included).
    Returns (N, H, W, 3) uint8 on the images' device (a torch tensor for torch input).
    """
    n_views, height, width = _validate_ops(images, op_ids, levels, rand, cutout_level, sources,
                                           flips, offsets, pad, out, check_values)
    if semantics not in SEMANTICS:
        raise AugmentInputError(f"apply_ops: semantics must be one of {', '.join(SEMANTICS)}, got {semantics!r}")
    if cutout_level is not None:
        cutout_level = float(cutout_level)
    if _is_cuda(images):
        from .cuda_launch import apply_ops_device

        return apply_ops_device(images, op_ids, levels, rand, cutout_level, sources, flips, offsets,
                                pad, out, stream, n_views, height, width, semantics)
    from .cpu import run_apply

    if out is None:
        out = np.empty((n_views, height, width, 3), np.uint8)
    run_apply(apply_args(images, op_ids, levels, rand, level_form_table(semantics), cutout_level, sources,
                         flips, offsets, pad, out, kernel_tables(height, width).arrays(), _host_values))
    return out


def weak_augment(images, flips, offsets, *, sources=None, pad=4, out=None, stream=None,
                 check_values=True):
    """Random horizontal flip (flips[n] = 1), reflect-pad by ``pad``, crop back at offsets[n] = (y, x).

    Same conventions as :func:`apply_ops`; offsets lie in [0, 2 * pad].
    """
    fn = "weak_augment"
    batch, height, width = _check_images(images, fn)
    (n_views,) = _check("flips", flips, np.int32, (None,), fn)
    _check_sources(sources, n_views, batch, fn, check_values)
    _check_weak(flips, offsets, n_views, pad, height, width, fn, check_values)
    _check_out(out, n_views, height, width, fn)
    if _is_cuda(images):
        from .cuda_launch import weak_augment_device

        return weak_augment_device(images, flips, offsets, sources, pad, out, stream, n_views,
                                   height, width)
    from .cpu import run_weak

    if out is None:
        out = np.empty((n_views, height, width, 3), np.uint8)
    run_weak(weak_args(images, flips, offsets, sources, pad, out, _host_values))
    return out
