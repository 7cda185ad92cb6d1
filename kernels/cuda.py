"""The CUDA backend: one launch for the whole batch, one thread block per view.

A block stages its view in shared memory (flip/pad/crop applied on the way in when asked), chains the
view's ops between two shared buffers, with histograms built by shared-memory atomics and the lookup
tables finished by one thread per channel, and writes the result once. The pixel math is the same
:mod:`pixel_math` source as the CPU backend, compiled as inlined device functions.

Dynamic shared memory holds, in order: coords (H + W int32), hist (768 int32), lut (768 int32), then
the three image buffers (H * W * 3 bytes each: input, output, row pass). Views too large for a
block's default 48 KiB of shared memory take one of three designs (``LARGE_VIEW_DESIGNS``): the same
per-view code with those buffers in global memory (``apply_ops_kernel_global``); the same with the
neighbourhood filters reading tiles of the view staged in shared memory
(``apply_ops_kernel_tiled``); or the shared-memory kernel with more than 48 KiB opted in
(``cuda_launch``).

Which design, how many threads per block and what register cap: a :class:`LaunchTuning`, passed to
the launch or set once per process with :func:`use_tuning`; :func:`kernels` compiles the kernels for a
tuning, cached on disk (``cache=True``, in a folder per tuning and per digest of the kernel sources).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import FunctionType

import numpy as np
from numba import cuda, float64, int32, uint8

from . import jit_cache
from .compile import cuda_functions, cuda_simulated
from .pixel_math import BLUR, CUTOUT, LUT_SIZE, PARAMS_F, PARAMS_I

fns = cuda_functions()  # the pixel_math.py functions compiled for this target

# cuda.jit(max_registers=...) per kernel as declared; None: the compiler's choice. A CI test fails on
# any spill. Capping apply_ops_kernel at 80 registers would give 3 blocks per SM instead of 2 but
# spills on sm_90 (`rmm-bench ptx`), and no spill-free cap raises occupancy at 256 threads.
MAX_REGISTERS: dict[str, int | None] = {"apply_ops_kernel": None, "apply_ops_kernel_global": None,
                                        "apply_ops_kernel_tiled": None, "weak_augment_kernel": None}
APPLY_KERNELS = ("apply_ops_kernel", "apply_ops_kernel_global", "apply_ops_kernel_tiled")
# Views larger than the default 48 KiB of dynamic shared memory (96x96): their buffers in global
# memory, global with tiles staged in shared memory for the neighbourhood filters, or the whole view
# in shared memory with the larger limit opted in (docs/gpu.md, "CUDA kernel resources", compares them).
LARGE_VIEW_DESIGNS = ("global", "tiled", "shared-optin")


@dataclass(frozen=True)
class LaunchTuning:
    """How the apply kernels are compiled and launched. The defaults are the choices `rmm-bench ptx`
    supports: 256 threads (4 pixels per thread at 32x32; at the global kernel's ~197 registers a
    512-thread block could not launch at all), no register cap, and the global-memory design for
    large views (the one the parity tests cover on every GPU)."""

    threads_per_block: int = 256
    max_registers: int | None = None  # the apply kernels' cap (each view size runs one of them)
    large_views: str = "global"

    def __post_init__(self):
        t = self.threads_per_block
        if not (isinstance(t, int) and 32 <= t <= 1024 and t % 32 == 0):
            raise ValueError(f"threads per block {t!r}: must be a multiple of 32 in 32..1024")
        cap = self.max_registers
        if cap is not None and not (isinstance(cap, int) and 16 <= cap <= 255):
            raise ValueError(f"register cap {cap!r}: must be in 16..255")
        if self.large_views not in LARGE_VIEW_DESIGNS:
            raise ValueError(f"large-view design {self.large_views!r}: must be one of {', '.join(LARGE_VIEW_DESIGNS)}")

    def cap(self, kernel: str) -> int | None:
        return self.max_registers if kernel in APPLY_KERNELS and self.max_registers is not None else MAX_REGISTERS[kernel]

    def cache_key(self) -> str:
        """The part of the kernels' cache folder that the tuning decides (numba-cuda's own cache key
        covers neither the register cap nor the block size)."""
        return f"regs{self.max_registers or 'auto'}-threads{self.threads_per_block}"


DEFAULT_TUNING = LaunchTuning()
_process_tuning = DEFAULT_TUNING


def use_tuning(tuning: LaunchTuning) -> LaunchTuning:
    """Makes ``tuning`` what this process's launches use when none is passed; returns the previous
    one. Set once, by the process's entry point (gpu-check's tuned children), never at import."""
    global _process_tuning
    if not isinstance(tuning, LaunchTuning):
        raise TypeError(f"use_tuning takes a LaunchTuning, not {type(tuning).__name__}")
    previous, _process_tuning = _process_tuning, tuning
    return previous


def current_tuning() -> LaunchTuning:
    return _process_tuning


def shared_bytes(height: int, width: int) -> int:
    """Dynamic shared memory one block needs for a height x width view."""
    return tiled_shared_bytes(height, width) + 3 * height * width * 3


def tiled_shared_bytes(height: int, width: int) -> int:
    """Dynamic shared memory of the tiled kernel: the view's words (coords, hist, lut) alone."""
    return 4 * (height + width + 2 * LUT_SIZE)


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


