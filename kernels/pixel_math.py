"""The CTAugment pixel math as plain Python scalar functions: one source for every backend.

Nothing here imports numba. :mod:`remixmatch.kernels.compile` rebinds these functions for a target
(Numba CPU, Numba CUDA, the CUDA simulator) by cloning each function with a globals dict in which
every helper name below resolves to that target's compiled wrapper. The PIL reference and the policy
call the level mappings directly as Python.

Bit-exactness with PIL (Pillow 13) is the contract, so the arithmetic follows Pillow's C code step by
step: float32 where Pillow computes in float (blend, filters), float64 where it computes in double
(affine set-up, autocontrast), integers where it uses fixed point (L conversion, resampling). Products
and sums go through ``f32_mul``/``f32_add``/``f64_mul``/``f64_add`` because the CUDA compiler would
otherwise fuse ``a * b + c`` into one FMA with a different rounding; the CUDA target binds them to
round-to-nearest intrinsics that are never contracted. Every integer read from an image is widened
with ``np.int32`` first because the CUDA simulator runs on NumPy scalars, where uint8 arithmetic
wraps.

Images are flat HWC uint8 arrays of one view: element (y, x, c) is at ``(y * W + x) * 3 + c``.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .ops import OP_ID, Kind

AUTOCONTRAST = OP_ID["autocontrast"]
BLUR = OP_ID["blur"]
BRIGHTNESS = OP_ID["brightness"]
COLOR = OP_ID["color"]
CONTRAST = OP_ID["contrast"]
CUTOUT = OP_ID["cutout"]
EQUALIZE = OP_ID["equalize"]
INVERT = OP_ID["invert"]
IDENTITY = OP_ID["identity"]
POSTERIZE = OP_ID["posterize"]
RESCALE = OP_ID["rescale"]
ROTATE = OP_ID["rotate"]
SHARPNESS = OP_ID["sharpness"]
SHEAR_X = OP_ID["shear_x"]
SHEAR_Y = OP_ID["shear_y"]
SMOOTH = OP_ID["smooth"]
SOLARIZE = OP_ID["solarize"]
TRANSLATE_X = OP_ID["translate_x"]
TRANSLATE_Y = OP_ID["translate_y"]

# Which ops share a trait, one bit per op id, derived from the records: the kernels test a trait with
# one shift (``has_trait``) however many ops share it, and a new op joins by its kind alone.
POINT_OPS = ops.id_mask(ops.ids_of(Kind.POINT))
GEOMETRIC_OPS = ops.id_mask(ops.ids_of(Kind.GEOMETRIC))
RESAMPLE_OPS = ops.id_mask(ops.ids_of(Kind.RESAMPLE))
ROW_OPS = ops.id_mask(ops.ids_of(Kind.FILTER, Kind.RESAMPLE))
HISTOGRAM_OPS = ops.id_mask(i for i, op in enumerate(ops.OPS) if op.histogram)

# The level mappings' constants, as plain floats the compilers fold (see ops.py for their meaning).
ENHANCE_OFFSET, ENHANCE_SCALE = ops.ENHANCE.offset, ops.ENHANCE.scale
CUTOUT_SCALE = ops.CUTOUT_SIDE.scale
POSTERIZE_SCALE = ops.POSTERIZE_BITS.scale
SOLARIZE_SCALE = ops.SOLARIZE_THRESHOLD.scale
ROTATE_SCALE = ops.ROTATE_DEGREES.scale
MAX_ROTATION = ops.MAX_ROTATION
SHEAR_SCALE = ops.SHEAR.scale
TRANSLATE_SCALE = ops.TRANSLATE.scale
RESCALE_SCALE = ops.RESCALE_MARGIN.scale
RESCALE_FILTER_SCALE = ops.RESCALE_FILTER.scale

# A level's form, per (op, level) in the table the kernels take (tables.level_form_table, built from
# the op records for the semantics asked for): which of the corrected and reference mappings runs.
FORM_PER_SIZE = 1  # the level's core is multiplied by the image size (else taken as pixels)
FORM_EVEN = 2  # the parameter is rounded down to an even number

# Geometric ops store how their source coordinates are computed in params_i[0]; Pillow picks the
# path from the affine matrix: a scaling/translation matrix walks double-precision accumulators
# (ImagingScaleAffine), anything else uses 16.16 fixed point (affine_fixed).
AFFINE_SCALE = 0
AFFINE_FIXED = 1

# PIL's SMOOTH weights after Pillow divides each by the divisor in float32 (1/13 and 5/13), stored
# as the exact float32 values so np.float32(...) of them is exact on every target.
SMOOTH_SIDE = float(np.float32(1.0) / np.float32(13.0))
SMOOTH_CENTRE = float(np.float32(5.0) / np.float32(13.0))

# Pillow's resampling keeps coefficients in fixed point with this many fractional bits.
RESAMPLE_BITS = 22
RESAMPLE_HALF = 1 << (RESAMPLE_BITS - 1)

# ImageOps.autocontrast's scale 255 / (hi - lo), for hi - lo = 1..255 (index 0 unused), divided here
# on the host in double precision exactly as Pillow divides. The kernels read it as a constant table:
# they hold no division, which the CUDA compiler would expand into a reciprocal refined with fused
# multiply-adds (exact, but the machine-code check that no product is contracted could not be strict).
AUTOCONTRAST_SCALE = np.array([0.0] + [255.0 / float(d) for d in range(1, 256)], np.float64)

# Per-view scratch sizes the kernels allocate: params_i (int32), params_f (float64), lut (int32).
PARAMS_I = 8
PARAMS_F = 4
LUT_SIZE = 3 * 256


# ---------------------------------------------------------------------------------------------
# Arithmetic primitives (rebound per target; see the module docstring).


def f32_mul(a, b):
    return a * b


def f32_add(a, b):
    return a + b


def f64_mul(a, b):
    return a * b


def f64_add(a, b):
    return a + b


def floor_int(x):
    i = int(x)
    if x < i:
        i -= 1
    return i


def round_half_even(x):
    # Python's round() and np.round on a float: ties go to the even neighbour.
    r = floor_int(x)
    d = x - r
    if d > 0.5 or (d == 0.5 and r % 2 != 0):
        r += 1
    return r


def clamp_u8_float(t):
    # Pillow's float -> UINT8 store: clip to [0, 255], then truncate.
    if t <= np.float32(0.0):
        return 0
    if t >= np.float32(255.0):
        return 255
    return int(t)


def ix(i):
    # An array index the compilers need not wrap: Numba adds the length to a negative signed index
    # (a compare and select per access, which also keeps loops from vectorising: measured 20-50x on
    # the filters' interiors). Every index the kernels derive is >= 0. Never add to the result (an
    # unsigned plus a signed integer is a float in Numba).
    return np.uint64(i)


def px(img, i):
    return np.int32(img[ix(i)])


# ---------------------------------------------------------------------------------------------
# Level -> parameter mappings. Three have two forms (ops.SEMANTICS): the corrected ones by default,
# the reference code's (its documented defects) when the form table says so.


def has_form(forms, op, bit):
    # The form of op's first level (the only one whose mapping differs between semantics).
    return (forms[op, 0] & bit) != 0


def enhance_factor(v):
    # Pillow's blend takes the enhance factor as a C float, hence the float32.
    return np.float32(f64_add(ENHANCE_OFFSET, f64_mul(ENHANCE_SCALE, v)))


def blend_alpha(v):
    return np.float32(v)


def cutout_side(v, height, width, even):
    # Corrected: the square is exactly this many pixels wide. The reference filled
    # [c - side // 2, c + side // 2): a square 2 (side // 2) wide starting where ours does.
    side = 1 + int(f64_mul(f64_mul(v, float(min(height, width))), CUTOUT_SCALE))
    if even:
        side = 2 * (side // 2)
    return side


def cutout_start(u, size, side):
    centre = int(f64_mul(u, float(size)))
    return centre - side // 2


def posterize_bits(v):
    return 1 + int(f64_mul(v, POSTERIZE_SCALE))


def posterize_mask(bits):
    return 255 & ~((1 << (8 - bits)) - 1)


def solarize_threshold(v):
    return int(f64_mul(v, SOLARIZE_SCALE))


def centred(v, scale):
    # (2v - 1) scale: the level's range centred on 0.
    return f64_mul(f64_add(f64_mul(2.0, v), -1.0), scale)


def rotate_degrees(v):
    return round_half_even(centred(v, ROTATE_SCALE))


def shear_amount(v):
    return centred(v, SHEAR_SCALE)


def translate_offset(v, size, per_size):
    # Corrected: a fraction of the image size. The reference passed the fraction as pixels.
    offset = centred(v, TRANSLATE_SCALE)
    if per_size:
        offset = f64_mul(offset, float(size))
    return offset


def rescale_low(v, size, per_size):
    # Corrected: the margin is v * 0.25 of the size. The reference used v * 0.25 pixels.
    # Pillow rounds a float crop box with Python's round().
    margin = f64_mul(v, RESCALE_SCALE)
    if per_size:
        margin = f64_mul(margin, float(size))
    return round_half_even(margin)


def rescale_high(v, size, per_size):
    if per_size:
        return round_half_even(f64_mul(float(size), f64_add(1.0, -f64_mul(v, RESCALE_SCALE))))
    # The reference's box edge, size - v * 0.25, in its order of operations.
    return round_half_even(f64_add(float(size), -f64_mul(v, RESCALE_SCALE)))


def rescale_filter(v):
    return int(f64_mul(v, RESCALE_FILTER_SCALE))


# ---------------------------------------------------------------------------------------------
# Pixel math.


def blend_u8(a, b, alpha):
    # ImagingBlend: float(a) + alpha * float(b - a), clipped, truncated.
    return clamp_u8_float(f32_add(np.float32(a), f32_mul(alpha, np.float32(b - a))))


def grey_l24(r, g, b):
    # Pillow's RGB -> L: ITU-R 601-2 luma in 16.16 fixed point, rounded.
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def grey_at(img, p):
    return grey_l24(px(img, p * 3), px(img, p * 3 + 1), px(img, p * 3 + 2))


def smooth_row(img, j, mid):
    # One kernel row of ImagingFilter3x3, in Pillow's float32 order: left, centre, right.
    side = np.float32(SMOOTH_SIDE)
    t = f32_add(f32_mul(np.float32(px(img, j - 3)), side), f32_mul(np.float32(px(img, j)), mid))
    return f32_add(t, f32_mul(np.float32(px(img, j + 3)), side))


def smooth_at(img, y, x, c, height, width):
    # ImagingFilter3x3 with SMOOTH: the outer ring is copied, images under 3x3 are copied whole.
    i = (y * width + x) * 3 + c
    if y == 0 or x == 0 or y == height - 1 or x == width - 1:
        return px(img, i)
    return smooth_inside(img, i, width * 3)


def smooth_inside(img, i, row):
    # SMOOTH of element i, at least one pixel from every edge (``row`` = bytes per image row): the
    # float32 sum runs row y+1, row y, row y-1 in Pillow's order.
    ss = f32_add(np.float32(0.5), smooth_row(img, i + row, np.float32(SMOOTH_SIDE)))
    ss = f32_add(ss, smooth_row(img, i, np.float32(SMOOTH_CENTRE)))
    ss = f32_add(ss, smooth_row(img, i - row, np.float32(SMOOTH_SIDE)))
    return clamp_u8_float(ss)


def blur_at(img, y, x, c, height, width):
    # ImagingFilter5x5 with BLUR; the 2-pixel border is copied.
    i = (y * width + x) * 3 + c
    if y < 2 or x < 2 or y >= height - 2 or x >= width - 2:
        return px(img, i)
    return blur_inside(img, i, width * 3)


def blur_inside(img, i, row):
    # BLUR of element i, at least two pixels from every edge: the 16 ring pixels, weight 1/16 each.
    # Every product and partial sum is a multiple of 1/16 below 2^8, so Pillow's float32 sum
    # 0.5 + S/16 is exact and its truncation equals (S + 8) >> 4 in integers.
    s = 0
    for d in range(-2, 3):
        s += px(img, i - 2 * row + 3 * d) + px(img, i + 2 * row + 3 * d)
    for d in range(-1, 2):
        s += px(img, i + d * row - 6) + px(img, i + d * row + 6)
    return (s + 8) >> 4


def filter_margin(op):
    # The border a neighbourhood filter copies (and COLOR's, which reads one pixel: none).
    if op == BLUR:
        return 2
    if op == SMOOTH or op == SHARPNESS:
        return 1
    return 0


def filter_row(op, img, out, y, height, width, alpha, acc):
    """Output row y of a filter-kind op, as one flat loop over the row's bytes: the border bytes
    copied, the interior computed without a per-element edge test (so the compiler can vectorise
    it). The same values as op_pixel: a blend of a border element with itself is the element.
    ``acc`` is an int32 scratch of one row's bytes."""
    row = width * 3
    start = y * row
    margin = filter_margin(op)
    low = start + margin * 3
    high = start + (width - margin) * 3
    if y < margin or y >= height - margin or high <= low:
        for k in range(start, start + row):
            out[ix(k)] = img[ix(k)]
        return
    for k in range(start, low):
        out[ix(k)] = img[ix(k)]
    for k in range(high, start + row):
        out[ix(k)] = img[ix(k)]
    if op == SHARPNESS:
        for k in range(low, high):
            out[ix(k)] = blend_u8(smooth_inside(img, k, row), px(img, k), alpha)
    elif op == SMOOTH:
        for k in range(low, high):
            out[ix(k)] = blend_u8(px(img, k), smooth_inside(img, k, row), alpha)
    elif op == BLUR:
        for k in range(low, high):
            out[ix(k)] = blend_u8(px(img, k), blur_inside(img, k, row), alpha)
    elif op == COLOR:
        # Each pixel's grey level repeated per channel first, so that the blend is a flat loop too.
        for x in range(width):
            grey = grey_at(img, start // 3 + x)
            acc[ix(3 * x)] = grey
            acc[ix(3 * x + 1)] = grey
            acc[ix(3 * x + 2)] = grey
        for k in range(row):
            out[ix(start + k)] = blend_u8(acc[ix(k)], px(img, start + k), alpha)


def fix16(v):
    # Pillow's FIX(): 16.16 fixed point, FLOOR(v * 65536 + 0.5).
    return floor_int(f64_add(f64_mul(v, 65536.0), 0.5))


def scale_coord(start, step, n):
    # ImagingScaleAffine walks a double accumulator pixel by pixel; replaying the same additions
    # gives the same roundings. COORD() maps negatives to -1 (outside) and truncates the rest.
    acc = start
    for _ in range(n):
        acc = f64_add(acc, step)
    if acc < 0.0:
        return -1
    return int(acc)


def set_affine_fixed(params_i, a0, a1, a2, a3, a4, a5):
    # affine_fixed's set-up of the matrix (a0..a5 map output (x, y) to input coordinates).
    params_i[0] = AFFINE_FIXED
    params_i[1] = fix16(a0)
    params_i[2] = fix16(a1)
    params_i[3] = fix16(f64_add(f64_add(a2, f64_mul(a0, 0.5)), f64_mul(a1, 0.5)))
    params_i[4] = fix16(a3)
    params_i[5] = fix16(a4)
    params_i[6] = fix16(f64_add(f64_add(a5, f64_mul(a3, 0.5)), f64_mul(a4, 0.5)))


def set_affine_scale(params_i, coords, a0, a2, a4, a5, height, width):
    # ImagingScaleAffine: x and y source coordinates tabulated once per view (x in coords[:W],
    # y in coords[W:W+H]).
    params_i[0] = AFFINE_SCALE
    x0 = f64_add(a2, f64_mul(a0, 0.5))
    y0 = f64_add(a5, f64_mul(a4, 0.5))
    for x in range(width):
        coords[x] = scale_coord(x0, a0, x)
    for y in range(height):
        coords[width + y] = scale_coord(y0, a4, y)


def affine_source(y, x, height, width, params_i, coords):
    """Flat source pixel of output pixel (y, x) under the view's affine map, or -1 (filled with 0)."""
    if params_i[0] == AFFINE_FIXED:
        xx = np.int64(params_i[3]) + np.int64(y) * params_i[2] + np.int64(x) * params_i[1]
        yy = np.int64(params_i[6]) + np.int64(y) * params_i[5] + np.int64(x) * params_i[4]
        xin = xx >> 16
        yin = yy >> 16
    else:
        xin = np.int64(coords[x])
        yin = np.int64(coords[width + y])
    if xin < 0 or yin < 0 or xin >= width or yin >= height:
        return -1
    return yin * width + xin


def clip8_fixed(s):
    # Pillow's clip8 for resampling sums: drop the fraction bits (floor), saturate to [0, 255].
    v = s >> RESAMPLE_BITS
    if v < 0:
        return 0
    if v > 255:
        return 255
    return v


def resample_pixel(src, base, stride, taps, coefs, filt, crop, pos, out, o):
    # One output pixel of a fixed-point resampling pass: the three channels' weighted sums over
    # ``taps`` source pixels ``stride`` bytes apart, rounded and saturated as Pillow does.
    acc0 = np.int64(RESAMPLE_HALF)
    acc1 = np.int64(RESAMPLE_HALF)
    acc2 = np.int64(RESAMPLE_HALF)
    for t in range(taps):
        k = np.int64(coefs[filt, crop, pos, t])
        j = base + t * stride
        acc0 += px(src, j) * k
        acc1 += px(src, j + 1) * k
        acc2 += px(src, j + 2) * k
    out[o] = clip8_fixed(acc0)
    out[o + 1] = clip8_fixed(acc1)
    out[o + 2] = clip8_fixed(acc2)


def rescale_horizontal_pixel(img, rows, r, x, width, params_i, bounds_x, coef_x):
    # Pillow crops, then resizes back in two separable fixed-point passes, horizontal first, each
    # pass rounded to uint8. This is the horizontal pass: pixel (r, x) of the crop's row r.
    filt = params_i[0]
    left = params_i[3]
    crop_w = params_i[4] - left
    base = ((params_i[1] + r) * width + left + bounds_x[filt, crop_w, x, 0]) * 3
    resample_pixel(img, base, 3, bounds_x[filt, crop_w, x, 1], coef_x, filt, crop_w, x, rows,
                   (r * width + x) * 3)


def rescale_vertical_pixel(rows, out, y, x, width, params_i, bounds_y, coef_y):
    # The vertical pass over the horizontal pass's rows.
    filt = params_i[0]
    crop_h = params_i[2] - params_i[1]
    base = (bounds_y[filt, crop_h, y, 0] * width + x) * 3
    resample_pixel(rows, base, width * 3, bounds_y[filt, crop_h, y, 1], coef_y, filt, crop_h, y, out,
                   (y * width + x) * 3)


def weighted_lines(src, line, first, taps, coefs, filt, crop, pos, acc):
    # acc[j] = half + sum over the taps t of coefs[filt, crop, pos, t] * src[(first + t) * line + j], for
    # j < line: one output line of a resampling pass from whole source lines, as flat loops.
    for j in range(line):
        acc[ix(j)] = RESAMPLE_HALF
    for t in range(taps):
        weight = np.int32(coefs[filt, crop, pos, t])
        base = (first + t) * line
        for j in range(line):
            acc[ix(j)] += np.int32(px(src, base + j) * weight)


def rescale_horizontal_by_columns(img, rows, scratch, width, params_i, bounds_x, coef_x, acc):
    """The horizontal pass over the crop transposed into ``scratch``: each output column is then a
    weighted sum of whole scratch rows, flat loops the compiler vectorises into the int32
    accumulators ``acc`` (one per byte of a column: at least crop height * 3), as the vertical pass.
    With the transpose it takes half the time of a pixel at a time (measured at 32x32 and 96x96)."""
    filt = params_i[0]
    top = params_i[1]
    crop_h = params_i[2] - top
    left = params_i[3]
    crop_w = params_i[4] - left
    column = crop_h * 3
    for r in range(crop_h):
        source = ((top + r) * width + left) * 3
        for xs in range(crop_w):
            d = xs * column + r * 3
            s = source + xs * 3
            scratch[ix(d)] = img[ix(s)]
            scratch[ix(d + 1)] = img[ix(s + 1)]
            scratch[ix(d + 2)] = img[ix(s + 2)]
    for x in range(width):
        weighted_lines(scratch, column, bounds_x[filt, crop_w, x, 0], bounds_x[filt, crop_w, x, 1], coef_x, filt,
                       crop_w, x, acc)
        for r in range(crop_h):
            o = (r * width + x) * 3
            rows[ix(o)] = clip8_fixed(acc[ix(r * 3)])
            rows[ix(o + 1)] = clip8_fixed(acc[ix(r * 3 + 1)])
            rows[ix(o + 2)] = clip8_fixed(acc[ix(r * 3 + 2)])


def rescale_vertical_row(rows, out, y, width, params_i, bounds_y, coef_y, acc):
    """The vertical pass for output row y as flat loops over the row's bytes, one per tap, into the
    int32 accumulators ``acc`` (one per byte of a row), so the compiler can vectorise them. Pillow
    sums in 32-bit ints too: the weights' absolute sum times 255 stays below 2^31 (tested)."""
    filt = params_i[0]
    crop_h = params_i[2] - params_i[1]
    row = width * 3
    weighted_lines(rows, row, bounds_y[filt, crop_h, y, 0], bounds_y[filt, crop_h, y, 1], coef_y, filt, crop_h, y,
                   acc)
    o = y * row
    for k in range(row):
        out[ix(o + k)] = clip8_fixed(acc[ix(k)])


# ---------------------------------------------------------------------------------------------
# Per-image statistics: histograms and the lookup tables built from them.


def has_trait(mask, op):
    return (mask >> op) & 1 != 0


def needs_histogram(op):
    return has_trait(HISTOGRAM_OPS, op)


def histogram_slot(op, img, p, c):
    # Which histogram bin element (pixel p, channel c) counts in, or -1: contrast histograms the
    # grey level once per pixel, autocontrast and equalize each channel.
    if op == CONTRAST:
        if c != 0:
            return -1
        return grey_at(img, p)
    return c * 256 + px(img, p * 3 + c)


def autocontrast_lut(hist, lut, c):
    # ImageOps.autocontrast (cutoff 0): stretch [lo, hi] to [0, 255] with double arithmetic.
    base = c * 256
    lo = 0
    while lo < 256 and hist[base + lo] == 0:
        lo += 1
    hi = 255
    while hi >= 0 and hist[base + hi] == 0:
        hi -= 1
    if hi <= lo:
        for i in range(256):
            lut[base + i] = i
        return
    scale = AUTOCONTRAST_SCALE[hi - lo]
    offset = -float(lo) * scale
    for i in range(256):
        v = int(f64_add(f64_mul(float(i), scale), offset))
        if v < 0:
            v = 0
        elif v > 255:
            v = 255
        lut[base + i] = v


def equalize_lut(hist, lut, c):
    # ImageOps.equalize (Pillow >= 12): step = (pixels - count of the last used level) // 255.
    base = c * 256
    used = 0
    total = 0
    last = 0
    for i in range(256):
        h = hist[base + i]
        if h != 0:
            used += 1
            total += h
            last = h
    step = 0
    if used > 1:
        step = (total - last) // 255
    if step == 0:
        for i in range(256):
            lut[base + i] = i
        return
    n = step // 2
    for i in range(256):
        v = n // step
        # Point() stores the table as uint8 with saturation.
        if v > 255:
            v = 255
        lut[base + i] = v
        n += hist[base + i]


def contrast_mean(hist, params_i, pixels):
    # ImageEnhance.Contrast: int(mean grey + 0.5); in integers, since S / n is never within
    # rounding distance of a half-integer boundary: floor((2S + n) / 2n).
    s = np.int64(0)
    for i in range(256):
        s += np.int64(hist[i]) * i
    params_i[0] = (2 * s + pixels) // (2 * pixels)


def finish_statistics(op, hist, lut, params_i, c, pixels):
    # Turns the histogram into what the pixel pass reads; called once per channel c.
    if op == AUTOCONTRAST:
        autocontrast_lut(hist, lut, c)
    elif op == EQUALIZE:
        equalize_lut(hist, lut, c)
    elif op == CONTRAST and c == 0:
        contrast_mean(hist, params_i, pixels)


# ---------------------------------------------------------------------------------------------
# One op: per-view set-up, then one value per output element.


def unit(v):
    # Clamps to [0, 1] (NaN -> 0): unchecked inputs must never index outside a table or an image.
    if not v >= 0.0:
        return 0.0
    if v > 1.0:
        return 1.0
    return v


def prepare_op(op, v0, v1, u0, u1, height, width, params_i, params_f, coords, rotations, forms):
    """Turns an op's levels (and random numbers) into the parameters its pixel pass reads; ``forms``
    says which form of each level mapping runs (see FORM_PER_SIZE)."""
    v0 = unit(v0)
    v1 = unit(v1)
    if op == AUTOCONTRAST or op == BLUR or op == EQUALIZE or op == INVERT or op == SMOOTH:
        params_f[0] = blend_alpha(v0)
    elif op == BRIGHTNESS or op == COLOR or op == CONTRAST or op == SHARPNESS:
        params_f[0] = enhance_factor(v0)
    elif op == CUTOUT:
        side = cutout_side(v0, height, width, has_form(forms, op, FORM_EVEN))
        y0 = cutout_start(u0, height, side)
        x0 = cutout_start(u1, width, side)
        params_i[0] = max(y0, 0)
        params_i[1] = min(y0 + side, height)
        params_i[2] = max(x0, 0)
        params_i[3] = min(x0 + side, width)
    elif op == POSTERIZE:
        params_i[0] = posterize_mask(posterize_bits(v0))
    elif op == SOLARIZE:
        params_i[0] = solarize_threshold(v0)
    elif op == RESCALE:
        per_size = has_form(forms, op, FORM_PER_SIZE)
        params_i[0] = rescale_filter(v1)
        params_i[1] = rescale_low(v0, height, per_size)
        params_i[2] = rescale_high(v0, height, per_size)
        params_i[3] = rescale_low(v0, width, per_size)
        params_i[4] = rescale_high(v0, width, per_size)
    elif op == ROTATE:
        row = rotate_degrees(v0) + MAX_ROTATION
        if rotations[row, 0] == 0:
            # Pillow returns a copy for 0 degrees; the identity scale walk reproduces it.
            set_affine_scale(params_i, coords, 1.0, 0.0, 1.0, 0.0, height, width)
        else:
            params_i[0] = AFFINE_FIXED
            for k in range(6):
                params_i[1 + k] = rotations[row, 1 + k]
    elif op == SHEAR_X or op == SHEAR_Y:
        s = shear_amount(v0)
        if s == 0.0:
            set_affine_scale(params_i, coords, 1.0, 0.0, 1.0, 0.0, height, width)
        elif op == SHEAR_X:
            set_affine_fixed(params_i, 1.0, s, 0.0, 0.0, 1.0, 0.0)
        else:
            set_affine_fixed(params_i, 1.0, 0.0, 0.0, s, 1.0, 0.0)
    elif op == TRANSLATE_X:
        t = translate_offset(v0, width, has_form(forms, op, FORM_PER_SIZE))
        set_affine_scale(params_i, coords, 1.0, t, 1.0, 0.0, height, width)
    elif op == TRANSLATE_Y:
        t = translate_offset(v0, height, has_form(forms, op, FORM_PER_SIZE))
        set_affine_scale(params_i, coords, 1.0, 0.0, 1.0, t, height, width)


def is_point_op(op):
    # The kernels evaluate point ops once per (channel, value) into a table and apply the table.
    return has_trait(POINT_OPS, op)


def point_value(op, v, stat, params_i, params_f):
    """Output of point op ``op`` for input value ``v``; ``stat`` is the histogram table's entry."""
    if op == AUTOCONTRAST or op == EQUALIZE:
        return blend_u8(v, stat, np.float32(params_f[0]))
    if op == INVERT:
        return blend_u8(v, 255 - v, np.float32(params_f[0]))
    if op == BRIGHTNESS:
        return blend_u8(0, v, np.float32(params_f[0]))
    if op == CONTRAST:
        return blend_u8(params_i[0], v, np.float32(params_f[0]))
    if op == POSTERIZE:
        return v & params_i[0]
    if op == SOLARIZE:
        if v < params_i[0]:
            return v
        return 255 - v
    # IDENTITY (every point op is named above; tests/test_kernels_registry.py checks it).
    return v


def has_row_pass(op):
    # Ops computed in two passes: first rows into a scratch image, then the output from those rows.
    return has_trait(RESAMPLE_OPS, op)


def row_pass_rows(op, params_i):
    # Rows of the row pass: rescale's crop height.
    return params_i[2] - params_i[1]


def row_pass_pixel(op, img, rows, r, x, width, params_i, bounds_x, coef_x):
    # Writes pixel (r, x) of the row pass.
    rescale_horizontal_pixel(img, rows, r, x, width, params_i, bounds_x, coef_x)


def has_row_output(op):
    # Ops a backend may compute a row at a time (op_row) instead of a pixel at a time.
    return has_trait(ROW_OPS, op)


def row_pass_by_columns(op, img, rows, scratch, width, params_i, bounds_x, coef_x, acc):
    # Writes the whole row pass, a column at a time (``scratch``: an image-sized buffer the op's
    # output pass does not read; ``acc``: int32, (max(H, W) * 3)).
    rescale_horizontal_by_columns(img, rows, scratch, width, params_i, bounds_x, coef_x, acc)


def op_row(op, img, rows, out, y, height, width, params_i, params_f, bounds_y, coef_y, acc):
    """Writes output row y of a row op: the same values as op_pixel over the row. ``acc`` is an int32
    scratch of at least one row's bytes."""
    if op == RESCALE:
        rescale_vertical_row(rows, out, y, width, params_i, bounds_y, coef_y, acc)
    else:
        filter_row(op, img, out, y, height, width, np.float32(params_f[0]), acc)


def op_pixel(op, img, rows, out, y, x, height, width, params_i, params_f, coords, bounds_y, coef_y):
    """Writes output pixel (y, x) of a non-point op (set up by prepare_op; ``rows`` holds the row
    pass of two-pass ops). Per pixel rather than per channel: coordinates, grey levels and the
    cutout test are shared by the three channels."""
    p = y * width + x
    i = p * 3
    # The cheapest pixels are tested first: a chain of failed tests would cost them most.
    if has_trait(GEOMETRIC_OPS, op):
        s = affine_source(y, x, height, width, params_i, coords)
        for c in range(3):
            out[i + c] = 0 if s < 0 else img[s * 3 + c]
        return
    if op == CUTOUT:
        inside = params_i[0] <= y < params_i[1] and params_i[2] <= x < params_i[3]
        for c in range(3):
            out[i + c] = 127 if inside else img[i + c]
        return
    if op == COLOR or op == SHARPNESS or op == SMOOTH or op == BLUR:
        # The blend factor, set by prepare_op for these ops only.
        alpha = np.float32(params_f[0])
    if op == COLOR:
        grey = grey_at(img, p)
        for c in range(3):
            out[i + c] = blend_u8(grey, px(img, i + c), alpha)
    elif op == SHARPNESS:
        for c in range(3):
            out[i + c] = blend_u8(smooth_at(img, y, x, c, height, width), px(img, i + c), alpha)
    elif op == SMOOTH:
        for c in range(3):
            out[i + c] = blend_u8(px(img, i + c), smooth_at(img, y, x, c, height, width), alpha)
    elif op == BLUR:
        for c in range(3):
            out[i + c] = blend_u8(px(img, i + c), blur_at(img, y, x, c, height, width), alpha)
    elif op == RESCALE:
        rescale_vertical_pixel(rows, out, y, x, width, params_i, bounds_y, coef_y)


# ---------------------------------------------------------------------------------------------
# Weak augmentation: flip, reflect-pad, crop back, as one source coordinate per output pixel.


def reflect(i, size):
    # numpy/TF 'reflect' padding (the edge pixel is not repeated); one reflection is enough for
    # pads smaller than the image, and the clamp keeps unchecked offsets inside it.
    if i < 0:
        i = -i
    if i >= size:
        i = 2 * size - 2 - i
    return min(max(i, 0), size - 1)


def clamp_index(i, count):
    # Keeps an unchecked image index (a view's source) inside the batch.
    return min(max(i, 0), count - 1)


def weak_source(y, x, height, width, flip, off_y, off_x, pad):
    """Flat source pixel index of output pixel (y, x): flip, then pad by ``pad``, crop at the offset."""
    sy = reflect(y + off_y - pad, height)
    sx = reflect(x + off_x - pad, width)
    if flip != 0:
        sx = width - 1 - sx
    return sy * width + sx


# ---------------------------------------------------------------------------------------------
# The neighbourhood filters over a staged copy of the pixels they read (the CUDA tiled kernel).


def is_neighbourhood_op(op):
    # The ops whose output pixel reads its neighbours: a tile plus a halo of their reach holds all.
    return filter_margin(op) > 0


def staged_filter_pixel(op, tile, ty, tx, span, out, i, y, x, height, width, alpha):
    """op_pixel's SHARPNESS, SMOOTH or BLUR for pixel (y, x) of a height x width image, written at
    out[i:i + 3], with the pixel and its neighbours read from ``tile``: a copy of the image around
    it, ``span`` pixels wide (HWC), holding (y, x) at (ty, tx). Pixels within the filter's reach of
    the image border are copies of themselves (as in smooth_at and blur_at); for the others the
    tile, at least that reach from its own border there, is what the filter reads."""
    reach = filter_margin(op)
    edge = y < reach or x < reach or y >= height - reach or x >= width - reach
    j = (ty * span + tx) * 3
    for c in range(3):
        v = px(tile, j + c)
        filtered = v
        if not edge:
            if op == BLUR:
                filtered = blur_inside(tile, j + c, span * 3)
            else:
                filtered = smooth_inside(tile, j + c, span * 3)
        if op == SHARPNESS:
            out[i + c] = blend_u8(filtered, v, alpha)
        else:
            out[i + c] = blend_u8(v, filtered, alpha)
