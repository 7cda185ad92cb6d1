"""``rmm-bench``: the aug report is well formed, bad input fails fast with one line, prep is delegated,
the images come from --images, --shards, $REMIXMATCH_SHARDS or the synthetic set.

The benchmark itself runs once (``aug --quick --shards DIR`` on small synthetic CIFAR-10 shards, in a
subprocess, so that its Numba thread setting and worker pool stay out of the test process); nothing
here asserts a speed.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets_helpers import assert_cli_error, cifar_archive
from remixmatch.bench import aug, images, report
from remixmatch.bench.cli import main
from remixmatch.common.paths import SHARDS_ENV
from remixmatch.datasets_prep.cli import prep_folder_main
from remixmatch.datasets_prep.sources_cifar import prep_cifar10
from remixmatch.kernels.ops import NUM_OPS, OP_NAMES

PROG = "rmm-bench aug"

TOP_KEYS = {"schema_version", "command", "created", "wall_seconds", "machine", "conditions", "versions", "threads",
            "config", "inputs", "summary", "results"}
ROW_KEYS = {"bench", "backend", "k", "batch", "views", "depth", "op", "inputs", "views_per_s", "seconds",
            "spread", "reps", "calls_per_rep", "ratio_vs_pil", "threads", "device"}
SPREAD_KEYS = {"min", "max", "q1", "q3", "iqr", "stdev"}
COMPILE_KEYS = {"bench", "backend", "seconds", "method", "compile_all_seconds", "first_call_seconds",
                "steady_call_seconds", "cache"}
BACKENDS = {"pil", "pil-pool", "numba-cpu", "numba-cuda"}


@pytest.fixture(scope="module")
def cifar_shards(tmp_path_factory):
    """Synthetic CIFAR-10 shards: 100 train rows (more than the 64 images aug reads)."""
    root = tmp_path_factory.mktemp("augshards")
    archive, _ = cifar_archive(root, per_batch=20)
    prep_cifar10(str(archive), root / "shards", progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, cifar_shards):
    out = tmp_path_factory.mktemp("augbench")
    code = "import sys; from remixmatch.bench.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, "aug", "--quick", "--shards", str(cifar_shards),
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, json.loads((out / "report.json").read_text())


def test_quick_report_has_the_documented_top_level(quick_run):
    out, rep = quick_run
    assert TOP_KEYS <= rep.keys()
    assert rep["schema_version"] == report.SCHEMA_VERSION and rep["command"] == "aug"
    assert rep["config"]["quick"] is True and rep["config"]["reps"] == aug.MIN_REPS
    assert rep["machine"]["cpu_count"] >= 1 and "hostname" not in rep["machine"]
    assert {"python", "numpy", "numba", "pillow", "remixmatch"} <= rep["versions"].keys()
    assert rep["versions"]["numba"] and rep["versions"]["pillow"]
    assert rep["threads"]["pil"] == 1 and rep["threads"]["pil_pool_processes"] == rep["config"]["threads"]
    conditions = rep["conditions"]
    assert conditions.keys() == {"load_average_at_start", "other_cpu_seconds", "other_cpu_share"}
    assert conditions["other_cpu_share"] is None or conditions["other_cpu_share"] >= 0
    assert rep["inputs"]["count"] == aug.BATCH and rep["inputs"]["images"] == "shards"
    assert rep["inputs"]["source"] == "cifar10 (shards)" and rep["config"]["shards"]
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]  # no temp files left


def test_quick_report_rows_are_well_formed(quick_run):
    _, rep = quick_run
    results = rep["results"]
    assert {r["backend"] for r in results} == BACKENDS, "every backend is measured or listed as skipped"
    for r in results:
        if "skipped" in r:
            assert r["bench"] == "aug" and isinstance(r["skipped"], str) and r["skipped"].strip()
        elif r["bench"] == "aug-compile":
            assert COMPILE_KEYS <= r.keys() and r["seconds"] >= 0 and r["first_call_seconds"] > 0
        else:
            assert r["bench"] == "aug" and ROW_KEYS <= r.keys()
            assert r["views"] == r["k"] * r["batch"] and r["reps"] >= aug.MIN_REPS
            assert r["op"] is None or r["op"] in OP_NAMES
            assert r["views_per_s"] > 0 and r["seconds"] > 0 and r["threads"] >= 1
            assert math.isclose(r["views_per_s"] * r["seconds"], r["views"], rel_tol=0.3)
            s = r["spread"]
            assert SPREAD_KEYS <= s.keys() and 0 < s["min"] <= r["views_per_s"] <= s["max"]
            assert s["q1"] <= s["q3"] and s["iqr"] >= 0 and s["stdev"] >= 0


def test_quick_report_ratios_are_consistent(quick_run):
    _, rep = quick_run
    rows = [r for r in rep["results"] if r["bench"] == "aug" and "skipped" not in r]
    pil = {r["op"]: r["views_per_s"] for r in rows if r["backend"] == "pil"}
    for r in rows:
        if r["op"] in pil:
            assert math.isclose(r["ratio_vs_pil"], r["views_per_s"] / pil[r["op"]], rel_tol=1e-9)
        else:
            assert r["ratio_vs_pil"] is None
    cpu = [r for r in rows if r["backend"] == "numba-cpu"]
    if cpu:
        assert sorted(r["k"] for r in cpu if r["op"] is None) == list(aug.K_SWEEP)
        assert sorted(r["op"] for r in cpu if r["op"] is not None) == sorted(OP_NAMES)
        assert any(r["bench"] == "aug-compile" and r["backend"] == "numba-cpu" for r in rep["results"])
        if None in pil:
            headline = next(r for r in cpu if r["op"] is None and r["k"] == aug.HEADLINE_K)
            assert math.isclose(rep["summary"]["numba_cpu_vs_pil"], headline["ratio_vs_pil"], rel_tol=1e-9)


def test_quick_markdown_shows_machine_and_ratios(quick_run):
    out, rep = quick_run
    text = (out / "report.md").read_text()
    assert text.startswith("# rmm-bench aug") and "Machine: " in text and "Conditions: " in text
    assert "| backend |" in text
    assert "numba-cpu vs pil" in text
    for r in rep["results"]:
        if "skipped" in r:
            assert r["skipped"] in text




@pytest.mark.parametrize("argv, fragment", [
    (["aug", "--reps", "0"], "--reps"),
    (["aug", "--reps", "4"], "at least 5"),
    (["aug", "--device", "tpu"], "--device"),
    (["aug", "--threads", "0"], "--threads"),
    (["aug", "--threads", "100000"], "--threads"),
    (["aug", "--reps", "many"], "--reps"),
])
def test_bad_arguments_fail_with_one_line(tmp_path, capsys, argv, fragment):
    assert_cli_error(main, PROG, capsys, argv + ["--out", str(tmp_path)], fragment)
    assert not (tmp_path / "report.json").exists()


def test_missing_out_and_unknown_command_fail_with_one_line(capsys):
    assert_cli_error(main, PROG, capsys, ["aug"], "--out")
    assert_cli_error(main, "rmm-bench", capsys, ["nosuch"], "nosuch")


def test_out_that_is_a_file_is_rejected(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert_cli_error(main, PROG, capsys, ["aug", "--out", str(target)], "not a directory")


def test_missing_images_are_rejected(tmp_path, capsys):
    assert_cli_error(main, PROG, capsys, ["aug", "--images", str(tmp_path / "absent.tar.gz"), "--out", str(tmp_path)],
                    "absent.tar.gz")


def test_missing_shards_are_rejected_naming_where_the_path_came_from(tmp_path, capsys, monkeypatch):
    absent = tmp_path / "absent"
    assert_cli_error(main, PROG, capsys, ["aug", "--shards", str(absent), "--out", str(tmp_path / "o")], "--shards")
    monkeypatch.setenv(SHARDS_ENV, str(absent))
    assert_cli_error(main, PROG, capsys, ["aug", "--out", str(tmp_path / "o")], f"{SHARDS_ENV}: {absent}")
    assert not (tmp_path / "o" / "report.json").exists()


def test_shards_and_images_together_are_rejected(tmp_path, capsys):
    assert_cli_error(main, PROG, capsys, ["aug", "--shards", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path)],
                    "give one")


def test_explicit_cuda_without_a_device_is_an_error(tmp_path, capsys):
    if aug.cuda_unavailable_reason() is None:
        pytest.skip("a CUDA device is present")
    assert_cli_error(main, PROG, capsys, ["aug", "--device", "cuda", "--out", str(tmp_path)], "--device cuda")


def test_help_exits_zero(capsys):
    assert main(["aug", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out


def test_progress_lines_print_brackets_literally():
    from rich.console import Console

    from remixmatch.bench.cli import progress_log

    out = io.StringIO()
    log = progress_log(Console(file=out, highlight=False, width=300))
    row = {"bench": "aug", "backend": "numba-cpu", "op": None, "k": 8, "batch": 64, "inputs": "host",
           "views_per_s": 1000.0, "reps": 5, "spread": {"min": 900.0, "max": 1100.0}}
    log(row)
    log("wrote [a]/report.json")
    lines = out.getvalue().splitlines()
    assert "numba-cpu K=8 x 64 images [host]: " in lines[0]
    assert lines[1] == "wrote [a]/report.json"


def test_prep_is_delegated_with_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("remixmatch.bench.prep")
    fake.main = lambda argv=None: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "remixmatch.bench.prep", fake)
    assert main(["prep", "--out", "somewhere", "--quick"]) == 7
    assert seen == [["--out", "somewhere", "--quick"]]


# ---- inputs -----------------------------------------------------------------------------------------

def test_views_use_the_library_policies_with_kernel_dtypes_shapes_and_ranges():
    from remixmatch.pipeline.policy import Policies

    work = aug.Workload(images.synthetic_images(4), seed=1)
    v = work.mixed(k=3, batch=4)
    assert isinstance(v.policies, Policies) and v.views == 12 and v.depth == aug.DEPTH
    p = v.policies
    assert p.op_ids.dtype == np.int32 and p.op_ids.shape == (12, 2)
    assert p.levels.dtype == np.float32 and p.levels.shape == (12, 2, 2)
    assert p.rand.dtype == np.float32 and p.rand.shape == (12, 3, 2)
    assert p.op_ids.min() >= 0 and p.op_ids.max() < NUM_OPS
    assert 0 <= p.levels.min() and p.levels.max() < 1 and 0 <= p.rand.min() and p.rand.max() < 1
    assert v.sources.dtype == np.int32 and v.sources.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    same = work.mixed(k=3, batch=4)
    assert all(np.array_equal(a, b) for a, b in zip(v.arrays(), same.arrays())), "seeded: same every run"
    chunk = v.image_range(2, 4, 3)
    assert chunk.sources.tolist() == [0, 0, 0, 1, 1, 1] and np.array_equal(chunk.policies.op_ids, p.op_ids[6:])
    single = work.single_op(5, k=2, batch=2)
    assert single.policies.op_ids.tolist() == [[5]] * 4 and single.policies.rand.shape == (4, 2, 2)


def test_synthetic_images_when_nothing_names_any(monkeypatch):
    monkeypatch.delenv(SHARDS_ENV, raising=False)
    batch = images.load_images(5, seed=3)
    assert batch.kind == "synthetic" and batch.pixels.shape == (5, 32, 32, 3) and batch.pixels.dtype == np.uint8
    assert batch.pixels.std() > 10, "image-like content, not a flat fill"
    assert np.array_equal(batch.pixels, images.load_images(5, seed=3).pixels)
    assert batch.tiled(12).shape == (12, 32, 32, 3) and np.array_equal(batch.tiled(12)[5], batch.pixels[0])


def test_shard_images_are_the_first_train_rows_from_the_flag_or_the_variable(cifar_shards, monkeypatch):
    from remixmatch.datasets_prep import open_shards

    expected = open_shards(cifar_shards)["train"].images(slice(0, 7))
    monkeypatch.delenv(SHARDS_ENV, raising=False)
    batch = images.load_images(7, shards=cifar_shards)
    assert batch.kind == "shards" and batch.source == "cifar10 (shards)" and batch.pixels.flags.writeable
    assert np.array_equal(batch.pixels, expected)
    monkeypatch.setenv(SHARDS_ENV, str(cifar_shards))
    assert np.array_equal(images.load_images(7).pixels, expected)
    with pytest.raises(images.ImageInputError, match="100 train rows, need 101"):
        images.load_images(101)


def test_shards_the_kernels_cannot_take_are_rejected(tmp_path):
    tree = tmp_path / "tree" / "a"
    tree.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tree / f"{i}.png")
    assert prep_folder_main(["--source", str(tmp_path / "tree"), "--out", str(tmp_path / "grey"),
                             "--mode", "L", "--no-progress"]) == 0
    with pytest.raises(images.ImageInputError, match="1-channel"):
        images.load_images(2, shards=tmp_path / "grey")


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_archive_images_come_from_the_train_split_in_archive_order(tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    colours = {"tiny/test/a/0.png": 1, "tiny/train/b/0.png": 2, "tiny/train/a/0.png": 3, "tiny/train/a/1.png": 4}
    with tarfile.open(archive, "w:gz") as tar:
        for name, value in colours.items():
            data = _png(np.full((4, 4, 3), value, np.uint8))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    batch = images.load_images(2, images=archive)
    assert batch.kind == "archive" and batch.source == "tiny.tar.gz"
    assert batch.pixels[:, 0, 0, 0].tolist() == [2, 3]
    with pytest.raises(images.ImageInputError, match="need 4"):
        images.load_images(4, images=archive)


def test_directory_images_are_read_in_sorted_order(tmp_path):
    for name, value in (("b.png", 9), ("a.png", 8)):
        (tmp_path / name).write_bytes(_png(np.full((3, 5, 3), value, np.uint8)))
    batch = images.load_images(2, images=tmp_path)
    assert batch.kind == "directory" and batch.pixels.shape == (2, 3, 5, 3)
    assert batch.pixels[:, 0, 0, 0].tolist() == [8, 9]


# ---- report helpers ---------------------------------------------------------------------------------

def test_spread_summarises_repetitions():
    s = report.spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["min"] == 1 and s["max"] == 5 and s["q1"] == 2 and s["q3"] == 4 and s["iqr"] == 2
    assert math.isclose(s["stdev"], 1.5811388, rel_tol=1e-6)


def test_reports_are_written_whole_and_readable(tmp_path):
    out = tmp_path / "nested" / "dir"
    json_path, md_path = report.write_report(out, {"schema_version": 1}, "# title\n")
    assert json.loads(json_path.read_text()) == {"schema_version": 1} and md_path.read_text() == "# title\n"
    assert json_path.stat().st_mode & 0o044, "readable by others, like any file the user writes"
    with pytest.raises(ValueError):  # NaN is not JSON: refused before anything is replaced
        report.write_report(out, {"x": float("nan")}, "")
    assert json.loads(json_path.read_text()) == {"schema_version": 1}
    assert sorted(p.name for p in Path(out).iterdir()) == ["report.json", "report.md"]


def test_run_conditions_measure_other_processes_and_flag_a_busy_machine():
    conditions = report.RunConditions().finish(wall_seconds=0.5)
    assert conditions.keys() == {"load_average_at_start", "other_cpu_seconds", "other_cpu_share"}
    if conditions["other_cpu_share"] is not None:
        assert conditions["other_cpu_seconds"] >= 0 and conditions["other_cpu_share"] >= 0
    busy = {"conditions": {"load_average_at_start": [2.0, 1.0, 1.0], "other_cpu_seconds": 30.0, "other_cpu_share": 0.25}}
    assert "lower than on an idle machine" in report.conditions_line(busy)
    idle = {"conditions": {"load_average_at_start": [0.0, 0.0, 0.0], "other_cpu_seconds": 0.1, "other_cpu_share": 0.001}}
    assert "idle machine" not in report.conditions_line(idle)
