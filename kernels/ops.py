"""The CTAugment operations: the one declaration every backend, the PIL reference and the policy read.

An op's id is its position in ``OPS``; the order is the reference code's registry order and is part
of the public interface (policies, checkpoints and benchmark reports store ids). The level -> parameter
mappings and the pixel math live in :mod:`remixmatch.kernels.scalar` as plain Python functions; this
module holds what the policy needs (names, bins) and what a reader needs (what the level does).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    name: str
    # One weight vector per level argument, with this many bins; () for an op without arguments.
    bins: tuple[int, ...]
    # What the level(s) do, in the words of the spec.
    levels: str


OPS: tuple[OpSpec, ...] = (
    OpSpec("autocontrast", (17,), "blend(x, autocontrast(x), v)"),
    OpSpec("blur", (17,), "blend(x, BLUR(x), v); PIL's 5x5 box-ring kernel, 2-px border kept"),
    OpSpec("brightness", (17,), "f = 0.1 + 1.9 v; blend(black, x, f)"),
    OpSpec("color", (17,), "f = 0.1 + 1.9 v; blend(grey(x), x, f)"),
    OpSpec("contrast", (17,), "f = 0.1 + 1.9 v; blend(mean grey of x, x, f)"),
    OpSpec("cutout", (17,), "square of side 1 + int(v min(H, W) 0.499) at a random centre, filled with 127"),
    OpSpec("equalize", (17,), "blend(x, equalize(x), v)"),
    OpSpec("invert", (17,), "blend(x, 255 - x, v)"),
    OpSpec("identity", (), "x"),
    OpSpec("posterize", (8,), "keep the top 1 + int(v 7.999) bits"),
    OpSpec("rescale", (17, 6), "crop a margin of v 0.25 of the size, resize back with filter int(v2 5.99)"),
    OpSpec("rotate", (17,), "round((2v - 1) 45) degrees about the centre; nearest; fill 0"),
    OpSpec("sharpness", (17,), "f = 0.1 + 1.9 v; blend(SMOOTH(x), x, f)"),
    OpSpec("shear_x", (17,), "source x = x + ((2v - 1) 0.3) y; nearest; fill 0"),
    OpSpec("shear_y", (17,), "source y = y + ((2v - 1) 0.3) x; nearest; fill 0"),
    OpSpec("smooth", (17,), "blend(x, SMOOTH(x), v); PIL's 3x3 [1 1 1; 1 5 1; 1 1 1]/13, border kept"),
    OpSpec("solarize", (17,), "t = int(v 255.999); pixels >= t become 255 - pixel"),
    OpSpec("translate_x", (17,), "shift by (2v - 1) 0.3 of the width; nearest; fill 0"),
    OpSpec("translate_y", (17,), "shift by (2v - 1) 0.3 of the height; nearest; fill 0"),
)

OP_NAMES: tuple[str, ...] = tuple(op.name for op in OPS)
OP_ID: dict[str, int] = {name: i for i, name in enumerate(OP_NAMES)}
NUM_OPS = len(OPS)

# The most ops one view may chain; the per-view arrays are (N, depth, ...) with depth <= MAX_DEPTH.
MAX_DEPTH = 4
# Every op takes at most this many levels; levels arrays are (N, depth, LEVELS_PER_OP).
LEVELS_PER_OP = 2

# rescale's second level picks one of these PIL filters by int(v * 5.99).
RESCALE_FILTERS: tuple[str, ...] = ("lanczos", "bicubic", "bilinear", "box", "hamming", "nearest")
