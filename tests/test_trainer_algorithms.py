"""FixMatch and MixMatch beside ReMixMatch and the supervised baseline: each algorithm's losses on
hand-computed tensors, its settings, the views its loader renders (bit-exact with apply_ops), its
metrics, exact resume, and the refusal to resume one algorithm as another."""

from __future__ import annotations

import contextlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from pipeline_helpers import batch_arrays, remake_views
from remixmatch.kernels import apply_ops, weak_augment
from remixmatch.kernels.ops import OP_ID
from remixmatch.pipeline import StepLoader
from remixmatch.pipeline.plan import kernel_call
from remixmatch.trainer.algorithms import METRICS, STEPS
from remixmatch.trainer.algorithms.fixmatch import pseudo_label_accuracy
from remixmatch.trainer.algorithms.mixmatch import guess_labels
from remixmatch.trainer.build import build_optimizer, build_policy_and_views
from remixmatch.trainer.checkpoint import checkpoint_paths
from remixmatch.trainer.config import (
    ALGORITHMS, PRESETS, ConfigError, TrainConfig, contradictions, resolve,
)
from remixmatch.trainer.losses import (
    confidence_mask, cosine_learning_rate, l2_loss, masked_cross_entropy, sharpen, weight_decay_gradient_,
)
from remixmatch.trainer.step import TrainState, learning_rate, optimise
from trainer_helpers import (  # noqa: F401  (pipeline_shards is a fixture)
    assert_identical, cli, latest_state, metrics, pipeline_shards, smoke_args, smoke_config, train,
)

CUTOUT = OP_ID["cutout"]


# -- the losses, on small hand-computed tensors --------------------------------------------------------


def test_threshold_mask_keeps_the_rows_at_or_above_tau_and_the_loss_averages_over_all_rows():
    p = torch.tensor([[0.96, 0.04], [0.5, 0.5], [0.05, 0.95], [0.9, 0.1]])
    labels, mask = confidence_mask(p, 0.95)
    assert labels.tolist() == [0, 0, 1, 0]
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0]  # 0.95 itself passes
    # logits whose softmax is (3/4, 1/4): cross-entropy against class 0 is ln(4/3), class 1 ln 4
    logits = torch.log(torch.tensor([[0.75, 0.25]] * 4))
    loss = masked_cross_entropy(logits, labels, mask)
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 4, rel=1e-6)
    # no row above tau: no unlabeled loss at all
    assert masked_cross_entropy(logits, labels, torch.zeros(4)).item() == 0.0


def test_pseudo_label_accuracy_counts_rows_with_a_known_class_only():
    pseudo = torch.tensor([0, 1, 2, 3])
    assert pseudo_label_accuracy(pseudo, torch.tensor([0, 1, 0, 0])).item() == 0.5
    assert pseudo_label_accuracy(pseudo, torch.tensor([0, -1, 0, -1])).item() == 0.5
    assert pseudo_label_accuracy(pseudo, torch.tensor([-1, -1, -1, -1])).item() == 0.0


