"""apply_ops / weak_augment: what they accept, what they refuse (one clear error, never garbage),
and that the same inputs always give the same views."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from remixmatch.kernels import MAX_DEPTH, NUM_OPS, OP_ID, AugmentInputError, apply_ops, weak_augment

N, H, W = 6, 16, 16


def inputs(depth=2, n=N, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    op_ids = rng.integers(0, NUM_OPS, (n, depth)).astype(np.int32)
    levels = rng.random((n, depth, 2), dtype=np.float32)
    rand = rng.random((n, depth + 1, 2), dtype=np.float32)
    return images, op_ids, levels, rand


def refuses(match, *args, **kwargs):
    with pytest.raises(AugmentInputError, match=match) as info:
        apply_ops(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_wrong_image_dtype():
    images, op_ids, levels, rand = inputs()
    refuses("images must be uint8, got float32", images.astype(np.float32), op_ids, levels, rand)


def test_wrong_channel_count_and_layout():
    images, op_ids, levels, rand = inputs()
    refuses("channels last", np.ascontiguousarray(images[..., :1]), op_ids, levels, rand)
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    refuses("channels last", chw, op_ids, levels, rand)


def test_wrong_image_rank():
    images, op_ids, levels, rand = inputs()
    refuses(r"images must have shape \(\?, \?, \?, \?\)", images[0], op_ids, levels, rand)


def test_non_contiguous_arrays():
    images, op_ids, levels, rand = inputs()
    refuses("images must be C-contiguous", images[:, :, ::-1], op_ids, levels, rand)
    refuses("levels must be C-contiguous", images, op_ids, np.asfortranarray(levels), rand)


def test_op_id_out_of_range():
    images, op_ids, levels, rand = inputs()
    op_ids[3, 1] = NUM_OPS
    refuses(r"op_ids\[3, 1\] = 19 is outside \[0, 18\]", images, op_ids, levels, rand)
    op_ids[3, 1] = -1
    refuses("op_ids", images, op_ids, levels, rand)


def test_op_ids_wrong_dtype():
    images, op_ids, levels, rand = inputs()
    refuses("op_ids must be int32, got int64", images, op_ids.astype(np.int64), levels, rand)


@pytest.mark.parametrize("bad", [-0.01, 1.01, np.nan, np.inf])
def test_levels_outside_unit_interval(bad):
    images, op_ids, levels, rand = inputs()
    levels[2, 0, 1] = bad
    refuses(r"levels\[2, 0, 1\]", images, op_ids, levels, rand)


def test_levels_wrong_dtype():
    images, op_ids, levels, rand = inputs()
    refuses("levels must be float32, got float64", images, op_ids, levels.astype(np.float64), rand)


def test_rand_must_be_below_one():
    images, op_ids, levels, rand = inputs()
    rand[0, 0, 0] = 1.0
    refuses(r"rand\[0, 0, 0\] = 1.0 is outside \[0.0, 1.0\)", images, op_ids, levels, rand)


def test_rand_shape_has_a_row_for_the_cutout():
    images, op_ids, levels, rand = inputs()
    refuses(r"rand must have shape \(6, 3, 2\)", images, op_ids, levels, rand[:, :2])


@pytest.mark.parametrize("depth", [0, MAX_DEPTH + 1])
def test_depth_out_of_range(depth):
    images, _, _, _ = inputs()
    op_ids = np.zeros((N, depth), np.int32)
    levels = np.zeros((N, depth, 2), np.float32)
    rand = np.zeros((N, depth + 1, 2), np.float32)
    refuses(f"depth .* must be 1..{MAX_DEPTH}, got {depth}", images, op_ids, levels, rand)


def test_views_without_sources_must_match_images():
    images, op_ids, levels, rand = inputs()
    refuses("need sources", images[:3], op_ids, levels, rand)


def test_sources_out_of_range():
    images, op_ids, levels, rand = inputs()
    sources = np.array([0, 1, 2, 3, 4, 6], np.int32)
    refuses(r"sources\[5\] = 6 is outside \[0, 5\]", images, op_ids, levels, rand, sources=sources)


def test_weak_arguments():
    images, op_ids, levels, rand = inputs()
    flips = np.zeros(N, np.int32)
    offsets = np.zeros((N, 2), np.int32)
    refuses("go together", images, op_ids, levels, rand, flips=flips)
    offsets[1, 0] = 9
    refuses(r"offsets\[1, 0\] = 9 is outside \[0, 8\]", images, op_ids, levels, rand, flips=flips,
            offsets=offsets)
    refuses("pad must be in", images, op_ids, levels, rand, flips=flips, offsets=offsets * 0, pad=16)
    flips[0] = 2
    refuses(r"flips\[0\] = 2", images, op_ids, levels, rand, flips=flips, offsets=offsets * 0)


def test_out_must_match():
    images, op_ids, levels, rand = inputs()
    refuses(r"out must have shape", images, op_ids, levels, rand, out=np.empty((N, H, W + 1, 3), np.uint8))


def test_cutout_level_range():
    images, op_ids, levels, rand = inputs()
    refuses("cutout_level", images, op_ids, levels, rand, cutout_level=1.5)


def test_not_an_array():
    images, op_ids, levels, rand = inputs()
    refuses("expected a NumPy array or a CUDA array, got list", images.tolist(), op_ids, levels, rand)


def test_weak_augment_refuses_bad_input():
    images, *_ = inputs()
    with pytest.raises(AugmentInputError, match="flips must be int32"):
        weak_augment(images, np.zeros(N, np.int64), np.zeros((N, 2), np.int32))
    with pytest.raises(AugmentInputError, match=r"offsets\[0, 0\] = -1"):
        weak_augment(images, np.zeros(N, np.int32), np.full((N, 2), -1, np.int32))


def test_same_inputs_same_views_any_thread_count():
    images, op_ids, levels, rand = inputs(depth=3, n=32, seed=5)
    images = np.resize(images, (32, H, W, 3))
    first = apply_ops(images, op_ids, levels, rand, cutout_level=1.0)
    again = apply_ops(images, op_ids, levels, rand, cutout_level=1.0)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = apply_ops(images, op_ids, levels, rand, cutout_level=1.0)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(first, again)
    assert np.array_equal(first, single)


def test_sources_read_without_copies_and_out_is_filled_in_place():
    images, op_ids, levels, rand = inputs()
    sources = np.array([5, 5, 0, 1, 1, 1], np.int32)
    out = np.zeros((N, H, W, 3), np.uint8)
    result = apply_ops(images, op_ids, levels, rand, sources=sources, out=out)
    assert result is out
    expected = apply_ops(np.ascontiguousarray(images[sources]), op_ids, levels, rand)
    assert np.array_equal(out, expected)


def test_identity_chain_returns_the_input():
    images, _, levels, rand = inputs(depth=MAX_DEPTH)
    op_ids = np.full((N, MAX_DEPTH), OP_ID["identity"], np.int32)
    assert np.array_equal(apply_ops(images, op_ids, levels, rand), images)


def test_cutout_level_one_covers_a_third_of_a_side():
    images, _, levels, rand = inputs(depth=1)
    images[:] = 0
    op_ids = np.full((N, 1), OP_ID["identity"], np.int32)
    rand[:, 1] = 0.5  # centre of the image
    views = apply_ops(images, op_ids, levels, rand, cutout_level=1.0)
    side = 1 + int(1.0 * min(H, W) * 0.499)
    assert (views == 127).all(axis=-1).sum(axis=(1, 2)).tolist() == [side * side] * N


def test_unchecked_values_never_index_outside_the_inputs():
    # check_values=False skips the value checks (for trusted samplers on the GPU); the kernels
    # still clamp every index they derive, so bad values give wrong views, not a crash.
    images, op_ids, levels, rand = inputs(depth=2)
    op_ids[:] = [[OP_ID["rotate"], OP_ID["rescale"]]]
    levels[:] = np.array([[7.5, -3.0], [np.nan, 40.0]], np.float32)
    rand[:] = 5.0
    sources = np.array([0, -4, 99, 1, 2, 3], np.int32)
    flips = np.full(N, 3, np.int32)
    offsets = np.full((N, 2), 1000, np.int32)
    views = apply_ops(images, op_ids, levels, rand, sources=sources, flips=flips, offsets=offsets,
                      cutout_level=1.0, check_values=False)
    assert views.shape == (N, H, W, 3)
    weak = weak_augment(images, flips, offsets, sources=sources, check_values=False)
    assert weak.shape == (N, H, W, 3)
