"""The CUDA backend: one launch for the whole batch, one thread block per view.

A block stages its view in shared memory (flip/pad/crop applied on the way in when asked), chains the
view's ops between two shared buffers, with histograms built by shared-memory atomics and the lookup
tables finished by one thread per channel, and writes the result once. The pixel math is the same
:mod:`scalar` source as the CPU backend, compiled as inlined device functions.

Dynamic shared memory holds, in order: coords (H + W int32), hist (768 int32), lut (768 int32), then
the three image buffers (H * W * 3 bytes each: input, output, row pass). Views too large for a
block's shared memory run the same per-view code with those buffers in global memory instead.
"""

from __future__ import annotations

import os

import numpy as np
from numba import cuda, float64, int32, uint8

from .compile import cuda_functions, cuda_simulated
from .scalar import CUTOUT, LUT_SIZE, PARAMS_F, PARAMS_I

fns = cuda_functions()  # the scalar.py functions compiled for this target

# Threads per block and register caps, chosen from `rmm-bench ptx` (README, "CUDA kernel
# resources"): capping apply_ops_kernel at 80 registers would give 3 blocks per SM instead of 2, but
# spills on sm_90, and no spill-free cap raises occupancy at 256 threads; the global-memory kernel
# spills under any cap that would. 256 threads: 4 pixels per thread at 32x32, and at the global
# kernel's ~197 registers a 512-thread block could not launch at all.
THREADS_PER_BLOCK = 256
# cuda.jit(max_registers=...) per kernel; None: the compiler's choice. A CI test fails on any spill.
MAX_REGISTERS: dict[str, int | None] = {"apply_ops_kernel": None, "apply_ops_kernel_global": None,
                                        "weak_augment_kernel": None}
# For measuring other choices on a GPU (rmm-bench gpu-check's kernel-tuning section), without an edit:
# the apply kernels' threads per block, and apply_ops_kernel's register cap.
THREADS_ENV, MAX_REGISTERS_ENV = "REMIXMATCH_CUDA_THREADS", "REMIXMATCH_CUDA_MAX_REGISTERS"


def _tuning_from_env() -> None:
    global THREADS_PER_BLOCK
    threads, cap = os.environ.get(THREADS_ENV), os.environ.get(MAX_REGISTERS_ENV)
    if threads is not None:
        if not (threads.isdigit() and 32 <= int(threads) <= 1024 and int(threads) % 32 == 0):
            raise ValueError(f"{THREADS_ENV}={threads!r}: threads per block must be a multiple of 32 in 32..1024")
        THREADS_PER_BLOCK = int(threads)
    if cap is not None:
        if not (cap.isdigit() and 16 <= int(cap) <= 255):
            raise ValueError(f"{MAX_REGISTERS_ENV}={cap!r}: a register cap must be in 16..255")
        MAX_REGISTERS["apply_ops_kernel"] = int(cap)


_tuning_from_env()


def _kernel(name: str):
    """cuda.jit with the kernel's register cap (the simulator's jit takes none)."""
    cap = MAX_REGISTERS[name]
    return cuda.jit if cap is None or cuda_simulated() else cuda.jit(max_registers=cap)


def shared_bytes(height: int, width: int) -> int:
    """Dynamic shared memory one block needs for a height x width view."""
    return 4 * (height + width + 2 * LUT_SIZE) + 3 * height * width * 3


@cuda.jit(device=True, inline="always")
def _load_view(images, source, buf, height, width, weak, flip, off_y, off_x, pad, tid, nthreads):
    for p in range(tid, height * width, nthreads):
        s = p
        if weak:
            y = p // width
            s = fns.weak_source(y, p - y * width, height, width, flip, off_y, off_x, pad)
        buf[p * 3] = images[source, s * 3]
        buf[p * 3 + 1] = images[source, s * 3 + 1]
        buf[p * 3 + 2] = images[source, s * 3 + 2]


