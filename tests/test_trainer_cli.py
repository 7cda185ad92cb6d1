"""rmm-train (remixmatch.trainer.cli, .config): flags, presets, and every refusal as one line with
exit 2 (bad input) or 3 (divergence), leaving nothing half-written."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from datasets_helpers import assert_one_line_error
from remixmatch.trainer.checkpoint import checkpoint_paths, load_checkpoint
from remixmatch.trainer.cli import EXIT_BAD_INPUT, EXIT_DIVERGED, build_parser
from remixmatch.trainer.config import (
    ABLATIONS, PRESETS, RESUMABLE_FIELDS, ConfigError, TrainConfig, config_fields, contradictions, resolve,
)
from trainer_helpers import (  # noqa: F401  (pipeline_shards is a fixture)
    PROG, cli, metrics, pipeline_shards, smoke_args, smoke_config, snapshot, train,
)

SUPERVISED = ("--algorithm", "supervised")


@pytest.fixture(scope="module")
def finished_run(pipeline_shards, tmp_path_factory):
    """A finished 10-step supervised smoke run (read-only: copy it to change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(smoke_config(pipeline_shards.path, algorithm="supervised", steps=10), out)
    return out


# -- presets and flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_resolves_to_a_valid_config(preset):
    config = resolve(preset, [], {"data": "shards"})
    for name, value in PRESETS[preset].items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_every_ablation_resolves_on_the_paper_defaults_and_on_the_cpu_preset(ablation):
    for preset in (None, "cpu"):
        config = resolve(preset, [ablation], {})
        for name, value in ABLATIONS[ablation].items():
            assert getattr(config, name) == value, name


def test_cifar10_40_preset_is_the_papers_40_label_run():
    config = resolve("cifar10-40", [], {})
    assert (config.labels, config.k, config.w_rot, config.warmup_kimg) == (40, 1, 2.0, 8192.0)
    assert config.batch == 64 and config.ramp_steps == 8192 * 1024 / 64


def test_explicit_values_override_ablations_which_override_the_preset():
    config = resolve("cpu", ["k1"], {"width": 24})
    assert (config.k, config.width, config.batch) == (1, 24, PRESETS["cpu"]["batch"])
    assert resolve("cpu", ["k1"], {"k": 3}).k == 3


def test_every_config_field_is_a_flag():
    parser = build_parser()
    defaults = TrainConfig()
    argv = ["--out", "o"]
    expected = {}
    for field in config_fields():
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            argv.append(flag if not default else f"--no-{flag[2:]}")
            expected[field.name] = not default
        elif isinstance(default, str):
            argv += [flag, "x"]
            expected[field.name] = "x"
        else:
            argv += [flag, str(default + 1)]
            expected[field.name] = type(default)(default + 1)
    args = parser.parse_args(argv)
    assert {name: getattr(args, name) for name in expected} == expected


def test_resumable_fields_are_config_fields_and_may_differ_on_resume():
    names = {f.name for f in config_fields()}
    assert RESUMABLE_FIELDS <= names
    saved = TrainConfig().to_dict()
    changed = TrainConfig(steps=7, eval_every=3, keep_ckpts=9, device="cpu")
    assert contradictions(saved, changed) == []
    # prefetch changes which weights the policies come from: a resume may not switch it
    assert contradictions(saved, TrainConfig(prefetch=False)) == ["prefetch"]
    assert contradictions(saved, TrainConfig(steps=7, lr=0.01, k=3)) == ["k", "lr"]


def test_kimg_sets_the_steps_from_the_presets_batch(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out, *SUPERVISED), "--kimg", "0.05"], capsys)
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == round(0.05 * 1024 / PRESETS["smoke"]["batch"])


