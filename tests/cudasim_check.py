"""Runs the CUDA kernels under the Numba CUDA simulator and compares them with the CPU kernels.

Run by test_kernels_cudasim.py in its own process: NUMBA_ENABLE_CUDASIM must be set before
numba.cuda is imported, and the simulator and the real target cannot share a process. Prints one
JSON line: the number of views compared and the mismatches found.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from numba import cuda  # noqa: E402

from remixmatch.kernels import NUM_OPS, OP_ID, apply_ops, cuda_launch, weak_augment  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from kernel_images import cifar_images  # noqa: E402

# The simulator runs each CUDA thread as a Python thread (~0.3 ms each): tiny views, N <= 4.
VIEWS_PER_LAUNCH = 4
DEPTH = 4


def source_images(height: int, width: int) -> np.ndarray:
    real = cifar_images()
    if real is not None:
        return np.ascontiguousarray(real[1][:4, 5:5 + height, 3:3 + width])
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (4, height, width, 3), dtype=np.uint8)


def launches(rng: np.random.Generator):
    """Op chains that cover every op several times, at levels that include 0 and 1."""
    ops = np.concatenate([np.arange(NUM_OPS), rng.permutation(NUM_OPS), rng.permutation(NUM_OPS)])
    ops = ops.astype(np.int32)
    ops = np.resize(ops, (len(ops) + VIEWS_PER_LAUNCH * DEPTH - 1) // (VIEWS_PER_LAUNCH * DEPTH)
                    * VIEWS_PER_LAUNCH * DEPTH)
    per_launch = VIEWS_PER_LAUNCH * DEPTH
    for start in range(0, len(ops), per_launch):
        op_ids = ops[start:start + per_launch].reshape(VIEWS_PER_LAUNCH, DEPTH)
        levels = rng.random((VIEWS_PER_LAUNCH, DEPTH, 2), dtype=np.float32)
        levels[0, 0] = 0.0
        levels[1, 0] = 1.0
        rand = rng.random((VIEWS_PER_LAUNCH, DEPTH + 1, 2), dtype=np.float32)
        yield op_ids, levels, rand


def reference_launches(rng: np.random.Generator):
    """Chains of translate_x, translate_y, rescale and cutout (a Latin square, so each op runs in
    every position), levels including 0 and 1."""
    changed = np.array([OP_ID[name] for name in ("translate_x", "translate_y", "rescale", "cutout")], np.int32)
    square = np.array([np.roll(changed, -r) for r in range(VIEWS_PER_LAUNCH)], np.int32)
    for _ in range(2):
        levels = rng.random((VIEWS_PER_LAUNCH, DEPTH, 2), dtype=np.float32)
        levels[0] = 0.0
        levels[1] = 1.0
        rand = rng.random((VIEWS_PER_LAUNCH, DEPTH + 1, 2), dtype=np.float32)
        yield square, levels, rand


def main() -> int:
    rng = np.random.default_rng(2020)
    compared = 0
    mismatches: list[str] = []
    # The last size runs the global-memory kernel (as views too large for shared memory do), with
    # fewer blocks than views so that blocks loop over views.
    for height, width, shared_limit, blocks in ((12, 12, None, None), (10, 13, None, None),
                                                (11, 9, 0, 3)):
        if shared_limit is not None:
            cuda_launch.SHARED_BYTES_LIMIT = shared_limit
            cuda_launch.GLOBAL_BLOCKS = blocks
        images = source_images(height, width)
        device_images = cuda.to_device(images)
        sources = np.array([0, 1, 2, 3], np.int32)
        for i, (op_ids, levels, rand) in enumerate(launches(rng)):
            weak = i % 2 == 1
            kwargs = {"sources": sources, "cutout_level": 0.5 if i % 3 == 0 else None}
            if weak:
                kwargs["flips"] = rng.integers(0, 2, VIEWS_PER_LAUNCH).astype(np.int32)
                kwargs["offsets"] = rng.integers(0, 5, (VIEWS_PER_LAUNCH, 2)).astype(np.int32)
            expected = apply_ops(images, op_ids, levels, rand, **kwargs)
            got = apply_ops(device_images, op_ids, levels, rand, **kwargs).copy_to_host()
            compared += VIEWS_PER_LAUNCH
            for view in np.flatnonzero((expected != got).reshape(VIEWS_PER_LAUNCH, -1).any(axis=1)):
                mismatches.append(f"{height}x{width} launch {i} view {view} ops {op_ids[view].tolist()}")
        # The reference semantics: the four ops whose level mapping differs, in every position.
        for i, (op_ids, levels, rand) in enumerate(reference_launches(rng)):
            kwargs = {"sources": sources, "cutout_level": 0.3 if i == 0 else None, "semantics": "reference"}
            expected = apply_ops(images, op_ids, levels, rand, **kwargs)
            got = apply_ops(device_images, op_ids, levels, rand, **kwargs).copy_to_host()
            compared += VIEWS_PER_LAUNCH
            for view in np.flatnonzero((expected != got).reshape(VIEWS_PER_LAUNCH, -1).any(axis=1)):
                mismatches.append(f"{height}x{width} reference launch {i} view {view} ops {op_ids[view].tolist()}")
        flips = np.array([0, 1, 1, 0], np.int32)
        offsets = np.array([[0, 0], [8, 8], [3, 5], [8, 0]], np.int32)
        expected = weak_augment(images, flips, offsets, sources=sources)
        got = weak_augment(device_images, flips, offsets, sources=sources).copy_to_host()
        compared += VIEWS_PER_LAUNCH
        if not np.array_equal(expected, got):
            mismatches.append(f"{height}x{width} weak_augment")
    print(json.dumps({"views": compared, "mismatches": mismatches}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