@cuda.jit(device=True, inline="always")
def _apply_view(n, images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x, a, b,
                rows, coords, hist, lut, params_i, params_f):
    # View n end to end by one block: load into a, chain the ops between a and b, write out.
    # The thread's index and count are read here, not passed: CPython compiles a call of more than
    # 30 arguments as a call with *args, which Numba's CUDA inliner refuses.
    tid = cuda.threadIdx.x
    nthreads = cuda.blockDim.x
    size = height * width * 3
    pixels = height * width
    flip = 0
    off_y = 0
    off_x = 0
    if weak:
        flip = flips[n]
        off_y = offsets[n, 0]
        off_x = offsets[n, 1]
    source = fns.clamp_index(sources[n], images.shape[0])
    _load_view(images, source, a, height, width, weak, flip, off_y, off_x, pad, tid, nthreads)

    depth = op_ids.shape[1]
    steps = depth
    if cutout:
        steps = depth + 1
    for step in range(steps):
        if step < depth:
            op = op_ids[n, step]
            v0 = float(levels[n, step, 0])
            v1 = float(levels[n, step, 1])
        else:
            op = CUTOUT
            v0 = cutout_level
            v1 = 0.0
        if tid == 0:
            fns.prepare_op(op, v0, v1, float(rand[n, step, 0]), float(rand[n, step, 1]), height,
                           width, params_i, params_f, coords, rotations, forms)
        if fns.needs_histogram(op):
            for i in range(tid, LUT_SIZE, nthreads):
                hist[i] = 0
            cuda.syncthreads()
            for i in range(tid, size, nthreads):
                p = i // 3
                slot = fns.histogram_slot(op, a, p, i - p * 3)
                if slot >= 0:
                    cuda.atomic.add(hist, slot, 1)
            cuda.syncthreads()
            if tid < 3:
                fns.finish_statistics(op, hist, lut, params_i, tid, pixels)
        cuda.syncthreads()
        if fns.is_point_op(op):
            for j in range(tid, LUT_SIZE, nthreads):
                lut[j] = fns.point_value(op, j & 255, lut[j], params_i, params_f)
            cuda.syncthreads()
            for i in range(tid, size, nthreads):
                b[i] = lut[(i - (i // 3) * 3) * 256 + np.int32(a[i])]
        else:
            if fns.has_row_pass(op):
                for p in range(tid, fns.row_pass_rows(op, params_i) * width, nthreads):
                    r = p // width
                    fns.row_pass_pixel(op, a, rows, r, p - r * width, width, params_i, bounds_x,
                                       coef_x)
                cuda.syncthreads()
            for p in range(tid, pixels, nthreads):
                y = p // width
                fns.op_pixel(op, a, rows, b, y, p - y * width, height, width, params_i, params_f,
                             coords, bounds_y, coef_y)
        cuda.syncthreads()
        a, b = b, a

    for i in range(tid, size, nthreads):
        out[n, i] = a[i]


# The kernels' parameters are the fields of args.ApplyArgs / args.WeakArgs, in order.
@_kernel("apply_ops_kernel")
def apply_ops_kernel(images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                     cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x):
    """images (B, H*W*3) -> out (N, H*W*3); grid = N blocks, each view staged in shared memory."""
    size = height * width * 3
    words = cuda.shared.array(0, int32)
    bytes_ = cuda.shared.array(0, uint8)
    coords = words[: height + width]
    hist = words[height + width: height + width + LUT_SIZE]
    lut = words[height + width + LUT_SIZE: height + width + 2 * LUT_SIZE]
    image_base = 4 * (height + width + 2 * LUT_SIZE)
    a = bytes_[image_base: image_base + size]
    b = bytes_[image_base + size: image_base + 2 * size]
    rows = bytes_[image_base + 2 * size: image_base + 3 * size]
    params_i = cuda.shared.array(PARAMS_I, int32)
    params_f = cuda.shared.array(PARAMS_F, float64)
    _apply_view(cuda.blockIdx.x, images, sources, weak, flips, offsets, pad, op_ids, levels, rand,
                forms, cutout, cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x,
                coef_x, a, b, rows, coords, hist, lut, params_i, params_f)


@_kernel("apply_ops_kernel_global")
def apply_ops_kernel_global(images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms,
                            cutout,
                            cutout_level, height, width, out, rotations, bounds_y, coef_y,
                            bounds_x, coef_x, scratch, scratch_words):
    """The same for views too large for shared memory: block k's buffers live in scratch[k]
    (3 images) and scratch_words[k] (coords, hist, lut), and the blocks stride over the views."""
    block = cuda.blockIdx.x
    size = height * width * 3
    a = scratch[block, :size]
    b = scratch[block, size: 2 * size]
    rows = scratch[block, 2 * size: 3 * size]
    coords = scratch_words[block, : height + width]
    hist = scratch_words[block, height + width: height + width + LUT_SIZE]
    lut = scratch_words[block, height + width + LUT_SIZE: height + width + 2 * LUT_SIZE]
    params_i = cuda.shared.array(PARAMS_I, int32)
    params_f = cuda.shared.array(PARAMS_F, float64)
    for n in range(block, out.shape[0], cuda.gridDim.x):
        _apply_view(n, images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                    cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x,
                    a, b, rows, coords, hist, lut, params_i, params_f)
        # The next view's load overwrites the buffers this view's last pass read.
        cuda.syncthreads()


@_kernel("weak_augment_kernel")
def weak_augment_kernel(images, sources, flips, offsets, pad, height, width, out):
    """One thread per output pixel; grid covers N * H * W."""
    i = cuda.grid(1)
    pixels = height * width
    if i >= out.shape[0] * pixels:
        return
    n = i // pixels
    p = i - n * pixels
    y = p // width
    s = fns.weak_source(y, p - y * width, height, width, flips[n], offsets[n, 0], offsets[n, 1],
                        pad)
    source = fns.clamp_index(sources[n], images.shape[0])
    out[n, p * 3] = images[source, s * 3]
    out[n, p * 3 + 1] = images[source, s * 3 + 1]
    out[n, p * 3 + 2] = images[source, s * 3 + 2]


def kernel_signatures():
    """The argument types of the kernels for C-contiguous inputs, for compiling PTX ahead of time."""
    from numba import boolean, float32, types

    u8_2d = types.Array(uint8, 2, "C")
    i32_1d = types.Array(int32, 1, "C")
    i32_2d = types.Array(int32, 2, "C")
    i32_4d = types.Array(int32, 4, "C")
    f32_3d = types.Array(float32, 3, "C")
    apply_sig = (u8_2d, i32_1d, boolean, i32_1d, i32_2d, int32, i32_2d, f32_3d, f32_3d, i32_2d, boolean,
                 float64, int32, int32, u8_2d, i32_2d, i32_4d, i32_4d, i32_4d, i32_4d)
    weak_sig = (u8_2d, i32_1d, i32_1d, i32_2d, int32, int32, int32, u8_2d)
    return {
        "apply_ops_kernel": (apply_ops_kernel, apply_sig),
        "apply_ops_kernel_global": (apply_ops_kernel_global, apply_sig + (u8_2d, i32_2d)),
        "weak_augment_kernel": (weak_augment_kernel, weak_sig),
    }