def test_a_batch_larger_than_the_labeled_set_runs_with_a_note(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    argv = smoke_args(pipeline_shards.path, out, *SUPERVISED, "--batch", "32", "--steps", "4", quiet=False)
    rc, _, err = cli(argv, capsys)
    assert rc == 0, err
    note = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "labeled set (20 images)" in note[0] and "batch (32)" in note[0]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


# -- refusals: exit 2, one line, nothing written ---------------------------------------------------------


def _bad_input_cases(data, empty):
    return {
        "no manifest": ([*smoke_args(empty, "OUT")], [str(empty), "manifest.json"]),
        "more labels than the data holds": ([*smoke_args(data, "OUT"), "--labels", "400"], ["400", str(data)]),
        "unknown eval split": ([*smoke_args(data, "OUT"), "--eval-split", "nope"], ["nope", str(data)]),
        "unknown preset": ([*smoke_args(data, "OUT"), "--preset", "huge"], ["--preset", "huge"]),
        "unknown ablation": ([*smoke_args(data, "OUT"), "--ablation", "no-mixup"], ["--ablation", "no-mixup"]),
        "negative K": ([*smoke_args(data, "OUT"), "--k", "-1"], ["--k", "-1"]),
        "empty batch": ([*smoke_args(data, "OUT"), "--batch", "0"], ["--batch", "0"]),
        "negative recalibration": ([*smoke_args(data, "OUT"), "--eval-recalibrate-bn", "-1"],
                                   ["--eval-recalibrate-bn", "-1"]),
        "non-finite lr": ([*smoke_args(data, "OUT"), "--lr", "nan"], ["--lr", "nan"]),
        "no data": (["--out", "OUT", "--preset", "smoke"], ["--data"]),
        "not a number": ([*smoke_args(data, "OUT"), "--steps", "ten"], ["--steps", "ten"]),
    }


@pytest.mark.parametrize("case", list(_bad_input_cases("D", "E")))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, pipeline_shards, tmp_path, capsys):
    empty = tmp_path / "not-shards"
    empty.mkdir()
    argv, fragments = _bad_input_cases(pipeline_shards.path, empty)[case]
    out = tmp_path / "run"
    argv = [out if a == "OUT" else a for a in argv]
    rc, stdout, err = cli(argv, capsys)
    assert rc == EXIT_BAD_INPUT
    assert_one_line_error(err, PROG, *fragments)
    assert not out.exists(), f"a refused start left {sorted(p.name for p in out.iterdir())}"
    # Nothing stands in the way of the corrected command.
    if case == "unknown eval split":
        assert cli(smoke_args(pipeline_shards.path, out, *SUPERVISED, "--steps", "2"), capsys)[0] == 0


