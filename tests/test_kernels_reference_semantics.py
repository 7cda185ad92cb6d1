"""The reference semantics (``semantics="reference"``): the published code's translate, rescale and
cutout, CPU kernel against the PIL reference under the same switch, bit for bit.

The levels are those of the corrected parity tests (quarters, bin centres and edges, random ones,
where the corrected parameter changes) plus where the reference's own parameters change: the cutout
side (its even part changes where the side does), the sign of the translate offset, every filter of
rescale. Chains, the appended cutout and the fused weak augmentation are checked too, and every op
without a reference mapping is checked to be unchanged by the switch.
"""

from __future__ import annotations

import numpy as np
import pytest

from remixmatch.kernels import AugmentInputError, apply_ops
from remixmatch.kernels import pil_reference as ref
from remixmatch.kernels import pixel_math
from remixmatch.kernels.ops import NUM_OPS, OP_ID, OPS
from remixmatch.kernels.tables import level_form_table

try:
    from kernel_images import group
    from test_kernels_parity import (
        BASE_LEVELS, F32, _around, _assert_views_equal, _describe, _images, _random_policies,
        _single_op_views, _weak_params, cutout_views, op_levels, rescale_views,
    )
except ImportError:  # tests imported as a package
    from tests.kernel_images import group
    from tests.test_kernels_parity import (
        BASE_LEVELS, F32, _around, _assert_views_equal, _describe, _images, _random_policies,
        _single_op_views, _weak_params, cutout_views, op_levels, rescale_views,
    )

REFERENCE = "reference"
CHANGED = ("cutout", "rescale", "translate_x", "translate_y")
# Fewer sizes than the corrected sweep: 32x32 (CIFAR and edge cases), non-square, odd, tiny.
SIZES = ("32x32", "24x40", "37x29", "5x5", "2x2")


def _check(g, images, op_ids, levels, rand, sources, cutout_level=None, **weak):
    describe = _describe(g, op_ids, levels, rand, sources, cutout_level)
    got = apply_ops(images, op_ids, levels, rand, cutout_level=cutout_level, sources=sources,
                    semantics=REFERENCE, **weak)
    want = ref.apply_ops_batch(images, op_ids, levels, rand, cutout_level=cutout_level, sources=sources,
                               semantics=REFERENCE, **weak)
    _assert_views_equal(got, want, describe, "the PIL reference under reference semantics")
    return got


def _reference_levels(name: str, height: int, width: int) -> list[float]:
    levels = set(op_levels(name, height, width))
    if name.startswith("translate"):
        levels |= _around([0.5])  # the offset's sign
    return sorted(levels)


def test_records_declare_the_reference_mappings_the_kernels_read():
    # The kernels read the corrected constants and take only the form bits from the table, so a
    # reference level may differ from its corrected one in per_size and even alone.
    assert {op.name for op in OPS if op.reference_args is not None} == set(CHANGED)
    for op in OPS:
        if op.reference_args is None:
            continue
        assert len(op.reference_args) == len(op.args), op.name
        for ours, theirs in zip(op.args, op.reference_args):
            assert (ours.bins, ours.param, ours.scale, ours.offset, ours.centred, ours.rounding) == (
                theirs.bins, theirs.param, theirs.scale, theirs.offset, theirs.centred, theirs.rounding), op.name
    corrected, reference = level_form_table("corrected"), level_form_table(REFERENCE)
    differs = {OPS[i].name for i in np.flatnonzero((corrected != reference).any(axis=1))}
    assert differs == set(CHANGED)
    assert reference[OP_ID["cutout"], 0] == pixel_math.FORM_PER_SIZE | pixel_math.FORM_EVEN
    assert reference[OP_ID["translate_x"], 0] == 0 and corrected[OP_ID["translate_x"], 0] == pixel_math.FORM_PER_SIZE


