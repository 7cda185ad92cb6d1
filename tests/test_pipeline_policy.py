"""CTAugment policy state (spec §2.2-2.3): sampling against the spec's rules, rate_to_p, the probe
update against a plain sequential loop, state, and the text / image read-outs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import stats

from remixmatch.kernels import apply_ops
from remixmatch.kernels.ops import LEVELS_PER_OP, NUM_OPS, OP_ID, OP_NAMES, OPS
from remixmatch.pipeline import CTAugment, PipelineError, Policies, uniform_policies

ROTATE, POSTERIZE, RESCALE, IDENTITY = OP_ID["rotate"], OP_ID["posterize"], OP_ID["rescale"], OP_ID["identity"]
SINGLE_ARG = [i for i, op in enumerate(OPS) if len(op.bins) == 1]
VIEWS = 2_000_000  # ~210k samples per (op, depth slot) pooled over both slots
CHUNK = 200_000


def shaped_rates() -> np.ndarray:
    """Weights whose rate_to_p (decay 0.99, threshold 0.8) keeps only a few known bins:
    rotate: bins 3, 4, 10; posterize: bins 2, 5; rescale arg 1: bins 0, 5 (arg 0 untouched)."""
    rates = np.ones((NUM_OPS, LEVELS_PER_OP, 17))
    rates[ROTATE, 0, :] = 0.0
    rates[ROTATE, 0, [3, 4, 10]] = [1.0, 0.9, 0.85]
    rates[POSTERIZE, 0, :] = 0.0
    rates[POSTERIZE, 0, [2, 5]] = [1.0, 0.9]
    rates[RESCALE, 1, :] = 0.0
    rates[RESCALE, 1, [0, 5]] = [0.95, 1.0]
    return rates


def spec_p(r: np.ndarray, decay: float = 0.99, threshold: float = 0.8) -> np.ndarray:
    """rate_to_p of one weight vector, written out from the spec."""
    p = np.asarray(r, np.float64) + (1.0 - decay)
    p = p / p.max()
    p[p < threshold] = 0.0
    return p


def draw_many(rule: str, seed: int):
    policy = CTAugment(rule=rule)
    policy.rates = shaped_rates()
    rng = np.random.default_rng(seed)
    op_ids, levels = [], []
    for _ in range(VIEWS // CHUNK):
        pol = policy.sample(CHUNK, rng)
        op_ids.append(pol.op_ids.reshape(-1))
        levels.append(pol.levels.reshape(-1, 2))
    return np.concatenate(op_ids), np.concatenate(levels)


@pytest.fixture(scope="module")
def segment_draws():
    return draw_many("segment", seed=11)


@pytest.fixture(scope="module")
def bin_draws():
    return draw_many("bin", seed=12)


def check_rule(levels: np.ndarray, weights: np.ndarray, what: str) -> None:
    """Levels fall only in cells (of width 1/len(weights)) of positive weight, with frequencies
    proportional to the weights (chi-square), and uniformly within a cell."""
    cells = len(weights)
    allowed = weights > 0
    scaled = levels.astype(np.float64) * cells
    cell = np.minimum(np.floor(scaled).astype(np.int64), cells - 1)
    # float32 rounding may put a level drawn just below a cell's end exactly on it.
    on_edge = (scaled == cell) & (cell > 0) & ~allowed[cell]
    cell = np.where(on_edge, cell - 1, cell)
    assert allowed[cell].all(), f"{what}: levels in cells {sorted(set(cell[~allowed[cell]].tolist()))}, allowed {np.flatnonzero(allowed)}"
    counts = np.bincount(cell, minlength=cells)
    expected = weights / weights.sum() * len(levels)
    mask = allowed
    chi2 = float((((counts - expected) ** 2)[mask] / expected[mask]).sum())
    dof = int(mask.sum()) - 1
    if dof > 0:
        assert stats.chi2.sf(chi2, dof) > 1e-4, f"{what}: counts {counts[mask]} vs expected {expected[mask].round()}"
    within = scaled - cell
    quarters = np.bincount(np.minimum((within * 4).astype(np.int64), 3), minlength=4)
    assert stats.chisquare(quarters).pvalue > 1e-4, f"{what}: not uniform within cells: {quarters}"


def test_segment_rule_rotate(segment_draws):
    op_ids, levels = segment_draws
    v = levels[op_ids == ROTATE, 0]
    assert len(v) > 150_000
    p = spec_p(shaped_rates()[ROTATE, 0])
    assert np.flatnonzero(p).tolist() == [3, 4, 10]
    segments = p[1:] + p[:-1]
    assert np.flatnonzero(segments).tolist() == [2, 3, 4, 9, 10]
    check_rule(v, segments, "rotate segment rule")
    assert np.all(levels[op_ids == ROTATE, 1] == 0)


def test_segment_rule_posterize_seven_segments(segment_draws):
    op_ids, levels = segment_draws
    p = spec_p(shaped_rates()[POSTERIZE, 0, :8])
    segments = p[1:] + p[:-1]
    assert len(segments) == 7 and np.flatnonzero(segments).tolist() == [1, 2, 4, 5]
    check_rule(levels[op_ids == POSTERIZE, 0], segments, "posterize segment rule")


def test_segment_rule_rescale_both_arguments(segment_draws):
    op_ids, levels = segment_draws
    v = levels[op_ids == RESCALE]
    # arg 1: 6 bins -> 5 segments, bins 0 and 5 kept -> segments 0 and 4.
    p = spec_p(shaped_rates()[RESCALE, 1, :6])
    segments = p[1:] + p[:-1]
    assert np.flatnonzero(segments).tolist() == [0, 4]
    check_rule(v[:, 1], segments, "rescale filter segment rule")
    # arg 0 still has flat weights: all 16 segments equally likely.
    check_rule(v[:, 0], np.ones(16), "rescale scale (flat weights)")


def test_flat_weights_are_uniform(segment_draws):
    op_ids, levels = segment_draws
    check_rule(levels[op_ids == OP_ID["solarize"], 0], np.ones(16), "solarize (flat)")


def test_bin_rule(bin_draws):
    op_ids, levels = bin_draws
    rates = shaped_rates()
    p = spec_p(rates[ROTATE, 0])
    check_rule(levels[op_ids == ROTATE, 0], p, "rotate bin rule")  # cells of 1/17
    check_rule(levels[op_ids == POSTERIZE, 0], spec_p(rates[POSTERIZE, 0, :8]), "posterize bin rule")
    check_rule(levels[op_ids == RESCALE, 1], spec_p(rates[RESCALE, 1, :6]), "rescale filter bin rule")
    check_rule(levels[op_ids == RESCALE, 0], np.ones(17), "rescale scale bin rule (flat)")


@pytest.mark.parametrize("draws", ["segment_draws", "bin_draws"])
def test_ops_uniform_and_unused_levels_zero(draws, request):
    op_ids, levels = request.getfixturevalue(draws)
    counts = np.bincount(op_ids, minlength=NUM_OPS)
    assert len(counts) == NUM_OPS
    assert stats.chisquare(counts).pvalue > 1e-4, counts
    identity = op_ids == IDENTITY
    assert identity.any() and np.all(levels[identity] == 0)
    single = np.isin(op_ids, SINGLE_ARG)
    assert np.all(levels[single, 1] == 0)
    assert np.any(levels[single, 0] > 0)


def test_sample_arrays_are_what_apply_ops_takes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    for depth in (1, 2, 3):
        policy = CTAugment(depth=depth)
        policy.rates = shaped_rates()
        for pol in (policy.sample(64, rng), policy.sample_probes(64, rng), uniform_policies(64, depth, rng)):
            assert pol.op_ids.dtype == np.int32 and pol.op_ids.shape == (64, depth)
            assert pol.levels.dtype == np.float32 and pol.levels.shape == (64, depth, 2)
            assert pol.rand.dtype == np.float32 and pol.rand.shape == (64, depth + 1, 2)
            assert pol.op_ids.min() >= 0 and pol.op_ids.max() < NUM_OPS
            assert pol.levels.min() >= 0 and pol.levels.max() <= 1
            assert pol.rand.min() >= 0 and pol.rand.max() < 1
            assert len(pol) == 64 and pol.depth == depth
            sources = (np.arange(64) % 3).astype(np.int32)
            out = apply_ops(images, *pol.arrays(), sources=sources, check_values=True)
            assert out.shape == (64, 16, 16, 3)


def test_probes_are_uniform():
    pol = CTAugment().sample_probes(100_000, np.random.default_rng(5))
    op_ids, levels = pol.op_ids.reshape(-1), pol.levels.reshape(-1, 2)
    assert stats.chisquare(np.bincount(op_ids, minlength=NUM_OPS)).pvalue > 1e-4
    rot = levels[op_ids == ROTATE, 0]
    assert stats.chisquare(np.bincount((rot * 17).astype(int), minlength=17)).pvalue > 1e-4
    assert np.all(levels[op_ids == IDENTITY] == 0)
    assert np.all(levels[np.isin(op_ids, SINGLE_ARG), 1] == 0)


def test_sampling_is_a_function_of_the_generator():
    policy = CTAugment()
    a = policy.sample(50, np.random.default_rng(3))
    b = policy.sample(50, np.random.default_rng(3))
    c = policy.sample(50, np.random.default_rng(4))
    for x, y in zip(a.arrays(), b.arrays()):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.levels, c.levels)


class EdgeGenerator:
    """A stand-in generator: op ids fixed, every float draw the same value (just below 1, or 0)."""

    def __init__(self, op: int, value_high: bool):
        self.op, self.high = op, value_high

    def integers(self, low, high, size, dtype=np.int64):
        return np.full(size, self.op, dtype=dtype)

    def random(self, size, dtype=np.float64):
        dtype = np.dtype(dtype)
        value = np.nextafter(dtype.type(1), dtype.type(0)) if self.high else dtype.type(0)
        return np.full(size, value, dtype=dtype)


@pytest.mark.parametrize("rule", ["segment", "bin"])
def test_extreme_draws_pick_only_weighted_choices(rule):
    """A uniform draw of 0 picks the first choice of positive weight, the largest draw below 1 the
    last: never a zero-weight choice, whatever the rounding of the cumulative sums."""
    rng = np.random.default_rng(21)
    policy = CTAugment(rule=rule)
    for trial in range(60):
        rates = np.ones((NUM_OPS, LEVELS_PER_OP, 17))
        vector = np.zeros(17)
        keep = rng.choice(17, rng.integers(1, 6), replace=False)
        vector[keep] = rng.uniform(0.8, 1.0, len(keep))
        rates[ROTATE, 0] = vector
        policy.rates = rates
        p = spec_p(vector)
        weights = p[1:] + p[:-1] if rule == "segment" else p
        cells = len(weights)
        positive = np.flatnonzero(weights)
        for high, want in ((False, positive[0]), (True, positive[-1])):
            pol = policy.sample(4, EdgeGenerator(ROTATE, high))
            level = pol.levels[:, :, 0].astype(np.float64)
            # float32 levels: the ends may round outwards by one float32 step
            lo, hi = want / cells - 1e-7, (want + 1) / cells + 1e-7
            assert np.all((level >= lo) & (level <= hi)), (
                f"trial {trial}, weights {np.round(weights, 3)}: draw {'1-eps' if high else '0'} gave "
                f"level {level[0, 0]} (cell {int(level[0, 0] * cells)}), expected cell {want}")


def test_in_place_weight_change_is_seen_by_the_next_sample():
    policy = CTAugment()
    policy.sample(100, np.random.default_rng(0))  # the weights' distribution is now cached
    policy.rates[ROTATE, 0, :] = 0.0
    policy.rates[ROTATE, 0, 7] = 1.0  # only bin 7 survives: segments 6 and 7
    pol = policy.sample(20_000, np.random.default_rng(1))
    v = pol.levels[pol.op_ids == ROTATE, 0]
    assert len(v) > 1000
    assert np.all((v >= 6 / 16) & (v <= 8 / 16))


# -- rate_to_p ------------------------------------------------------------------------------------


def test_probabilities_hand_computed():
    policy = CTAugment()  # decay 0.99, threshold 0.8
    p0 = policy.probabilities()
    for op_id, op in enumerate(OPS):
        for a in range(LEVELS_PER_OP):
            bins = op.bins[a] if a < len(op.bins) else 0
            assert np.all(p0[op_id, a, :bins] == 1.0)
            assert np.all(p0[op_id, a, bins:] == 0.0)
    rates = np.ones_like(policy.rates)
    rates[ROTATE, 0, :4] = [1.0, 0.8, 0.78, 0.0]
    policy.rates = rates
    p = policy.probabilities()
    # p = r + 0.01 = [1.01, 0.81, 0.79, 0.01, 1.01...]; / 1.01; < 0.8 -> 0
    np.testing.assert_allclose(p[ROTATE, 0, :4], [1.0, 0.81 / 1.01, 0.0, 0.0], rtol=0, atol=1e-15)
    assert np.all(p[ROTATE, 0, 4:17] == 1.0)
    # A scaled vector normalises to the same probabilities; the peak is always 1.
    rates = np.ones_like(policy.rates)
    rates[POSTERIZE, 0, :8] = [0.2, 0.1, 0.2, 0.2, 0.17, 0.15, 0.2, 0.2]
    policy.rates = rates
    p = policy.probabilities()
    # p = [0.21, 0.11, 0.21, 0.21, 0.18, 0.16, 0.21, 0.21] / 0.21: 0.52 and 0.76 fall below 0.8
    np.testing.assert_allclose(p[POSTERIZE, 0, :8], [1, 0, 1, 1, 0.18 / 0.21, 0, 1, 1], atol=1e-15)
    assert np.all(p[POSTERIZE, 0, 8:] == 0)
    # other decay and threshold: p = r + 0.1
    other = CTAugment(decay=0.9, threshold=0.5)
    rates = np.ones_like(other.rates)
    rates[RESCALE, 1, :6] = [0.9, 0.3, 0.45, 0.5, 0.0, 0.35]
    # p = [1.0, 0.4, 0.55, 0.6, 0.1, 0.45] / 1.0; < 0.5 -> 0
    np.testing.assert_allclose(other.probabilities(rates)[RESCALE, 1, :6], [1.0, 0.0, 0.55, 0.6, 0.0, 0.0], atol=1e-15)
    # A probability exactly at the threshold is kept (p < threshold is dropped): p = r + 0.5
    half = CTAugment(decay=0.5, threshold=0.5)
    rates = np.ones_like(half.rates)
    rates[ROTATE, 0, :3] = [1.5, 0.5, 0.4]  # p = [2.0, 1.0, 0.9] / 2
    np.testing.assert_array_equal(half.probabilities(rates)[ROTATE, 0, :3], [1.0, 0.5, 0.0])
    # The explicit argument does not touch the policy's own weights.
    assert np.all(other.rates == 1)


# -- the probe update ------------------------------------------------------------------------------


def sequential_update(rates: np.ndarray, op_ids, levels, scores, decay: float) -> np.ndarray:
    """Spec §2.3 as a plain loop: each probe in order, each op, each of its levels."""
    r = rates.copy()
    for n in range(len(scores)):
        w = float(scores[n])
        for d in range(op_ids.shape[1]):
            op = int(op_ids[n, d])
            for a, nbins in enumerate(OPS[op].bins):
                v = float(levels[n, d, a])
                b = int(v * nbins * 0.999)
                r[op, a, b] = decay * r[op, a, b] + (1 - decay) * w
    return r


@pytest.mark.parametrize("decay", [0.99, 0.9])
def test_update_matches_sequential_loop(decay):
    rng = np.random.default_rng(7)
    policy = CTAugment(decay=decay)
    policy.rates = rng.uniform(0.0, 1.0, policy.rates.shape)
    expected = policy.rates.copy()
    for round_ in range(4):
        probes = policy.sample_probes(300, rng)
        op_ids, levels = probes.op_ids.copy(), probes.levels.copy()
        # Many repeated bins: a third of the probes use rotate at levels in the same few bins,
        # a few use the same op twice, some hit the ends exactly.
        op_ids[:100, 0] = ROTATE
        levels[:100, 0, 0] = rng.choice([0.0, 0.3, 0.31, 1.0], 100).astype(np.float32)
        levels[:100, 0, 1] = 0
        op_ids[100:140, 1] = op_ids[100:140, 0]
        levels[100:140, 1] = levels[100:140, 0]
        op_ids[140:160] = RESCALE
        levels[140:160] = rng.choice([0.0, 0.5, 1.0], (20, 2, 2)).astype(np.float32)
        scores = rng.uniform(0, 1, 300)
        scores[::17] = 0.0
        scores[::23] = 1.0
        probes = Policies(op_ids, levels, probes.rand)
        expected = sequential_update(expected, op_ids, levels, scores, decay)
        policy.update(probes, scores)
        np.testing.assert_allclose(policy.rates, expected, rtol=0, atol=1e-12, err_msg=f"round {round_}")


def test_update_hand_computed():
    policy = CTAugment()
    rand = np.zeros((2, 3, 2), np.float32)
    probes = Policies(np.array([[ROTATE, IDENTITY], [ROTATE, POSTERIZE]], np.int32),
                      np.array([[[0.5, 0], [0, 0]], [[0.52, 0], [1.0, 0]]], np.float32), rand)
    policy.update(probes, np.array([0.0, 0.5]))
    # rotate: int(0.5 * 17 * 0.999) = 8, int(0.52 * 17 * 0.999) = 8: 0.99 (0.99 * 1 + 0.01 * 0) + 0.01 * 0.5
    assert policy.rates[ROTATE, 0, 8] == pytest.approx(0.9851, abs=1e-12)
    # posterize at 1.0: int(8 * 0.999) = 7: 0.99 + 0.005
    assert policy.rates[POSTERIZE, 0, 7] == pytest.approx(0.995, abs=1e-12)
    changed = np.argwhere(policy.rates != 1.0).tolist()
    assert changed == [[POSTERIZE, 0, 7], [ROTATE, 0, 8]]
    probes = Policies(np.array([[RESCALE, ROTATE]], np.int32),
                      np.array([[[0.0, 1.0], [0.5, 0]]], np.float32), np.zeros((1, 3, 2), np.float32))
    policy.update(probes, np.array([0.2]))
    assert policy.rates[RESCALE, 0, 0] == pytest.approx(0.992, abs=1e-12)
    assert policy.rates[RESCALE, 1, 5] == pytest.approx(0.992, abs=1e-12)
    assert policy.rates[ROTATE, 0, 8] == pytest.approx(0.99 * 0.9851 + 0.002, abs=1e-12)
    assert len(np.argwhere(policy.rates != 1.0)) == 4


def test_level_one_lands_in_the_last_bin():
    for op_id, op in enumerate(OPS):
        if not op.bins:
            continue
        policy = CTAugment()
        levels = np.zeros((1, 2, 2), np.float32)
        levels[0, 0, :len(op.bins)] = 1.0
        probes = Policies(np.array([[op_id, IDENTITY]], np.int32), levels, np.zeros((1, 3, 2), np.float32))
        policy.update(probes, np.array([0.0]))
        expected = np.ones_like(policy.rates)
        for a, bins in enumerate(op.bins):
            expected[op_id, a, bins - 1] = 0.99
        np.testing.assert_array_equal(policy.rates, expected, err_msg=op.name)


def test_update_replaces_the_weights_array():
    policy = CTAugment()
    before = policy.rates
    probes = policy.sample_probes(10, np.random.default_rng(0))
    policy.update(probes, np.zeros(10))
    assert policy.rates is not before
    assert np.all(before == 1.0)  # a reference taken earlier still holds the old weights
    assert np.any(policy.rates != 1.0)


def test_update_sampling_follows_new_weights():
    policy = CTAugment()
    policy.sample(10, np.random.default_rng(0))
    # Push every rotate bin except 16 down with many zero scores.
    n = 400
    levels = np.zeros((n, 2, 2), np.float32)
    levels[:, 0, 0] = (np.arange(n) % 16 + 0.5) / 17
    probes = Policies(np.tile(np.array([[ROTATE, IDENTITY]], np.int32), (n, 1)), levels, np.zeros((n, 3, 2), np.float32))
    policy.update(probes, np.zeros(n))
    assert np.flatnonzero(policy.probabilities()[ROTATE, 0]).tolist() == [16]
    pol = policy.sample(5000, np.random.default_rng(1))
    v = pol.levels[pol.op_ids == ROTATE, 0]
    assert len(v) > 200 and np.all(v >= 15 / 16)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_update_rejects_non_finite_scores(bad):
    policy = CTAugment()
    probes = policy.sample_probes(4, np.random.default_rng(0))
    with pytest.raises(PipelineError, match="NaN or infinite"):
        policy.update(probes, np.array([0.5, bad, 0.5, 0.5]))
    assert np.all(policy.rates == 1.0)


def test_update_rejects_length_mismatch():
    policy = CTAugment()
    probes = policy.sample_probes(4, np.random.default_rng(0))
    with pytest.raises(PipelineError, match="4 probes but 3 scores"):
        policy.update(probes, np.ones(3))
    assert np.all(policy.rates == 1.0)


def test_update_with_only_identity_is_a_no_op():
    policy = CTAugment()
    policy.update(Policies.identity(5, 2), np.zeros(5))
    assert np.all(policy.rates == 1.0)


def test_score_formula_of_the_trainer():
    losses = pytest.importorskip("remixmatch.trainer.losses")
    if not hasattr(losses, "cta_probe_scores"):
        pytest.skip("remixmatch.trainer.losses.cta_probe_scores is not written yet")
    import torch

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 10))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p[0] = np.eye(10)[3]  # certain and right
    p[1] = np.eye(10)[4]  # certain and wrong
    labels = np.array([3, 3, 0, 1, 2, 9])
    got = losses.cta_probe_scores(torch.from_numpy(p), torch.from_numpy(labels)).numpy()
    expected = 1 - 0.5 * np.abs(p - np.eye(10)[labels]).sum(1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(0.0, abs=1e-7)
    assert np.all((got >= -1e-6) & (got <= 1 + 1e-6))


# -- state and read-outs ---------------------------------------------------------------------------


def test_state_round_trip():
    rng = np.random.default_rng(9)
    policy = CTAugment(threshold=0.8)
    for _ in range(3):
        probes = policy.sample_probes(64, rng)
        policy.update(probes, rng.uniform(0, 1, 64))
    state = copy.deepcopy(policy.state_dict())
    before = policy.sample(500, np.random.default_rng(42))
    other = CTAugment(threshold=0.8)
    other.sample(3, np.random.default_rng(0))  # a cached distribution of the old weights must not survive
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.rates, policy.rates)
    after = other.sample(500, np.random.default_rng(42))
    for x, y in zip(before.arrays(), after.arrays()):
        np.testing.assert_array_equal(x, y)
    # The loaded weights are a copy: changing the state afterwards changes nothing.
    state["rates"][:] = 0.0
    np.testing.assert_array_equal(other.rates, policy.rates)


def test_load_refuses_other_registry_and_settings():
    state = CTAugment().state_dict()
    renamed = dict(state, op_names=list(reversed(OP_NAMES)))
    with pytest.raises(PipelineError, match="op registry"):
        CTAugment().load_state_dict(renamed)
    shorter = dict(state, op_names=list(OP_NAMES[:-1]))
    with pytest.raises(PipelineError, match="op registry"):
        CTAugment().load_state_dict(shorter)
    with pytest.raises(PipelineError, match="threshold"):
        CTAugment(threshold=0.85).load_state_dict(state)
    with pytest.raises(PipelineError, match="decay"):
        CTAugment(decay=0.9).load_state_dict(state)
    with pytest.raises(PipelineError, match="rule"):
        CTAugment(rule="bin").load_state_dict(state)
    with pytest.raises(PipelineError, match="shape"):
        CTAugment().load_state_dict(dict(state, rates=np.ones((NUM_OPS, 2, 5))))


@pytest.mark.parametrize("kwargs", [dict(rule="random"), dict(depth=0), dict(depth=5), dict(decay=1.0),
                                    dict(decay=0.0), dict(threshold=1.5), dict(threshold=-0.1)])
def test_bad_settings(kwargs):
    with pytest.raises(PipelineError):
        CTAugment(**kwargs)


def test_table():
    policy = CTAugment()
    policy.rates = shaped_rates()
    lines = policy.table().splitlines()
    rows = lines[1:]
    n_args = sum(max(len(op.bins), 1) for op in OPS)  # identity gets a '(no levels)' row
    assert len(rows) == n_args
    by_label = {}
    for row in rows:
        label = row[:13].strip()
        by_label.setdefault(label, []).append(row[13:].split())
    assert by_label["identity"] == [["(no", "levels)"]]
    rotate = by_label["rotate"][0]
    assert len(rotate) == 17
    assert [i for i, cell in enumerate(rotate) if cell != "."] == [3, 4, 10]
    assert rotate[3] == "1.00" and rotate[4] == f"{0.91 / 1.01:4.2f}"
    assert len(by_label["posterize"][0]) == 8
    assert [i for i, c in enumerate(by_label["posterize"][0]) if c != "."] == [2, 5]
    rescale_filter = by_label["arg1"][0]
    assert len(rescale_filter) == 6 and [i for i, c in enumerate(rescale_filter) if c != "."] == [0, 5]
    assert all(cell == "1.00" for cell in by_label["solarize"][0])


def test_heatmap_png(tmp_path):
    pytest.importorskip("matplotlib")
    policy = CTAugment()
    policy.rates = shaped_rates()
    out = policy.heatmap(tmp_path / "sub" / "cta.png")
    assert out == tmp_path / "sub" / "cta.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["cta.png"]


def test_heatmap_without_matplotlib_says_so(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(PipelineError, match="matplotlib"):
        CTAugment().heatmap(tmp_path / "cta.png")
    assert not list(tmp_path.iterdir())


# -- Policies --------------------------------------------------------------------------------------


def test_policies_helpers():
    rng = np.random.default_rng(4)
    a = CTAugment().sample(5, rng)
    b = CTAugment().sample_probes(3, rng)
    both = Policies.concat([a, b])
    assert len(both) == 8 and both.depth == 2
    for x, y, z in zip(both.arrays(), a.arrays(), b.arrays()):
        np.testing.assert_array_equal(x, np.concatenate([y, z]))
        assert x.flags.c_contiguous
    part = both[5:]
    for x, z in zip(part.arrays(), b.arrays()):
        np.testing.assert_array_equal(x, z)
    picked = both[np.array([7, 0])]
    np.testing.assert_array_equal(picked.op_ids, both.op_ids[[7, 0]])
    ident = Policies.identity(4, 3)
    assert ident.op_ids.dtype == np.int32 and ident.op_ids.shape == (4, 3) and np.all(ident.op_ids == IDENTITY)
    assert ident.levels.dtype == np.float32 and ident.levels.shape == (4, 3, 2) and not ident.levels.any()
    assert ident.rand.dtype == np.float32 and ident.rand.shape == (4, 4, 2)
    assert ident.describe(0) == "identity() identity() identity()"
    # identity views leave the images as they are
    images = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(apply_ops(images, *ident.arrays()), images)
    state = both.state_dict()
    state["levels"] = state["levels"].astype(np.float64)  # as a checkpoint may hand it back
    back = Policies.from_state_dict(state)
    for x, y in zip(back.arrays(), both.arrays()):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_describe():
    levels = np.zeros((1, 2, 2), np.float32)
    levels[0, 0, 0] = 0.8125
    levels[0, 1] = [0.125, 0.5]
    pol = Policies(np.array([[ROTATE, RESCALE]], np.int32), levels, np.zeros((1, 3, 2), np.float32))
    assert pol.describe(0) == "rotate(0.81) rescale(0.12, 0.50)"


def test_gentle_start_draws_no_harsh_setting_until_the_probes_earn_it():
    from remixmatch.pipeline.policy import HARSH_START_LEVELS

    gentle, uniform = CTAugment(start="gentle"), CTAugment()
    rng = np.random.default_rng(0)
    draws = gentle.sample(20000, rng)
    p = gentle.probabilities()
    for name in HARSH_START_LEVELS:
        op = OP_ID[name]
        bins = OPS[op].bins[0]
        levels = draws.levels[..., 0][draws.op_ids == op]
        # the segment rule draws a level between two adjacent bins: only segments touching a
        # weighted bin are drawn, so no level falls between two harsh bins
        segment = np.minimum((levels * (bins - 1)).astype(int), bins - 2)
        assert len(levels) > 500 and np.all(p[op, 0, segment] + p[op, 0, segment + 1] > 0), name
        harsh_segments = (p[op, 0, :bins - 1] + p[op, 0, 1:bins]) == 0
        flat = uniform.sample(20000, np.random.default_rng(0))
        flat_levels = flat.levels[..., 0][flat.op_ids == op]
        flat_segment = np.minimum((flat_levels * (bins - 1)).astype(int), bins - 2)
        assert harsh_segments.any() and harsh_segments[flat_segment].any(), name  # the uniform start draws them
    # every other op starts as the uniform one; the harsh bins start at 0, below the threshold
    others = [op for op in range(NUM_OPS) if OP_NAMES[op] not in HARSH_START_LEVELS]
    assert np.array_equal(gentle.rates[others], uniform.rates[others])
    assert p[OP_ID["posterize"], 0, :2].tolist() == [0.0, 0.0] and p[OP_ID["posterize"], 0, 2] == 1.0
    assert p[OP_ID["solarize"], 0, :8].max() == 0.0 and p[OP_ID["invert"], 0, 4:17].max() == 0.0
    # probes scoring 1 on the harsh bins lift them above the threshold
    probes = Policies(np.full((400, 2), OP_ID["solarize"], np.int32),
                      np.tile(np.array([[[0.05, 0.0]]], np.float32), (400, 2, 1)),
                      np.zeros((400, 3, 2), np.float32))
    gentle.update(probes, np.ones(400))
    assert gentle.probabilities()[OP_ID["solarize"], 0, 0] > gentle.threshold
    # the start is part of the state: a gentle state is refused by a uniform policy
    state = gentle.state_dict()
    assert state["start"] == "gentle"
    with pytest.raises(PipelineError, match="start='gentle'"):
        CTAugment().load_state_dict(state)
    with pytest.raises(PipelineError, match="CTAugment start must be one of uniform, gentle"):
        CTAugment(start="harsh")