def test_a_refused_start_in_an_existing_empty_out_leaves_it_empty(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out), "--labels", "400"], capsys)
    assert rc == EXIT_BAD_INPUT and out.is_dir() and not any(out.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_device_cuda_without_a_gpu_exits_2(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [out if a == "OUT" else a for a in smoke_args(pipeline_shards.path, out)]
    rc, _, err = cli([*argv, "--device", "cuda"], capsys)
    assert rc == EXIT_BAD_INPUT
    assert_one_line_error(err, PROG, "--device cuda", "no CUDA device", "--device cpu")
    assert not out.exists()


def test_an_out_holding_another_run_is_refused_without_resume(pipeline_shards, finished_run, capsys):
    before = snapshot(finished_run)
    rc, _, err = cli(smoke_args(pipeline_shards.path, finished_run, *SUPERVISED), capsys)
    assert rc == EXIT_BAD_INPUT
    assert_one_line_error(err, PROG, str(finished_run), "--resume")
    assert snapshot(finished_run) == before


def test_a_non_empty_out_without_a_run_is_refused(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, err = cli(smoke_args(pipeline_shards.path, out, *SUPERVISED), capsys)
    assert rc == EXIT_BAD_INPUT
    assert_one_line_error(err, PROG, str(out), "not empty")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("flag, value, field", [("--lr", "0.01", "lr"), ("--width", "16", "width"),
                                                ("--labels", "40", "labels"), ("--no-flip", None, "flip")])
def test_resume_with_a_contradicting_config_names_the_field(flag, value, field, pipeline_shards, finished_run,
                                                             capsys):
    before = snapshot(finished_run)
    extra = [flag] if value is None else [flag, value]
    rc, _, err = cli([*smoke_args(pipeline_shards.path, finished_run, *SUPERVISED), "--resume", *extra], capsys)
    assert rc == EXIT_BAD_INPUT
    assert_one_line_error(err, PROG, f"--resume: {field} = ", "contradicts the checkpoint", "ckpt-00000010.pt")
    assert snapshot(finished_run) == before


def test_resume_may_change_the_resumable_fields(pipeline_shards, finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    argv = [*smoke_args(pipeline_shards.path, out, *SUPERVISED), "--resume", "--steps", "14", "--log-every", "2",
            "--eval-every", "4", "--ckpt-every", "4", "--keep-ckpts", "5", "--median-of", "1"]
    rc, _, err = cli(argv, capsys)
    assert rc == 0, err
    assert [load_checkpoint(p)["step"] for p in checkpoint_paths(out)] == [10, 12, 14]
    assert [r["step"] for r in metrics(out) if not r.get("eval")] == [5, 10, 12, 14]


def test_resolve_refuses_unknown_names_with_a_config_error():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        resolve("huge", [], {})
    with pytest.raises(ConfigError, match="unknown ablation 'no-mixup'"):
        resolve(None, ["no-mixup"], {})
    with pytest.raises(ConfigError, match="--k must be at least 0"):
        resolve(None, [], {"k": -1})
    with pytest.raises(ConfigError, match="--batch must be at least 1"):
        resolve(None, [], {"batch": 0})


# -- divergence: exit 3, the last good checkpoint kept ---------------------------------------------------


def test_nan_loss_exits_3_naming_the_step_and_the_loss_term(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    # Adam moves every weight by about lr at once: 1e30 overflows them, and step 1's forward is NaN.
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out, *SUPERVISED), "--lr", "1e30"], capsys)
    assert rc == EXIT_DIVERGED
    assert_one_line_error(err, PROG, "step 1: loss term loss_x is nan", "none (no checkpoint written yet)")
    assert not checkpoint_paths(out) and not (out / "summary.json").exists()


def test_weights_that_overflow_are_never_checkpointed(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    # A checkpoint after every step: step 0's loss is finite but its update is not.
    argv = [*smoke_args(pipeline_shards.path, out, *SUPERVISED), "--lr", "1e30", "--ckpt-every", "1"]
    rc, _, err = cli(argv, capsys)
    assert rc == EXIT_DIVERGED
    assert_one_line_error(err, PROG, "step 0", "weights are not finite", "none (no checkpoint written yet)")
    assert not checkpoint_paths(out) and not list((out / "checkpoints").glob("*"))


def test_divergence_keeps_the_last_good_checkpoint(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    # w_match is ramped from 0: step 0 trains normally, step 1's weighted loss_u overflows float32.
    argv = [*smoke_args(pipeline_shards.path, out), "--w-match", "1e300", "--ckpt-every", "1"]
    rc, _, err = cli(argv, capsys)
    assert rc == EXIT_DIVERGED
    good = out / "checkpoints" / "ckpt-00000001.pt"
    assert_one_line_error(err, PROG, "step 1: loss term total is inf", f"Last good checkpoint: {good}")
    assert checkpoint_paths(out) == [good]
    state = load_checkpoint(good)
    assert state["step"] == 1
    assert all(torch.isfinite(t).all() for t in [*state["model"].values(), *state["ema"].values()]
               if t.is_floating_point())
    assert not (out / "summary.json").exists()


def test_config_fields_have_help_and_defaults_in_the_parser():
    help_text = build_parser().format_help()
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in help_text


# -- the shared error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize("raised, status, fragment", [
    (KeyboardInterrupt(), 130, "interrupted; continue with --resume"),
    (PermissionError(13, "Permission denied", "/runs/x/metrics.jsonl"), EXIT_BAD_INPUT,
     "/runs/x/metrics.jsonl: Permission denied"),
])
def test_interrupt_and_os_errors_are_one_line(raised, status, fragment, pipeline_shards, tmp_path, capsys,
                                              monkeypatch):
    from remixmatch.trainer import run

    def stop(self):
        raise raised

    monkeypatch.setattr(run.Run, "train", stop)
    rc, _, err = cli(smoke_args(pipeline_shards.path, tmp_path / "run", *SUPERVISED), capsys)
    assert rc == status
    assert_one_line_error(err, PROG, fragment)