def test_reference_mappings_in_numbers():
    # translate: at most 0.3 px; rescale: the box (0.25, 0.25, 31.75, 31.75) rounds to the image;
    # cutout: side 1 fills nothing, side 15 fills 14.
    assert pixel_math.translate_offset(1.0, 32, per_size=False) == pytest.approx(0.3)
    assert (pixel_math.rescale_low(1.0, 32, False), pixel_math.rescale_high(1.0, 32, False)) == (0, 32)
    assert pixel_math.cutout_side(0.0, 32, 32, even=True) == 0
    assert pixel_math.cutout_side(0.9, 32, 32, even=True) == 14
    zeros = np.zeros((32, 32, 3), np.uint8)
    assert not ref.apply_op(zeros, "cutout", (0.0,), (0.5, 0.5), semantics=REFERENCE).any()
    mask = ref.apply_op(zeros, "cutout", (0.9,), (0.5, 0.5), semantics=REFERENCE).any(axis=2)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (16 - 7, 16 + 7, 16 - 7, 16 + 7)


def test_unknown_semantics_is_refused():
    images = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(AugmentInputError, match="semantics"):
        apply_ops(images, np.zeros((1, 1), np.int32), np.zeros((1, 1, 2), F32), np.zeros((1, 2, 2), F32),
                  semantics="paper")
    with pytest.raises(ValueError, match="semantics"):
        ref.apply_op(images[0], "cutout", semantics="paper")


@pytest.mark.parametrize("group_name", SIZES)
@pytest.mark.parametrize("op_name", ["translate_x", "translate_y"])
def test_translate_matches_pil(op_name, group_name):
    g = group(group_name)
    height, width = g.shape
    op = OP_ID[op_name]
    pairs = [(v, 0.5) for v in _reference_levels(op_name, height, width)]
    rng = np.random.default_rng(op)
    op_ids, levels, rand, sources = _single_op_views(len(g.images), op, pairs, lambda b, p: [rng.random(2)], op)
    _check(g, _images(g), op_ids, levels, rand, sources)


@pytest.mark.parametrize("group_name", SIZES)
def test_rescale_matches_pil_for_every_filter(group_name):
    g = group(group_name)
    _check(g, _images(g), *rescale_views(g, _reference_levels("rescale", *g.shape), (0.0, 0.5, 1.0)))


@pytest.mark.parametrize("group_name", SIZES)
def test_cutout_matches_pil_for_varied_positions(group_name):
    g = group(group_name)
    _check(g, _images(g), *cutout_views(g, _reference_levels("cutout", *g.shape)))


@pytest.mark.parametrize("cutout_level", [None, 0.0, 0.5])
@pytest.mark.parametrize("group_name", ["32x32", "37x29"])
def test_chains_with_weak_augmentation_match_pil(group_name, cutout_level):
    g = group(group_name)
    images = _images(g)
    op_ids, levels, rand, sources = _random_policies(300, len(images), 3, 41)
    # Every chain holds at least one of the ops whose mapping differs.
    op_ids[:, 1] = np.array([OP_ID[name] for name in CHANGED], np.int32)[np.arange(len(op_ids)) % len(CHANGED)]
    flips, offsets = _weak_params(len(op_ids), 4, 41)
    _check(g, images, op_ids, levels, rand, sources, cutout_level, flips=flips, offsets=offsets, pad=4)
    np.testing.assert_array_equal(images, g.images)


def test_other_ops_ignore_the_switch():
    g = group("32x32")
    images = _images(g)
    others = np.array([i for i in range(NUM_OPS) if OPS[i].reference_args is None], np.int32)
    rng = np.random.default_rng(5)
    op_ids = others[rng.integers(0, len(others), (400, 2))]
    levels = rng.random((400, 2, 2), dtype=F32)
    levels[:40] = rng.choice(np.array(sorted(BASE_LEVELS), F32), (40, 2, 2))
    rand = rng.random((400, 3, 2), dtype=F32)
    sources = rng.integers(0, len(images), 400).astype(np.int32)
    corrected = apply_ops(images, op_ids, levels, rand, sources=sources)
    reference = apply_ops(images, op_ids, levels, rand, sources=sources, semantics=REFERENCE)
    np.testing.assert_array_equal(corrected, reference)
