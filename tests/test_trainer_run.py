"""A training run end to end (remixmatch.trainer.run, .checkpoint, .step, .data, .progress): exact
resume, checkpoint safety, what a run writes, and that training learns."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
import torch

from datasets_helpers import REPO
from remixmatch.pipeline import CTAugment
from remixmatch.trainer import checkpoint as checkpoint_module
from remixmatch.trainer.checkpoint import (
    CheckpointError, checkpoint_paths, latest_checkpoint, load_checkpoint, save_checkpoint,
)
from remixmatch.trainer.progress import Progress
from remixmatch.trainer.run import Run, SUMMARY_VERSION
from remixmatch.trainer.algorithms.remixmatch import LOSS_NAMES
from trainer_helpers import (
    assert_identical, cli, latest_state, metrics, pipeline_shards, smoke_args, smoke_config, train,  # noqa: F401
)

VARIANTS = {
    "remixmatch-prefetch-off": {"prefetch": False},
    "remixmatch-prefetch-on": {"prefetch": True},
    "supervised": {"algorithm": "supervised"},
}


# The labeled views, the short-run rule and the early-training choices, two runs covering every
# flag (each flag's own effect is tested where it lives: the plan, the policy, the losses).
NEW_FLAG_VARIANTS = {
    "views-and-schedules": {"labeled_aug": "weak-then-strong", "schedules": "run-length", "cta_start": "gentle"},
    "early-training": {"mixup_lambda": "batch", "da_start": "first-batch", "labeled_aug": "weak"},
}


def variant_args(variant: str) -> list[str]:
    flags = {"remixmatch-prefetch-off": ["--no-prefetch"], "remixmatch-prefetch-on": ["--prefetch"],
             "supervised": ["--algorithm", "supervised"]}
    if variant in NEW_FLAG_VARIANTS:
        return [item for name, value in NEW_FLAG_VARIANTS[variant].items()
                for item in ("--" + name.replace("_", "-"), value)]
    return flags[variant]


@pytest.fixture(scope="module")
def straight(pipeline_shards, tmp_path_factory):
    """The 20-step smoke run of a variant, trained once per module without a stop (read-only)."""
    done = {}

    def get(variant: str):
        if variant not in done:
            out = tmp_path_factory.mktemp(f"straight-{variant}") / "run"
            train(smoke_config(pipeline_shards.path, **{**VARIANTS, **NEW_FLAG_VARIANTS}[variant]), out)
            done[variant] = out
        return done[variant]

    return get


def copy_run(src, dest):
    shutil.copytree(src, dest)
    return dest


def assert_same_final_state(out, reference):
    """The last checkpoints hold the same training state (wall-clock time aside) and the logs match."""
    a, b = latest_state(out), latest_state(reference)
    a.pop("elapsed"), b.pop("elapsed")
    for key in ("model", "ema", "optimizer", "policy", "distribution_alignment", "loader", "rng", "step"):
        assert_identical(a[key], b[key], key)
    assert_identical(a, b, "checkpoint")
    assert metrics(out) == metrics(reference)


# -- exact resume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_ten_steps_resume_ten_steps_equals_twenty_straight(variant, pipeline_shards, straight, tmp_path, capsys):
    out = tmp_path / "run"
    args = smoke_args(pipeline_shards.path, out, *variant_args(variant))
    assert cli([*args, "--steps", "10"], capsys)[0] == 0
    if variant != "supervised":
        # The weight table beside the checkpoints is the policy of that evaluation.
        policy = CTAugment()
        policy.load_state_dict(latest_state(out)["policy"])
        assert (out / "cta_weights.txt").read_text() == policy.table() + "\n"
    rc, _, err = cli([*args, "--steps", "20", "--resume"], capsys)
    assert rc == 0, err
    reference = straight(variant)
    state = latest_state(reference)
    if variant == "supervised":
        assert state["policy"] is None and state["distribution_alignment"] is None
    else:
        # Ten steps move the CTAugment weights and fill the DA buffer: the comparison is not vacuous.
        assert not np.array_equal(state["policy"]["rates"], CTAugment().rates)
        assert int(state["distribution_alignment"]["position"]) == 20
    assert_same_final_state(out, reference)
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000010.pt", "ckpt-00000020.pt"]


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_over(pipeline_shards, straight, tmp_path, capsys):
    out = tmp_path / "run"
    args = smoke_args(pipeline_shards.path, out, "--algorithm", "supervised")
    assert cli([*args, "--steps", "10"], capsys)[0] == 0
    shutil.rmtree(out / "checkpoints")  # as if killed before the step-10 checkpoint
    (out / "summary.json").unlink()
    rc, _, err = cli([*args, "--steps", "20", "--resume"], capsys)
    assert rc == 0, err
    # The log holds each step once: the stopped attempt's lines are gone.
    assert_same_final_state(out, straight("supervised"))


def test_a_time_limit_ends_the_run_at_a_log_step_with_a_checkpoint_and_resume_continues_exactly(
        pipeline_shards, straight, tmp_path, capsys):
    out = tmp_path / "run"
    args = smoke_args(pipeline_shards.path, out, "--algorithm", "supervised")
    rc, _, err = cli([*args, "--steps", "20", "--time-limit", "1e-9"], capsys)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["config"]["time_limit"] == 1e-9  # the first log step (log_every 5)
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000005.pt"]
    rc, _, err = cli([*args, "--steps", "20", "--resume"], capsys)
    assert rc == 0, err
    a, b = latest_state(out), latest_state(straight("supervised"))
    for key in ("model", "ema", "optimizer", "loader", "rng", "step"):
        assert_identical(a[key], b[key], key)


@pytest.mark.parametrize("variant", list(NEW_FLAG_VARIANTS))
def test_each_new_flag_resumes_exactly_after_a_stop(variant, pipeline_shards, straight, tmp_path, capsys):
    """Stopped by --time-limit at step 5 of 20 (these flags span --steps, so the length stays), then
    resumed: the same final state as the straight run, which the flags changed."""
    out = tmp_path / "run"
    args = [*smoke_args(pipeline_shards.path, out, *variant_args(variant)), "--steps", "20"]
    rc, _, err = cli([*args, "--time-limit", "1e-9"], capsys)
    assert rc == 0, err
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000005.pt"]
    rc, _, err = cli([*args, "--resume"], capsys)
    assert rc == 0, err
    reference = straight(variant)
    a, b = latest_state(out), latest_state(reference)  # (the stop added an evaluation at step 5)
    for key in ("model", "ema", "optimizer", "policy", "distribution_alignment", "loader", "rng", "step"):
        assert_identical(a[key], b[key], key)
    summary = json.loads((reference / "summary.json").read_text())
    for name, value in NEW_FLAG_VARIANTS[variant].items():
        assert summary["config"][name] == value and json.loads((out / "config.json").read_text())[name] == value
    assert summary["schedules"]["labeled_aug"] == NEW_FLAG_VARIANTS[variant]["labeled_aug"]
    if variant == "views-and-schedules":
        assert summary["schedules"]["ramp_steps"] == 20 and summary["schedules"]["ema"] == pytest.approx(0.9)
    plain = latest_state(straight("remixmatch-prefetch-on"))["model"]
    assert any(not torch.equal(a, b) for a, b in zip(latest_state(reference)["model"].values(), plain.values()))
    if variant == "views-and-schedules":  # another length is another schedule: refused
        rc, _, err = cli([*args, "--resume", "--steps", "30"], capsys)
        assert rc == 2 and "--resume: steps = 30 contradicts the checkpoint's 20" in err, err


def test_recalibrated_evaluations_leave_training_untouched_and_resume_exactly(pipeline_shards, straight, tmp_path,
                                                                              capsys):
    """--eval-recalibrate-bn, stopped at step 5 and resumed: the final state of the straight run
    without the flag (training untouched, resume exact); each evaluation line has the recalibrated
    accuracies and the trained statistics' ones (that run's); the last is rmm-eval --recalibrate-bn's."""
    from remixmatch.trainer.evaluate import evaluate

    images = 64
    out = tmp_path / "run"
    args = [*smoke_args(pipeline_shards.path, out, "--prefetch", "--eval-recalibrate-bn", str(images)), "--steps", "20"]
    rc, _, err = cli([*args, "--time-limit", "1e-9"], capsys)
    assert rc == 0, err
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000005.pt"]
    rc, _, err = cli([*args, "--resume"], capsys)
    assert rc == 0, err
    plain = straight("remixmatch-prefetch-on")
    a, b = latest_state(out), latest_state(plain)
    for key in ("model", "ema", "optimizer", "policy", "distribution_alignment", "loader", "rng", "step"):
        assert_identical(a[key], b[key], key)
    evaluations = [r for r in metrics(out) if r.get("eval")]
    assert [r["step"] for r in evaluations] == [5, 10, 20]  # (the stop's at step 5)
    assert [(r["acc_ema_trained_bn"], r["acc_raw_trained_bn"]) for r in evaluations[1:]] == \
        [(r["acc_ema"], r["acc_raw"]) for r in metrics(plain) if r.get("eval")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"]["recalibrate_bn"] == images == summary["config"]["eval_recalibrate_bn"]
    assert json.loads((out / "config.json").read_text())["eval_recalibrate_bn"] == images
    assert summary["accuracy"]["ema_last"] == evaluations[-1]["acc_ema"]

    progress = Progress(20)
    progress.evaluation(evaluations[-1])
    assert capsys.readouterr().err.strip() == (
        f"eval step 20: accuracy {100 * evaluations[-1]['acc_ema']:.2f}% (ema) {100 * evaluations[-1]['acc_raw']:.2f}% "
        f"(raw) with BN statistics re-estimated; {100 * evaluations[-1]['acc_ema_trained_bn']:.2f}% (ema) "
        f"{100 * evaluations[-1]['acc_raw_trained_bn']:.2f}% (raw) with the trained ones")

    # The same images, batches and statistics as rmm-eval's: its figures for the last checkpoint
    # (the raw model, whose two accuracies differ there).
    report = evaluate(out, recalibrate_bn=images, which="raw", out=tmp_path / "eval")
    assert report["accuracy"] == evaluations[-1]["acc_raw"]
    assert report["bn_recalibration"]["accuracy_trained_statistics"] == evaluations[-1]["acc_raw_trained_bn"]


# -- the step ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["supervised", "remixmatch"])
def test_repeated_steps_on_one_batch_lower_its_loss(algorithm, pipeline_shards, tmp_path):
    run = Run(smoke_config(pipeline_shards.path, algorithm=algorithm), tmp_path / "run", quiet=True)
    try:
        batch = next(run.loader)
        before = [p.detach().clone() for p in run.state.ema_model.parameters()]
        # Past the ramp, so every step weighs the terms alike; each loss is the one before its update.
        losses = torch.stack([run.step_fn(run.state, batch, 1000).losses for _ in range(6)]).numpy()
    finally:
        run.loader.close()
    assert np.isfinite(losses).all()
    assert losses[1, 0] < losses[0, 0], "one step did not lower the loss on its own batch"
    assert losses[-1, 0] < 0.95 * losses[0, 0], losses[:, 0]
    assert losses[-1, LOSS_NAMES.index("loss_x")] < losses[0, LOSS_NAMES.index("loss_x")]
    if algorithm == "remixmatch":
        assert losses[-1, LOSS_NAMES.index("loss_rot")] < losses[0, LOSS_NAMES.index("loss_rot")]
    assert any(not torch.equal(a, b) for a, b in zip(before, run.state.ema_model.parameters())), \
        "the EMA did not follow the trained weights"


def test_a_short_run_fits_forty_labeled_images(pipeline_shards, tmp_path):
    config = smoke_config(pipeline_shards.path, algorithm="supervised", labels=40, batch=40, width=16, steps=150,
                          eval_every=150, ckpt_every=150, log_every=50)
    run = Run(config, tmp_path / "run", quiet=True)
    run.train()
    rows = np.sort(run.data.train.labeled)
    assert len(rows) == 40
    images = torch.from_numpy(run.data.train.split.images(rows)).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(run.data.train.labels[rows])
    with torch.no_grad():
        for name, model in (("raw", run.state.raw_model), ("ema", run.state.ema_model)):
            model.eval()
            accuracy = (model(images).argmax(dim=1) == labels).float().mean().item()
            # Noise images carry no signal: high accuracy on them is memorisation by the training loop.
            assert accuracy >= 0.9, f"{name} model fits {accuracy:.0%} of its 40 training images"


# -- what a run writes ---------------------------------------------------------------------------------


def test_summary_config_and_metrics_are_well_formed(pipeline_shards, straight):
    out = straight("remixmatch-prefetch-on")
    config = smoke_config(pipeline_shards.path, prefetch=True)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"summary_version", "algorithm", "steps", "kimg", "accuracy", "eval_split", "eval_rows",
                            "labeled", "dataset", "model", "device", "loader", "world_size", "wall_seconds",
                            "versions", "threads", "fidelity", "config", "schedules"}
    assert summary["summary_version"] == SUMMARY_VERSION
    assert summary["schedules"]["schedules"] == config.schedules == "fixed"  # the smoke preset's
    assert summary["schedules"]["labeled_aug"] == config.labeled_aug
    assert summary["algorithm"] == "remixmatch" and summary["steps"] == 20 and summary["kimg"] == 20 * 8 / 1024
    assert summary["config"] == config.to_dict() == json.loads((out / "config.json").read_text())
    assert summary["eval_split"] == "test" and summary["eval_rows"] == len(pipeline_shards.shards["test"])
    assert summary["device"] == "cpu" and summary["loader"] == "torch" and summary["world_size"] == 1
    assert summary["wall_seconds"] > 0 and summary["versions"]["torch"] == torch.__version__
    assert summary["model"]["name"] == "WRN-10 width 8" and summary["model"]["parameters"] > 0
    # The loader's kernel gets torch's intra-op count (kernels/threads.py).
    threads = summary["threads"]
    assert threads["torch"] == torch.get_num_threads()
    assert threads["loader_kernel"] == min(threads["torch"], numba.config.NUMBA_NUM_THREADS)
    assert threads["set_by"] in ("remixmatch", "user") and threads["omp_wait"]
    assert summary["dataset"]["path"] == str(pipeline_shards.path) and len(summary["dataset"]["mean"]) == 3

    records = metrics(out)
    evaluations = [r for r in records if r.get("eval")]
    steps = [r for r in records if not r.get("eval")]
    assert [r["step"] for r in steps] == [5, 10, 15, 20]
    assert all(set(LOSS_NAMES[1:]) | {"loss", "kimg"} <= set(r) for r in steps)
    assert [r["step"] for r in evaluations] == [10, 20]
    assert all(0 <= r["acc_ema"] <= 1 and 0 <= r["acc_raw"] <= 1 for r in evaluations)
    raw_lines = (out / "metrics.jsonl").read_text().splitlines()
    assert all(set(json.loads(line)) >= {"kimg_per_s", "data_wait", "step_seconds"}
               for line, r in zip(raw_lines, records) if not r.get("eval"))

    accuracy = summary["accuracy"]
    assert accuracy["median_of"] == 2
    assert accuracy["ema_median_last"] == float(np.median([r["acc_ema"] for r in evaluations]))
    assert accuracy["raw_median_last"] == float(np.median([r["acc_raw"] for r in evaluations]))
    assert accuracy["ema_best"] == max(r["acc_ema"] for r in evaluations)
    assert accuracy["ema_last"] == evaluations[-1]["acc_ema"]
    assert accuracy["recalibrate_bn"] == 0 and not any("acc_ema_trained_bn" in r for r in evaluations)

    labeled = json.loads((out / summary["labeled"]["file"]).read_text())
    assert summary["labeled"]["n_labeled"] == len(labeled["labeled"]) == 20
    assert labeled["fingerprint"] == summary["labeled"]["fingerprint"] == pipeline_shards.shards.fingerprint


