"""``rmm-bench all --quick``: one report with every section measured or skipped with its reason, the
charts written, the projection at the end; ``rmm-bench compare`` of two reports; the PTX resource
report's arithmetic (its no-spill rule is checked where the PTX is compiled: test_kernels_ptx.py).
Never the speed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from datasets_helpers import REPO, assert_cli_error
from pipeline_helpers import N_LABELED, N_VALID, pipeline_shards  # noqa: F401 (a fixture)
from remixmatch.bench import compare as bench_compare
from remixmatch.bench import all_sections, ptx
from remixmatch.bench.cli import main

B, K = 4, 2
TOP_KEYS = {"schema_version", "command", "created", "wall_seconds", "machine", "conditions", "versions", "threads",
            "config", "inputs", "summary", "results", "sections", "charts", "projection"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_all(pipeline_shards, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("allbench")
    argv = ["all", "--quick", "--shards", str(pipeline_shards.path), "--batch", str(B), "--k", str(K),
            "--labels", str(N_LABELED), "--valid", str(N_VALID), "--width", "8", "--blocks-per-stage", "1",
            "--threads", "1", "--skip", "ptx", "--out", str(out)]  # ptx: tests/test_kernels_ptx.py
    done = subprocess.run([sys.executable, "-m", "remixmatch.bench.cli", *argv], capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, json.loads((out / "report.json").read_text()), done.stderr


def test_every_section_is_measured_or_skipped_with_a_reason(quick_all):
    out, rep, _ = quick_all
    assert TOP_KEYS <= rep.keys() and rep["command"] == "all" and rep["schema_version"] == 1
    sections = rep["sections"]
    assert list(sections) == list(all_sections.SECTIONS)
    for name in ("aug", "pipeline", "train"):
        assert sections[name]["status"] == "measured", sections[name]
        assert sections[name]["report"]["command"] == name
        assert (out / name / "report.json").is_file() and (out / name / "report.md").is_file()
    assert sections["ptx"] == {"status": "skipped", "reason": "--skip"}
    assert sections["scaling"]["status"] == "skipped" and "--quick" in sections["scaling"]["reason"]
    train = sections["train"]["report"]
    assert train["config"]["batch"] == B and train["config"]["k"] == K and train["config"]["quick"] is True


def test_the_summary_and_the_projection_come_from_the_sections(quick_all):
    _, rep, _ = quick_all
    train = rep["sections"]["train"]["report"]
    loader = next(r for r in train["results"] if r["device"] == "cpu" and r["feed"] == "loader" and r["prefetch"])
    proj = rep["projection"]
    assert proj["device"] == "cpu" and proj["k"] == K and proj["feed"] == "loader"
    assert proj["seconds_per_step"] == loader["seconds_per_step"]
    assert proj["projected_hours"] == pytest.approx(loader["seconds_per_step"] * 2**20 / 3600)
    assert proj["views_per_step"] == loader["views_per_step"] == 3 * B + K * B
    assert 0 < proj["render_share"] and proj["render_seconds_per_step"] > 0
    assert proj["data_wait_share"] == loader["phase_shares"]["data_wait"]
    assert proj["reference_projected_hours"] > 0
    summary = rep["summary"]
    assert summary["numba_cpu_vs_pil"] == rep["sections"]["aug"]["report"]["summary"]["numba_cpu_vs_pil"]
    assert summary["projected_hours"] == proj["projected_hours"]
    assert summary["train_steps_per_s"] == loader["steps_per_s"]


def test_charts_are_written_or_skipped_with_a_reason(quick_all):
    out, rep, _ = quick_all
    charts = rep["charts"]
    assert set(charts) == set(("views_per_s", "per_op", "step_split", "scaling"))
    for name in ("views_per_s", "per_op", "step_split"):
        path = out / charts[name]
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    assert charts["scaling"]["skipped"].strip()
    assert not list(out.glob(".*.png")), "no temporary chart left behind"


def test_markdown_names_every_section_and_ends_with_the_projection(quick_all):
    out, rep, _ = quick_all
    text = (out / "report.md").read_text()
    for name in all_sections.SECTIONS:
        assert f"| {name} | {rep['sections'][name]['status']} |" in text
    assert "![step_split](step_split.png)" in text and "Where a step's time goes" in text
    tail = text[text.index("## What this means for a full run"):]
    assert "2^20 steps" in tail and "of a step" in tail and "PIL process pool" in tail


def test_the_algorithm_goes_to_the_train_section_and_its_projection(tmp_path):
    config = all_sections.AllConfig(out=tmp_path, shards=tmp_path, batch=64, algorithm="fixmatch", quick=True)
    train = all_sections.section_argv("train", config)
    assert train[train.index("--algorithm") + 1] == "fixmatch" and "--k" not in train  # FixMatch's own K and mu
    pipeline = all_sections.section_argv("pipeline", config)
    assert pipeline[pipeline.index("--k") + 1] == "8"  # the loaders are measured at ReMixMatch's K
    explicit = all_sections.section_argv("train", all_sections.AllConfig(out=tmp_path, algorithm="mixmatch", k=3))
    assert explicit[explicit.index("--k") + 1] == "3"
    # a FixMatch train row: B = 64, mu = 7, K = 1, 64 + 64 probes + 448 weak + 448 strong views
    row = {"device": "cpu", "feed": "loader", "prefetch": True, "model": "WRN-10-1", "batch": 64, "k": 1,
           "algorithm": "fixmatch", "unlabeled_batch": 448, "views_per_step": 1024, "seconds_per_step": 2.0,
           "phase_shares": {"data_wait": 0.1}}
    sections = {"train": {"status": "measured", "report": {"results": [row]}}}
    proj = all_sections.projection(sections, config)
    assert (proj["algorithm"], proj["unlabeled_batch"], proj["k"]) == ("fixmatch", 448, 1)
    assert proj["projected_hours"] == pytest.approx(2.0 * 2**20 / 3600)
    text = "\n".join(all_sections.projection_markdown(proj, config))
    assert "The fixmatch paper's CIFAR-10 run, 2^20 steps of B = 64 labeled + 448 unlabeled images with K = 1 strong " \
           "views each, 1024 views per step" in text
    assert "not the paper's" not in text


def test_compare_of_a_report_with_itself_and_with_a_changed_copy(quick_all, tmp_path, capsys):
    out, rep, _ = quick_all
    changed = copy.deepcopy(rep)
    aug_rows = changed["sections"]["aug"]["report"]["results"]
    row = next(r for r in aug_rows if r.get("backend") == "numba-cpu" and r.get("op") is None and "views_per_s" in r)
    row["views_per_s"] *= 2
    (tmp_path / "b.json").write_text(json.dumps(changed))
    assert main(["compare", str(out / "report.json"), str(out / "report.json")]) == 0
    same = capsys.readouterr().out
    ratios = [line.rsplit("|", 2)[-2].strip() for line in same.splitlines() if line.startswith("| aug/")]
    assert ratios and all(r in ("1.000", "-") for r in ratios)
    assert main(["compare", str(out / "report.json"), str(tmp_path / "b.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    doubled = [line for line in lines if f" k={row['k']} " in line and "backend=numba-cpu" in line
               and line.split("|")[1].strip().endswith("views_per_s") and "op=" not in line
               and f"inputs={row['inputs']}" in line]
    assert doubled and all(line.rstrip(" |").endswith("2.000") for line in doubled), doubled


def test_compare_names_a_missing_or_foreign_file_in_one_line(tmp_path, capsys):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "y.json").write_text("{not json")
    for a in (tmp_path / "missing.json", tmp_path / "x.json", tmp_path / "y.json"):
        assert_cli_error(main, "rmm-bench compare", capsys, ["compare", a, a], str(a))


def test_figures_pair_rows_by_identity_and_ignore_skips():
    a = {"schema_version": 1, "command": "train", "summary": {"cpu": {"steps": 2.0, "goal_met": True}},
         "results": [{"bench": "train", "device": "cpu", "feed": "loader", "steps_per_s": 1.0, "k": 8},
                     {"bench": "train", "device": "cuda", "skipped": "no device"}]}
    b = copy.deepcopy(a)
    b["results"][0]["steps_per_s"] = 1.5
    table = {name: (va, vb, r) for name, va, vb, r in bench_compare.compare(a, b)}
    assert table["train summary.cpu.steps"] == (2.0, 2.0, 1.0)
    key = "train: bench=train device=cpu feed=loader k=8 steps_per_s"
    assert table[key] == (1.0, 1.5, 1.5) and len(table) == 2


@pytest.mark.parametrize("arch, registers, threads, shared, blocks, limited_by", [
    ("sm_90", 104, 256, 15616 + 64, 2, "registers"),   # the figures in ../shared/toolchain-notes.md
    ("sm_90", 29, 256, 0, 8, "threads"),              # the weak kernel: registers tie, threads named
    ("sm_80", 16, 32, 0, 32, "blocks"),
    ("sm_80", 32, 256, 40 * 1024, 4, "shared memory"),  # 164 KiB / (40 KiB + 1 KiB reserved)
    ("sm_90", 72, 128, 0, 7, "registers"),              # 72 * 32 = 2304 per warp, 4 warps: 9216 per block
])
def test_occupancy_follows_the_calculator(arch, registers, threads, shared, blocks, limited_by):
    limits = next(a for a in ptx.ARCHS if a.name == arch)
    got = ptx.occupancy(limits, registers, threads, shared)
    assert (got["blocks_per_sm"], got["limited_by"]) == (blocks, limited_by)
    assert got["occupancy"] == pytest.approx(blocks * (threads // 32) / 64)


def test_ptxas_output_is_parsed_and_odd_output_is_an_error():
    text = ("ptxas info    : Compiling entry function 'k' for 'sm_90'\n"
            "ptxas info    : Function properties for k\n"
            "    80 bytes stack frame, 88 bytes spill stores, 276 bytes spill loads\n"
            "ptxas info    : Used 64 registers, used 1 barriers, 80 bytes cumulative stack size, 64 bytes smem\n")
    assert ptx.parse_ptxas(text) == {"registers": 64, "spill_store_bytes": 88, "spill_load_bytes": 276,
                                     "stack_bytes": 80, "static_shared_bytes": 64, "barriers": 1}
    with pytest.raises(RuntimeError, match="unexpected ptxas output"):
        ptx.parse_ptxas("ptxas fatal: something else")


def test_gpu_namespace_links_every_package_of_pyproject(tmp_path):
    ns = tmp_path / "ns"
    done = subprocess.run(["make", "gpu-namespace", f"GPU_PYTHON={sys.executable}", f"GPU_NS={ns}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    linked = sorted(p.name for p in (ns / "remixmatch").iterdir())
    assert linked == ["bench", "common", "datasets_prep", "kernels", "pipeline", "trainer"]
    probe = "import remixmatch.bench.all_sections as m, remixmatch.common.cli; print(m.__file__)"
    shown = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(ns)},
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip().startswith(str(ns)), shown.stderr


def test_the_shard_directory_comes_from_the_environment_when_no_flag_names_one(pipeline_shards, tmp_path,  # noqa: F811
                                                                                monkeypatch, capsys):
    from remixmatch.bench.core import BenchInputError, shard_directory

    monkeypatch.setenv("REMIXMATCH_SHARDS", str(pipeline_shards.path))
    assert shard_directory(None, required=True) == pipeline_shards.path
    with pytest.raises(BenchInputError, match=r"^--shards .*not a shard directory"):
        shard_directory(tmp_path, required=False)  # the flag wins over the variable
    monkeypatch.setenv("REMIXMATCH_SHARDS", str(tmp_path / "absent"))
    assert_cli_error(main, "rmm-bench pipeline", capsys, ["pipeline", "--out", tmp_path / "out"],
                     f"REMIXMATCH_SHARDS={tmp_path / 'absent'}: no such directory")
    monkeypatch.delenv("REMIXMATCH_SHARDS")
    assert shard_directory(None, required=False) is None
