"""The CPU kernels against the PIL reference (remixmatch.kernels.pil_reference): bit for bit.

Every op is checked on every test image (real CIFAR-10 photos, synthetic edge cases, a non-square
and an odd-sized image, tiny images for the filters' border rules) at the five quarter levels, the
bin centres and edges, a seeded random set, and the values where an op's integer parameter changes
(each with its float32 neighbours). Chains of 2-4 ops, the appended cutout and the fused weak
augmentation are checked against the reference and against the kernel applied one step at a time.

All comparisons are exact: the kernels follow Pillow's arithmetic step by step, so no tolerance is
needed for any op.
"""

from __future__ import annotations

import numpy as np
import pytest

from remixmatch.kernels import apply_ops, weak_augment
from remixmatch.kernels import pil_reference as ref
from remixmatch.kernels.ops import MAX_DEPTH, NUM_OPS, OP_ID, OP_NAMES, RESCALE_FILTERS

try:
    from kernel_images import cifar_images, group
except ImportError:  # tests imported as a package
    from tests.kernel_images import cifar_images, group

GROUPS = ("32x32", "24x40", "37x29", "96x96", "5x5", "4x4", "3x3", "2x2")
# Views per kernel call and comparison: bounds the memory of the biggest level sweeps.
CHUNK = 4096

F32 = np.float32
ONE_BELOW = float(np.nextafter(F32(1.0), F32(0.0)))


def _around(candidates) -> set[float]:
    """Each candidate as float32 and its two float32 neighbours, those in [0, 1]."""
    out: set[float] = set()
    for c in candidates:
        c32 = F32(c)
        for v in (np.nextafter(c32, F32(-1.0)), c32, np.nextafter(c32, F32(2.0))):
            if 0.0 <= v <= 1.0:
                out.add(float(v))
    return out


def _base_levels() -> set[float]:
    levels = {0.0, 0.25, 0.5, 0.75, 1.0}
    levels |= {float(F32((k + 0.5) / 17)) for k in range(17)}  # bin centres
    levels |= _around(k / 17 for k in range(18))  # bin edges
    levels |= _around((0.0, 0.5, 1.0))  # 0.5 +- 1 ulp, 1 - ulp, the smallest levels
    levels |= {float(v) for v in np.random.default_rng(1234).random(24, dtype=F32)}
    return levels


BASE_LEVELS = frozenset(_base_levels())


def op_levels(name: str, height: int, width: int) -> list[float]:
    """The base levels plus where the op's integer parameter changes, for an image of this size."""
    levels = set(BASE_LEVELS)
    if name == "posterize":
        levels |= _around(k / 7.999 for k in range(9))
    elif name == "solarize":
        levels |= _around(t / 255.999 for t in range(257))
    elif name in ("brightness", "color", "contrast", "sharpness"):
        levels |= _around([0.9 / 1.9])  # factor 1
    elif name == "cutout":
        levels |= _around(k / (min(height, width) * 0.499) for k in range(min(height, width)))
    elif name in ("rotate", "shear_x", "shear_y"):
        levels |= _around(j / 180 for j in range(181))  # every angle and every half-degree tie
    elif name in ("translate_x", "translate_y"):
        size = width if name == "translate_x" else height
        # Whole and half pixel offsets (2v - 1) * 0.3 * size = k / 2.
        span = int(0.6 * size) + 1
        levels |= _around((k / (0.6 * size) + 1) / 2 for k in range(-span, span + 1))
    elif name == "rescale":
        for size in {height, width}:
            # round(v * 0.25 * size) and round(size * (1 - v * 0.25)) change at half pixels.
            levels |= _around(4 * (k + 0.5) / size for k in range(size))
    return sorted(v for v in levels if 0.0 <= v <= 1.0)


def filter_levels() -> list[float]:
    """rescale's second level: the centre of each filter's range and the edges int(v * 5.99) = f."""
    n = len(RESCALE_FILTERS)
    levels = {float(F32((f + 0.5) / n)) for f in range(n)} | _around(f / 5.99 for f in range(1, n)) | {0.0, 1.0}
    return sorted(levels)


def _describe(g, op_ids, levels, rand, sources, cutout_level=None):
    def describe(n: int) -> str:
        ops = [OP_NAMES[o] for o in op_ids[n]]
        extra = "" if cutout_level is None else f" cutout_level={cutout_level}"
        return (f"[{g.name}] image {g.labels[sources[n]]!r} ops={ops} levels={levels[n].tolist()} "
                f"rand={rand[n].tolist()}{extra}")

    return describe