def test_cta_weight_table_and_heatmap_are_written_at_the_evaluation(straight):
    out = straight("remixmatch-prefetch-off")
    policy = CTAugment()
    policy.load_state_dict(latest_state(out)["policy"])
    assert (out / "cta_weights.txt").read_text() == policy.table() + "\n"
    assert (out / "cta_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*")) and not list((out / "checkpoints").glob(".*"))


# -- checkpoints ---------------------------------------------------------------------------------------


def test_checkpoint_is_written_whole_under_a_temporary_name_then_renamed(straight, tmp_path, monkeypatch):
    state = latest_state(straight("supervised"))
    state["step"] = 30
    renames = []
    real_replace = os.replace

    def watching_replace(src, dst):
        src, dst = type(tmp_path)(src), type(tmp_path)(dst)
        renames.append((src.name, dst.name))
        assert not dst.exists(), "the final name existed before the rename"
        assert load_checkpoint(src)["step"] == 30, "the temporary file was not complete at the rename"
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", watching_replace)
    path = save_checkpoint(tmp_path, state, keep=3)
    assert path == tmp_path / "checkpoints" / "ckpt-00000030.pt"
    assert len(renames) == 1 and renames[0][1] == path.name
    assert renames[0][0].startswith(".ckpt-00000030.pt.tmp-")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_failed_checkpoint_write_leaves_the_previous_ones_and_no_stray_file(straight, tmp_path):
    run_dir = copy_run(straight("supervised"), tmp_path / "run")
    before = {p.name: p.read_bytes() for p in checkpoint_paths(run_dir)}
    state = latest_state(run_dir)
    state["step"] = 30
    state["evaluations"] = [lambda: None]  # cannot be pickled: torch.save fails part way
    with pytest.raises(Exception):
        save_checkpoint(run_dir, state, keep=1)
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == before


