"""StepLoader / EvalLoader on the CPU: the fields of a step, views re-made from the plan, seeds,
exact resume, when CTAugment weight changes reach the views, config flags, ranks, errors."""

from __future__ import annotations

import copy
import shutil

import numba
import numpy as np
import pytest
import torch

from datasets_helpers import write_tree
from pipeline_helpers import (  # noqa: F401  (pytest fixtures)
    assert_same_batch,
    batch_arrays,
    other_shards,
    pipeline_shards,
    probe_scores,
    remake_views,
)
from remixmatch.datasets_prep import ShardError, open_shards
from remixmatch.datasets_prep.cli import prep_folder_main
from remixmatch.datasets_prep.subsets import labeled_subset
from remixmatch.kernels import weak_augment
from remixmatch.kernels.ops import NUM_OPS, OP_ID, OPS
from remixmatch.pipeline import (
    CTAugment,
    EvalLoader,
    PipelineError,
    StepLoader,
    TrainData,
    ViewConfig,
    draw_plan,
    train_data,
)

IDENTITY = OP_ID["identity"]
CONFIG = ViewConfig(batch=8, unlabeled_batch=8, k=3, seed=0)
H = W = 32


def loader_for(shards, config=CONFIG, policy="new", **kw) -> StepLoader:
    return StepLoader(shards.data, CTAugment() if policy == "new" else policy, config, **kw)


def first_segment_rates() -> np.ndarray:
    """Weights with only bin 0 of every argument above the threshold: every level then lies in the
    first segment (below 1/5 for any argument)."""
    rates = np.zeros((NUM_OPS, 2, 17))
    rates[:, :, 0] = 1.0
    return rates


def all_low(policies, bound: float = 0.2 + 1e-6) -> bool:
    return bool(np.all(policies.levels <= bound))


# -- what a step holds -----------------------------------------------------------------------------


def test_fields_shapes_dtypes_and_rows(pipeline_shards):
    ps = pipeline_shards
    labeled, valid = set(ps.subset.labeled.tolist()), set(ps.subset.valid.tolist())
    assert len(valid) == 20
    split_labels = np.asarray(ps.shards["train"].labels)
    seen_labeled = []
    with loader_for(ps) as loader:
        for t in range(5):  # 40 labeled positions: two epochs of the 20 labeled rows
            batch = next(loader)
            assert batch.step == t and batch.k == 3 and loader.step == t + 1
            for name, shape in (("x", (8, H, W, 3)), ("x_probe", (8, H, W, 3)), ("u_weak", (8, H, W, 3)),
                                ("u_strong", (3, 8, H, W, 3)), ("views", (8 + 8 + 8 + 24, H, W, 3))):
                tensor = getattr(batch, name)
                assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8, name
                assert tuple(tensor.shape) == shape, name
                assert tensor.device.type == "cpu"
            assert batch.x_labels.dtype == torch.int64 and tuple(batch.x_labels.shape) == (8,)
            plan = batch.plan
            np.testing.assert_array_equal(batch.x_labels.numpy(), split_labels[plan.x_rows])
            assert set(plan.x_rows.tolist()) <= labeled
            assert not set(plan.u_rows.tolist()) & valid
            assert batch.global_plan is plan  # one rank: the local plan is the global plan
            # the views tensor holds the fields in order: x, probe, u_weak, u_strong (K-major)
            np.testing.assert_array_equal(batch.views[:8].numpy(), batch.x.numpy())
            np.testing.assert_array_equal(batch.views[8:16].numpy(), batch.x_probe.numpy())
            np.testing.assert_array_equal(batch.views[24:32].numpy(), batch.u_strong[0].numpy())
            seen_labeled += plan.x_rows.tolist()
    assert sorted(seen_labeled) == sorted(2 * list(labeled))
    assert loader.epoch == pytest.approx(2.0)


