"""The typed rows are the report schema: ``compare`` takes its figures and row names from their
metadata, reports written before the rows were typed still compare, and a difference inside the
noise is shown with its range. No benchmark runs here."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from remixmatch.bench import compare as bench_compare
from remixmatch.bench.render import ratio_range, share_range
from remixmatch.bench.rows import EfficacyRow, FigureRow, LoaderRow, TrainRow

# The figures and row names compare used when they were a hand-written list.
OLD_METRICS = (
    "views_per_s", "steps_per_s", "strong_views_per_s", "images_per_s", "seconds_per_step", "ratio_vs_pil",
    "ratio_vs_reference", "ratio_vs_pil_pool", "data_wait_share", "wait_share_measured", "projected_hours",
    "speedup", "efficiency", "registers", "spill_store_bytes", "spill_load_bytes", "seconds", "shards_per_s",
    "rows_per_s", "mb_per_s", "accuracy", "ema_accuracy",
)
OLD_IDENTITY = ("command", "bench", "section", "backend", "device", "feed", "prefetch", "algorithm", "model", "op",
                "inputs", "k", "batch", "ranks", "kernel", "arch", "max_registers", "dataset", "stage", "variant",
                "seed", "labels")
SPREAD = {"min": 9.0, "max": 11.0, "q1": 9.5, "q3": 10.5, "iqr": 1.0, "stdev": 0.5}


def test_compare_reads_the_same_figures_and_names_from_the_rows_metadata():
    # and efficacy's accuracies, which the hand-written list named wrongly (accuracy, ema_accuracy)
    assert set(bench_compare.METRICS) == {*OLD_METRICS, "acc_ema_median", "acc_ema_best", "acc_raw_median"}
    assert bench_compare.IDENTITY == OLD_IDENTITY


def _old_pipeline_report(rate: float) -> dict:
    # A pipeline report as written before the rows were typed: no dali_threads, a skipped row.
    row = {"bench": "pipeline", "backend": "torch", "device": "cpu", "device_name": "cpu", "prefetch": True,
           "batch": 64, "unlabeled_batch": 64, "k": 8, "views_per_step": 704, "strong_views_per_step": 512,
           "output": "uint8 NHWC torch tensor", "steps_per_s": rate, "seconds_per_step": 1 / rate, "spread": SPREAD,
           "reps": 7, "steps_per_rep": 3, "warmup_steps": 5, "strong_views_per_s": 512 * rate,
           "views_per_s": 704 * rate, "ratio_vs_reference": None, "ratio_vs_pil_pool": None, "threads": 2,
           "startup_seconds": 1.5}
    return {"schema_version": 1, "command": "pipeline", "created": "2026-01-01T00:00:00Z", "summary": {},
            "results": [row, {"bench": "pipeline", "backend": "dali", "device": "cpu", "prefetch": True,
                              "batch": 64, "skipped": "no DALI"}]}


def test_an_old_report_compares_with_a_new_one(tmp_path, capsys):
    old = _old_pipeline_report(10.0)
    new_row = asdict(LoaderRow(backend="torch", device="cpu", device_name="cpu", prefetch=True, batch=64,
                               unlabeled_batch=64, k=8, views_per_step=704, strong_views_per_step=512,
                               output="uint8 NHWC torch tensor", steps_per_s=20.0, seconds_per_step=0.05,
                               spread=SPREAD, reps=7, steps_per_rep=3, warmup_steps=5, strong_views_per_s=512 * 20.0,
                               views_per_s=704 * 20.0, threads=2, startup_seconds=1.0, dali_threads=None))
    assert new_row.keys() >= old["results"][0].keys()
    new = {**old, "results": [new_row]}
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    assert bench_compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    table = {name: ratio for name, _, _, ratio in bench_compare.compare(old, new)}
    name = "pipeline: bench=pipeline backend=torch device=cpu prefetch=True k=8 batch=64 steps_per_s"
    assert table[name] == pytest.approx(2.0)
    assert name in capsys.readouterr().out


def _efficacy_report(acc: float) -> dict:
    rows = [asdict(EfficacyRow(variant=variant, seed=1, what=variant, run_dir=f"out/runs/{variant}-seed1",
                               acc_ema_median=acc + shift, acc_ema_best=acc + shift + 0.02,
                               acc_raw_median=acc + shift - 0.01, median_of=5, wall_seconds=60.0, steps=500,
                               algorithm=variant, k=k, uratio=uratio, schedules={}))
            for variant, shift, k, uratio in (("remixmatch", 0.0, 2, 1), ("supervised", -0.1, 0, 0))]
    return {"schema_version": 1, "command": "efficacy", "created": "2026-01-01T00:00:00Z",
            "summary": {"remixmatch": {"acc_ema_median_mean": acc, "seeds": 1}}, "results": rows}


def test_efficacy_accuracies_are_compared_row_by_row(tmp_path, capsys):
    a, b = _efficacy_report(0.40), _efficacy_report(0.50)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert bench_compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    table = {name: (va, vb, ratio) for name, va, vb, ratio in bench_compare.compare(a, b)}
    name = "efficacy: algorithm=supervised k=0 variant=supervised seed=1 acc_ema_median"
    assert table[name] == pytest.approx((0.30, 0.40, 0.40 / 0.30))
    for metric in ("acc_ema_median", "acc_ema_best", "acc_raw_median"):
        assert f"efficacy: algorithm=remixmatch k=2 variant=remixmatch seed=1 {metric}" in table
    assert not any(name.endswith(("wall_seconds", "steps", "median_of")) for name in table)
    assert name in capsys.readouterr().out


def test_gpu_check_figures_compare_row_by_row_and_an_old_report_still_reads(tmp_path, capsys):
    """gpu-check's figures pair by section, name and the items of where; a report written before
    they were typed (plain dicts of the same keys) compares with a new one."""
    where = {"views": 65536, "inputs": "device", "size": [32, 32]}
    old = {"schema_version": 1, "command": "gpu-check", "created": "2026-01-01T00:00:00Z",
           "summary": {"tests": {"passed": 5, "failed": 0}, "cuda_best_views_per_s": 2e7}, "results": [],
           "figures": [{"section": "augmentation", "name": "cuda_views_per_s", "value": 2e7, "unit": "views/s",
                        "where": where},
                       {"section": "augmentation", "name": "cuda_views_per_s", "value": 5e6, "unit": "views/s",
                        "where": {**where, "inputs": "host"}},
                       {"section": "learning", "name": "ema_accuracy", "value": 0.3, "unit": "fraction",
                        "where": {"step": 250}}]}
    new = {**old, "figures": [asdict(FigureRow(section="augmentation", name="cuda_views_per_s", value=3e7,
                                               unit="views/s", where=where)),
                              asdict(FigureRow(section="learning", name="ema_accuracy", value=0.36, unit="fraction",
                                               where={"step": 250}))]}
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    assert bench_compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    table = {name: (va, vb, ratio) for name, va, vb, ratio in bench_compare.compare(old, new)}
    device = "gpu-check: section=augmentation name=cuda_views_per_s views=65536 inputs=device size=[32, 32] value"
    assert table[device] == pytest.approx((2e7, 3e7, 1.5))
    assert table[device.replace("device", "host")] == (5e6, None, None)
    assert table["gpu-check: section=learning name=ema_accuracy step=250 value"] == pytest.approx((0.3, 0.36, 1.2))
    assert table["gpu-check summary.tests.passed"] == (5.0, 5.0, 1.0)
    assert device in capsys.readouterr().out


def test_a_measured_loader_row_is_its_dataclass_as_json():
    from remixmatch.bench.core import Timing
    from remixmatch.bench.loaders import PipelineConfig, measured_row

    timing = Timing([0.1] * 5, calls_per_rep=3, warmup_calls=5, first_seconds=1.0)
    config = PipelineConfig(shards=Path("shards"), out=Path("out"), batch=4, k=2)
    row = measured_row(config, "torch", "cpu", "cpu", True, 4, "uint8", timing, 1, 0.5)
    assert list(row) == [f.name for f in fields(LoaderRow)]
    assert row["steps_per_s"] == pytest.approx(10.0) and row["strong_views_per_s"] == pytest.approx(80.0)
    assert (row["reps"], row["steps_per_rep"], row["warmup_steps"]) == (5, 3, 5)
    assert TrainRow.__dataclass_fields__["feed"].metadata == {"key": 5}


def test_a_difference_inside_the_noise_shows_its_range():
    loader = {"steps_per_s": 9.2, "spread": {"min": 8.0, "max": 11.0}}
    ceiling = {"steps_per_s": 10.0, "spread": {"min": 9.0, "max": 10.5}}
    low, high = ratio_range(loader, ceiling)
    assert low == pytest.approx(1 - 11.0 / 9.0) and high == pytest.approx(1 - 8.0 / 10.5)
    assert share_range(0.08, low, high) == "8.0% (inside the noise: -22.2% to 23.8%)"
    assert share_range(0.5, 0.4, 0.6) == "50.0%"  # outside the noise: the figure alone
    assert share_range(None, low, high) == "-"