def test_only_the_last_keep_ckpts_checkpoints_are_kept(pipeline_shards, tmp_path):
    out = tmp_path / "run"
    train(smoke_config(pipeline_shards.path, algorithm="supervised", steps=10, ckpt_every=2, keep_ckpts=3), out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "ckpt-00000006.pt", "ckpt-00000008.pt", "ckpt-00000010.pt"]
    assert [load_checkpoint(p)["step"] for p in checkpoint_paths(out)] == [6, 8, 10]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path):
    path.write_bytes(os.urandom(4096))


def _foreign(path):
    torch.save({"model": {}}, path)


@pytest.mark.parametrize("corrupt", [_truncate, _garbage, _foreign], ids=["truncated", "garbage", "not-ours"])
def test_resume_falls_back_past_a_corrupt_latest_checkpoint(corrupt, pipeline_shards, straight, tmp_path, capsys):
    reference = straight("supervised")
    out = copy_run(reference, tmp_path / "run")
    bad = out / "checkpoints" / "ckpt-00000020.pt"
    corrupt(bad)
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out, "--algorithm", "supervised", quiet=False), "--resume"],
                     capsys)
    assert rc == 0, err
    warning = next(line for line in err.splitlines() if "falling back" in line)
    assert str(bad) in warning
    assert f"resuming from {out / 'checkpoints' / 'ckpt-00000010.pt'} (step 10)" in err
    # Steps 11-20 again, from the step-10 checkpoint: the same run as one that never stopped.
    assert_same_final_state(out, reference)