def test_unlabeled_stream_covers_all_but_validation(pipeline_shards):
    ps = pipeline_shards
    config = ViewConfig(batch=4, unlabeled_batch=36, k=0, seed=2, probes=False)
    seen = []
    with loader_for(ps, config) as loader:
        for _ in range(5):  # 180 positions = one epoch of the 180 unlabeled rows
            seen += next(loader).plan.u_rows.tolist()
    assert sorted(seen) == sorted(ps.subset.unlabeled().tolist())
    assert len(seen) == 180 and not set(seen) & set(ps.subset.valid.tolist())


def test_strong_views_differ(pipeline_shards):
    differing = total = probe_differ = 0
    with loader_for(pipeline_shards) as loader:
        for _ in range(3):
            batch = next(loader)
            plan = batch.plan
            bu = len(plan.u_rows)
            for b in range(bu):
                # view 0: the weak view; views 1..K the strong ones, each with its own weak params
                images = [batch.u_weak[b].numpy()] + [batch.u_strong[k, b].numpy() for k in range(plan.k)]
                weak = [(plan.u_weak.flips[b], *plan.u_weak.offsets[b])]
                weak += [(plan.u_strong_weak.flips[k * bu + b], *plan.u_strong_weak.offsets[k * bu + b])
                         for k in range(plan.k)]
                ops = [(IDENTITY, IDENTITY)] + [tuple(plan.u_policies.op_ids[k * bu + b]) for k in range(plan.k)]
                for i in range(len(images)):
                    for j in range(i + 1, len(images)):
                        same = np.array_equal(images[i], images[j])
                        total += 1
                        differing += not same
                        if weak[i] != weak[j] and ops[j] != (IDENTITY, IDENTITY):
                            assert not same, f"views {i} and {j} of unlabeled image {b} are equal"
            probe_differ += sum(not np.array_equal(batch.x[i].numpy(), batch.x_probe[i].numpy()) for i in range(8))
    assert differing >= 0.9 * total, (differing, total)
    assert probe_differ >= 0.75 * 24


@pytest.mark.parametrize("k", [3, 1, 0])
def test_views_remade_from_the_plan(pipeline_shards, k):
    split = pipeline_shards.data.split
    config = ViewConfig(batch=8, unlabeled_batch=8, k=k, seed=7)
    with loader_for(pipeline_shards, config) as loader:
        for _ in range(3):
            batch = next(loader)
            assert tuple(batch.u_strong.shape) == (k, 8, H, W, 3)
            got = batch_arrays(batch)
            want = remake_views(split, batch.plan)
            for name in ("x", "x_probe", "u_weak", "u_strong"):
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_same_seed_same_batches_other_seed_differs(pipeline_shards):
    a, b = loader_for(pipeline_shards), loader_for(pipeline_shards, prefetch=False)
    c = loader_for(pipeline_shards, ViewConfig(batch=8, unlabeled_batch=8, k=3, seed=1))
    with a, b, c:
        for t in range(4):
            ba, bb, bc = batch_arrays(next(a)), batch_arrays(next(b)), batch_arrays(next(c))
            assert_same_batch(ba, bb, f"step {t}: ")
            assert not np.array_equal(ba["x"], bc["x"])
            assert not np.array_equal(ba["u_strong"], bc["u_strong"])


# -- resume ----------------------------------------------------------------------------------------


def run_steps(loader: StepLoader, policy: CTAugment, steps: int) -> list[dict]:
    """Steps with a CTAugment update after each, scores a function of the step."""
    out = []
    for _ in range(steps):
        batch = next(loader)
        out.append(batch_arrays(batch))
        out[-1]["step"] = batch.step
        scores = probe_scores(batch.step, len(batch.global_plan.x_rows))
        policy.update(batch.global_plan.probe_policies, scores)
    return out


