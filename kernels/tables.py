"""Host-side tables the kernels read: everything Pillow computes once per image size in double.

Rotation matrices (Pillow rounds cos/sin to 15 decimals in Python) and resampling coefficients
(Pillow's precompute_coeffs with libm's sin) are computed here in Python exactly as Pillow does, once
per image size, and handed to the kernels as small int32 arrays. The kernels then only do the
per-pixel integer work, identically on every target.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .ops import LEVELS_PER_OP, MAX_ROTATION, OPS, RESCALE_FILTERS, check_semantics
from .pixel_math import FORM_EVEN, FORM_PER_SIZE, RESAMPLE_BITS, fix16

# Upscaling (every rescale crop is at most the image) keeps Pillow's support at the filter's own,
# so the widest kernel is Lanczos': 2 * ceil(3) + 1 taps.
MAX_TAPS = 7


def _box(x):
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x):
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


_HAMMING_A = float(np.float32(0.54))
_HAMMING_B = float(np.float32(0.46))


def _hamming(x):
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x = x * math.pi
    # Resample.c writes 0.54f and 0.46f: float32 literals widened to double.
    return math.sin(x) / x * (_HAMMING_A + _HAMMING_B * math.cos(x))


def _bicubic(x):
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x):
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x):
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


# (filter function, support) per name, as Resample.c declares them.
_FILTERS = {
    "lanczos": (_lanczos, 3.0),
    "bicubic": (_bicubic, 2.0),
    "bilinear": (_bilinear, 1.0),
    "box": (_box, 0.5),
    "hamming": (_hamming, 1.0),
}


def _float32(v: float) -> float:
    return float(np.float32(v))


def _resample_row(in_size: int, out_size: int, name: str) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """Pillow's coefficients for resizing in_size -> out_size (box 0..in_size): bounds and int weights."""
    if name == "nearest":
        # Image.resize(NEAREST) is an affine scale: a double accumulator from 0.5 * scale, truncated.
        scale = float(in_size) / out_size
        acc = 0.0 + scale * 0.5
        bounds, coefs = [], []
        for _ in range(out_size):
            src = -1 if acc < 0.0 else int(acc)
            bounds.append((src, 1))
            coefs.append([1 << RESAMPLE_BITS])
            acc += scale
        return bounds, coefs
    filt, support_base = _FILTERS[name]
    # Pillow passes the box as C floats.
    in0, in1 = _float32(0.0), _float32(float(in_size))
    scale = (in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = support_base * filterscale
    inv_filterscale = 1.0 / filterscale
    bounds, coefs = [], []
    for xx in range(out_size):
        center = in0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [filt((x + xmin - center + 0.5) * inv_filterscale) for x in range(xmax)]
        total = 0.0
        for w in weights:
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        fixed = [int(-0.5 + w * (1 << RESAMPLE_BITS)) if w < 0 else int(0.5 + w * (1 << RESAMPLE_BITS))
                 for w in weights]
        bounds.append((xmin, xmax))
        coefs.append(fixed)
    return bounds, coefs


@dataclass(frozen=True)
class ResampleTable:
    """Coefficients for every (filter, crop size) -> size: bounds[f, crop, out] = (first, taps)."""

    bounds: np.ndarray  # int32 (filters, size + 1, size, 2)
    coefs: np.ndarray  # int32 (filters, size + 1, size, MAX_TAPS)


@functools.lru_cache(maxsize=16)
def resample_table(size: int) -> ResampleTable:
    n_filters = len(RESCALE_FILTERS)
    bounds = np.zeros((n_filters, size + 1, size, 2), np.int32)
    coefs = np.zeros((n_filters, size + 1, size, MAX_TAPS), np.int32)
    for f, name in enumerate(RESCALE_FILTERS):
        for crop in range(1, size + 1):
            if crop == size:
                # Pillow skips a pass whose size does not change: the identity, one tap each.
                rows = [(x, 1) for x in range(size)], [[1 << RESAMPLE_BITS]] * size
            else:
                rows = _resample_row(crop, size, name)
            for out, ((first, taps), weights) in enumerate(zip(*rows)):
                bounds[f, crop, out] = (first, taps)
                coefs[f, crop, out, :taps] = weights
    bounds.setflags(write=False)
    coefs.setflags(write=False)
    return ResampleTable(bounds, coefs)


def _rotation_matrix(degrees: int, width: int, height: int) -> list[float]:
    # Image.rotate's inverse matrix about the centre, line for line.
    angle = -math.radians(degrees % 360.0)
    matrix = [
        round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
        round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0,
    ]
    cx, cy = width / 2, height / 2
    a, b, c, d, e, f = matrix
    matrix[2], matrix[5] = a * -cx + b * -cy + c, d * -cx + e * -cy + f
    matrix[2] += cx
    matrix[5] += cy
    return matrix


@functools.lru_cache(maxsize=16)
def rotation_table(height: int, width: int) -> np.ndarray:
    """int32 (2 MAX_ROTATION + 1, 7): per whole angle from -MAX_ROTATION, [uses fixed point?, a0..a5
    in 16.16 as affine_fixed sets them]."""
    table = np.zeros((2 * MAX_ROTATION + 1, 7), np.int32)
    for row, degrees in enumerate(range(-MAX_ROTATION, MAX_ROTATION + 1)):
        if degrees == 0:
            continue
        a0, a1, a2, a3, a4, a5 = _rotation_matrix(degrees, width, height)
        table[row] = (1, fix16(a0), fix16(a1), fix16(a2 + a0 * 0.5 + a1 * 0.5),
                      fix16(a3), fix16(a4), fix16(a5 + a3 * 0.5 + a4 * 0.5))
    table.setflags(write=False)
    return table


@dataclass(frozen=True)
class KernelTables:
    rotations: np.ndarray
    rescale_y: ResampleTable
    rescale_x: ResampleTable

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The tables in kernel-argument order (rotations, bounds_y, coef_y, bounds_x, coef_x)."""
        return (self.rotations, self.rescale_y.bounds, self.rescale_y.coefs, self.rescale_x.bounds,
                self.rescale_x.coefs)


def kernel_tables(height: int, width: int) -> KernelTables:
    return KernelTables(rotation_table(height, width), resample_table(height), resample_table(width))


@functools.lru_cache(maxsize=None)
def level_form_table(semantics: str) -> np.ndarray:
    """int32 (NUM_OPS, LEVELS_PER_OP): each level's form bits (pixel_math.FORM_*) under ``semantics``,
    read from the op records; the kernels pick a level mapping's form from it."""
    check_semantics(semantics)
    table = np.zeros((len(OPS), LEVELS_PER_OP), np.int32)
    for op_id, op in enumerate(OPS):
        for a, level in enumerate(op.levels_for(semantics)):
            table[op_id, a] = (FORM_PER_SIZE if level.per_size else 0) | (FORM_EVEN if level.even else 0)
    table.setflags(write=False)
    return table