def test_resume_refuses_when_no_checkpoint_loads_naming_them(pipeline_shards, straight, tmp_path, capsys):
    out = copy_run(straight("supervised"), tmp_path / "run")
    paths = checkpoint_paths(out)
    for path in paths:
        _truncate(path)
    with pytest.raises(CheckpointError) as raised:
        latest_checkpoint(out, warn=lambda text: None)
    assert all(str(p) in str(raised.value) for p in paths)
    untouched = (out / "metrics.jsonl").read_bytes()
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out, "--algorithm", "supervised"), "--resume"], capsys)
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("rmm-train: error: ")]
    assert len(errors) == 1 and "no loadable checkpoint" in errors[0]
    assert all(str(p) in errors[0] for p in paths)
    assert (out / "metrics.jsonl").read_bytes() == untouched


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    # The process dies by SIGKILL once a checkpoint's bytes are written, before its rename.
    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    from remixmatch.trainer.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_works(
        pipeline_shards, straight, tmp_path, capsys):
    out = tmp_path / "run"
    args = [str(a) for a in smoke_args(pipeline_shards.path, out, "--algorithm", "supervised")]
    assert cli([*args, "--steps", "10"], capsys)[0] == 0
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, *args, "--steps", "20", "--resume"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = list((out / "checkpoints").glob(".ckpt-00000020.pt.tmp-*"))
    assert len(leftovers) == 1, "the killed write should have left its temporary file"
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000010.pt"]
    assert load_checkpoint(checkpoint_paths(out)[0])["step"] == 10
    rc, _, err = cli([*args, "--steps", "20", "--resume"], capsys)
    assert rc == 0, err
    assert_same_final_state(out, straight("supervised"))
    assert not list((out / "checkpoints").glob(".*")), "the killed write's temporary file was not cleared"