@pytest.mark.parametrize("prefetch", [True, False])
def test_resume_mid_epoch_continues_identically(pipeline_shards, prefetch):
    policy_a = CTAugment()
    with loader_for(pipeline_shards, policy=policy_a, prefetch=prefetch) as a:
        run_steps(a, policy_a, 3)  # 24 of 20 labeled / 24 of 180 unlabeled positions: mid-epoch
        state = copy.deepcopy({"loader": a.state_dict(), "policy": policy_a.state_dict()})
        assert state["loader"]["step"] == 3
        assert (state["loader"]["pending_plan"] is not None) == prefetch
        expected = run_steps(a, policy_a, 4)
    policy_b = CTAugment()
    with loader_for(pipeline_shards, policy=policy_b, prefetch=prefetch) as b:
        run_steps(b, policy_b, 2)  # a loader that has run (and drawn ahead) is reset by the load
        policy_b.load_state_dict(state["policy"])
        b.load_state_dict(state["loader"])
        got = run_steps(b, policy_b, 4)
    for t, (g, e) in enumerate(zip(got, expected)):
        assert g.pop("step") == e.pop("step") == 3 + t
        assert_same_batch(g, e, f"step {3 + t}: ")
    np.testing.assert_array_equal(policy_a.rates, policy_b.rates)


def test_resume_refuses_other_unlabeled_setting(pipeline_shards):
    with loader_for(pipeline_shards) as a:
        next(a)
        state = a.state_dict()
    with loader_for(pipeline_shards, ViewConfig(batch=8, unlabeled_batch=0, k=0, probes=False)) as b:
        with pytest.raises(PipelineError):
            b.load_state_dict(state)


# -- when weight changes reach the views ------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [False, True])
def test_weight_change_reaches_views_on_time(pipeline_shards, prefetch):
    policy = CTAugment()
    with loader_for(pipeline_shards, policy=policy, prefetch=prefetch) as loader:
        before = [next(loader) for _ in range(2)]  # steps 0, 1
        for b in before:
            assert not all_low(b.plan.x_policies) and not all_low(b.plan.u_policies)
        policy.rates = first_segment_rates()  # after step 1 is handed out
        step2, step3, step4 = next(loader), next(loader), next(loader)
    assert all_low(step3.plan.x_policies) and all_low(step3.plan.u_policies)
    assert all_low(step4.plan.x_policies) and all_low(step4.plan.u_policies)
    if prefetch:  # step 2 was drawn when step 1 was handed out: the old weights
        assert not all_low(step2.plan.x_policies) and not all_low(step2.plan.u_policies)
    else:
        assert all_low(step2.plan.x_policies) and all_low(step2.plan.u_policies)
    # probes never follow the weights
    assert not all_low(step3.plan.probe_policies)


@pytest.mark.parametrize("prefetch", [False, True])
def test_update_reaches_the_plan_drawn_next(pipeline_shards, prefetch):
    """The plan of a step is exactly draw_plan from the weights at the moment it is drawn."""
    policy = CTAugment()
    with loader_for(pipeline_shards, policy=policy, prefetch=prefetch) as loader:
        next(loader)
        step1 = next(loader)
        old = CTAugment()
        old.load_state_dict(policy.state_dict())
        for _ in range(300):  # a drastic update: the probed bins fall below the threshold
            policy.update(step1.global_plan.probe_policies, np.zeros(8))
        new = CTAugment()
        new.load_state_dict(policy.state_dict())
        step2, step3 = next(loader), next(loader)

    def plan_with(weights, batch):
        return draw_plan(batch.step, batch.global_plan.x_rows, batch.global_plan.u_rows, weights, CONFIG)

    def same(p, q):
        return all(np.array_equal(x, y) for pp, qq in ((p.x_policies, q.x_policies), (p.u_policies, q.u_policies))
                   for x, y in zip(pp.arrays(), qq.arrays()))

    assert not same(plan_with(old, step2), plan_with(new, step2))  # the update matters
    assert same(step2.global_plan, plan_with(old if prefetch else new, step2))
    assert same(step3.global_plan, plan_with(new, step3))


