"""``rmm-bench train``: the report of a quick run on tiny synthetic shards is well formed (documented
keys, positive rates, data-wait shares that agree with the rows, CUDA rows measured or skipped with a
reason), it runs without DALI and without shards, it builds the trainer's objects exactly as
``Run`` does, and bad input fails with one line.

Runs are tiny (width 8, one block per stage, B = 4, K = 2, one thread); the one with shards runs in a
subprocess with ``nvidia.dali`` made unimportable. Nothing here asserts a speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from datasets_helpers import assert_cli_error
from pipeline_helpers import N_LABELED, N_VALID, pipeline_shards  # noqa: F401 (a fixture)
from remixmatch.bench import train_steps as bench_train
from remixmatch.bench.cli import main
from remixmatch.trainer.build import build_policy_and_views, build_train_state
from remixmatch.trainer.phases import PHASES

TOP_KEYS = {"schema_version", "command", "created", "wall_seconds", "machine", "conditions", "versions", "threads",
            "config", "inputs", "summary", "results"}
ROW_KEYS = {"bench", "device", "device_name", "feed", "prefetch", "algorithm", "model", "width",
            "blocks_per_stage", "parameters", "batch", "unlabeled_batch", "k", "images_per_step", "views_per_step",
            "steps_per_s", "seconds_per_step", "images_per_s", "views_per_s", "kimg_per_s", "spread", "reps",
            "steps_per_rep", "warmup_steps", "wait_seconds_per_step", "wait_share_measured", "data_wait_share",
            "projected_hours", "threads", "numba_threads", "bf16", "channels_last", "losses_finite",
            "startup_seconds", "compile", "peak_memory_gib"}
DEVICE_SUMMARY_KEYS = {"model", "synthetic_steps_per_s", "loader_steps_per_s", "loader_no_prefetch_steps_per_s",
                       "synthetic_images_per_s", "loader_images_per_s", "data_wait_share",
                       "data_wait_share_no_prefetch", "wait_share_measured", "wait_share_measured_no_prefetch",
                       "projected_hours_synthetic", "projected_hours_loader"}
SPREAD_KEYS = {"min", "max", "q1", "q3", "iqr", "stdev"}
B, K = 4, 2
PROG = "rmm-bench train"
TINY = ["--quick", "--batch", str(B), "--k", str(K), "--width", "8", "--blocks-per-stage", "1", "--threads", "1",
        "--labels", str(N_LABELED), "--valid", str(N_VALID)]
# The quick run also measures scaling on 1..3 CPU processes (3 is a skipped row: B = 4 does not split
# over 3, and 2-core machines have too few cores).
PROCS_MAX = 3
SCALING = ["--scaling", "--procs-max", str(PROCS_MAX)]
SCALING_ROW_KEYS = {"bench", "section", "device", "device_name", "ranks", "launch", "backend", "algorithm", "model",
                    "width", "blocks_per_stage", "batch", "unlabeled_batch", "k", "batch_per_rank",
                    "images_per_step", "steps", "log_every", "window_step_seconds", "timed_windows",
                    "seconds_per_step", "steps_per_s", "images_per_s", "kimg_per_s", "speedup", "efficiency",
                    "threads", "numba_threads", "wall_seconds"}
# Runs rmm-bench with DALI unimportable, and fails if anything even tried to import it.
NO_DALI = """
import sys
tried = []
class NoDali:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            tried.append(name)
            raise ImportError("DALI is blocked in this test")
        return None
