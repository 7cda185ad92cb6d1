"""The PIL reference itself: level mappings, the three fixed defects, batching, validation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from remixmatch.kernels import pil_reference as ref
from remixmatch.kernels import pixel_math
from remixmatch.kernels.ops import NUM_OPS, OP_ID, OP_NAMES, RESCALE_FILTERS

F32 = np.float32


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _op(name: str) -> int:
    return OP_ID[name]


def test_registry_order_matches_ops():
    assert len(ref.PIL_OPS) == NUM_OPS
    for op_id, fn in enumerate(ref.PIL_OPS):
        assert fn.__name__ == "_" + OP_NAMES[op_id]


def test_identity_returns_an_equal_copy(photo):
    out = ref.apply_op(photo, "identity", (0.3, 0.7))
    np.testing.assert_array_equal(out, photo)
    assert out is not photo and not np.shares_memory(out, photo)


@pytest.mark.parametrize("name", ["autocontrast", "blur", "equalize", "invert", "smooth"])
def test_blend_ops_are_identity_at_zero_and_full_at_one(photo, name):
    np.testing.assert_array_equal(ref.apply_op(photo, name, (0.0,)), photo)
    x = Image.fromarray(photo)
    full = {
        "autocontrast": ImageOps.autocontrast(x),
        "equalize": ImageOps.equalize(x),
        "invert": ImageOps.invert(x),
        "blur": x.filter(ImageFilter.BLUR),
        "smooth": x.filter(ImageFilter.SMOOTH),
    }[name]
    np.testing.assert_array_equal(ref.apply_op(photo, name, (1.0,)), np.asarray(full))


def test_invert_at_one(photo):
    np.testing.assert_array_equal(ref.apply_op(photo, "invert", (1.0,)), 255 - photo)


def test_enhance_factor_range(photo):
    assert pixel_math.enhance_factor(0.0) == F32(0.1)
    assert pixel_math.enhance_factor(1.0) == F32(2.0)
    # brightness at v = 0 scales by 0.1 (truncated), as ImageEnhance does.
    out = ref.apply_op(photo, "brightness", (0.0,))
    want = ImageEnhance.Brightness(Image.fromarray(photo)).enhance(float(F32(0.1)))
    np.testing.assert_array_equal(out, np.asarray(want))
    assert out.max() <= 26


def test_posterize_and_solarize_levels(photo):
    np.testing.assert_array_equal(ref.apply_op(photo, "posterize", (1.0,)), photo)  # 8 bits
    assert set(np.unique(ref.apply_op(photo, "posterize", (0.0,)))) <= {0, 128}  # 1 bit
    np.testing.assert_array_equal(ref.apply_op(photo, "solarize", (0.0,)), 255 - photo)  # threshold 0
    high = ref.apply_op(photo, "solarize", (1.0,))  # threshold 255: only 255 flips
    np.testing.assert_array_equal(high, np.where(photo == 255, 0, photo))


def test_geometric_ops_are_identity_at_the_middle(photo):
    for name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        np.testing.assert_array_equal(ref.apply_op(photo, name, (0.5,)), photo, err_msg=name)


def test_rotate_range():
    assert pixel_math.rotate_degrees(0.0) == -45
    assert pixel_math.rotate_degrees(1.0) == 45
    assert pixel_math.rotate_degrees(0.5) == 0
    x = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ref.apply_op(x, "rotate", (1.0,)), np.asarray(Image.fromarray(x).rotate(45)))


def test_translate_is_a_fraction_of_the_size(photo):
    # Fixed defect: at v = 1 the offset is 0.3 * 32 = 9.6 px (nearest: source x + 10), not 0.3 px.
    assert pixel_math.translate_offset(1.0, 32, True) == pytest.approx(9.6)
    right = ref.apply_op(photo, "translate_x", (1.0,))
    np.testing.assert_array_equal(right[:, :22], photo[:, 10:])
    assert not right[:, 22:].any()
    down = ref.apply_op(photo, "translate_y", (0.0,))  # -9.6 px: source y - 10 (y + 0.5 - 9.6, floored)
    np.testing.assert_array_equal(down[10:], photo[:22])
    assert not down[:10].any()
    # Non-square: translate_x follows the width, translate_y the height.
    wide = np.random.default_rng(2).integers(1, 256, (20, 40, 3), dtype=np.uint8)
    assert np.count_nonzero(ref.apply_op(wide, "translate_x", (1.0,)).any(axis=2).all(axis=0)) == 40 - 12
    assert np.count_nonzero(ref.apply_op(wide, "translate_y", (1.0,)).any(axis=2).all(axis=1)) == 20 - 6


def test_cutout_square_is_exactly_side_wide():
    zeros = np.zeros((32, 32, 3), np.uint8)
    # Fixed defect: side 1 (v = 0) covers one pixel; the reference's 2 * (side // 2) covered none.
    assert pixel_math.cutout_side(0.0, 32, 32, False) == 1
    one = ref.apply_op(zeros, "cutout", (0.0,), (0.5, 0.25))
    assert np.argwhere(one.any(axis=2)).tolist() == [[16, 8]]
    assert pixel_math.cutout_side(1.0, 32, 32, False) == 16
    full = ref.apply_op(zeros, "cutout", (1.0,), (0.5, 0.5))
    mask = full.any(axis=2)
    assert mask.sum() == 16 * 16 and mask[8:24, 8:24].all()
    assert (full[mask] == 127).all()
    # An odd side centred: rows [cy - side // 2, cy - side // 2 + side).
    v = 0.9
    side = pixel_math.cutout_side(v, 32, 32, False)
    assert side == 15
    odd = ref.apply_op(zeros, "cutout", (v,), (0.5, 0.5)).any(axis=2)
    rows = np.flatnonzero(odd.any(axis=1))
    assert rows[0] == 16 - side // 2 and len(rows) == side


def test_cutout_is_clipped_at_the_border():
    zeros = np.zeros((32, 32, 3), np.uint8)
    corner = ref.apply_op(zeros, "cutout", (1.0,), (0.0, 0.0)).any(axis=2)
    assert corner.sum() == 8 * 8 and corner[:8, :8].all()
    last = float(np.nextafter(F32(1.0), F32(0.0)))
    far = ref.apply_op(zeros, "cutout", (1.0,), (last, last)).any(axis=2)  # centre 31: rows 23..31
    assert far.sum() == 9 * 9 and far[23:, 23:].all()


def test_rescale_margin_is_a_fraction_of_the_size(photo):
    # Fixed defect: at v = 1 the crop is 0.25 of the size on each side: (8, 8, 24, 24) at 32x32.
    assert (pixel_math.rescale_low(1.0, 32, True), pixel_math.rescale_high(1.0, 32, True)) == (8, 24)
    nearest = float(F32(1.0))  # int(1.0 * 5.99) = 5: nearest
    assert RESCALE_FILTERS[pixel_math.rescale_filter(nearest)] == "nearest"
    out = ref.apply_op(photo, "rescale", (1.0, nearest))
    np.testing.assert_array_equal(out, photo[8:24, 8:24].repeat(2, axis=0).repeat(2, axis=1))
    for f in range(len(RESCALE_FILTERS)):
        np.testing.assert_array_equal(ref.apply_op(photo, "rescale", (0.0, (f + 0.5) / 6)), photo)


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (37, 29), (4, 4)])
def test_rescale_integer_box_equals_pils_rounding_of_the_float_box(size):
    height, width = size
    x = Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8))
    levels = np.concatenate([np.linspace(0, 1, 101, dtype=F32), np.random.default_rng(4).random(50, dtype=F32)])
    for v in levels.tolist():
        s = v * 0.25
        float_box = x.crop((s * width, s * height, width * (1 - s), height * (1 - s)))
        int_box = x.crop((pixel_math.rescale_low(v, width, True), pixel_math.rescale_low(v, height, True),
                          pixel_math.rescale_high(v, width, True), pixel_math.rescale_high(v, height, True)))
        assert float_box.size == int_box.size
        assert float_box.tobytes() == int_box.tobytes(), v


def test_rescale_filters_follow_the_reference_order():
    assert RESCALE_FILTERS == ("lanczos", "bicubic", "bilinear", "box", "hamming", "nearest")
    assert [pixel_math.rescale_filter(v) for v in (0.0, 0.17, 0.34, 0.5, 0.67, 0.84, 1.0)] == [0, 1, 2, 2, 4, 5, 5]


def test_weak_augment():
    x = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ref.weak_augment(x, 0, 4, 4), x)
    np.testing.assert_array_equal(ref.weak_augment(x, 1, 4, 4), x[:, ::-1])
    corner = ref.weak_augment(x, 0, 0, 0)
    np.testing.assert_array_equal(corner[4:, 4:], x[:28, :28])
    np.testing.assert_array_equal(corner[0, 0], x[4, 4])  # reflection: the edge pixel is not repeated
    np.testing.assert_array_equal(corner[3, 4:], x[1, :28])
    far = ref.weak_augment(x, 1, 8, 8)
    np.testing.assert_array_equal(far[:28, :28], x[4:, ::-1][:, 4:])
    assert ref.weak_augment(x, 0, 0, 0, pad=0).tobytes() == x.tobytes()


def test_apply_ops_chains_and_appends_cutout(photo):
    op_ids = np.array([_op("rotate"), _op("color"), _op("rescale")], np.int32)
    levels = np.array([[0.8, 0.0], [0.3, 0.0], [0.6, 0.4]], F32)
    rand = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], F32)
    step = photo
    for d in range(3):
        step = ref.apply_op(step, int(op_ids[d]), levels[d], rand[d])
    np.testing.assert_array_equal(ref.apply_ops(photo, op_ids, levels, rand), step)
    cut = ref.apply_op(step, "cutout", (0.5,), rand[3])
    np.testing.assert_array_equal(ref.apply_ops(photo, op_ids, levels, rand, cutout_level=0.5), cut)


def test_batch_matches_single_views_with_sources_and_weak():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    n, depth = 10, 2
    op_ids = rng.integers(0, NUM_OPS, (n, depth)).astype(np.int32)
    levels = rng.random((n, depth, 2), dtype=F32)
    rand = rng.random((n, depth + 1, 2), dtype=F32)
    sources = rng.integers(0, 3, n).astype(np.int32)
    flips = rng.integers(0, 2, n).astype(np.int32)
    offsets = rng.integers(0, 9, (n, 2)).astype(np.int32)
    out = ref.apply_ops_batch(images, op_ids, levels, rand, 0.25, sources, flips=flips, offsets=offsets)
    for i in range(n):
        weak = ref.weak_augment(images[sources[i]], flips[i], offsets[i, 0], offsets[i, 1])
        np.testing.assert_array_equal(out[i], ref.apply_ops(weak, op_ids[i], levels[i], rand[i], 0.25))
    plain = ref.apply_ops_batch(images, op_ids[:3], levels[:3], rand[:3])
    for i in range(3):
        np.testing.assert_array_equal(plain[i], ref.apply_ops(images[i], op_ids[i], levels[i], rand[i]))


def test_levels_are_read_as_given_float32_values(photo):
    # A float32 level just below a boundary must not be rounded up on the way in.
    v = np.nextafter(F32(0.5), F32(0.0))
    assert pixel_math.rotate_degrees(float(v)) == 0
    np.testing.assert_array_equal(
        ref.apply_ops(photo, np.array([_op("rotate")]), np.array([[v, 0]], F32), np.zeros((2, 2), F32)),
        ref.apply_op(photo, "rotate", (float(v),)))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: ref.apply_op(x.astype(np.int16), 0, (0.5,)), "uint8"),
        (lambda x: ref.apply_op(x[..., :2], 0, (0.5,)), r"\(H, W, 3\)"),
        (lambda x: ref.apply_op(x[0], 0, (0.5,)), r"\(H, W, 3\)"),
        (lambda x: ref.apply_op(x, NUM_OPS, (0.5,)), "out of range"),
        (lambda x: ref.apply_op(x, -1, (0.5,)), "out of range"),
        (lambda x: ref.apply_op(x, "sepia", (0.5,)), "unknown op"),
        (lambda x: ref.apply_op(x, 1.0, (0.5,)), "op id"),
        (lambda x: ref.apply_op(x, 0, (1.5,)), r"\[0, 1\]"),
        (lambda x: ref.apply_op(x, 0, (float("nan"),)), r"\[0, 1\]"),
        (lambda x: ref.apply_op(x, 0, (0.5, 0.5, 0.5)), "1 or 2"),
        (lambda x: ref.apply_op(x, 5, (0.5,), (-0.1, 0.5)), "rand"),
        (lambda x: ref.apply_op(x, 5, (0.5,), (0.5, 1.0)), r"rand must lie in \[0, 1\)"),
        (lambda x: ref.apply_ops(x, np.zeros(5, np.int32), np.zeros((5, 2), F32), np.zeros((6, 2), F32)), "depth"),
        (lambda x: ref.apply_ops(x, np.zeros(2, np.int32), np.zeros((2, 1), F32), np.zeros((3, 2), F32)), "levels"),
        (lambda x: ref.apply_ops(x, np.zeros(2, np.int32), np.zeros((2, 2), F32), np.zeros((2, 2), F32)), "rand"),
        (lambda x: ref.apply_ops(x, np.zeros(2, F32), np.zeros((2, 2), F32), np.zeros((3, 2), F32)), "integers"),
        (lambda x: ref.apply_ops(x, np.array([0, 19]), np.zeros((2, 2), F32), np.zeros((3, 2), F32)), "op ids"),
        (lambda x: ref.apply_ops(x, np.zeros(1, np.int32), np.zeros((1, 2), F32), np.zeros((2, 2), F32), 2.0),
         "cutout_level"),
        (lambda x: ref.apply_ops_batch(x, np.zeros((1, 1), np.int32), np.zeros((1, 1, 2), F32),
                                       np.zeros((1, 2, 2), F32)), r"\(B, H, W, 3\)"),
        (lambda x: ref.apply_ops_batch(x[None], np.zeros((2, 1), np.int32), np.zeros((2, 1, 2), F32),
                                       np.zeros((2, 2, 2), F32)), "sources"),
        (lambda x: ref.apply_ops_batch(x[None], np.zeros((1, 1), np.int32), np.zeros((1, 1, 2), F32),
                                       np.zeros((1, 2, 2), F32), sources=[1]), "sources"),
        (lambda x: ref.apply_ops_batch(x[None], np.zeros((1, 1), np.int32), np.zeros((1, 1, 2), F32),
                                       np.zeros((1, 2, 2), F32), flips=[0]), "together"),
        (lambda x: ref.weak_augment(x, 0, 9, 0), "offset_y"),
        (lambda x: ref.weak_augment(x, 0, 0, -1), "offset_x"),
    ],
)
def test_invalid_inputs_raise_value_error(photo, call, message):
    with pytest.raises(ValueError, match=message):
        call(photo)