# -- config flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["new", None])
def test_supervised_config_gives_weak_labeled_views(pipeline_shards, policy):
    config = ViewConfig(batch=8, unlabeled_batch=0, k=3, labeled_strong=False, probes=False, seed=3)
    split = pipeline_shards.data.split
    with loader_for(pipeline_shards, config, policy=policy) as loader:
        for _ in range(2):
            batch = next(loader)
            assert batch.x_probe is None and batch.plan.probe_policies is None
            assert tuple(batch.u_weak.shape) == (0, H, W, 3)
            assert tuple(batch.u_strong.shape) == (3, 0, H, W, 3)
            assert np.all(batch.plan.x_policies.op_ids == IDENTITY)
            plan = batch.plan
            want = weak_augment(split.images(plan.x_rows), plan.x_weak.flips, plan.x_weak.offsets, pad=4)
            np.testing.assert_array_equal(batch.x.numpy(), want)
            assert np.any(plan.x_weak.flips == 1) or np.any(plan.x_weak.offsets != 4)


def test_probes_need_a_policy(pipeline_shards):
    with loader_for(pipeline_shards, ViewConfig(batch=8, unlabeled_batch=8, k=1), policy=None) as loader:
        with pytest.raises(PipelineError, match="probe"):
            next(loader)


def test_strong_off_gives_identity_policies(pipeline_shards):
    config = ViewConfig(batch=8, unlabeled_batch=8, k=2, strong=False, seed=4)
    split = pipeline_shards.data.split
    with loader_for(pipeline_shards, config) as loader:
        batch = next(loader)
    plan = batch.plan
    for pol in (plan.x_policies, plan.u_policies):
        assert np.all(pol.op_ids == IDENTITY) and not pol.levels.any()
    assert not np.all(plan.probe_policies.op_ids == IDENTITY)  # probes are still CTAugment probes
    x = weak_augment(split.images(plan.x_rows), plan.x_weak.flips, plan.x_weak.offsets, pad=4)
    np.testing.assert_array_equal(batch.x.numpy(), x)
    sources = np.tile(np.arange(8, dtype=np.int32), 2)
    u = weak_augment(split.images(plan.u_rows), plan.u_strong_weak.flips, plan.u_strong_weak.offsets,
                     sources=sources, pad=4)
    np.testing.assert_array_equal(batch.u_strong.numpy(), u.reshape(2, 8, H, W, 3))


def test_weak_off_gives_plain_images(pipeline_shards):
    config = ViewConfig(batch=8, unlabeled_batch=8, k=2, weak=False, strong=False, seed=5)
    split = pipeline_shards.data.split
    with loader_for(pipeline_shards, config) as loader:
        batch = next(loader)
    plan = batch.plan
    for params in (plan.x_weak, plan.u_weak, plan.u_strong_weak):
        assert np.all(params.flips == 0) and np.all(params.offsets == 4)
    np.testing.assert_array_equal(batch.u_weak.numpy(), split.images(plan.u_rows))
    np.testing.assert_array_equal(batch.x.numpy(), split.images(plan.x_rows))
    np.testing.assert_array_equal(batch.u_strong[1].numpy(), split.images(plan.u_rows))


def test_flip_off_keeps_translation(pipeline_shards):
    config = ViewConfig(batch=8, unlabeled_batch=8, k=2, flip=False, seed=6)
    with loader_for(pipeline_shards, config) as loader:
        batch = next(loader)
    plan = batch.plan
    for params in (plan.x_weak, plan.u_weak, plan.u_strong_weak):
        assert np.all(params.flips == 0)
        assert np.all((params.offsets >= 0) & (params.offsets <= 8)) and np.any(params.offsets != 4)
    with loader_for(pipeline_shards, ViewConfig(batch=8, unlabeled_batch=8, k=2, seed=6)) as loader:
        flipped = next(loader).plan
    assert np.any(flipped.u_strong_weak.flips == 1)