# The tiled kernel's tiles: 16 x 16 output pixels, one per thread of a 256-thread block (96x96 is
# 6 x 6 whole tiles, no thread idles), staged with a halo of 1 pixel (smooth, sharpness) or 2 (blur):
# 18 x 18 or 20 x 20 pixels read for 256 written, where a larger tile would read fewer halo pixels
# but leave threads idle at 32x32 and hold more shared memory for no extra threads.
TILE = 16
MAX_HALO = 2
TILE_SPAN = TILE + 2 * MAX_HALO
TILE_BYTES = TILE_SPAN * TILE_SPAN * 3


@cuda.jit(device=True, inline="always")
def _filter_tiles(op, a, b, tile, height, width, params_f, tid, nthreads):
    # A neighbourhood filter (smooth, sharpness, blur) from a into b, a tile at a time: the block
    # copies the tile and its halo from a into shared memory, then each thread writes output pixels
    # whose neighbours it reads from the tile. Halo pixels outside the view are clamped copies that
    # no pixel reads (pixels within the filter's reach of the border are copies of themselves).
    halo = 1
    if op == BLUR:
        halo = 2
    span = TILE + 2 * halo
    tiles_x = (width + TILE - 1) // TILE
    tiles = tiles_x * ((height + TILE - 1) // TILE)
    alpha = np.float32(params_f[0])
    for t in range(tiles):
        tile_y = t // tiles_x
        y0 = tile_y * TILE - halo
        x0 = (t - tile_y * tiles_x) * TILE - halo
        for q in range(tid, span * span, nthreads):
            r = q // span
            sy = min(max(y0 + r, 0), height - 1)
            sx = min(max(x0 + q - r * span, 0), width - 1)
            s = (sy * width + sx) * 3
            tile[q * 3] = a[s]
            tile[q * 3 + 1] = a[s + 1]
            tile[q * 3 + 2] = a[s + 2]
        cuda.syncthreads()
        for q in range(tid, TILE * TILE, nthreads):
            r = q // TILE
            c = q - r * TILE
            y = y0 + halo + r
            x = x0 + halo + c
            if y < height and x < width:
                fns.staged_filter_pixel(op, tile, r + halo, c + halo, span, b, (y * width + x) * 3, y, x,
                                        height, width, alpha)
        # The next tile overwrites what this one's pixels read.
        cuda.syncthreads()


def _view_function(staged: bool):
    """The per-view device function; ``staged``: the neighbourhood filters read tiles of the view
    staged in the shared-memory ``tile`` (the other kernels pass any uint8 array there). A constant
    of the closure, so each kernel compiles only its own branch."""

    @cuda.jit(device=True, inline="always")
    def apply_view(n, images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                   cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x, a, b,
                   rows, coords, hist, lut, params_i, params_f, tile):
        # View n end to end by one block: load into a, chain the ops between a and b, write out.
        # The thread's index and count are read here, not passed: CPython compiles a call of more
        # than 30 arguments as a call with *args, which Numba's CUDA inliner refuses.
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
                if staged and fns.is_neighbourhood_op(op):
                    _filter_tiles(op, a, b, tile, height, width, params_f, tid, nthreads)
                else:
                    for p in range(tid, pixels, nthreads):
                        y = p // width
                        fns.op_pixel(op, a, rows, b, y, p - y * width, height, width, params_i,
                                     params_f, coords, bounds_y, coef_y)
            cuda.syncthreads()
            a, b = b, a

        for i in range(tid, size, nthreads):
            out[n, i] = a[i]

    return apply_view


_apply_view = _view_function(False)
_apply_view_staged = _view_function(True)


# The kernels' parameters are the fields of args.ApplyArgs / args.WeakArgs, in order. Plain Python
# functions here: kernels() compiles them per launch tuning (below).
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
                coef_x, a, b, rows, coords, hist, lut, params_i, params_f, rows)


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
                    a, b, rows, coords, hist, lut, params_i, params_f, rows)
        # The next view's load overwrites the buffers this view's last pass read.
        cuda.syncthreads()