def _assert_views_equal(got: np.ndarray, want: np.ndarray, describe, what: str, offset: int = 0) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == np.uint8, (got.shape, got.dtype, want.shape)
    bad = np.flatnonzero((got != want).reshape(len(got), -1).any(axis=1))
    if bad.size:
        lines = []
        for n in bad[:8]:
            diff = np.abs(got[n].astype(np.int16) - want[n].astype(np.int16))
            lines.append(f"  view {offset + n}: {describe(offset + n)}: {np.count_nonzero(diff)} of {diff.size} "
                         f"values differ, max |diff| {diff.max()}")
        pytest.fail(f"{bad.size} of {len(got)} views differ from {what}\n" + "\n".join(lines))


def _check_against_reference(g, images, op_ids, levels, rand, sources, cutout_level=None) -> None:
    describe = _describe(g, op_ids, levels, rand, sources, cutout_level)
    for start in range(0, len(op_ids), CHUNK):
        sl = slice(start, start + CHUNK)
        got = apply_ops(images, op_ids[sl], levels[sl], rand[sl], cutout_level=cutout_level, sources=sources[sl])
        want = ref.apply_ops_batch(images, op_ids[sl], levels[sl], rand[sl], cutout_level=cutout_level,
                                   sources=sources[sl])
        _assert_views_equal(got, want, describe, "the PIL reference", start)


def _single_op_views(n_images: int, op: int, pairs, rands_per_view, seed: int):
    """Every (image, level pair) for one op; rands_per_view(b, p) -> list of (u0, u1) for that view."""
    rng = np.random.default_rng(seed)
    sources, levels, rand = [], [], []
    for b in range(n_images):
        for p, pair in enumerate(pairs):
            for u in rands_per_view(b, p):
                sources.append(b)
                levels.append([pair])
                rand.append([u, rng.random(2)])
    n = len(sources)
    return (np.full((n, 1), op, np.int32), np.asarray(levels, F32), np.asarray(rand, F32),
            np.asarray(sources, np.int32))


def _images(g) -> np.ndarray:
    # A writable copy: the kernels get an ordinary array, and the test can check the input is intact.
    return g.images.copy()


def test_real_photos_are_part_of_the_test_set():
    photos = cifar_images()
    if photos is None:
        pytest.skip("shared/data/cifar10-jpg.tar.gz is not there: the parity tests run on synthetic images only")
    labels, images = photos
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert len({label.rsplit("/", 2)[-2] for label in labels}) == 10  # two photos of each class
    assert set(labels) <= set(group("32x32").labels)


# ---------------------------------------------------------------------------------------------
# One op at a time.


@pytest.mark.parametrize("group_name", GROUPS)
@pytest.mark.parametrize("op_name", [name for name in OP_NAMES if name not in ("cutout", "rescale")])
def test_single_op_matches_pil(op_name, group_name):
    g = group(group_name)
    height, width = g.shape
    op = OP_ID[op_name]
    pairs = [(v, 0.5) for v in op_levels(op_name, height, width)]
    rng = np.random.default_rng(op)
    op_ids, levels, rand, sources = _single_op_views(len(g.images), op, pairs, lambda b, p: [rng.random(2)], op)
    images = _images(g)
    _check_against_reference(g, images, op_ids, levels, rand, sources)
    np.testing.assert_array_equal(images, g.images)


def rescale_views(g, margins, more_margins):
    """rescale views of every image of g: each margin level at each filter's centre level, and
    more_margins at every filter level's edges."""
    centres = [float(F32((f + 0.5) / len(RESCALE_FILTERS))) for f in range(len(RESCALE_FILTERS))]
    pairs = [(v0, v1) for v0 in margins for v1 in centres]
    pairs += [(v0, v1) for v0 in more_margins for v1 in filter_levels() if v1 not in centres]
    rng = np.random.default_rng(7)
    return _single_op_views(len(g.images), OP_ID["rescale"], pairs, lambda b, p: [rng.random(2)], 7)