def test_pad_zero(pipeline_shards):
    config = ViewConfig(batch=8, unlabeled_batch=8, k=1, pad=0, seed=8)
    with loader_for(pipeline_shards, config) as loader:
        batch = next(loader)
    assert np.all(batch.plan.u_weak.offsets == 0)
    want = remake_views(pipeline_shards.data.split, batch.plan, pad=0)
    np.testing.assert_array_equal(batch.u_strong.numpy(), want["u_strong"])
    np.testing.assert_array_equal(batch.u_weak.numpy(), want["u_weak"])


# -- ranks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 0])
@pytest.mark.parametrize("prefetch", [True, False])
def test_two_ranks_make_the_global_batch(pipeline_shards, k, prefetch):
    config = ViewConfig(batch=8, unlabeled_batch=8, k=k, seed=9)
    policies = [CTAugment() for _ in range(3)]
    one = loader_for(pipeline_shards, config, policy=policies[0], prefetch=prefetch)
    ranks = [loader_for(pipeline_shards, config, policy=policies[1 + r], rank=r, world_size=2, prefetch=prefetch)
             for r in range(2)]
    with one, ranks[0], ranks[1]:
        for t in range(3):
            whole = next(one)
            parts = [next(r) for r in ranks]
            for r, part in enumerate(parts):
                s = slice(4 * r, 4 * r + 4)
                assert tuple(part.x.shape) == (4, H, W, 3) and tuple(part.u_strong.shape) == (k, 4, H, W, 3)
                np.testing.assert_array_equal(part.plan.x_rows, whole.plan.x_rows[s])
                np.testing.assert_array_equal(part.plan.u_rows, whole.plan.u_rows[s])
                np.testing.assert_array_equal(part.x.numpy(), whole.x[s].numpy())
                np.testing.assert_array_equal(part.x_labels.numpy(), whole.x_labels[s].numpy())
                np.testing.assert_array_equal(part.x_probe.numpy(), whole.x_probe[s].numpy())
                np.testing.assert_array_equal(part.u_weak.numpy(), whole.u_weak[s].numpy())
                np.testing.assert_array_equal(part.u_strong.numpy(), whole.u_strong[:, s].numpy())
                np.testing.assert_array_equal(part.global_plan.x_rows, whole.plan.x_rows)
                np.testing.assert_array_equal(part.global_plan.probe_policies.levels,
                                              whole.plan.probe_policies.levels)
                want = remake_views(pipeline_shards.data.split, part.plan)
                np.testing.assert_array_equal(part.u_strong.numpy(), want["u_strong"])
            assert not set(parts[0].plan.u_rows.tolist()) & set(parts[1].plan.u_rows.tolist())
            # the same update on every rank: from the global plan and the global scores
            scores = probe_scores(t, 8)
            for policy, batch in zip(policies, [whole, *parts]):
                policy.update(batch.global_plan.probe_policies, scores)
            assert all(np.array_equal(p.rates, policies[0].rates) for p in policies)


def test_supervised_config_on_two_ranks(pipeline_shards):
    config = ViewConfig(batch=8, unlabeled_batch=0, k=2, labeled_strong=False, probes=False, seed=3)
    with loader_for(pipeline_shards, config, policy=None) as one:
        whole = next(one)
    for r in range(2):
        with loader_for(pipeline_shards, config, policy=None, rank=r, world_size=2) as loader:
            part = next(loader)
        assert tuple(part.u_strong.shape) == (2, 0, H, W, 3) and part.x_probe is None
        np.testing.assert_array_equal(part.x.numpy(), whole.x[4 * r:4 * r + 4].numpy())


