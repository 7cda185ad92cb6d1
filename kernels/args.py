"""The arguments of one kernel call, built in one place for every backend.

Numba kernels take positional arrays and scalars, not Python objects, so each bundle's fields are the
kernel's parameters in order (tests/test_kernels_registry.py holds every kernel to it) and a backend
unpacks a bundle once, into its launch. The two optional parts of a view are flags, not sentinels:
``weak`` says whether flips/offsets are read, ``cutout`` whether the appended cutout at
``cutout_level`` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

# An unused flips/offsets pair (weak = False): the kernels never read it, but typed arrays must be passed.
_NO_FLIPS = np.zeros(0, np.int32)
_NO_OFFSETS = np.zeros((0, 2), np.int32)


class ApplyArgs(NamedTuple):
    """apply_ops's kernel arguments: images and out flattened to (count, H*W*3)."""

    images: Any
    sources: Any
    weak: bool
    flips: Any
    offsets: Any
    pad: np.int32
    op_ids: Any
    levels: Any
    rand: Any
    forms: Any  # (NUM_OPS, LEVELS_PER_OP) int32: tables.level_form_table of the semantics
    cutout: bool
    cutout_level: np.float64
    height: np.int32
    width: np.int32
    out: Any
    rotations: Any
    bounds_y: Any
    coef_y: Any
    bounds_x: Any
    coef_x: Any


class WeakArgs(NamedTuple):
    """weak_augment's kernel arguments."""

    images: Any
    sources: Any
    flips: Any
    offsets: Any
    pad: np.int32
    height: np.int32
    width: np.int32
    out: Any


def _flat(array, height, width):
    return array.reshape(array.shape[0], height * width * 3)


def _view_arrays(sources, flips, offsets, n_views, place):
    """sources, flips, offsets as the backend's arrays, defaults filled in (flips None: no weak step)."""
    if sources is None:
        sources = np.arange(n_views, dtype=np.int32)
    if flips is None:
        flips, offsets = _NO_FLIPS, _NO_OFFSETS
    return place(sources), place(flips), place(offsets)


def apply_args(images, op_ids, levels, rand, forms, cutout_level, sources, flips, offsets, pad, out,
               tables, place: Callable) -> ApplyArgs:
    """``place`` turns an array into the backend's (host values or a device view); ``forms``,
    ``out`` and the five ``tables`` (rotations, bounds_y, coef_y, bounds_x, coef_x) are already the
    backend's."""
    n_views, height, width = out.shape[0], out.shape[1], out.shape[2]
    weak = flips is not None
    sources, flips, offsets = _view_arrays(sources, flips, offsets, n_views, place)
    return ApplyArgs(
        _flat(place(images), height, width), sources, weak, flips, offsets,
        np.int32(pad), place(op_ids), place(levels), place(rand), forms, cutout_level is not None,
        np.float64(0.0 if cutout_level is None else cutout_level), np.int32(height), np.int32(width),
        _flat(out, height, width), *tables)


def weak_args(images, flips, offsets, sources, pad, out, place: Callable) -> WeakArgs:
    n_views, height, width = out.shape[0], out.shape[1], out.shape[2]
    sources, flips, offsets = _view_arrays(sources, flips, offsets, n_views, place)
    return WeakArgs(_flat(place(images), height, width), sources, flips, offsets, np.int32(pad),
                    np.int32(height), np.int32(width), _flat(out, height, width))
