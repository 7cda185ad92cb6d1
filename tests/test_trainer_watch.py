"""Watching a run: curves.png at each evaluation, and with --tensorboard the metrics.jsonl scalars
and the CTA heatmap as TensorBoard event files in the run directory."""

from __future__ import annotations

import json
import sys

import pytest

from datasets_helpers import assert_one_line_error
from remixmatch.trainer.curves import draw_run_curves, read_metrics
from trainer_helpers import cli, pipeline_shards, smoke_args  # noqa: F401  (pipeline_shards is a fixture)

PNG = b"\x89PNG\r\n\x1a\n"


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_holds_the_metrics_and_the_heatmap(pipeline_shards, tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (the tensorboard extra)")
    out = tmp_path / "run"
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out), "--tensorboard"], capsys)
    assert rc == 0, err
    assert list(out.glob("events.out.tfevents.*")), sorted(p.name for p in out.iterdir())
    events = _events(out)
    tags = events.Tags()
    steps, evaluations = read_metrics(out / "metrics.jsonl")
    for name in ("loss", "loss_x", "loss_u", "loss_kl", "loss_rot", "kimg_per_s", "data_wait", "step_seconds"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{name}")]
        assert logged == [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in steps], name
    for name in ("acc_ema", "acc_raw"):
        logged = [(e.step, e.value) for e in events.Scalars(f"eval/{name}")]
        assert logged == [(r["step"], pytest.approx(r[name], rel=1e-6)) for r in evaluations], name
    assert "cta/heatmap" in tags["images"]
    images = events.Images("cta/heatmap")
    assert [i.step for i in images] == [r["step"] for r in evaluations]
    assert images[-1].encoded_image_string[:8] == PNG and images[-1].width > 100


def test_curves_png_at_each_evaluation_without_tensorboard_files(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out), "--steps", "10"], capsys)
    assert rc == 0, err
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert not list(out.glob("events.out.tfevents.*"))
    first = (out / "curves.png").stat().st_mtime_ns
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out), "--steps", "20", "--resume"], capsys)
    assert rc == 0, err
    assert (out / "curves.png").stat().st_mtime_ns > first  # redrawn at the new evaluations


def test_curves_say_why_when_there_is_nothing_to_draw(tmp_path):
    assert "no records" in draw_run_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"eval": True, "step": 5, "acc_ema": 0.5, "acc_raw": 0.4})
                                            + "\n" + '{"step": 6, "lo')  # a line cut short by a kill
    assert draw_run_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png") is None
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


def test_tensorboard_without_the_package_is_one_line_exit_2(pipeline_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    rc, _, err = cli([*smoke_args(pipeline_shards.path, out), "--tensorboard"], capsys)
    assert rc == 2
    assert_one_line_error(err, "rmm-train", "--tensorboard needs the tensorboard package")
    assert not out.exists()


def test_tensorboard_resume_hides_the_events_past_the_checkpoint(pipeline_shards, tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (the tensorboard extra)")
    out = tmp_path / "run"
    args = [*smoke_args(pipeline_shards.path, out), "--tensorboard", "--algorithm", "supervised"]
    assert cli(args, capsys)[0] == 0
    # As if killed after step 20 was logged but before its checkpoint was written.
    (out / "checkpoints" / "ckpt-00000020.pt").unlink()
    (out / "summary.json").unlink()
    rc, _, err = cli([*args, "--resume"], capsys)
    assert rc == 0, err
    steps, evaluations = read_metrics(out / "metrics.jsonl")
    events = _events(out)
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in steps] == [5, 10, 15, 20]
    assert [e.step for e in events.Scalars("eval/acc_ema")] == [r["step"] for r in evaluations] == [10, 20]


def test_tensorboard_files_come_from_the_lead_rank_only(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (the tensorboard extra)")
    from remixmatch.trainer.tensorboard import metrics_log

    other_rank = metrics_log(tmp_path / "metrics.jsonl", enabled=False, tensorboard=True)
    other_rank.write({"step": 1, "loss": 1.0})
    other_rank.image("cta/heatmap", tmp_path / "cta_heatmap.png", 1)
    assert list(tmp_path.iterdir()) == []