def test_plan_components_are_independent(pipeline_shards):
    """Each component has its own generator: changing K or switching probes off leaves the other
    components' random numbers as they were, and no two components share numbers."""
    policy = CTAugment()
    x_rows, u_rows = np.arange(8), np.arange(100, 108)
    base = draw_plan(5, x_rows, u_rows, policy, ViewConfig(batch=8, unlabeled_batch=8, k=3, seed=1))
    more = draw_plan(5, x_rows, u_rows, policy, ViewConfig(batch=8, unlabeled_batch=8, k=5, seed=1))
    no_probes = draw_plan(5, x_rows, u_rows, policy, ViewConfig(batch=8, unlabeled_batch=8, k=3, seed=1, probes=False))
    other_step = draw_plan(6, x_rows, u_rows, policy, ViewConfig(batch=8, unlabeled_batch=8, k=3, seed=1))
    for plan in (more, no_probes):
        np.testing.assert_array_equal(plan.x_weak.offsets, base.x_weak.offsets)
        np.testing.assert_array_equal(plan.x_policies.levels, base.x_policies.levels)
        np.testing.assert_array_equal(plan.u_weak.offsets, base.u_weak.offsets)
    np.testing.assert_array_equal(more.probe_policies.levels, base.probe_policies.levels)
    assert no_probes.probe_policies is None
    np.testing.assert_array_equal(no_probes.u_policies.levels, base.u_policies.levels)
    assert not np.array_equal(base.u_weak.offsets, base.x_weak.offsets)
    assert not np.array_equal(base.u_strong_weak.offsets[:8], base.u_weak.offsets)
    assert not np.array_equal(base.u_policies.levels[:8], base.x_policies.levels)
    assert not np.array_equal(other_step.x_weak.offsets, base.x_weak.offsets)


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=-1), "K"),
    (dict(batch=0), "batch"),
    (dict(unlabeled_batch=-1), "unlabeled"),
    (dict(pad=-1), "pad"),
])
def test_bad_config(pipeline_shards, kwargs, match):
    with pytest.raises(PipelineError, match=match):
        loader_for(pipeline_shards, ViewConfig(**{**dict(batch=8, unlabeled_batch=8, k=2), **kwargs}))


def test_batch_not_splitting_over_ranks(pipeline_shards):
    with pytest.raises(PipelineError, match="split over 2 ranks"):
        loader_for(pipeline_shards, ViewConfig(batch=7, unlabeled_batch=8, k=1), rank=0, world_size=2)
    with pytest.raises(PipelineError, match="split over 2 ranks"):
        loader_for(pipeline_shards, ViewConfig(batch=8, unlabeled_batch=5, k=1), rank=1, world_size=2)


def test_subset_of_other_data(pipeline_shards, other_shards):
    assert pipeline_shards.shards.fingerprint != other_shards.shards.fingerprint
    with pytest.raises(PipelineError, match="fingerprint"):
        train_data(other_shards.shards, pipeline_shards.subset)
    # a subset without a fingerprint over another number of rows
    labels = np.arange(150) % 10
    with pytest.raises(PipelineError, match="150 rows"):
        train_data(pipeline_shards.shards, labeled_subset(labels, 20, seed=0))


def test_shards_without_manifest(pipeline_shards, tmp_path):
    copy_dir = tmp_path / "no_manifest"
    shutil.copytree(pipeline_shards.path, copy_dir)
    (copy_dir / "manifest.json").unlink()
    with pytest.raises(ShardError):
        open_shards(copy_dir)


@pytest.fixture(scope="module")
def grey_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey")
    write_tree(root / "tree", {"a": 6, "b": 6}, size=(8, 8))
    rc = prep_folder_main(["--source", str(root / "tree"), "--out", str(root / "ds"), "--mode", "L",
                           "--workers", "1", "--no-progress"])
    assert rc == 0
    return open_shards(root / "ds")


def test_images_must_have_three_channels(grey_shards):
    assert grey_shards.image_shape == (8, 8, 1)
    subset = labeled_subset(grey_shards, 4, seed=0)
    with pytest.raises(PipelineError, match="3"):
        train_data(grey_shards, subset)
    split = grey_shards["train"]
    labels = np.asarray(split.labels, np.int64)
    data = TrainData(split, labels, subset.labeled, subset.unlabeled(), 2)
    with pytest.raises(PipelineError, match="RGB"):
        StepLoader(data, CTAugment(), ViewConfig(batch=2, unlabeled_batch=2, k=1))
    with pytest.raises(PipelineError, match="RGB"):
        EvalLoader(split, batch=4)


