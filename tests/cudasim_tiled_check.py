"""Runs the tiled CUDA kernel (views too large for 48 KiB of shared memory, filter tiles staged in
shared memory) under the Numba CUDA simulator and compares it with the CPU kernel.

Run by test_kernels_cudasim_tiled.py in its own process, under the launch tuning of the tiled design
at 64 threads per block (fewer simulator threads; a tile's 256 pixels take 4 rounds of them).
The views are small (the simulator is slow) but span several 16 x 16 tiles with partial tiles at the
right and bottom edges, plus views smaller than one tile and than the filters' reach; the shared-
memory limit is set to 0 so that the launcher sends them all to the tiled kernel. Prints one JSON
line: the number of views compared and the mismatches found.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from numba import cuda  # noqa: E402

from remixmatch.kernels import NUM_OPS, OP_ID, apply_ops, cuda_launch  # noqa: E402
from remixmatch.kernels.cuda import TILE, LaunchTuning, use_tuning  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from kernel_images import cifar_images  # noqa: E402

VIEWS = 4
FILTERS = [OP_ID[name] for name in ("smooth", "sharpness", "blur", "rescale")]
# (height, width): 2 x 2 tiles, the right and bottom ones partial; smaller than a tile and than
# blur's 5 x 5 neighbourhood.
SIZES = ((2 * TILE - 12, 2 * TILE - 2), (3, 5))


def source_images(height: int, width: int) -> np.ndarray:
    real = cifar_images()
    if real is not None:
        return np.ascontiguousarray(real[1][:VIEWS, 1:1 + height, 1:1 + width])
    return np.random.default_rng(7).integers(0, 256, (VIEWS, height, width, 3), dtype=np.uint8)


def launches(rng: np.random.Generator, height: int, width: int):
    """Each filter op (and rescale) after each other, at levels 0, 1 and random; then chains of
    depth 4 over every op, each with a filter in it, weak augmentation and the appended cutout."""
    pairs = np.array([(a, b) for a in FILTERS for b in FILTERS if a != b], np.int32)
    for start in range(0, len(pairs), VIEWS):
        op_ids = pairs[start:start + VIEWS]
        levels = rng.random((VIEWS, 2, 2), dtype=np.float32)
        levels[0] = 0.0
        levels[1] = 1.0
        yield op_ids, levels, rng.random((VIEWS, 3, 2), dtype=np.float32), {}
    op_ids = rng.integers(0, NUM_OPS, (VIEWS, 4)).astype(np.int32)
    op_ids[:, rng.integers(0, 4)] = FILTERS[:VIEWS]
    pad = min(4, height - 1, width - 1)
    extra = {"flips": np.array([0, 1, 1, 0], np.int32), "pad": pad, "cutout_level": 0.5,
             "offsets": rng.integers(0, 2 * pad + 1, (VIEWS, 2)).astype(np.int32)}
    yield op_ids, rng.random((VIEWS, 4, 2), dtype=np.float32), rng.random((VIEWS, 5, 2), dtype=np.float32), extra


def main() -> int:
    rng = np.random.default_rng(96)
    use_tuning(LaunchTuning(threads_per_block=64, large_views="tiled"))
    cuda_launch.SHARED_BYTES_LIMIT = 0
    cuda_launch.GLOBAL_BLOCKS = 3  # fewer blocks than views: a block renders two in turn
    compared = 0
    mismatches: list[str] = []
    for height, width in SIZES:
        launch = cuda_launch.apply_launch(height, width)
        assert launch.kernel == "apply_ops_kernel_tiled", launch
        images = source_images(height, width)
        device_images = cuda.to_device(images)
        sources = np.arange(VIEWS, dtype=np.int32)
        for i, (op_ids, levels, rand, extra) in enumerate(launches(rng, height, width)):
            expected = apply_ops(images, op_ids, levels, rand, sources=sources, **extra)
            got = apply_ops(device_images, op_ids, levels, rand, sources=sources, **extra).copy_to_host()
            compared += VIEWS
            for view in np.flatnonzero((expected != got).reshape(VIEWS, -1).any(axis=1)):
                mismatches.append(f"{height}x{width} launch {i} view {view} ops {op_ids[view].tolist()}")
    print(json.dumps({"views": compared, "mismatches": mismatches}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