def test_cosine_schedule_at_zero_half_and_the_end():
    lr, total = 0.03, 1000
    assert cosine_learning_rate(lr, 0, total) == lr
    assert cosine_learning_rate(lr, total // 2, total) == pytest.approx(lr * math.cos(7 * math.pi / 32))
    assert cosine_learning_rate(lr, total, total) == pytest.approx(lr * math.cos(7 * math.pi / 16))
    assert cosine_learning_rate(lr, total, total) == pytest.approx(0.005853, abs=1e-6)
    fixmatch = resolve(None, [], {"algorithm": "fixmatch", "steps": total})
    assert learning_rate(fixmatch, total // 2) == cosine_learning_rate(lr, total // 2, total)
    remixmatch = resolve(None, [], {"steps": total})
    assert learning_rate(remixmatch, 0) == learning_rate(remixmatch, total) == 0.002


def tiny_state(config: TrainConfig, weight) -> TrainState:
    """A one-weight-matrix model in a TrainState, for the optimiser's arithmetic."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
    ema = nn.Linear(2, 1, bias=False)
    ema.load_state_dict(model.state_dict())
    return TrainState(model, model, ema, build_optimizer(config, model.parameters()), [model.weight], None,
                      config, torch.device("cpu"))


def test_coupled_weight_decay_goes_through_sgd_momentum_and_decoupled_decay_does_not():
    w = [1.0, -2.0]
    # FixMatch: wd/2 |w|^2 joins the loss; its gradient wd w passes through Nesterov SGD, whose first
    # step moves by lr (g + 0.9 g) = 1.9 lr wd w.
    coupled = resolve(None, [], {"algorithm": "fixmatch", "lr": 0.1, "weight_decay": 0.5, "steps": 10,
                                 "lr_schedule": "constant"})
    state = tiny_state(coupled, w)
    zero_loss = state.model(torch.zeros(1, 2)).sum() * 0
    optimise(state, zero_loss, 0)
    expected = torch.tensor([w]) * (1 - 1.9 * 0.1 * 0.5)
    torch.testing.assert_close(state.raw_model.weight.detach(), expected)
    # the gradient it added is autograd's of wd/2 |w|^2 on top of the loss's own
    weight = torch.tensor([w], requires_grad=True)
    data = torch.tensor([[3.0, 5.0]])
    ((weight * data).sum() + 0.5 * 0.5 * weight.square().sum()).backward()
    reference = weight.grad.clone()
    weight.grad = None
    (weight * data).sum().backward()
    weight_decay_gradient_([weight], 0.5)
    torch.testing.assert_close(weight.grad, reference)
    # the same settings, decoupled: a zero gradient leaves SGD still, then w <- w (1 - wd lr)
    state = tiny_state(coupled.replace(weight_decay_mode="decoupled"), w)
    optimise(state, state.model(torch.zeros(1, 2)).sum() * 0, 0)
    torch.testing.assert_close(state.raw_model.weight.detach(), torch.tensor([w]) * (1 - 0.1 * 0.5))
    # ReMixMatch / MixMatch: Adam (a zero gradient: no move), then the decoupled decay at lr 0.002
    adam = resolve(None, [], {"algorithm": "mixmatch"})
    state = tiny_state(adam, w)
    optimise(state, state.model(torch.zeros(1, 2)).sum() * 0, 0)
    torch.testing.assert_close(state.raw_model.weight.detach(), torch.tensor([w]) * (1 - 0.02 * 0.002))
    # the EMA followed (decay 0.999 from the initial weights)
    torch.testing.assert_close(state.ema_model.weight.detach(),
                               torch.tensor([w]) + 0.001 * (state.raw_model.weight.detach() - torch.tensor([w])))


class ProbabilitiesAsLogits(nn.Module):
    """A stand-in model whose inputs are probability rows: its logits are their logs."""

    def forward(self, p):
        return p.log()


def test_mixmatch_guess_is_the_mean_over_views_sharpened_and_its_loss_is_l2():
    views = [torch.tensor([[0.6, 0.4], [0.1, 0.9]]), torch.tensor([[0.2, 0.8], [0.3, 0.7]])]
    guess = guess_labels(ProbabilitiesAsLogits(), views, 0.5, contextlib.nullcontext)
    # mean (0.4, 0.6) -> squared (0.16, 0.36) / 0.52; mean (0.2, 0.8) -> (0.04, 0.64) / 0.68
    expected = torch.tensor([[0.16 / 0.52, 0.36 / 0.52], [0.04 / 0.68, 0.64 / 0.68]])
    torch.testing.assert_close(guess, expected)
    torch.testing.assert_close(sharpen(torch.tensor([[0.4, 0.6]]), 0.5), expected[:1])
    assert not guess.requires_grad
    # L2: mean over rows and classes of (softmax - target)^2
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # softmax (1/2, 1/2), (3/4, 1/4)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert l2_loss(logits, targets).item() == pytest.approx((0.25 + 0.25 + 0.5625 + 0.5625) / 4)


# -- settings ------------------------------------------------------------------------------------------


def test_algorithm_alone_gives_its_papers_settings():
    fixmatch = resolve(None, [], {"algorithm": "fixmatch"})
    assert (fixmatch.optimizer, fixmatch.lr, fixmatch.momentum, fixmatch.nesterov) == ("sgd", 0.03, 0.9, True)
    assert (fixmatch.lr_schedule, fixmatch.weight_decay, fixmatch.weight_decay_mode) == ("cosine", 5e-4, "loss")
    assert (fixmatch.uratio, fixmatch.k, fixmatch.confidence, fixmatch.w_match) == (7, 1, 0.95, 1.0)
    assert (fixmatch.cta_rule, fixmatch.cutout, fixmatch.cutout_level) == ("bin", True, 1.0)
    assert (fixmatch.batch, fixmatch.ema, fixmatch.steps) == (64, 0.999, 1 << 20)
    mixmatch = resolve(None, [], {"algorithm": "mixmatch"})
    assert (mixmatch.k, mixmatch.temperature, mixmatch.mixup_alpha, mixmatch.w_match) == (2, 0.5, 0.75, 75.0)
    assert (mixmatch.unlabeled_loss, mixmatch.ramp_steps, mixmatch.optimizer, mixmatch.lr) == ("l2", 16384, "adam", 0.002)
    assert (mixmatch.weight_decay, mixmatch.weight_decay_mode, mixmatch.ema) == (0.02, "decoupled", 0.999)
    assert resolve(None, [], {}) == TrainConfig()  # ReMixMatch: the defaults
    # an explicit flag still wins over the algorithm's defaults
    assert resolve(None, [], {"algorithm": "fixmatch", "uratio": 3}).uratio == 3


def test_named_presets_of_each_algorithm():
    assert resolve("fixmatch-cifar10-40", [], {}).labels == 40
    assert resolve("fixmatch-cifar10-4000", [], {}).optimizer == "sgd"
    svhn = resolve("fixmatch-svhn-250", [], {})
    assert (svhn.algorithm, svhn.labels, svhn.flip, svhn.uratio) == ("fixmatch", 250, False, 7)
    mixmatch = resolve("mixmatch-cifar10-250", [], {})
    assert (mixmatch.algorithm, mixmatch.labels, mixmatch.unlabeled_loss) == ("mixmatch", 250, "l2")
    with pytest.raises(ConfigError, match="--algorithm remixmatch contradicts --preset fixmatch-cifar10-40"):
        resolve("fixmatch-cifar10-40", [], {"algorithm": "remixmatch"})
    with pytest.raises(ConfigError, match="the ablations are ReMixMatch's"):
        resolve(None, ["no-da"], {"algorithm": "fixmatch"})


@pytest.mark.parametrize("preset", ["cpu", "smoke"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_short_presets_fit_every_algorithm(preset, algorithm):
    config = resolve(preset, [], {"algorithm": algorithm})
    assert config.algorithm == algorithm and config.steps == PRESETS[preset]["steps"]
    # BN and EMA horizons (1 / (1 - decay) steps) of half the run at most
    assert 1 / config.bn_momentum <= config.steps / 2 and 1 / (1 - config.ema) <= config.steps / 2 + 1e-9
    if algorithm in ("remixmatch", "mixmatch"):
        assert config.ramp_steps <= config.steps  # the ramp ends within the run
        assert config.k == 2
    if preset == "cpu":  # the short-run rule: every method's ramp spans the whole run
        assert config.schedules == "run-length" and config.ramp_steps == config.steps
        assert config.labeled_aug == "weak"
    if algorithm == "fixmatch":
        assert config.lr_schedule == "cosine" and config.k == 1 and config.uratio < 7
        assert learning_rate(config, config.steps) == pytest.approx(config.lr * math.cos(7 * math.pi / 16))


def test_short_run_rule_hand_checked_values():
    # H = max(steps / 20, 10) steps of memory; a bin of 17 gets batch * depth / (19 ops * 17) probe
    # hits a step; none slower than the paper's values.
    hits_32 = 32 * 2 / (19 * 17)  # 0.19814 at the cpu preset's batch
    cases = {
        2000: (2000 * 32 / 1024, 0.99, 0.01, 1 - 1 / (100 * hits_32)),  # H = 100: cta 0.94953
        400: (400 * 32 / 1024, 0.95, 0.05, 1 - 1 / (20 * hits_32)),  # H = 20: cta 0.74766
        100: (100 * 32 / 1024, 0.9, 0.1, 0.5),  # H = 10 (the floor): 1.98 hits, at least 2
        1 << 20: (1024.0, 0.999, 0.001, 0.99),  # the paper's values
    }
    for algorithm in ALGORITHMS:
        for steps, (warmup, ema, bn, cta) in cases.items():
            config = resolve("cpu", [], {"algorithm": algorithm, "steps": steps})
            got = (config.warmup_kimg, config.ema, config.bn_momentum, config.cta_decay)
            assert got == pytest.approx((warmup, ema, bn, cta), abs=1e-12), (algorithm, steps)
    assert resolve("cpu", [], {"steps": 2000}).cta_decay == pytest.approx(0.9495312, abs=1e-7)
    # an explicit flag wins over the rule, the rest still follows it
    config = resolve("cpu", [], {"steps": 2000, "ema": 0.999})
    assert (config.ema, config.bn_momentum) == (0.999, pytest.approx(0.01))
    # fixed schedules, the paper presets and --fidelity reference keep the paper's views and values
    fixed = resolve("cpu", ["fixed-schedules"], {"steps": 2000})
    assert (fixed.ema, fixed.bn_momentum, fixed.cta_decay, fixed.warmup_kimg) == (0.999, 0.001, 0.99, 1024.0)
    for preset in ("cifar10-250", "paper-reference", "stl10-1000"):
        config = resolve(preset, [], {})
        assert (config.labeled_aug, config.schedules, config.ema, config.cta_decay) == ("strong", "fixed", 0.999, 0.99)
    assert resolve("cpu", [], {"fidelity": "reference"}).labeled_aug == "strong"
    assert resolve("cpu", [], {"fidelity": "reference", "algorithm": "mixmatch", "bn_mode": "joint"}).labeled_aug == "weak"
    # the rule spans --steps: a resume with another length is another run
    saved = resolve("cpu", [], {"steps": 1000}).to_dict()
    assert contradictions(saved, resolve("cpu", [], {"steps": 2000}))[0] == "steps"
    assert contradictions(saved, resolve("cpu", [], {"steps": 1000, "eval_every": 7})) == []
    assert contradictions(resolve("smoke", [], {}).to_dict(), resolve("smoke", [], {"steps": 40})) == []


@pytest.mark.parametrize("bad, message", [
    ({"labeled_aug": "mixed"}, "--labeled-aug must be one of strong, weak, weak-then-strong, got 'mixed'"),
    ({"labeled_aug": "strong", "algorithm": "fixmatch"}, "--labeled-aug strong: fixmatch's labeled views are weak"),
    ({"labeled_aug_switch": 1.0}, "--labeled-aug-switch must be in (0, 1)"),
    ({"schedules": "short"}, "--schedules must be one of fixed, run-length"),
    ({"cta_start": "soft"}, "--cta-start must be one of uniform, gentle"),
    ({"mixup_lambda": "row"}, "--mixup-lambda must be one of example, batch"),
    ({"da_start": "zero"}, "--da-start must be one of uniform, first-batch"),
])
def test_new_choices_refuse_bad_values(bad, message):
    with pytest.raises(ConfigError) as error:
        resolve("smoke", [], bad)
    assert message in str(error.value)


@pytest.mark.parametrize("labeled_aug, strong_steps", [
    ("strong", {0, 9, 10, 19}), ("weak", set()), ("weak-then-strong", {10, 19})])
def test_labeled_views_are_weak_or_strong_in_the_plan(labeled_aug, strong_steps):
    from remixmatch.pipeline.plan import draw_plan
    from remixmatch.pipeline.policy import IDENTITY

    config = resolve("smoke", [], {"labeled_aug": labeled_aug, "steps": 20, "data": "unused"})
    policy, views = build_policy_and_views(config)
    for step in (0, 9, 10, 19):
        plan = draw_plan(step, np.arange(8), np.arange(8), policy, views)
        labeled_ops = int((plan.x_policies.op_ids != IDENTITY).sum())  # ops the labeled views render
        assert (labeled_ops > 0) == (step in strong_steps), (labeled_aug, step)
        assert (plan.u_policies.op_ids != IDENTITY).sum() > 0  # the unlabeled strong views stay strong
        assert int((plan.probe_policies.op_ids != IDENTITY).sum()) > 0


# -- the views of each algorithm -----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithms_views_are_bit_exact_with_apply_ops(algorithm, pipeline_shards):
    config = resolve("smoke", [], {"algorithm": algorithm, "data": "unused"})
    policy, views = build_policy_and_views(config)
    split = pipeline_shards.data.split
    with StepLoader(pipeline_shards.data, policy, views, prefetch=False) as loader:
        batch = next(loader)
    got, plan = batch_arrays(batch), batch.plan
    want = remake_views(split, plan)
    for name in ("x", "x_probe", "u_weak", "u_strong"):
        if want[name] is None:
            assert got[name] is None, name
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(batch.u_labels.numpy(), pipeline_shards.data.labels[plan.u_rows])
    b, bu = len(plan.x_rows), len(plan.u_rows)
    counts = kernel_call(plan).counts
    x_images = split.images(plan.x_rows)
    weak_x = weak_augment(x_images, plan.x_weak.flips, plan.x_weak.offsets)
    if algorithm == "remixmatch":
        assert counts == {"x": b, "probe": b, "u_weak": bu, "u_strong": 2 * bu}
        assert not np.array_equal(got["x"], weak_x)  # labeled views are strong
        return
    # every other algorithm's labeled views are weak only
    np.testing.assert_array_equal(got["x"], weak_x)
    if algorithm == "supervised":
        assert counts == {"x": b, "u_weak": 0, "u_strong": 0}
    elif algorithm == "mixmatch":
        # K = 2 weak views: the weak view and one more, no probes, no CTAugment
        assert counts == {"x": b, "u_weak": bu, "u_strong": bu} and policy is None
        u_images = split.images(plan.u_rows)
        np.testing.assert_array_equal(got["u_strong"][0], weak_augment(u_images, plan.u_strong_weak.flips,
                                                                       plan.u_strong_weak.offsets))
    else:
        # FixMatch: probes, one strong view per unlabeled image: CTAugment (bin rule), then Cutout
        assert counts == {"x": b, "probe": b, "u_weak": bu, "u_strong": bu} and policy.rule == "bin"
        assert plan.cutout_level == 1.0
        # one kernel call: the Cutout is the strong views' last op, every other view's is identity
        call = kernel_call(plan)
        assert call.policies.depth == 3
        np.testing.assert_array_equal(call.policies.op_ids[-bu:, 2], CUTOUT)
        np.testing.assert_array_equal(call.policies.levels[-bu:, 2, 0], 1.0)
        np.testing.assert_array_equal(call.policies.op_ids[:-bu, 2], OP_ID["identity"])
        u_images = split.images(plan.u_rows)
        sources = np.arange(bu, dtype=np.int32)
        without = apply_ops(u_images, *plan.u_policies.arrays(), sources=sources, flips=plan.u_strong_weak.flips,
                            offsets=plan.u_strong_weak.offsets)
        differs = (got["u_strong"][0] != without).any(axis=(1, 2, 3))
        assert differs.all(), "the Cutout is missing from some strong view"
        # the 16 px square of grey (127) is there, clipped at the border: at least 8 x 8 of it
        grey = (got["u_strong"][0] == 127).all(axis=3).sum(axis=(1, 2))
        assert (grey >= 64).all(), grey


# -- training ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(pipeline_shards, tmp_path_factory):
    """A 20-step smoke run of each semi-supervised algorithm, trained once per module (read-only)."""
    done = {}

    def get(algorithm: str):
        if algorithm not in done:
            out = tmp_path_factory.mktemp(f"run-{algorithm}") / "run"
            train(smoke_config(pipeline_shards.path, algorithm=algorithm), out)
            done[algorithm] = out
        return done[algorithm]

    return get


@pytest.mark.parametrize("algorithm", ["fixmatch", "mixmatch"])
def test_a_run_logs_the_algorithms_metrics(algorithm, runs):
    out = runs(algorithm)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == algorithm and summary["steps"] == 20
    steps = [r for r in metrics(out) if not r.get("eval")]
    assert [r["step"] for r in steps] == [5, 10, 15, 20]
    names = set(METRICS[algorithm][1:])
    assert all(names <= set(r) and "loss_kl" not in r for r in steps)
    assert all(np.isfinite(r["loss"]) for r in steps)
    if algorithm == "fixmatch":
        assert all(0 <= r["mask_rate"] <= 1 and 0 <= r["pseudo_acc"] <= 1 for r in steps)
        state = latest_state(out)
        assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
            cosine_learning_rate(0.03, 19, 20))  # the last step's learning rate
        assert state["policy"]["rule"] == "bin"
    else:
        assert latest_state(out)["policy"] is None


def test_fixmatch_mask_rate_and_pseudo_label_accuracy_are_those_of_the_batch(pipeline_shards, tmp_path):
    from remixmatch.trainer.run import Run

    # tau = 0.05 keeps every row of a 10-class model (max p >= 0.1): the mask rate is 1
    run = Run(smoke_config(pipeline_shards.path, algorithm="fixmatch", confidence=0.05), tmp_path / "run", quiet=True)
    try:
        batch = next(run.loader)
        with torch.no_grad():
            run.state.raw_model.train()
            before = {k: v.clone() for k, v in run.state.raw_model.state_dict().items()}
            x = torch.cat([batch.x, batch.u_weak, batch.u_strong.flatten(0, 1)]).permute(0, 3, 1, 2).float() / 255
            weak = run.state.raw_model(x)[len(batch.x):len(batch.x) + len(batch.u_weak)]
            run.state.raw_model.load_state_dict(before)  # the probe forward moved the BN statistics
        result = STEPS["fixmatch"](run.state, batch, 0)
    finally:
        run.loader.close()
    names = METRICS["fixmatch"]
    values = dict(zip(names, result.losses.tolist()))
    assert values["mask_rate"] == 1.0
    want = (weak.argmax(dim=1) == batch.u_labels).float().mean().item()
    assert values["pseudo_acc"] == pytest.approx(want)
    assert values["total"] == pytest.approx(values["loss_x"] + values["loss_u"], rel=1e-6)
    assert values["loss_u"] > 0


@pytest.mark.parametrize("algorithm", ["fixmatch", "mixmatch", "supervised"])
def test_resume_from_the_middle_checkpoint_ends_like_the_straight_run(algorithm, runs, pipeline_shards, tmp_path,
                                                                      capsys):
    reference = runs(algorithm) if algorithm != "supervised" else None
    if reference is None:
        reference = tmp_path / "straight"
        train(smoke_config(pipeline_shards.path, algorithm=algorithm), reference)
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "checkpoints" / "ckpt-00000020.pt").unlink()
    (out / "summary.json").unlink()
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out, "--algorithm", algorithm), "--resume"], capsys)
    assert rc == 0, err
    a, b = latest_state(out), latest_state(reference)
    assert a["step"] == 20
    a.pop("elapsed"), b.pop("elapsed")
    assert_identical(a, b, "checkpoint")
    assert metrics(out) == metrics(reference)
    if algorithm == "fixmatch":
        assert not np.array_equal(b["policy"]["rates"], np.ones_like(b["policy"]["rates"]))  # CTAugment learnt


def test_a_checkpoint_of_one_algorithm_is_not_resumed_as_another_naming_the_field(runs, pipeline_shards, tmp_path,
                                                                                    capsys):
    out = tmp_path / "run"
    shutil.copytree(runs("fixmatch"), out)
    before = {p.name: p.read_bytes() for p in checkpoint_paths(out)}
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out, "--algorithm", "mixmatch"), "--resume"], capsys)
    assert rc == 2
    assert "--resume: algorithm = 'mixmatch' contradicts the checkpoint's 'fixmatch'" in err, err
    assert {p.name: p.read_bytes() for p in checkpoint_paths(out)} == before
    # a cosine schedule spans --steps: a longer run is another schedule, refused too
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out, "--algorithm", "fixmatch"), "--resume", "--steps", "30"],
                     capsys)
    assert rc == 2 and "--resume: steps = 30 contradicts the checkpoint's 20" in err, err
    saved = resolve("smoke", [], {"algorithm": "remixmatch"}).to_dict()
    assert contradictions(saved, resolve("smoke", [], {"algorithm": "fixmatch"}))[0] == "algorithm"
    assert contradictions(saved, resolve("smoke", [], {"algorithm": "remixmatch", "steps": 40})) == []