def cutout_views(g, sides):
    """cutout views of every image of g at each side level, the square's corner at the image's
    corners, its centre and where int(u * size) changes, plus random places."""
    height, width = g.shape
    pairs = [(v, 0.5) for v in sides]
    edges = sorted(u for u in _around(k / s for s in {height, width} for k in range(0, s + 1, max(1, s // 6)))
                   if u < 1.0)
    fixed = [(0.0, 0.0), (ONE_BELOW, ONE_BELOW), (0.0, ONE_BELOW), (ONE_BELOW, 0.0), (0.5, 0.5)]
    fixed += [(u, edges[-1 - i]) for i, u in enumerate(edges)]
    rng = np.random.default_rng(11)

    def rands(b, p):
        k = b * len(pairs) + p
        return [fixed[k % len(fixed)], fixed[(3 * k + 1) % len(fixed)], rng.random(2)]

    return _single_op_views(len(g.images), OP_ID["cutout"], pairs, rands, 11)


@pytest.mark.parametrize("group_name", GROUPS)
def test_rescale_matches_pil_for_every_filter(group_name):
    g = group(group_name)
    views = rescale_views(g, op_levels("rescale", *g.shape), (0.0, 0.3, 0.5, 0.77, 1.0))
    _check_against_reference(g, _images(g), *views)


@pytest.mark.parametrize("group_name", GROUPS)
def test_cutout_matches_pil_for_varied_positions(group_name):
    g = group(group_name)
    _check_against_reference(g, _images(g), *cutout_views(g, op_levels("cutout", *g.shape)))


# ---------------------------------------------------------------------------------------------
# Policies: chains, the appended cutout, the fused weak augmentation.


def _random_policies(n_views: int, n_images: int, depth: int, seed: int):
    rng = np.random.default_rng(seed)
    # Every op at every position, in a shuffled order, then uniform.
    op_ids = rng.integers(0, NUM_OPS, (n_views, depth)).astype(np.int32)
    for d in range(depth):
        k = min(n_views, NUM_OPS)
        op_ids[:k, d] = rng.permutation(NUM_OPS)[:k]
    levels = rng.random((n_views, depth, 2), dtype=F32)
    # A third of the levels from the base set (quarters, bin edges and centres, 0.5 +- ulp, 1).
    base = np.array(sorted(BASE_LEVELS), F32)
    pick = rng.random((n_views, depth, 2)) < 0.33
    levels[pick] = rng.choice(base, int(pick.sum()))
    rand = rng.random((n_views, depth + 1, 2), dtype=F32)
    sources = rng.integers(0, n_images, n_views).astype(np.int32)
    return op_ids, levels, rand, sources


def _kernel_one_step_at_a_time(images, op_ids, levels, rand, sources, cutout_level=None, flips=None,
                               offsets=None, pad=4):
    depth = op_ids.shape[1]
    if flips is not None:
        current = weak_augment(images, flips, offsets, sources=sources, pad=pad)
    else:
        current = np.ascontiguousarray(images[sources])
    for d in range(depth):
        current = apply_ops(current, np.ascontiguousarray(op_ids[:, d : d + 1]),
                            np.ascontiguousarray(levels[:, d : d + 1]), np.ascontiguousarray(rand[:, [d, depth]]))
    if cutout_level is not None:
        n = len(op_ids)
        cut_ids = np.full((n, 1), OP_ID["cutout"], np.int32)
        cut_levels = np.zeros((n, 1, 2), F32)
        cut_levels[:, 0, 0] = cutout_level
        current = apply_ops(current, cut_ids, cut_levels, np.ascontiguousarray(rand[:, [depth, 0]]))
    return current


CHAIN_VIEWS = {"32x32": 480, "24x40": 160, "37x29": 160, "96x96": 40, "5x5": 80, "2x2": 40}


@pytest.mark.parametrize("group_name", list(CHAIN_VIEWS))
@pytest.mark.parametrize("depth", [2, 3, MAX_DEPTH])
def test_chain_matches_reference_and_single_steps(depth, group_name):
    g = group(group_name)
    images = _images(g)
    op_ids, levels, rand, sources = _random_policies(CHAIN_VIEWS[group_name], len(images), depth, 100 + depth)
    describe = _describe(g, op_ids, levels, rand, sources)
    got = apply_ops(images, op_ids, levels, rand, sources=sources)
    want = ref.apply_ops_batch(images, op_ids, levels, rand, sources=sources)
    _assert_views_equal(got, want, describe, "the PIL reference chain")
    steps = _kernel_one_step_at_a_time(images, op_ids, levels, rand, sources)
    _assert_views_equal(got, steps, describe, "the kernel applied one op at a time")
    np.testing.assert_array_equal(images, g.images)


@pytest.mark.parametrize("cutout_level", [0.0, 0.25, float(F32(0.37)), 0.5, 1.0])
@pytest.mark.parametrize("group_name", ["32x32", "37x29"])
def test_appended_cutout(cutout_level, group_name):
    g = group(group_name)
    images = _images(g)
    depth = 2
    op_ids, levels, rand, sources = _random_policies(160, len(images), depth, 200)
    rand[:8, depth] = [(0.0, 0.0), (ONE_BELOW, ONE_BELOW), (0.0, ONE_BELOW), (ONE_BELOW, 0.0)] * 2
    describe = _describe(g, op_ids, levels, rand, sources, cutout_level)
    got = apply_ops(images, op_ids, levels, rand, cutout_level=cutout_level, sources=sources)
    want = ref.apply_ops_batch(images, op_ids, levels, rand, cutout_level=cutout_level, sources=sources)
    _assert_views_equal(got, want, describe, "the PIL reference with the appended cutout")
    steps = _kernel_one_step_at_a_time(images, op_ids, levels, rand, sources, cutout_level)
    _assert_views_equal(got, steps, describe, "the kernel's ops then a separate cutout op")


def _weak_params(n_views: int, pad: int, seed: int):
    rng = np.random.default_rng(seed)
    flips = rng.integers(0, 2, n_views).astype(np.int32)
    offsets = rng.integers(0, 2 * pad + 1, (n_views, 2)).astype(np.int32)
    extremes = [(0, 0), (2 * pad, 2 * pad), (0, 2 * pad), (2 * pad, 0), (pad, pad)]
    offsets[: len(extremes)] = extremes
    return flips, offsets


@pytest.mark.parametrize("cutout_level", [None, 0.5])
@pytest.mark.parametrize(("group_name", "pad"), [("32x32", 4), ("32x32", 2), ("24x40", 4), ("37x29", 3)])
def test_fused_weak_then_ops(group_name, pad, cutout_level):
    g = group(group_name)
    images = _images(g)
    depth = 2
    op_ids, levels, rand, sources = _random_policies(240, len(images), depth, 300 + pad)
    flips, offsets = _weak_params(len(op_ids), pad, 300 + pad)
    describe = _describe(g, op_ids, levels, rand, sources, cutout_level)
    fused = apply_ops(images, op_ids, levels, rand, cutout_level=cutout_level, sources=sources, flips=flips,
                      offsets=offsets, pad=pad)
    weak = weak_augment(images, flips, offsets, sources=sources, pad=pad)
    separate = apply_ops(weak, op_ids, levels, rand, cutout_level=cutout_level)
    _assert_views_equal(fused, separate, describe, "weak_augment then apply_ops")
    want = ref.apply_ops_batch(images, op_ids, levels, rand, cutout_level=cutout_level, sources=sources,
                               flips=flips, offsets=offsets, pad=pad)
    _assert_views_equal(fused, want, describe, "the reference weak augmentation then the PIL ops")
    steps = _kernel_one_step_at_a_time(images, op_ids, levels, rand, sources, cutout_level, flips, offsets, pad)
    _assert_views_equal(fused, steps, describe, "the kernel applied one step at a time")
    np.testing.assert_array_equal(images, g.images)


# ---------------------------------------------------------------------------------------------
# Weak augmentation alone.


@pytest.mark.parametrize("group_name", GROUPS)
def test_weak_augment_matches_numpy_reference(group_name):
    g = group(group_name)
    images = _images(g)
    height, width = g.shape
    # One reflection covers the pad when it is below the image size.
    for pad in sorted({0, 1, min(4, height - 1, width - 1), min(2, height - 1, width - 1)}):
        combos = [(f, oy, ox) for f in (0, 1) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)]
        n_images = len(images)
        sources = np.repeat(np.arange(n_images, dtype=np.int32), len(combos))
        flips = np.array([c[0] for c in combos] * n_images, np.int32)
        offsets = np.array([c[1:] for c in combos] * n_images, np.int32)
        got = weak_augment(images, flips, offsets, sources=sources, pad=pad)
        want = np.stack([ref.weak_augment(images[s], f, oy, ox, pad)
                         for s, f, (oy, ox) in zip(sources, flips, offsets)])

        def describe(n, pad=pad):
            return (f"[{g.name}] image {g.labels[sources[n]]!r} pad={pad} flip={flips[n]} "
                    f"offset={offsets[n].tolist()}")

        _assert_views_equal(got, want, describe, "the numpy weak augmentation")
    np.testing.assert_array_equal(images, g.images)


def test_weak_augment_without_sources_and_into_out():
    g = group("32x32")
    images = _images(g)
    n = len(images)
    flips, offsets = _weak_params(n, 4, 5)
    out = np.empty_like(images)
    result = weak_augment(images, flips, offsets, out=out)
    assert result is out
    want = np.stack([ref.weak_augment(images[i], flips[i], *offsets[i]) for i in range(n)])
    np.testing.assert_array_equal(out, want)


def test_apply_ops_into_out_without_sources():
    g = group("32x32")
    images = _images(g)
    op_ids, levels, rand, _ = _random_policies(len(images), len(images), 2, 9)
    out = np.empty_like(images)
    result = apply_ops(images, op_ids, levels, rand, out=out)
    assert result is out
    np.testing.assert_array_equal(out, ref.apply_ops_batch(images, op_ids, levels, rand))