sys.meta_path.insert(0, NoDali)
from remixmatch.bench.cli import main
code = main()
assert not tried, f"imported {tried}"
sys.exit(code)
"""


def cuda_reason():
    return bench_train.cuda_unavailable_reason()


@pytest.fixture(scope="module")
def quick_run(pipeline_shards, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("trainbench")
    argv = ["train", "--shards", str(pipeline_shards.path), "--out", str(out), *TINY, *SCALING]
    done = subprocess.run([sys.executable, "-c", NO_DALI, *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, json.loads((out / "report.json").read_text()), done.stdout


def test_report_has_the_documented_top_level(quick_run):
    out, rep, _ = quick_run
    assert TOP_KEYS <= rep.keys() and rep["command"] == "train" and rep["schema_version"] == 1
    config = rep["config"]
    assert config["quick"] is True and config["reps"] == bench_train.QUICK_REPS
    assert config["batch"] == B and config["k"] == K and config["threads"] == 1 and config["algorithm"] == "remixmatch"
    assert config["scaling"] is True and config["procs_max"] == PROCS_MAX
    assert rep["machine"]["cpu_count"] >= 1 and "hostname" not in rep["machine"]
    assert rep["versions"]["torch"] and rep["versions"]["numba"]
    assert rep["threads"]["torch"] == 1 and rep["threads"]["numba"] == 1
    assert rep["inputs"]["rows"] == 200 and rep["inputs"]["labeled"] == N_LABELED
    assert "/" not in rep["inputs"]["shards"], "the directory's name only"
    assert rep["conditions"].keys() == {"load_average_at_start", "other_cpu_seconds", "other_cpu_share"}
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]


def test_every_device_and_feed_is_measured_or_skipped(quick_run):
    _, rep, _ = quick_run
    rows = rep["results"]
    assert [(r["device"], r["feed"], r["prefetch"]) for r in rows] == [
        (d, f, p) for d in bench_train.DEVICES for f, p in bench_train.FEEDS]
    assert all("skipped" not in r for r in rows if r["device"] == "cpu")
    cuda = [r for r in rows if r["device"] == "cuda"]
    if cuda_reason() is not None:
        assert all(r["skipped"] == cuda_reason() and "CUDA" in r["skipped"] for r in cuda)
        assert rep["summary"]["cuda"] is None and rep["machine"]["gpu"] is None
    for r in rows:
        if "skipped" in r:
            assert r["bench"] == "train" and r["skipped"].strip() and r["batch"] == B


def test_rows_are_well_formed(quick_run):
    _, rep, _ = quick_run
    for r in bench_train.measured(rep["results"]):
        assert ROW_KEYS <= r.keys() and r["bench"] == "train" and r["algorithm"] == "remixmatch"
        assert (r["width"], r["blocks_per_stage"], r["model"]) == (8, 1, "WRN-10 width 8")
        assert r["parameters"] > 0 and r["losses_finite"] is True
        assert (r["batch"], r["unlabeled_batch"], r["k"]) == (B, B, K)
        assert r["images_per_step"] == 2 * B and r["views_per_step"] == 3 * B + K * B
        assert r["steps_per_s"] > 0 and r["seconds_per_step"] > 0
        assert r["reps"] == bench_train.QUICK_REPS and r["steps_per_rep"] >= 1 and r["warmup_steps"] >= 1
        s = r["spread"]
        assert SPREAD_KEYS <= s.keys() and 0 < s["min"] <= r["steps_per_s"] <= s["max"]
        assert math.isclose(r["images_per_s"], r["steps_per_s"] * 2 * B, rel_tol=1e-9)
        assert math.isclose(r["views_per_s"], r["steps_per_s"] * r["views_per_step"], rel_tol=1e-9)
        assert math.isclose(r["kimg_per_s"], r["steps_per_s"] * B / 1024, rel_tol=1e-9)
        assert math.isclose(r["projected_hours"], r["seconds_per_step"] * 2**20 / 3600, rel_tol=1e-9)
        assert r["wait_seconds_per_step"] >= 0 and 0 <= r["wait_share_measured"] <= 1
        assert r["threads"] == 1 and r["startup_seconds"] > 0
        if r["device"] == "cpu":
            assert r["bf16"] is False and r["channels_last"] is False
            assert r["compile"] is False and r["peak_memory_gib"] is None
            assert r["numba_threads"] == (1 if r["feed"] == "loader" else None)


def test_every_measured_row_splits_its_step_into_the_phases(quick_run):
    _, rep, _ = quick_run
    for r in bench_train.measured(rep["results"]):
        seconds, shares = r["phase_seconds_per_step"], r["phase_shares"]
        assert r["phase_steps"] == bench_train.PHASE_STEPS[True]
        assert list(seconds) == [*PHASES, "other"] and list(shares) == list(seconds)
        assert all(value >= 0 for value in seconds.values())
        assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-6)
        # Every step runs the forward, the backward and the optimiser; a loader-fed one waits for data.
        assert min(seconds["forward"], seconds["backward"], seconds["optimiser"], seconds["cta_update"]) > 0
        if r["feed"] == "loader" and not r["prefetch"]:
            assert seconds["data_wait"] > 0


def test_data_wait_shares_agree_with_the_rows(quick_run):
    _, rep, _ = quick_run
    rows = rep["results"]
    synthetic = bench_train.find(rows, "cpu", "synthetic", True)
    on, off = bench_train.find(rows, "cpu", "loader", True), bench_train.find(rows, "cpu", "loader", False)
    assert synthetic["data_wait_share"] is None
    for r in (on, off):
        assert math.isclose(r["data_wait_share"], 1 - r["steps_per_s"] / synthetic["steps_per_s"], rel_tol=1e-9)
        # A loader row can beat the ceiling on a busy machine (noise, OpenMP waiting: see the
        # markdown note), by a lot on a model this small; it can never take all the time.
        assert -3.0 <= r["data_wait_share"] < 1, (r["data_wait_share"], r["spread"], synthetic["spread"])
    summary = rep["summary"]
    assert summary["paper_steps"] == 2**20 and DEVICE_SUMMARY_KEYS <= summary["cpu"].keys()
    cpu = summary["cpu"]
    assert cpu["synthetic_steps_per_s"] == synthetic["steps_per_s"] and cpu["loader_steps_per_s"] == on["steps_per_s"]
    assert cpu["loader_no_prefetch_steps_per_s"] == off["steps_per_s"]
    assert cpu["data_wait_share"] == on["data_wait_share"]
    assert cpu["data_wait_share_no_prefetch"] == off["data_wait_share"]
    assert cpu["wait_share_measured"] == on["wait_share_measured"]
    assert cpu["projected_hours_loader"] == on["projected_hours"]
    assert cpu["projected_hours_synthetic"] == synthetic["projected_hours"]
    assert synthetic["wait_seconds_per_step"] < 0.01, ("ready tensors: next() returns at once",
                                                       synthetic["wait_seconds_per_step"])


def test_markdown_holds_the_table_and_the_skips(quick_run):
    out, rep, stdout = quick_run
    text = (out / "report.md").read_text()
    assert text.strip() == stdout.strip()
    assert text.startswith("# rmm-bench train") and "Machine: " in text and "Conditions: " in text
    assert f"## Headline: B = {B}, K = {K}" in text and "| device | model | feed |" in text
    assert "data-wait share" in text and "2^20 steps" in text
    for name in ("synthetic (ready tensors)", "loader, prefetch", "loader, no prefetch"):
        assert f"| cpu | WRN-10 width 8 | {name} |" in text
    for r in rep["results"]:
        if "skipped" in r:
            assert r["skipped"] in text


def test_a_loader_row_above_the_ceiling_gets_a_note(quick_run):
    _, rep, _ = quick_run
    rep = json.loads(json.dumps(rep))
    assert "faster than the synthetic ceiling" not in bench_train.render_markdown(
        {**rep, "results": [{**r, "data_wait_share": 0.1} if r.get("feed") == "loader" and "skipped" not in r else r
                            for r in rep["results"]]})
    on = bench_train.find(rep["results"], "cpu", "loader", True)
    on["data_wait_share"] = -0.5
    text = bench_train.render_markdown(rep)
    assert "faster than the synthetic ceiling" in text and "cpu loader, prefetch -50.0%" in text
    assert {"numba_threading_layer", "omp_wait_policy"} <= rep["threads"].keys()
    # what Numba's OpenMP runtime started with and who chose it, not only the variable's value
    from remixmatch.kernels.threads import wait_policy
    assert rep["threads"]["omp_wait_policy"] == wait_policy() and rep["threads"]["omp_wait_policy"]["set_by"]


# ---- scaling -----------------------------------------------------------------------------------------

def test_scaling_rows_are_measured_or_skipped_and_well_formed(quick_run):
    from remixmatch.bench.report import usable_cpus

    _, rep, _ = quick_run
    rows = rep["scaling"]
    cpu = [r for r in rows if r["device"] == "cpu"]
    assert [r["ranks"] for r in cpu] == list(range(1, PROCS_MAX + 1))
    cores = usable_cpus()
    for r in cpu:
        assert r["bench"] == "train" and r["section"] == "scaling" and r["batch"] == B
        if r["ranks"] > cores or B % r["ranks"]:
            assert r["skipped"].strip(), r
            assert ("usable cores" in r["skipped"]) if r["ranks"] > cores else ("does not split" in r["skipped"])
            continue
        assert "skipped" not in r, r
        assert SCALING_ROW_KEYS <= r.keys()
        assert (r["model"], r["algorithm"], r["unlabeled_batch"], r["k"]) == ("WRN-10 width 8", "remixmatch", B, K)
        assert r["batch_per_rank"] * r["ranks"] == B and r["images_per_step"] == 2 * B
        assert r["launch"] == ("one process" if r["ranks"] == 1 else f"--procs {r['ranks']}")
        assert r["backend"] == (None if r["ranks"] == 1 else "gloo")
        assert r["threads"] == r["numba_threads"] == max(1, cores // r["ranks"])
        windows = r["window_step_seconds"]
        assert len(windows) == r["steps"] // r["log_every"] and r["timed_windows"] == len(windows) - 1 >= 1
        assert all(w > 0 for w in windows)
        assert math.isclose(r["seconds_per_step"], float(np.median(windows[1:])), rel_tol=1e-9)
        assert math.isclose(r["steps_per_s"], 1 / r["seconds_per_step"], rel_tol=1e-9)
        assert math.isclose(r["images_per_s"], r["steps_per_s"] * 2 * B, rel_tol=1e-9)
        assert math.isclose(r["kimg_per_s"], r["steps_per_s"] * B / 1024, rel_tol=1e-9)
        one = next(o for o in cpu if o["ranks"] == 1)
        assert math.isclose(r["speedup"], r["steps_per_s"] / one["steps_per_s"], rel_tol=1e-9)
        assert math.isclose(r["efficiency"], r["speedup"] / r["ranks"], rel_tol=1e-9)
        assert r["wall_seconds"] > r["seconds_per_step"]
    assert cpu[0]["speedup"] == 1.0 and cpu[0]["efficiency"] == 1.0
    assert any("skipped" in r for r in cpu), "3 processes never run here (B = 4)"
    cuda = [r for r in rows if r["device"] == "cuda"]
    if cuda_reason() is not None:
        assert [(r["ranks"], r["skipped"]) for r in cuda] == [(1, cuda_reason())]
    top = max((r for r in cpu if "skipped" not in r), key=lambda r: r["ranks"])
    summary = rep["summary"]["scaling"]["cpu"]
    assert (summary["max_ranks"], summary["efficiency"], summary["speedup"]) == (
        top["ranks"], top["efficiency"], top["speedup"])
    assert summary["one_rank_steps_per_s"] == cpu[0]["steps_per_s"]


def test_scaling_markdown_holds_the_rows_and_the_skips(quick_run):
    out, rep, _ = quick_run
    text = (out / "report.md").read_text()
    assert "## Scaling: steps/s against processes" in text and "| device | model | processes |" in text
    assert "cores / N torch threads" in text
    for r in rep["scaling"]:
        if "skipped" in r:
            assert r["skipped"] in text
        else:
            assert f"| {r['device']} | {r['model']} | {r['ranks']} | {r['launch']} |" in text


def test_speedup_and_efficiency_against_the_one_process_row():
    rows = [{"device": "cpu", "ranks": 1, "steps_per_s": 2.0}, {"device": "cpu", "ranks": 2, "steps_per_s": 3.0},
            {"device": "cpu", "ranks": 3, "skipped": "why"}, {"device": "cuda", "ranks": 2, "steps_per_s": 5.0}]
    bench_train.add_speedups(rows)
    assert (rows[0]["speedup"], rows[0]["efficiency"]) == (1.0, 1.0)
    assert (rows[1]["speedup"], rows[1]["efficiency"]) == (1.5, 0.75)
    assert "speedup" not in rows[2] and "speedup" not in rows[3], "no one-process row: nothing to compare with"


def test_scaling_without_shards_and_steady_state_needs_two_windows(tmp_path):
    config = bench_train.TrainBenchConfig(out=tmp_path, device="cpu", scaling=True, procs_max=2)
    lines = []
    rows = bench_train.scaling_rows(config, None, lines.append)
    assert [(r["device"], r["ranks"]) for r in rows] == [("cpu", 1), ("cpu", 2), ("cuda", 1)]
    assert all("--shards" in r["skipped"] for r in rows[:2]) and rows[2]["skipped"] == "not requested (--device cpu)"
    assert len(lines) == 3 and all("skipped" in line for line in lines)
    assert bench_train.summarize_scaling(rows) == {"cpu": None, "cuda": None}
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 2, "step_seconds": 1.0}) + "\n" + json.dumps({"eval": True, "step": 2}) + "\n")
    with pytest.raises(RuntimeError, match="2 or more"):
        bench_train.steady_step_seconds(metrics)


def test_without_shards_only_the_loader_rows_are_skipped(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert main(["train", "--out", str(tmp_path), "--device", "cpu", *TINY[:-4], "--algorithm", "supervised"]) == 0
    assert torch.get_num_threads() == threads, "the torch thread count is put back"
    rep = json.loads((tmp_path / "report.json").read_text())
    rows = {(r["device"], r["feed"], r["prefetch"]): r for r in rep["results"]}
    synthetic = rows[("cpu", "synthetic", True)]
    assert "skipped" not in synthetic and synthetic["steps_per_s"] > 0 and synthetic["k"] == 0
    assert synthetic["unlabeled_batch"] == 0 and synthetic["views_per_step"] == B  # supervised: labeled views only
    for prefetch in (True, False):
        assert "--shards" in rows[("cpu", "loader", prefetch)]["skipped"]
    for key, r in rows.items():
        if key[0] == "cuda":
            assert r["skipped"] == "not requested (--device cpu)"
    assert rep["inputs"]["shards"] is None and rep["summary"]["cpu"]["data_wait_share"] is None
    assert "no shards" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("algorithm", ["fixmatch", "mixmatch"])
def test_each_algorithm_is_measured_with_its_papers_views(algorithm, tmp_path):
    # no --k: the algorithm's own K (and FixMatch's mu = 7)
    tiny = [a for a in TINY[:-4] if a not in ("--k", str(K))]
    assert main(["train", "--out", str(tmp_path), "--device", "cpu", *tiny, "--algorithm", algorithm]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    synthetic = {(r["device"], r["feed"]): r for r in rep["results"]}[("cpu", "synthetic")]
    assert "skipped" not in synthetic and synthetic["algorithm"] == algorithm and synthetic["losses_finite"]
    assert synthetic["phase_seconds_per_step"]["forward"] > 0
    if algorithm == "fixmatch":
        # B labeled (weak), B probes, 7B weak and 7B strong unlabeled: 1 + 2 mu = 15 training views per labeled image
        assert (synthetic["k"], synthetic["unlabeled_batch"]) == (1, 7 * B)
        assert synthetic["views_per_step"] == 16 * B and synthetic["train_views_per_labeled_image"] == 15
        assert "rule 'bin'" in rep["inputs"]["policy"] and "Cutout" in rep["inputs"]["policy"]
    else:
        # K = 2 weak views per unlabeled image, no probes
        assert (synthetic["k"], synthetic["unlabeled_batch"], synthetic["views_per_step"]) == (2, B, 3 * B)
        assert rep["inputs"]["policy"] == "none (mixmatch: weak views only)"
    assert f"{algorithm}, B = {B}" in (tmp_path / "report.md").read_text()


def test_bn_mode_reference_times_the_interleaved_forward(tmp_path, monkeypatch):
    from remixmatch.trainer import interleave

    calls = []
    real = interleave.forward_chunks
    monkeypatch.setattr(interleave, "forward_chunks", lambda *a: calls.append(a[2]) or real(*a))
    assert main(["train", "--out", str(tmp_path), "--device", "cpu", *TINY[:-4], "--bn-mode", "reference"]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["config"]["bn_mode"] == "reference"
    synthetic = next(r for r in rep["results"] if r["device"] == "cpu" and r["feed"] == "synthetic")
    assert "skipped" not in synthetic and synthetic["steps_per_s"] > 0
    # every timed step ran the K + 2 chunks of B, then strong view 1 and the rotations
    assert calls and all(list(sizes) == [B] * (K + 4) for sizes in calls)
    assert "BN mode reference" in (tmp_path / "report.md").read_text()


# ---- the trainer's objects are built as Run builds them ------------------------------------------------

def test_state_policy_views_and_loader_match_a_run(pipeline_shards, tmp_path):  # noqa: F811
    from remixmatch.pipeline import HostFetcher
    from remixmatch.trainer.config import TrainConfig
    from remixmatch.trainer.run import Run

    threads = torch.get_num_threads()
    config = TrainConfig(data=str(pipeline_shards.path), labels=N_LABELED, valid=N_VALID, batch=B, k=K, width=8,
                         blocks_per_stage=1, device="cpu", loader="torch", run_seed=3)
    try:
        run = Run(config, tmp_path / "run", quiet=True)
    finally:
        torch.set_num_threads(threads)
    bench = bench_train.TrainBenchConfig(out=tmp_path, shards=pipeline_shards.path, batch=B, k=K, width=8,
                                         blocks_per_stage=1, labels=N_LABELED, valid=N_VALID, seed=3)
    assert bench.train_config("cpu") == config.replace(threads=bench.threads)
    data = bench_train.open_data(pipeline_shards.path, N_LABELED, N_VALID)
    assert np.array_equal(data.train.labeled, run.data.train.labeled)
    assert np.array_equal(data.train.unlabeled, run.data.train.unlabeled)

    # As run_row builds it: one rank, the bench's data, the model's default mean / std.
    state = build_train_state(config, data.train.num_classes, data.train.class_distribution(), torch.device("cpu"))
    for mine, theirs in ((state.raw_model, run.state.raw_model), (state.ema_model, run.state.ema_model)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        for name in a:
            if name not in ("mean", "std"):  # a run measures them on its data; the cost is the same
                assert torch.equal(a[name], b[name]), name
        assert [p.requires_grad for p in mine.parameters()] == [p.requires_grad for p in theirs.parameters()]
    assert state.model is state.raw_model and run.state.model is run.state.raw_model
    assert type(state.optimizer) is type(run.state.optimizer)
    strip = [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in run.state.optimizer.param_groups]
    assert [p.shape for p in state.decay_params] == [p.shape for p in run.state.decay_params]
    assert torch.equal(state.distribution.p_data, run.state.distribution.p_data)
    assert torch.equal(state.distribution.buffer, run.state.distribution.buffer)
    assert state.config == run.state.config and state.device == run.state.device

    policy, views = build_policy_and_views(config)
    assert views == run.loader.config
    mine, theirs = policy.state_dict(), run.policy.state_dict()
    assert np.array_equal(mine.pop("rates"), theirs.pop("rates")) and mine == theirs
    loader = bench_train.build_loader(config, data.train, policy, views, "cpu", numba_threads=1)
    try:
        assert loader.prefetch is False and run.loader.prefetch is False
        assert type(loader.fetch.inner) is type(run.loader.fetch) is HostFetcher
        batch, theirs_batch = next(loader), next(run.loader)
        for name in ("x", "x_labels", "x_probe", "u_weak", "u_strong"):
            assert torch.equal(getattr(batch, name), getattr(theirs_batch, name)), name
    finally:
        loader.close()
        run.loader.close()


def test_synthetic_batch_has_the_shapes_and_dtypes_of_a_loader_batch(pipeline_shards):  # noqa: F811
    from remixmatch.trainer.config import TrainConfig

    config = TrainConfig(data=str(pipeline_shards.path), labels=N_LABELED, valid=N_VALID, batch=B, k=K, device="cpu")
    data = bench_train.open_data(pipeline_shards.path, N_LABELED, N_VALID)
    policy, views = build_policy_and_views(config)
    synthetic = next(bench_train.SyntheticBatches(policy, views, 10, torch.device("cpu")))
    loader = bench_train.build_loader(config, data.train, policy, views, "cpu", numba_threads=1)
    try:
        real = next(loader)
    finally:
        loader.close()
    for name in ("x", "x_labels", "x_probe", "u_weak", "u_strong", "views"):
        a, b = getattr(synthetic, name), getattr(real, name)
        assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device), name
    assert synthetic.k == real.k == K and synthetic.global_plan.probe_policies is not None


# ---- bad input ----------------------------------------------------------------------------------------



def test_missing_shards_directory_is_one_line(tmp_path, capsys):
    assert_cli_error(main, PROG, capsys, ["train", "--shards", str(tmp_path / "absent"), "--out", str(tmp_path / "out")], "absent")
    assert not (tmp_path / "out").exists()


def test_directory_without_manifest_is_one_line(tmp_path, capsys):
    assert_cli_error(main, PROG, capsys, ["train", "--shards", str(tmp_path), "--out", str(tmp_path / "out")], "manifest.json")
    assert not (tmp_path / "out").exists()


def test_more_labels_than_the_shards_hold_is_one_line(pipeline_shards, tmp_path, capsys):  # noqa: F811
    argv = ["train", "--shards", str(pipeline_shards.path), "--out", str(tmp_path / "out"), "--labels", "100000",
            "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rmm-bench train: error:"), err
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--reps", "2"], "at least 3"),
    (["--batch", "0"], "--batch"),
    (["--k", "0"], "--k"),
    (["--valid", "-1"], "--valid"),
    (["--threads", "100000"], "--threads"),
    (["--device", "tpu"], "--device"),
    (["--algorithm", "simclr"], "--algorithm"),
    (["--procs-max", "2"], "--scaling"),
    (["--scaling", "--procs-max", "0"], "--procs-max"),
])
def test_bad_values_are_one_line(tmp_path, capsys, extra, fragment):
    assert_cli_error(main, PROG, capsys, ["train", "--out", str(tmp_path), *extra], fragment)
    assert not (tmp_path / "report.json").exists()


def test_out_that_is_a_file_and_missing_out(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert_cli_error(main, PROG, capsys, ["train", "--out", str(target)], "not a directory")
    assert_cli_error(main, PROG, capsys, ["train"], "--out")


def test_explicit_cuda_without_a_device_is_an_error(tmp_path, capsys):
    if cuda_reason() is None:
        pytest.skip("a CUDA device is present")
    assert_cli_error(main, PROG, capsys, ["train", "--device", "cuda", "--out", str(tmp_path)], "--device cuda")


def test_help_exits_zero_and_is_registered(capsys):
    assert main(["train", "--help"]) == 0
    assert "--shards" in capsys.readouterr().out
    from remixmatch.bench.cli import DELEGATED

    assert DELEGATED["train"][0] == "remixmatch.bench.train_steps"
