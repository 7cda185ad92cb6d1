"""The CTAugment ops as PIL calls: the oracle the kernels are tested against and the benchmark baseline.

Each op is applied to a PIL RGB image with the same PIL calls as the reference implementation
(google-research/remixmatch, ``libml/ctaugment.py``), one view at a time:

- autocontrast, equalize, invert: ``Image.blend(x, ImageOps.<op>(x), v)``;
- blur, smooth: ``Image.blend(x, x.filter(ImageFilter.BLUR | SMOOTH), v)``;
- brightness, color, contrast, sharpness: ``ImageEnhance.<op>(x).enhance(f)``;
- posterize, solarize: ``ImageOps.posterize`` / ``ImageOps.solarize``;
- rotate: ``x.rotate(degrees)`` (nearest, filled with 0);
- shear_x / shear_y: ``x.transform(x.size, Image.AFFINE, (1, s, 0, 0, 1, 0))`` / ``(1, 0, 0, s, 1, 0)``;
- translate_x / translate_y: ``x.transform(x.size, Image.AFFINE, (1, 0, t, 0, 1, 0))`` / ``(..., t)``;
- rescale: ``x.crop(box).resize(x.size, filter)``;
- cutout: a square filled with (127, 127, 127);
- identity.

Three defects of the reference code are fixed on purpose, as the kernels fix them:

- translate: the offset is a fraction of the image size (``ops.TRANSLATE``), not that fraction
  taken as a pixel count (which is a no-op with nearest sampling);
- rescale: the crop margin is a fraction of the size on each side (``ops.RESCALE_MARGIN``), not
  that fraction taken as pixels;
- cutout: the square is exactly ``side`` pixels wide (rows ``[cy - side // 2, cy - side // 2 + side)``
  clipped to the image, likewise columns), not ``2 * (side // 2)``, so side 1 covers one pixel.
  Its centre is ``(int(u0 * H), int(u1 * W))`` from the view's random numbers ``u`` in [0, 1).

With ``semantics="reference"`` these three ops do what the reference code does instead, with its
own calls (``ops.OpSpec.reference_args``): translate by ``(2v - 1) * 0.3`` pixels; rescale crops the
float box ``(s, s, W - s, H - s)``, ``s = v * 0.25``, which Pillow rounds, and resizes back; cutout
fills ``[c - side // 2, c + side // 2)`` on each axis.

Every other level -> parameter mapping is taken from :mod:`remixmatch.kernels.pixel_math`, the same
functions the kernels compile; only the PIL calls that consume the parameters live here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from . import pixel_math
from .ops import LEVELS_PER_OP, MAX_DEPTH, NUM_OPS, OP_ID, OP_NAMES, RESCALE_FILTERS, check_semantics

__all__ = [
    "apply_op",
    "apply_ops",
    "apply_ops_batch",
    "weak_augment",
    "PIL_OPS",
    "pil_ops",
]

_RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "nearest": Image.Resampling.NEAREST,
}
_FILTERS = tuple(_RESAMPLING[name] for name in RESCALE_FILTERS)
_CUTOUT_FILL = (127, 127, 127)


# ---------------------------------------------------------------------------------------------
# The ops on one PIL image: f(x, v0, v1, u0, u1) -> new image (levels v, random numbers u).


def _blend(x: Image.Image, y: Image.Image, v: float) -> Image.Image:
    return Image.blend(x, y, float(pixel_math.blend_alpha(v)))


def _autocontrast(x, v0, v1, u0, u1):
    return _blend(x, ImageOps.autocontrast(x), v0)


def _blur(x, v0, v1, u0, u1):
    return _blend(x, x.filter(ImageFilter.BLUR), v0)


def _brightness(x, v0, v1, u0, u1):
    return ImageEnhance.Brightness(x).enhance(float(pixel_math.enhance_factor(v0)))


def _color(x, v0, v1, u0, u1):
    return ImageEnhance.Color(x).enhance(float(pixel_math.enhance_factor(v0)))


def _contrast(x, v0, v1, u0, u1):
    return ImageEnhance.Contrast(x).enhance(float(pixel_math.enhance_factor(v0)))


def _cutout_box(width: int, height: int, v: float, u0: float, u1: float) -> tuple[int, int, int, int]:
    side = pixel_math.cutout_side(v, height, width, False)
    y0 = pixel_math.cutout_start(u0, height, side)
    x0 = pixel_math.cutout_start(u1, width, side)
    return max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)


def _cutout(x, v0, v1, u0, u1):
    left, top, right, bottom = _cutout_box(x.width, x.height, v0, u0, u1)
    x = x.copy()
    if left < right and top < bottom:
        x.paste(_CUTOUT_FILL, (left, top, right, bottom))
    return x


def _equalize(x, v0, v1, u0, u1):
    return _blend(x, ImageOps.equalize(x), v0)


def _invert(x, v0, v1, u0, u1):
    return _blend(x, ImageOps.invert(x), v0)


def _identity(x, v0, v1, u0, u1):
    return x


def _posterize(x, v0, v1, u0, u1):
    return ImageOps.posterize(x, pixel_math.posterize_bits(v0))


def _rescale(x, v0, v1, u0, u1):
    width, height = x.size
    # The crop box as integers; Image.crop rounds a float box with round() exactly as these do.
    box = (
        pixel_math.rescale_low(v0, width, True),
        pixel_math.rescale_low(v0, height, True),
        pixel_math.rescale_high(v0, width, True),
        pixel_math.rescale_high(v0, height, True),
    )
    return x.crop(box).resize(x.size, _FILTERS[pixel_math.rescale_filter(v1)])


def _rotate(x, v0, v1, u0, u1):
    return x.rotate(pixel_math.rotate_degrees(v0))


def _shear_x(x, v0, v1, u0, u1):
    return x.transform(x.size, Image.Transform.AFFINE, (1, pixel_math.shear_amount(v0), 0, 0, 1, 0))


def _shear_y(x, v0, v1, u0, u1):
    return x.transform(x.size, Image.Transform.AFFINE, (1, 0, 0, pixel_math.shear_amount(v0), 1, 0))


def _smooth(x, v0, v1, u0, u1):
    return _blend(x, x.filter(ImageFilter.SMOOTH), v0)


def _sharpness(x, v0, v1, u0, u1):
    return ImageEnhance.Sharpness(x).enhance(float(pixel_math.enhance_factor(v0)))


def _solarize(x, v0, v1, u0, u1):
    return ImageOps.solarize(x, pixel_math.solarize_threshold(v0))


def _translate_x(x, v0, v1, u0, u1):
    t = pixel_math.translate_offset(v0, x.width, True)
    return x.transform(x.size, Image.Transform.AFFINE, (1, 0, t, 0, 1, 0))


def _translate_y(x, v0, v1, u0, u1):
    t = pixel_math.translate_offset(v0, x.height, True)
    return x.transform(x.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, t))


# The reference code's translate, rescale and cutout (semantics="reference").


def _translate_x_reference(x, v0, v1, u0, u1):
    t = pixel_math.translate_offset(v0, x.width, per_size=False)
    return x.transform(x.size, Image.Transform.AFFINE, (1, 0, t, 0, 1, 0))


def _translate_y_reference(x, v0, v1, u0, u1):
    t = pixel_math.translate_offset(v0, x.height, per_size=False)
    return x.transform(x.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, t))


def _rescale_reference(x, v0, v1, u0, u1):
    # The float box as the reference passes it: Image.crop does the rounding.
    s = v0 * 0.25
    box = (s, s, x.width - s, x.height - s)
    return x.crop(box).resize(x.size, _FILTERS[pixel_math.rescale_filter(v1)])


def _cutout_reference(x, v0, v1, u0, u1):
    side = pixel_math.cutout_side(v0, x.height, x.width, False)
    cy = int(u0 * x.height)
    cx = int(u1 * x.width)
    left, top = max(0, cx - side // 2), max(0, cy - side // 2)
    right, bottom = min(x.width, cx + side // 2), min(x.height, cy + side // 2)
    x = x.copy()
    if left < right and top < bottom:
        x.paste(_CUTOUT_FILL, (left, top, right, bottom))
    return x


_REFERENCE_BY_NAME = {
    "cutout": _cutout_reference,
    "rescale": _rescale_reference,
    "translate_x": _translate_x_reference,
    "translate_y": _translate_y_reference,
}

_BY_NAME = {
    "autocontrast": _autocontrast,
    "blur": _blur,
    "brightness": _brightness,
    "color": _color,
    "contrast": _contrast,
    "cutout": _cutout,
    "equalize": _equalize,
    "invert": _invert,
    "identity": _identity,
    "posterize": _posterize,
    "rescale": _rescale,
    "rotate": _rotate,
    "sharpness": _sharpness,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "smooth": _smooth,
    "solarize": _solarize,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}
if set(_BY_NAME) != set(OP_NAMES):
    raise RuntimeError(f"kernels/pil_reference.py: ops without a PIL oracle: {sorted(set(OP_NAMES) - set(_BY_NAME))}")

# PIL_OPS[op_id](image, v0, v1, u0, u1) -> image, in the registry order of ops.OPS.
PIL_OPS = tuple(_BY_NAME[name] for name in OP_NAMES)
_PIL_REFERENCE_OPS = tuple(_REFERENCE_BY_NAME.get(name, _BY_NAME[name]) for name in OP_NAMES)


def pil_ops(semantics: str = "corrected") -> tuple:
    """The ops under ``semantics`` ("corrected": PIL_OPS; "reference": the reference code's
    translate, rescale and cutout), in the registry order of ops.OPS."""
    return _PIL_REFERENCE_OPS if check_semantics(semantics) == "reference" else PIL_OPS


# ---------------------------------------------------------------------------------------------
# Validation.


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} must not be empty, got shape {image.shape}")
    return image


def _op_index(op) -> int:
    if isinstance(op, str):
        if op not in OP_ID:
            raise ValueError(f"unknown op {op!r}; the ops are {', '.join(OP_NAMES)}")
        return OP_ID[op]
    if isinstance(op, (bool, np.bool_)) or not isinstance(op, (int, np.integer)):
        raise ValueError(f"op id must be an int in [0, {NUM_OPS}) or an op name, got {op!r}")
    if not 0 <= op < NUM_OPS:
        raise ValueError(f"op id {int(op)} out of range [0, {NUM_OPS})")
    return int(op)


def _check_unit(values: np.ndarray, name: str, closed: bool = True) -> None:
    # [0, 1] (levels) or [0, 1) (random numbers); NaN fails either test.
    ok = (values >= 0.0) & ((values <= 1.0) if closed else (values < 1.0))
    if values.size and not bool(np.all(ok)):
        bad = values[~ok].ravel()[0]
        raise ValueError(f"{name} must lie in [0, 1{']' if closed else ')'}, found {bad!r}")


def _pair(values, name: str, closed: bool = True) -> tuple[float, float]:
    # As float32, like the per-view arrays: the mappings see the values the kernels see.
    arr = np.asarray(values, dtype=np.float32).ravel()
    if arr.size == 1:
        arr = np.array([arr[0], 0.0], np.float32)
    if arr.size != 2:
        raise ValueError(f"{name} must hold 1 or 2 values, got {arr.size}")
    _check_unit(arr, name, closed)
    return float(arr[0]), float(arr[1])


def _check_policy(op_ids, levels, rand, lead: tuple[int, ...]):
    op_ids = np.asarray(op_ids)
    if not np.issubdtype(op_ids.dtype, np.integer):
        raise ValueError(f"op_ids must be integers, got {op_ids.dtype}")
    if op_ids.ndim != len(lead) + 1 or op_ids.shape[: len(lead)] != lead:
        raise ValueError(f"op_ids must have shape {lead + ('depth',)}, got {op_ids.shape}")
    depth = op_ids.shape[-1]
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in [1, {MAX_DEPTH}], got {depth}")
    if op_ids.size and (op_ids.min() < 0 or op_ids.max() >= NUM_OPS):
        raise ValueError(f"op ids must lie in [0, {NUM_OPS}), found {int(op_ids.min())}..{int(op_ids.max())}")
    levels = np.asarray(levels, dtype=np.float32)
    if levels.shape != lead + (depth, LEVELS_PER_OP):
        raise ValueError(f"levels must have shape {lead + (depth, LEVELS_PER_OP)}, got {levels.shape}")
    _check_unit(levels, "levels")
    rand = np.asarray(rand, dtype=np.float32)
    if rand.shape != lead + (depth + 1, 2):
        raise ValueError(f"rand must have shape {lead + (depth + 1, 2)}, got {rand.shape}")
    _check_unit(rand, "rand", closed=False)
    return op_ids, levels, rand


def _check_cutout_level(cutout_level):
    if cutout_level is None:
        return None
    v = float(cutout_level)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"cutout_level must lie in [0, 1], got {cutout_level!r}")
    return v


def _check_weak(flip, offset_y, offset_x, pad):
    if flip not in (0, 1):
        raise ValueError(f"flip must be 0 or 1, got {flip!r}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    for name, off in (("offset_y", offset_y), ("offset_x", offset_x)):
        if not 0 <= off <= 2 * pad:
            raise ValueError(f"{name} must lie in [0, 2 * pad] = [0, {2 * pad}], got {off}")


# ---------------------------------------------------------------------------------------------
# Public API.


def weak_augment(image: np.ndarray, flip, offset_y: int, offset_x: int, pad: int = 4) -> np.ndarray:
    """The weak augmentation: flip horizontally (if ``flip``), pad by reflection, crop back.

    The crop's top-left corner is (offset_y, offset_x) in the padded image, each in [0, 2 * pad].
    """
    image = _check_image(image)
    pad, offset_y, offset_x = int(pad), int(offset_y), int(offset_x)
    _check_weak(flip, offset_y, offset_x, pad)
    height, width = image.shape[:2]
    if flip:
        image = image[:, ::-1]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return np.ascontiguousarray(padded[offset_y : offset_y + height, offset_x : offset_x + width])


def apply_op(image: np.ndarray, op_id, levels=(0.5, 0.5), rand=(0.5, 0.5), semantics: str = "corrected") -> np.ndarray:
    """One op (id or name) on an (H, W, 3) uint8 image, with levels (v0, v1) and random numbers (u0, u1).

    Levels lie in [0, 1] and random numbers in [0, 1); both are read as float32, as the kernels read
    them. A single level stands for (v0, 0).
    """
    image = _check_image(image)
    op = _op_index(op_id)
    v0, v1 = _pair(levels, "levels")
    u0, u1 = _pair(rand, "rand", closed=False)
    out = pil_ops(semantics)[op](Image.fromarray(image), v0, v1, u0, u1)
    return np.array(out, dtype=np.uint8)


def _run_view(x: Image.Image, ops: list, levels: list, rand: list, cutout_level,
              semantics: str = "corrected") -> Image.Image:
    table = pil_ops(semantics)
    for op, (v0, v1), (u0, u1) in zip(ops, levels, rand):
        x = table[op](x, v0, v1, u0, u1)
    if cutout_level is not None:
        u0, u1 = rand[len(ops)]
        x = table[OP_ID["cutout"]](x, cutout_level, 0.0, u0, u1)
    return x


def apply_ops(image: np.ndarray, op_ids, levels, rand, cutout_level=None, semantics: str = "corrected") -> np.ndarray:
    """One view: ops ``op_ids`` (depth,) in order, then the optional cutout at ``cutout_level``.

    levels: (depth, 2) float32; rand: (depth + 1, 2) float32, row d for op d and the last row for the
    appended cutout.
    """
    image = _check_image(image)
    op_ids, levels, rand = _check_policy(op_ids, levels, rand, ())
    cutout_level = _check_cutout_level(cutout_level)
    x = _run_view(Image.fromarray(image), op_ids.tolist(), levels.tolist(), rand.tolist(), cutout_level,
                  check_semantics(semantics))
    return np.array(x, dtype=np.uint8)


def apply_ops_batch(
    images: np.ndarray,
    op_ids,
    levels,
    rand,
    cutout_level=None,
    sources: Sequence[int] | np.ndarray | None = None,
    *,
    flips=None,
    offsets=None,
    pad: int = 4,
    semantics: str = "corrected",
) -> np.ndarray:
    """N views of a batch: view n is ``images[sources[n]]`` (default n), augmented by its policy.

    images: (B, H, W, 3) uint8; op_ids: (N, depth) int; levels: (N, depth, 2) float32;
    rand: (N, depth + 1, 2) float32. With ``flips`` (N,) and ``offsets`` (N, 2) the weak augmentation
    (:func:`weak_augment`, offsets as (y, x)) runs first, as the fused kernel does. Returns (N, H, W, 3).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be a (B, H, W, 3) uint8 array, got {images.dtype} {images.shape}")
    op_ids = np.asarray(op_ids)
    if op_ids.ndim != 2:
        raise ValueError(f"op_ids must have shape (N, depth), got {op_ids.shape}")
    n_views = op_ids.shape[0]
    op_ids, levels, rand = _check_policy(op_ids, levels, rand, (n_views,))
    cutout_level = _check_cutout_level(cutout_level)
    check_semantics(semantics)
    if sources is None:
        if images.shape[0] != n_views:
            raise ValueError(f"without sources, images ({images.shape[0]}) and views ({n_views}) must match")
        src = list(range(n_views))
    else:
        src_arr = np.asarray(sources)
        if src_arr.shape != (n_views,) or not np.issubdtype(src_arr.dtype, np.integer):
            raise ValueError(f"sources must be ({n_views},) integers, got {src_arr.dtype} {src_arr.shape}")
        if n_views and (src_arr.min() < 0 or src_arr.max() >= images.shape[0]):
            raise ValueError(f"sources must lie in [0, {images.shape[0]})")
        src = src_arr.tolist()
    weak = None
    if (flips is None) != (offsets is None):
        raise ValueError("flips and offsets go together")
    if flips is not None:
        flips_arr = np.asarray(flips)
        offsets_arr = np.asarray(offsets)
        if flips_arr.shape != (n_views,) or offsets_arr.shape != (n_views, 2):
            raise ValueError(f"flips must be ({n_views},) and offsets ({n_views}, 2), "
                             f"got {flips_arr.shape} and {offsets_arr.shape}")
        weak = list(zip(flips_arr.tolist(), offsets_arr.tolist()))

    out = np.empty((n_views,) + images.shape[1:], np.uint8)
    ops_l, levels_l, rand_l = op_ids.tolist(), levels.tolist(), rand.tolist()
    for n in range(n_views):
        image = images[src[n]]
        if weak is not None:
            flip, (oy, ox) = weak[n]
            image = weak_augment(image, flip, oy, ox, pad)
        x = _run_view(Image.fromarray(image), ops_l[n], levels_l[n], rand_l[n], cutout_level, semantics)
        out[n] = np.asarray(x)
    return out
