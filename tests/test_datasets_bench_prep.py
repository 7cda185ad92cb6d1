"""Smoke test of the prep benchmark (bench/prep.py) in its quick mode: it runs and writes both reports."""

from __future__ import annotations

import json

from remixmatch.bench import prep as bench_prep


def test_quick_prep_benchmark_writes_reports(tmp_path, capsys):
    rc = bench_prep.main(["--out", str(tmp_path), "--quick", "--read-reps", "5"])
    assert rc == 0
    report = json.loads((tmp_path / "prep_report.json").read_text())
    assert report["command"] == "prep"
    assert report["machine"]["cpu_count"] >= 1 and report["versions"]["pyarrow"]
    assert report["summary"]["synthetic_official_images"] == 6000
    assert report["summary"]["synthetic_official_prep_seconds"] > 0
    assert report["summary"]["cifar10_jpg_prep_seconds"] is None  # skipped with --quick
    reads = [r for r in report["results"] if r["bench"] == "read"]
    assert {r["pattern"] for r in reads} == {"random", "contiguous"} and all(r["reps"] == 5 for r in reads)
    md = (tmp_path / "prep_report.md").read_text()
    assert "µs per batch" in md and "synthetic-official" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep_report.json", "prep_report.md"]


def test_bad_arguments(tmp_path, capsys):
    assert bench_prep.main(["--out", str(tmp_path), "--read-reps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rmm-bench prep: error:") and len(err.splitlines()) == 1


def test_the_jpeg_export_comes_from_the_flag_else_the_variable(tmp_path, monkeypatch):
    from remixmatch.common.paths import CIFAR10_JPG_ENV

    tree = tmp_path / "cifar10-jpg.tar.gz"
    tree.write_bytes(b"")
    monkeypatch.delenv(CIFAR10_JPG_ENV, raising=False)

    def pick(*argv):
        return bench_prep.jpeg_tree_to_time(bench_prep.build_parser().parse_args(["--out", str(tmp_path), *argv]))

    assert pick() == (None, f"no --jpeg-tree and no ${CIFAR10_JPG_ENV}")
    assert pick("--quick", "--jpeg-tree", str(tree)) == (None, "--quick")
    found, _ = pick("--jpeg-tree", str(tree))
    assert (found.path, found.origin) == (tree, "--jpeg-tree")
    monkeypatch.setenv(CIFAR10_JPG_ENV, str(tree))
    found, _ = pick()
    assert (found.path, found.origin) == (tree, CIFAR10_JPG_ENV)
    monkeypatch.setenv(CIFAR10_JPG_ENV, str(tmp_path / "absent.tar.gz"))
    assert pick() == (None, f"{CIFAR10_JPG_ENV}={tmp_path / 'absent.tar.gz'}: not found")
