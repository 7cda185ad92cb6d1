"""The CTAugment operations: one record per op, the declaration every backend, the PIL reference, the
policy and the op table in docs/kernels.md read.

An op's id is its position in ``OPS``; the order is the reference code's registry order and is part
of the public interface (policies, checkpoints and benchmark reports store ids). A record holds
everything that is data about an op: its name, its kind (which decides how the kernels run it), each
level argument's bins and mapping constants, and what it does. The pixel math that consumes the
parameters lives in :mod:`remixmatch.kernels.pixel_math`, which reads its constants from here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    # Output element from the input element's value and channel alone: tabulated per (channel, value).
    POINT = "point"
    # Output pixel from a fixed neighbourhood of the input pixel.
    FILTER = "filter"
    # Output pixel copied from one affine source coordinate (nearest, filled with 0 outside).
    GEOMETRIC = "geometric"
    # Two separable resampling passes (rows first into a scratch image).
    RESAMPLE = "resample"
    # A box of the image replaced, the rest copied.
    REGION = "region"


@dataclass(frozen=True)
class Level:
    """One level argument v in [0, 1], which the policy samples in ``bins`` bins.

    The parameter is ``offset + rounding(core)`` where ``core`` is ``scale * v`` or, when ``centred``,
    ``(2v - 1) * scale`` (the range [-scale, scale]), times the image's size along the op's axis when
    ``per_size``. These are the constants the kernels multiply by: the arithmetic order is part of
    bit-exactness, so a range alone would not do.
    """

    bins: int
    param: str  # the parameter's name in the op's meaning
    scale: float
    offset: float = 0.0
    centred: bool = False
    rounding: str = ""  # "", "int" (truncate) or "round" (half to even)
    per_size: bool = False
    # Rounded down to an even number after the rest (the reference's cutout draws 2 (side // 2)).
    even: bool = False

    def formula(self) -> str:
        core = f"(2v - 1) {_num(self.scale)}" if self.centred else (
            "v" if self.scale == 1.0 else f"{_num(self.scale)} v")
        if self.per_size:
            core += " size"
        if self.rounding:
            core = f"{self.rounding}({core})"
        value = f"{_num(self.offset)} + {core}" if self.offset else core
        if self.even:
            value = f"2 (({value}) // 2)"
        return f"{self.param} = {value}"


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class OpSpec:
    name: str
    kind: Kind
    # One entry per level argument; () for an op without arguments.
    args: tuple[Level, ...]
    # What the op does with its parameters, in the words of the spec.
    meaning: str
    # Whether the op reads a histogram of the image first (the kernels build it before the pixel pass).
    histogram: bool = False
    # The reference code's level mappings where they differ from ``args`` (its three defects, spec
    # section 2.1): same bins and constants, another form (pixels instead of a fraction of the size,
    # an even cutout side). None: the op maps its levels the same way under both semantics.
    reference_args: tuple[Level, ...] | None = None

    @property
    def bins(self) -> tuple[int, ...]:
        return tuple(level.bins for level in self.args)

    def levels_for(self, semantics: str) -> tuple[Level, ...]:
        """The level mappings under ``semantics`` (one of SEMANTICS)."""
        check_semantics(semantics)
        if semantics == "reference" and self.reference_args is not None:
            return self.reference_args
        return self.args


# How levels map to parameters: "corrected" (the paper's intent, the default) or "reference" (the
# published code's mappings, defects included, as its numbers were produced).
SEMANTICS: tuple[str, ...] = ("corrected", "reference")


def check_semantics(semantics: str) -> str:
    if semantics not in SEMANTICS:
        raise ValueError(f"CTAugment semantics must be one of {', '.join(SEMANTICS)}, got {semantics!r}")
    return semantics


# The mappings, each declared once; several ops share one.
BLEND = Level(17, "alpha", 1.0)
ENHANCE = Level(17, "f", 1.9, offset=0.1)
# size: min(H, W).
CUTOUT_SIDE = Level(17, "side", 0.499, offset=1.0, rounding="int", per_size=True)
POSTERIZE_BITS = Level(8, "bits", 7.999, offset=1.0, rounding="int")
SOLARIZE_THRESHOLD = Level(17, "t", 255.999, rounding="int")
RESCALE_MARGIN = Level(17, "margin", 0.25, rounding="round", per_size=True)
RESCALE_FILTER = Level(6, "filter", 5.99, rounding="int")
ROTATE_DEGREES = Level(17, "degrees", 45.0, centred=True, rounding="round")
SHEAR = Level(17, "s", 0.3, centred=True)
TRANSLATE = Level(17, "offset", 0.3, centred=True, per_size=True)
# The reference code's forms of the last three: the fraction taken as pixels, the side made even.
CUTOUT_SIDE_EVEN = Level(17, "side", 0.499, offset=1.0, rounding="int", per_size=True, even=True)
RESCALE_MARGIN_PX = Level(17, "margin", 0.25, rounding="round")
TRANSLATE_PX = Level(17, "offset", 0.3, centred=True)

_P, _F, _G, _RS, _RG = Kind.POINT, Kind.FILTER, Kind.GEOMETRIC, Kind.RESAMPLE, Kind.REGION

OPS: tuple[OpSpec, ...] = (
    OpSpec("autocontrast", _P, (BLEND,), "blend(x, autocontrast(x), alpha)", histogram=True),
    OpSpec("blur", _F, (BLEND,), "blend(x, BLUR(x), alpha); PIL's 5x5 box-ring kernel, 2-px border kept"),
    OpSpec("brightness", _P, (ENHANCE,), "blend(black, x, f)"),
    OpSpec("color", _F, (ENHANCE,), "blend(grey(x), x, f)"),
    OpSpec("contrast", _P, (ENHANCE,), "blend(mean grey of x, x, f)", histogram=True),
    OpSpec("cutout", _RG, (CUTOUT_SIDE,), "a side x side square at a random centre, filled with 127; size = min(H, W)",
           reference_args=(CUTOUT_SIDE_EVEN,)),
    OpSpec("equalize", _P, (BLEND,), "blend(x, equalize(x), alpha)", histogram=True),
    OpSpec("invert", _P, (BLEND,), "blend(x, 255 - x, alpha)"),
    OpSpec("identity", _P, (), "x"),
    OpSpec("posterize", _P, (POSTERIZE_BITS,), "keep the top `bits` bits of every value"),
    OpSpec("rescale", _RS, (RESCALE_MARGIN, RESCALE_FILTER),
           "crop `margin` px off each side, resize back with RESCALE_FILTERS[filter]",
           reference_args=(RESCALE_MARGIN_PX, RESCALE_FILTER)),
    OpSpec("rotate", _G, (ROTATE_DEGREES,), "rotate by `degrees` about the centre; nearest; fill 0"),
    OpSpec("sharpness", _F, (ENHANCE,), "blend(SMOOTH(x), x, f)"),
    OpSpec("shear_x", _G, (SHEAR,), "source x = x + s y; nearest; fill 0"),
    OpSpec("shear_y", _G, (SHEAR,), "source y = y + s x; nearest; fill 0"),
    OpSpec("smooth", _F, (BLEND,), "blend(x, SMOOTH(x), alpha); PIL's 3x3 [1 1 1; 1 5 1; 1 1 1]/13, border kept"),
    OpSpec("solarize", _P, (SOLARIZE_THRESHOLD,), "values >= t become 255 - value"),
    OpSpec("translate_x", _G, (TRANSLATE,), "shift by `offset` px along x (size = W); nearest; fill 0",
           reference_args=(TRANSLATE_PX,)),
    OpSpec("translate_y", _G, (TRANSLATE,), "shift by `offset` px along y (size = H); nearest; fill 0",
           reference_args=(TRANSLATE_PX,)),
)

OP_NAMES: tuple[str, ...] = tuple(op.name for op in OPS)
OP_ID: dict[str, int] = {name: i for i, name in enumerate(OP_NAMES)}
NUM_OPS = len(OPS)

# The most ops one view may chain; the per-view arrays are (N, depth, ...) with depth <= MAX_DEPTH.
MAX_DEPTH = 4
# Every op takes at most this many levels; levels arrays are (N, depth, LEVELS_PER_OP).
LEVELS_PER_OP = max(len(op.args) for op in OPS)

# rescale's second level picks one of these PIL filters.
RESCALE_FILTERS: tuple[str, ...] = ("lanczos", "bicubic", "bilinear", "box", "hamming", "nearest")

# rotate's whole-degree angles run over [-MAX_ROTATION, MAX_ROTATION] (the kernels tabulate them).
MAX_ROTATION = int(ROTATE_DEGREES.scale)


def ids_of(*kinds: Kind) -> tuple[int, ...]:
    return tuple(i for i, op in enumerate(OPS) if op.kind in kinds)


def id_mask(ids) -> int:
    """Bit i set for each op id i (the kernels' int64 masks hold up to 63 ops)."""
    mask = sum(1 << i for i in ids)
    if mask >= 1 << 63:
        raise ValueError(f"op ids above 62 do not fit the kernels' int64 masks: {NUM_OPS} ops")
    return mask


def op_table() -> str:
    """The op table of docs/kernels.md (Markdown), generated from the records."""
    lines = ["| id | op | kind | levels: bins, parameter | what it does |", "|---|---|---|---|---|"]
    for i, op in enumerate(OPS):
        levels = "; ".join(f"{level.bins}: {level.formula()}" for level in op.args) or "-"
        if op.reference_args is not None:
            changed = [level.formula() for level, ours in zip(op.reference_args, op.args) if level != ours]
            levels += " (reference: " + "; ".join(changed) + ")"
        lines.append(f"| {i} | {op.name} | {op.kind.value} | {levels} | {op.meaning} |")
    return "\n".join(lines)
