"""The CPU backend: one ``njit(parallel=True)`` pass over views, each view's ops chained in two
private buffers, the pixel math inlined from :mod:`pixel_math`.

One view is one compiled function, :func:`_apply_view`, called by the parallel kernel and by its
one-thread twin alike, so it compiles once (about 60 s on one core) instead of once inlined into
each kernel's loop (about 290 s each: Numba and LLVM work superlinearly on a loop holding the
whole op chain). It is compiled as a function outside a parfor would not be: with Numba's
parfor simplification (copy propagation and dead-code removal) but no parallel transformation.
Without it, every inlined pixel_math call copies its array arguments into new variables, each a
reference-count increment and decrement per pixel: 5-30x slower views (the figures:
docs/results.md, "One compiled view").

The views are handed out dynamically, ``CHUNK`` at a time, from an atomic counter: each of the
Numba threads claims the next chunk when it is done with its last. Numba's own ``prange`` split
is static (fixed halves on 2 threads, and its chunk size does not change that under the OpenMP
layer), so when the cores are oversubscribed - the loader's kernel running beside torch's threads
on a CPU step - one descheduled thread held up the whole call, and 2 threads ran 2.5-4x slower
than 1. With claims, a descheduled thread delays at most its one chunk; the others take the rest.
Which thread renders a view changes nothing of its pixels.
"""

from __future__ import annotations

import os
import re
import warnings

import numba
import numpy as np
from numba import prange
from numba.core import cgutils, types
from numba.core.errors import NumbaPerformanceWarning
from numba.extending import intrinsic

from . import jit_cache
from .args import ApplyArgs, WeakArgs
from .compile import cpu_functions
from .pixel_math import CUTOUT, LUT_SIZE, PARAMS_F, PARAMS_I

jit_cache.install()
fns = cpu_functions()  # the pixel_math.py functions compiled for this target

# Views per claim: small enough that a thread descheduled mid-chunk delays the call by a few views
# (about 15 us at 32x32), large enough that the claims cost nothing beside the views.
CHUNK = 4
# prange iterations of the claim loop: more than any thread count. Each thread's first iteration
# claims chunks until the views run out; its later ones find none. (A literal, not
# numba.get_num_threads(): that call is a ctypes pointer, which would stop cache=True.)
_CLAIMERS = 64


