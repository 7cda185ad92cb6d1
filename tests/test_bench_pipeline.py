"""``rmm-bench pipeline``: the report of a quick run on tiny synthetic shards is well formed (the
documented keys, every loader measured or skipped with a reason, ratios that agree with the rows,
the untimed like-for-like check at 0 differing views), and bad input fails with one line.

The run is small (B = 4, K = 2, one thread) and runs once, in a subprocess so that its Numba thread
settings, PIL pool and DALI pipelines stay out of the test process. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from datasets_helpers import assert_cli_error
from pipeline_helpers import N_LABELED, N_VALID, pipeline_shards  # noqa: F401 (a fixture)
from remixmatch.bench import loaders as bench_pipeline
from remixmatch.bench.cli import main

TOP_KEYS = {"schema_version", "command", "created", "wall_seconds", "machine", "conditions", "versions", "threads",
            "config", "inputs", "summary", "results", "equivalence"}
ROW_KEYS = {"bench", "backend", "device", "device_name", "prefetch", "batch", "unlabeled_batch", "k",
            "views_per_step", "strong_views_per_step", "output", "steps_per_s", "seconds_per_step",
            "strong_views_per_s", "views_per_s", "spread", "reps", "steps_per_rep", "warmup_steps",
            "ratio_vs_reference", "ratio_vs_pil_pool", "threads", "startup_seconds"}
SPREAD_KEYS = {"min", "max", "q1", "q3", "iqr", "stdev"}
SUMMARY_KEYS = {"torch_cpu_steps_per_s", "torch_cpu_no_prefetch_steps_per_s", "dali_cpu_steps_per_s",
                "dali_cpu_no_prefetch_steps_per_s", "reference_steps_per_s", "pil_pool_steps_per_s",
                "torch_vs_reference", "torch_vs_pil_pool", "dali_vs_reference", "dali_vs_pil_pool",
                "torch_cpu_strong_views_per_s", "dali_cpu_strong_views_per_s", "reference_strong_views_per_s",
                "pil_pool_strong_views_per_s", "goal_torch_vs_reference", "goal_met", "torch_cuda_steps_per_s",
                "torch_cuda_b256_steps_per_s", "views_bit_exact", "dali_graph_cpu_steps_per_s",
                "dali_graph_cpu_no_prefetch_steps_per_s", "dali_numba_cpu_steps_per_s", "dali_graph_vs_reference",
                "dali_graph_vs_dali", "dali_numba_vs_dali"}
B, K = 4, 2
PROG = "rmm-bench pipeline"


def bench_args(shards, out, *extra) -> list[str]:
    return ["pipeline", "--shards", str(shards), "--out", str(out), "--quick", "--batch", str(B), "--k", str(K),
            "--threads", "1", "--labels", str(N_LABELED), "--valid", str(N_VALID), *extra]


@pytest.fixture(scope="module")
def quick_run(pipeline_shards, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("pipelinebench")
    code = "import sys; from remixmatch.bench.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, *bench_args(pipeline_shards.path, out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, json.loads((out / "report.json").read_text()), done.stdout


def test_report_has_the_documented_top_level(quick_run):
    out, rep, _ = quick_run
    assert TOP_KEYS <= rep.keys()
    assert rep["command"] == "pipeline" and rep["schema_version"] == 1
    assert rep["config"]["quick"] is True and rep["config"]["reps"] == bench_pipeline.MIN_REPS
    assert rep["config"]["batch"] == B and rep["config"]["k"] == K and rep["config"]["threads"] == 1
    assert rep["machine"]["cpu_count"] >= 1 and "hostname" not in rep["machine"]
    assert rep["versions"]["torch"] and rep["versions"]["numba"]
    assert rep["threads"]["numba"] == 1 and rep["threads"]["pil_pool_processes"] == 1
    assert rep["inputs"]["rows"] == 200 and rep["inputs"]["labeled"] == N_LABELED
    assert "/" not in rep["inputs"]["shards"], "the directory's name only"
    assert SUMMARY_KEYS <= rep["summary"].keys()
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]


def test_every_loader_is_measured_or_skipped_with_a_reason(quick_run):
    _, rep, _ = quick_run
    rows = rep["results"]
    seen = {(r["backend"], r["device"], r.get("prefetch")) for r in rows}
    for prefetch in (True, False):
        assert ("torch", "cpu", prefetch) in seen and ("dali", "cpu", prefetch) in seen
        assert ("dali-graph", "cpu", prefetch) in seen  # the CTAugment kernel inside the DALI graph
    assert ("dali-numba", "cpu", True) in seen
    assert {("pil-pool", "cpu", None), ("pil-pool-float", "cpu", None)} <= seen
    cuda = [r for r in rows if r["device"] == "cuda"]
    assert cuda, "the CUDA rows are listed even without a device"
    for r in rows:
        if "skipped" in r:
            assert isinstance(r["skipped"], str) and r["skipped"].strip()
    if bench_pipeline.cuda_unavailable_reason() is not None:
        assert all("skipped" in r and "CUDA" in r["skipped"] for r in cuda)
    # The torch CPU loader and both pool rows always run.
    assert all("skipped" not in r for r in rows if r["backend"] in ("torch", "pil-pool", "pil-pool-float")
               and r["device"] == "cpu")


def test_rows_are_well_formed_and_consistent(quick_run):
    _, rep, _ = quick_run
    for r in (r for r in rep["results"] if "skipped" not in r):
        assert ROW_KEYS <= r.keys() and r["bench"] == "pipeline"
        assert r["batch"] == B and r["k"] == K
        assert r["views_per_step"] == 3 * B + K * B and r["strong_views_per_step"] == K * B
        assert r["steps_per_s"] > 0 and r["reps"] == bench_pipeline.MIN_REPS and r["steps_per_rep"] >= 2
        assert math.isclose(r["strong_views_per_s"], r["steps_per_s"] * K * B, rel_tol=1e-9)
        assert math.isclose(r["views_per_s"], r["steps_per_s"] * r["views_per_step"], rel_tol=1e-9)
        assert math.isclose(r["steps_per_s"] * r["seconds_per_step"], 1.0, rel_tol=0.5)
        s = r["spread"]
        assert SPREAD_KEYS <= s.keys() and 0 < s["min"] <= r["steps_per_s"] <= s["max"]
        assert r["threads"] == 1 and r["startup_seconds"] >= 0


def test_ratios_agree_with_the_rows(quick_run):
    _, rep, _ = quick_run
    rows = rep["results"]
    ref = bench_pipeline.find(rows, "pil-pool-float")
    pool = bench_pipeline.find(rows, "pil-pool")
    torch_on = bench_pipeline.find(rows, "torch", prefetch=True, batch=B)
    torch_off = bench_pipeline.find(rows, "torch", prefetch=False, batch=B)
    for r in bench_pipeline.measured(rows):
        assert math.isclose(r["ratio_vs_reference"], r["strong_views_per_s"] / ref["strong_views_per_s"], rel_tol=1e-9)
        assert math.isclose(r["ratio_vs_pil_pool"], r["strong_views_per_s"] / pool["strong_views_per_s"], rel_tol=1e-9)
    summary = rep["summary"]
    assert summary["torch_cpu_steps_per_s"] == torch_on["steps_per_s"]
    assert summary["torch_cpu_no_prefetch_steps_per_s"] == torch_off["steps_per_s"]
    assert summary["reference_steps_per_s"] == ref["steps_per_s"]
    assert math.isclose(summary["torch_vs_reference"], torch_on["steps_per_s"] / ref["steps_per_s"], rel_tol=1e-9)
    assert math.isclose(summary["torch_vs_pil_pool"], torch_on["steps_per_s"] / pool["steps_per_s"], rel_tol=1e-9)
    assert summary["goal_met"] == (summary["torch_vs_reference"] >= summary["goal_torch_vs_reference"])
    dali_on = bench_pipeline.find(rows, "dali", prefetch=True, batch=B)
    graph_on = bench_pipeline.find(rows, "dali-graph", prefetch=True, batch=B)
    if dali_on and graph_on:
        assert summary["dali_graph_cpu_steps_per_s"] == graph_on["steps_per_s"]
        assert math.isclose(summary["dali_graph_vs_dali"], graph_on["steps_per_s"] / dali_on["steps_per_s"],
                            rel_tol=1e-9)
    if bench_pipeline.cuda_unavailable_reason() is not None:
        assert summary["torch_cuda_steps_per_s"] is None and summary["torch_cuda_b256_steps_per_s"] is None


def test_like_for_like_check_finds_no_differing_view(quick_run):
    _, rep, _ = quick_run
    eq = rep["equivalence"]
    assert eq["views"] == 3 * B + K * B and eq["plan_matches_loader"] is True
    assert eq["pil_pool_differing_views"] == 0 and eq["pil_pool_float_differing_views"] == 0
    assert eq["pil_pool_float_max_abs_diff"] == 0 and eq["float_round_trip_exact"] is True
    assert eq["bit_exact"] is True and rep["summary"]["views_bit_exact"] is True


def test_markdown_holds_the_table_skips_and_equivalence(quick_run):
    out, rep, stdout = quick_run
    text = (out / "report.md").read_text()
    assert text.strip() == stdout.strip(), "the markdown printed is the one written"
    assert text.startswith("# rmm-bench pipeline") and "Machine: " in text and "Conditions: " in text
    assert f"## Headline: B = {B}, K = {K}" in text and "| loader |" in text
    assert "## Like for like (untimed)" in text and "**0** views" in text
    for r in rep["results"]:
        if "skipped" in r:
            assert r["skipped"] in text


# ---- bad input ----------------------------------------------------------------------------------------



def test_missing_shards_directory_is_one_line(tmp_path, capsys):
    assert_cli_error(main, PROG, capsys, bench_args(tmp_path / "absent", tmp_path / "out"), "absent")
    assert not (tmp_path / "out").exists()


def test_directory_without_manifest_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_cli_error(main, PROG, capsys, bench_args(empty, tmp_path / "out"), "manifest")
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--reps", "4"], "at least 5"),
    (["--batch", "0"], "--batch"),
    (["--valid", "-1"], "--valid"),
    (["--threads", "100000"], "--threads"),
])
def test_bad_values_are_one_line(tmp_path, capsys, extra, fragment):
    assert_cli_error(main, PROG, capsys, bench_args(tmp_path, tmp_path / "out", *extra), fragment)


def test_missing_shards_flag_and_out_that_is_a_file(tmp_path, capsys):
    assert_cli_error(main, PROG, capsys, ["pipeline", "--out", str(tmp_path)], "--shards")
    target = tmp_path / "file"
    target.write_text("x")
    assert_cli_error(main, PROG, capsys, bench_args(tmp_path, target), "not a directory")


def test_device_cuda_without_a_device_is_one_line(pipeline_shards, tmp_path, capsys):  # noqa: F811
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device answers here")
    assert_cli_error(main, PROG, capsys, bench_args(pipeline_shards.path, tmp_path / "out", "--device", "cuda"),
                     "--device cuda: no CUDA device")