class FailingFetcher:
    def __init__(self):
        self.calls = 0
        self.closed = False

    def __call__(self, rows):
        self.calls += 1
        raise RuntimeError("shard read failed")

    def close(self):
        self.closed = True


@pytest.mark.parametrize("prefetch", [True, False])
def test_fetcher_error_surfaces(pipeline_shards, prefetch):
    fetcher = FailingFetcher()
    loader = loader_for(pipeline_shards, prefetch=prefetch, fetcher=fetcher)
    with pytest.raises(RuntimeError, match="shard read failed"):
        next(loader)
    assert fetcher.calls >= 1
    loader.close()
    assert fetcher.closed


def test_custom_fetcher_is_used(pipeline_shards):
    split = pipeline_shards.data.split
    asked = []

    class Fetcher:
        closed = False

        def __call__(self, rows):
            asked.append(np.asarray(rows).copy())
            return split.images(rows)

        def close(self):
            self.closed = True

    fetcher = Fetcher()
    with loader_for(pipeline_shards, fetcher=fetcher, prefetch=False) as loader:
        batch = next(loader)
    assert fetcher.closed and len(asked) == 1
    np.testing.assert_array_equal(asked[0], np.concatenate([batch.plan.x_rows, batch.plan.u_rows]))
    np.testing.assert_array_equal(batch.u_weak.numpy(), remake_views(split, batch.plan)["u_weak"])


def test_the_kernel_renders_with_the_loaders_thread_count(pipeline_shards):
    """Numba's thread count is per thread: the render thread's, set before the kernel, is the loader's
    kernel_threads (default: torch's intra-op count), whatever the caller's."""
    split = pipeline_shards.data.split
    seen = []

    def fetcher(rows):  # runs in the render thread, right before the kernel
        seen.append(numba.get_num_threads())
        return split.images(rows)

    default = loader_for(pipeline_shards, prefetch=False)
    assert default.kernel_threads == min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    default.close()
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        with loader_for(pipeline_shards, fetcher=fetcher, prefetch=False, kernel_threads=threads) as loader:
            next(loader)
        assert loader.kernel_threads == threads and seen[-1] == threads
    with pytest.raises(PipelineError, match="kernel_threads must be in 1.."):
        loader_for(pipeline_shards, kernel_threads=0)


# -- evaluation ------------------------------------------------------------------------------------


def test_eval_loader_batches(pipeline_shards):
    split = pipeline_shards.shards["test"]
    rows = np.arange(5, 28)
    loader = EvalLoader(split, rows, batch=10)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b.rows) for b in batches] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([b.rows for b in batches]), rows)
    labels = np.asarray(split.labels, np.int64)
    for b in batches:
        assert isinstance(b.images, torch.Tensor) and b.images.dtype == torch.uint8
        assert tuple(b.images.shape) == (len(b.rows), H, W, 3)
        np.testing.assert_array_equal(b.images.numpy(), split.images(b.rows))
        assert b.labels.dtype == torch.int64
        np.testing.assert_array_equal(b.labels.numpy(), labels[b.rows])
    assert list(loader)[2].rows.tolist() == rows[20:].tolist()  # a second pass is the same


def test_eval_loader_ranks_cover_every_row_once(pipeline_shards):
    split = pipeline_shards.shards["test"]
    rows = np.arange(5, 28)
    seen = []
    for r in range(2):
        loader = EvalLoader(split, rows, batch=10, rank=r, world_size=2)
        seen.append([int(i) for b in loader for i in b.rows])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == rows.tolist()
    full = [int(i) for b in EvalLoader(split, batch=16) for i in b.rows]
    assert full == list(range(len(split)))
    with pytest.raises(PipelineError):
        EvalLoader(split, batch=0)