@intrinsic
def _claim(typingctx, counter, chunk):
    """Atomically ``counter[0] += chunk``; the value before (the first index of the claimed chunk)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1):
        return None
    sig = types.int64(counter, chunk)

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        slot = cgutils.get_item_pointer(context, builder, array_type, array, [zero])
        step = context.cast(builder, args[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", slot, step, "monotonic")

    return sig, codegen


# Element loops rather than slice assignment: outside a parfor, ``x[:] = y`` is Numba's generic
# broadcasting setitem, about 3 us for a 32x32 view.
@numba.njit(inline="always")
def _copy(source, target):
    for i in range(target.shape[0]):
        target[i] = source[i]


@numba.njit(inline="always")
def _zero(target):
    for i in range(target.shape[0]):
        target[i] = 0


@numba.njit(inline="always")
def _load_view(image, buf, height, width, weak, flip, off_y, off_x, pad):
    if not weak:
        _copy(image, buf)
        return
    for y in range(height):
        for x in range(width):
            s = fns.weak_source(y, x, height, width, flip, off_y, off_x, pad) * 3
            d = (y * width + x) * 3
            buf[d] = image[s]
            buf[d + 1] = image[s + 1]
            buf[d + 2] = image[s + 2]


# ``parallel=`` with every transformation off: Numba still runs its parfor passes' simplification
# (see the module docstring) and leaves the function serial, callable from a parfor body and from a
# compiled callback alike. Numba warns that nothing became parallel: that is the intent, and the
# filter is this file's alone (the warning names the function's file).
SIMPLIFY_ONLY = {"comprehension": False, "prange": False, "setitem": False, "numpy": False,
                 "reduction": False, "inplace_binop": False, "stencil": False, "fusion": False}
warnings.filterwarnings(
    "ignore", category=NumbaPerformanceWarning,
    message=r"(?s).*no transformation for parallel execution was possible.*" + re.escape(os.path.join("kernels", "cpu.py")))


@numba.njit(inline="always")
def _scratch(height, width):
    """One thread's buffers for its views, allocated once per call rather than per view: the image
    in flight (two, swapped per op), the row pass's, the int and float parameters, the coordinates,
    the histogram, the table and the row accumulator."""
    size = height * width * 3
    return (np.empty(size, np.uint8), np.empty(size, np.uint8), np.empty(size, np.uint8),
            np.empty(PARAMS_I, np.int32), np.empty(PARAMS_F, np.float64), np.empty(height + width, np.int32),
            np.empty(LUT_SIZE, np.int32), np.empty(LUT_SIZE, np.int32), np.empty(max(height, width) * 3, np.int32))


# error_model="numpy" as in a parfor body: no zero-division branch per integer division.
@numba.njit(parallel=SIMPLIFY_ONLY, error_model="numpy", nogil=True)
def _apply_view(image, op_ids, levels, rand, forms, cutout, cutout_level, height, width, weak, flip, off_y,
                off_x, pad, out, rotations, bounds_y, coef_y, bounds_x, coef_x, scratch):
    # One view end to end, in three of the thread's buffers: a (input), b (output), rows (row passes).
    pixels = height * width
    depth = op_ids.shape[0]
    a, b, rows, params_i, params_f, coords, hist, lut, acc = scratch
    # Zeroed as fresh ones would be: a view's pixels never depend on the view before it.
    _zero(params_i)
    _zero(params_f)
    _zero(coords)
    _zero(lut)
    _load_view(image, a, height, width, weak, flip, off_y, off_x, pad)
    steps = depth + (1 if cutout else 0)
    for step in range(steps):
        if step < depth:
            op = op_ids[step]
            v0 = float(levels[step, 0])
            v1 = float(levels[step, 1])
        else:
            op = CUTOUT
            v0 = cutout_level
            v1 = 0.0
        u0 = float(rand[step, 0])
        u1 = float(rand[step, 1])
        fns.prepare_op(op, v0, v1, u0, u1, height, width, params_i, params_f, coords, rotations,
                       forms)
        if fns.needs_histogram(op):
            _zero(hist)
            for p in range(pixels):
                for c in range(3):
                    slot = fns.histogram_slot(op, a, p, c)
                    if slot >= 0:
                        hist[slot] += 1
            for c in range(3):
                fns.finish_statistics(op, hist, lut, params_i, c, pixels)
        if fns.is_point_op(op):
            for j in range(LUT_SIZE):
                lut[j] = fns.point_value(op, j & 255, lut[j], params_i, params_f)
            for p in range(pixels):
                for c in range(3):
                    b[p * 3 + c] = lut[c * 256 + a[p * 3 + c]]
        else:
            if fns.has_row_pass(op):
                # b is free until the output pass: it holds the transposed crop meanwhile.
                fns.row_pass_by_columns(op, a, rows, b, width, params_i, bounds_x, coef_x, acc)
            if fns.has_row_output(op):
                # Whole rows: the filters' interiors and rescale's vertical pass are flat loops the
                # compiler vectorises (the speed-up: docs/results.md, "CTAugment views, CPU").
                for y in range(height):
                    fns.op_row(op, a, rows, b, y, height, width, params_i, params_f, bounds_y, coef_y, acc)
            else:
                for y in range(height):
                    for x in range(width):
                        fns.op_pixel(op, a, rows, b, y, x, height, width, params_i, params_f,
                                     coords, bounds_y, coef_y)
        a, b = b, a
    _copy(a, out)


@numba.njit(inline="always")
def _render_view(n, images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                 cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x, scratch):
    flip = flips[n] if weak else 0
    off_y = offsets[n, 0] if weak else 0
    off_x = offsets[n, 1] if weak else 0
    image = images[fns.clamp_index(sources[n], images.shape[0])]
    _apply_view(image, op_ids[n], levels[n], rand[n], forms, cutout, cutout_level, height, width,
                weak, flip, off_y, off_x, pad, out[n], rotations, bounds_y, coef_y, bounds_x, coef_x, scratch)


# nogil: a loader thread renders the next step's views while the trainer runs Python.
# The parameters are the fields of args.ApplyArgs, in order.
@numba.njit(parallel=True, cache=True, nogil=True)
def apply_ops_cpu(images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                  cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x):
    """images (B, H*W*3) -> out (N, H*W*3); shapes and dtypes already checked by the API."""
    views = out.shape[0]
    counter = np.zeros(1, np.int64)
    for _ in prange(_CLAIMERS):
        first = _claim(counter, CHUNK)
        if first >= views:
            continue  # most claimers find no views: they allocate nothing
        scratch = _scratch(height, width)
        while first < views:
            for n in range(first, min(first + CHUNK, views)):
                _render_view(n, images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                             cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x,
                             scratch)
            first = _claim(counter, CHUNK)


# The same views, in order, on the calling thread, cached on disk beside the parallel build: DALI's
# numba_function calls it from a compiled callback, where the parallel build returns without writing
# a pixel (numba 0.68: the output stays as allocated, no error). A twin of its own rather than
# njit(apply_ops_cpu.py_func): that clone would share the parallel build's cache index (Numba names
# the index by the function and its line), so it could not be cached.
@numba.njit(cache=True, nogil=True)
def apply_ops_cpu_serial(images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                         cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x):
    scratch = _scratch(height, width)
    for n in range(out.shape[0]):
        _render_view(n, images, sources, weak, flips, offsets, pad, op_ids, levels, rand, forms, cutout,
                     cutout_level, height, width, out, rotations, bounds_y, coef_y, bounds_x, coef_x, scratch)


# The parameters are the fields of args.WeakArgs, in order.
@numba.njit(parallel=True, cache=True, nogil=True)
def weak_augment_cpu(images, sources, flips, offsets, pad, height, width, out):
    views = out.shape[0]
    counter = np.zeros(1, np.int64)
    for _ in prange(_CLAIMERS):
        while True:
            first = _claim(counter, CHUNK)
            if first >= views:
                break
            for n in range(first, min(first + CHUNK, views)):
                image = images[fns.clamp_index(sources[n], images.shape[0])]
                _load_view(image, out[n], height, width, True, flips[n], offsets[n, 0],
                           offsets[n, 1], pad)


def run_apply(args: ApplyArgs) -> None:
    apply_ops_cpu(*args)


def run_weak(args: WeakArgs) -> None:
    weak_augment_cpu(*args)