def apply_ops_kernel_tiled(images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms,
                           cutout, cutout_level, height, width, out, rotations, bounds_y, coef_y,
                           bounds_x, coef_x, scratch):
    """The view's three image buffers in global memory, block k's in scratch[k], the blocks striding
    over the views, as apply_ops_kernel_global: geometric ops and histograms read the whole view
    between ops. Everything else in shared memory: the words (coords, hist, lut: dynamic, as in
    apply_ops_kernel, so histograms are built by shared-memory atomics) and a tile (TILE_BYTES)
    that the neighbourhood filters (smooth, sharpness, blur) stage the view in, a tile at a time."""
    block = cuda.blockIdx.x
    size = height * width * 3
    a = scratch[block, :size]
    b = scratch[block, size: 2 * size]
    rows = scratch[block, 2 * size: 3 * size]
    words = cuda.shared.array(0, int32)
    coords = words[: height + width]
    hist = words[height + width: height + width + LUT_SIZE]
    lut = words[height + width + LUT_SIZE: height + width + 2 * LUT_SIZE]
    params_i = cuda.shared.array(PARAMS_I, int32)
    params_f = cuda.shared.array(PARAMS_F, float64)
    tile = cuda.shared.array(TILE_BYTES, uint8)
    for n in range(block, out.shape[0], cuda.gridDim.x):
        _apply_view_staged(n, images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms,
                           cutout, cutout_level, height, width, out, rotations, bounds_y, coef_y,
                           bounds_x, coef_x, a, b, rows, coords, hist, lut, params_i, params_f, tile)
        cuda.syncthreads()


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


_KERNEL_FUNCTIONS = {"apply_ops_kernel": apply_ops_kernel, "apply_ops_kernel_global": apply_ops_kernel_global,
                     "apply_ops_kernel_tiled": apply_ops_kernel_tiled, "weak_augment_kernel": weak_augment_kernel}
_compiled: dict = {}  # (register cap, threads per block) -> {kernel name: dispatcher}


def kernels(tuning: LaunchTuning = DEFAULT_TUNING) -> dict:
    """The kernels as ``tuning`` compiles them, by name: ``cuda.jit`` with the register cap, cached
    on disk (``cache=True``) in a folder of their own, named by a digest of the kernel sources and by
    the tuning (kernels/jit_cache.py), so that no process on a machine compiles a kernel twice and an
    edit of any kernel source, or another cap, never loads a stale one."""
    key = (tuning.max_registers, tuning.threads_per_block)
    if key not in _compiled:
        folder = jit_cache.cuda_cache_folder(tuning.cache_key())
        built = {}
        for name, fn in _KERNEL_FUNCTIONS.items():
            # A distinct function object per tuning: the cache locator finds its folder by it.
            clone = FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
            clone.__qualname__, clone.__doc__ = fn.__qualname__, fn.__doc__
            if cuda_simulated():  # the simulator has neither a register cap nor a cache
                built[name] = cuda.jit(clone)
                continue
            jit_cache.cache_cuda_kernel_in(clone, folder)
            cap = tuning.cap(name)
            built[name] = cuda.jit(clone, cache=True, **({} if cap is None else {"max_registers": cap}))
        _compiled[key] = built
    return _compiled[key]


apply_ops_kernel, apply_ops_kernel_global, apply_ops_kernel_tiled, weak_augment_kernel = (
    kernels()[name] for name in _KERNEL_FUNCTIONS)


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
        "apply_ops_kernel_tiled": (apply_ops_kernel_tiled, apply_sig + (u8_2d,)),
        "weak_augment_kernel": (weak_augment_kernel, weak_sig),
    }

