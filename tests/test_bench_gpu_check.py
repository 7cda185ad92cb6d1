"""``rmm-bench gpu-check`` and ``make gpu-check``: the GPU machine's one command, rehearsed without a GPU.

Here every CUDA section skips with its reason and the run ends 0 (what a CPU rehearsal must show); the
sections' commands are checked to parse with the commands they call, so a typo cannot first surface on
a machine lent for minutes; the report's schema is checked by the same function that checks the
reports committed under reports/gpu/."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from datasets_helpers import REPO, assert_cli_error, cifar_archive
from remixmatch.bench import gpu_check
from remixmatch.bench.cli import main

CUDA_SECTIONS = [s.name for s in gpu_check.SECTIONS if s.needs_cuda]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The whole command on this machine, as the GPU machine runs it, on a small synthetic archive."""
    root = tmp_path_factory.mktemp("gpu_check")
    archive, _ = cifar_archive(root)
    out, sent = root / "out", root / "sent"
    done = subprocess.run([sys.executable, "-m", "remixmatch.bench.cli", "gpu-check", "--archive", str(archive),
                           "--out", str(out), "--bundle", str(sent), "--budget", "300"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": out, "sent": sent, "report": json.loads((out / "report.json").read_text()), "stderr": done.stderr}


def test_without_a_gpu_every_cuda_section_skips_with_its_reason_and_the_rest_runs(rehearsal):
    sections = rehearsal["report"]["sections"]
    assert list(sections) == list(gpu_check.SECTION_NAMES)
    assert sections["data"]["status"] == "measured" and sections["environment"]["status"] == "measured"
    for name in CUDA_SECTIONS:
        assert sections[name]["status"] == "skipped" and "CUDA" in sections[name]["reason"], name
    env = sections["environment"]["details"]["report"]["environment"]
    assert env["torch"]["version"] and env["numba"]["numba"] and "nvvm" in env["numba"]
    assert (rehearsal["out"] / "shards" / "manifest.json").is_file()


def test_the_rehearsal_report_has_the_schema_and_the_bundle_fits_what_comes_back(rehearsal):
    report = rehearsal["report"]
    assert gpu_check.schema_problems(report) == []
    sent = sorted(p.name for p in rehearsal["sent"].iterdir())
    assert len(sent) <= gpu_check.BUNDLE_LIMIT and {"report.json", "report.md", "logs.tar.gz"} <= set(sent)
    with tarfile.open(rehearsal["sent"] / "logs.tar.gz") as logs:
        assert "data/log1.txt" in logs.getnames() and "environment/log1.txt" in logs.getnames()
    assert "| correctness | skipped |" in (rehearsal["sent"] / "report.md").read_text()


def test_schema_problems_are_found():
    report = {"command": "gpu-check", "schema_version": 1, "created": "x", "wall_seconds": 1.0, "versions": {},
              "config": {}, "charts": {}, "machine": {"processor": "p", "cpu_count": 1, "memory_gib": 1, "gpu": None},
              "sections": {name: {"status": "skipped", "reason": "r"} for name in gpu_check.SECTION_NAMES},
              "figures": [], "summary": {key: None for key in gpu_check.SUMMARY_KEYS}}
    assert gpu_check.schema_problems(report) == []
    report["sections"]["training"] = {"status": "failed"}
    report["figures"] = [{"section": "pipeline", "name": "loader_steps_per_s", "value": 3.0, "unit": "steps/s",
                          "where": {}}, {"section": "training", "name": "x", "value": 1.0, "unit": "", "where": {}}]
    problems = gpu_check.schema_problems(report)
    assert any("training: failed without a reason" in p for p in problems)
    assert any("figure 0 (loader_steps_per_s): from a section that did not run" in p for p in problems)
    assert any(p.startswith("figure 1:") for p in problems)


@pytest.mark.parametrize("name", CUDA_SECTIONS)
def test_each_cuda_sections_commands_parse(name, tmp_path):
    from remixmatch.trainer.cli import build_parser as train_parser
    from remixmatch.trainer.config import resolve

    config = gpu_check.CheckConfig(out=tmp_path, archive=tmp_path / "a.tar.gz", shards=tmp_path / "shards")
    commands = gpu_check.section_commands(name, config, tmp_path / name)
    assert commands
    for argv in commands:
        if argv[0] == "env":  # variables for the child, then the command
            argv = argv[next(i for i, a in enumerate(argv) if a == sys.executable):]
        assert argv[0] == sys.executable
        if argv[1:3] == ["-m", "remixmatch.trainer.cli"]:
            args = train_parser().parse_args(argv[3:])
            overrides = {k: v for k, v in vars(args).items() if v is not None and k in resolve(None, [], {}).to_dict()}
            assert resolve(args.preset, args.ablation, overrides).steps >= 1
        elif argv[1:3] == ["-m", "remixmatch.bench.cli"]:
            command, rest = argv[3], argv[4:]
            if command == "aug":
                from remixmatch.bench.cli import build_parser

                build_parser().parse_args([command, *rest])
            else:
                import importlib

                from remixmatch.bench.cli import DELEGATED

                importlib.import_module(DELEGATED[command][0]).build_parser().parse_args(rest)
        else:
            assert argv[1:3] == ["-m", "pytest"] and all((REPO / t).is_file() for t in gpu_check.GPU_TESTS)


def test_junit_counts_and_the_figures_of_measured_sections(tmp_path):
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite><testcase classname="a" name="ok"/><testcase classname="a" name="bad">'
        '<failure message="x"/></testcase><testcase classname="b" name="s"><skipped message="no DALI"/></testcase>'
        '</testsuite></testsuites>')
    counts = gpu_check.junit_counts(tmp_path / "junit.xml")
    assert (counts["passed"], counts["failed"], counts["skipped"], counts["errors"]) == (1, 1, 1, 0)
    assert counts["failed_tests"] == ["a::bad"] and "no DALI" in counts["skip_reasons"][0]
    train_row = {"bench": "train", "device": "cuda", "feed": "loader", "prefetch": True, "model": "WRN-28-2",
                 "batch": 64, "k": 8, "bf16": True, "compile": False, "steps_per_s": 12.0, "projected_hours": 24.3,
                 "peak_memory_gib": 5.5, "phase_shares": {"forward": 0.3, "backward": 0.6}}
    sections = {
        "training": {"status": "measured", "details": {"report": {"results": [train_row]}}},
        "learning": {"status": "measured", "details": {"evaluations": [{"step": 250, "acc_ema": 0.3, "acc_raw": 0.25}],
                                                       "steps": 250}},
        "correctness": {"status": "measured", "details": {"tests": counts}},
    }
    figs = gpu_check.figures(sections)
    by_name = {(f["name"], f["where"].get("phase")): f for f in figs}
    assert by_name[("train_steps_per_s", None)]["unit"] == "steps/s"
    assert by_name[("peak_memory_gib", None)]["value"] == 5.5
    assert by_name[("phase_share", "backward")]["value"] == 0.6
    assert by_name[("ema_accuracy", None)]["where"] == {"step": 250}
    summary = gpu_check.summarize(sections, figs)
    assert summary["train_steps_per_s"] == 12.0 and summary["projected_hours"] == 24.3
    assert summary["final_ema_accuracy"] == 0.3 and summary["tests"]["failed"] == 1


def test_the_bn_mode_section_is_told_apart_from_the_training_section():
    row = {"bench": "train", "device": "cuda", "feed": "synthetic", "prefetch": False, "model": "WRN-28-2",
           "batch": 64, "k": 8, "bf16": True, "steps_per_s": 10.0, "projected_hours": 29.1}
    sections = {
        "training": {"status": "measured", "details": {"report": {"config": {"bn_mode": "joint"}, "results": [row]}}},
        "bn-mode": {"status": "measured",
                    "details": {"report": {"config": {"bn_mode": "reference"}, "results": [{**row, "steps_per_s": 7.0}]}}},
    }
    figs = [f for f in gpu_check.figures(sections) if f["name"] == "train_steps_per_s"]
    assert {(f["section"], f["where"]["bn_mode"], f["value"]) for f in figs} == {
        ("training", "joint", 10.0), ("bn-mode", "reference", 7.0)}
    summary = gpu_check.summarize(sections, gpu_check.figures(sections))
    assert (summary["train_synthetic_steps_per_s"], summary["train_bn_reference_steps_per_s"]) == (10.0, 7.0)
    config = gpu_check.CheckConfig(out=Path("o"), archive=Path("a.tar.gz"), shards=Path("s"))
    (command,) = gpu_check.section_commands("bn-mode", config, Path("o/bn-mode"))
    assert command[command.index("--bn-mode") + 1] == "reference"


def test_make_gpu_check_runs_the_checkout_with_the_carried_archive():
    done = subprocess.run(["make", "-n", "gpu-check", "GPU_PYTHON=python3", "CIFAR10_SOURCE=/data/c10.tar.gz"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "PYTHONPATH=.device/ns python3 -m remixmatch.bench.cli gpu-check --archive" in done.stdout
    assert "make install" not in done.stdout and "--bundle" in done.stdout and "--budget 420" in done.stdout


def test_bad_input_is_one_line(tmp_path, capsys):
    assert_cli_error(main, "rmm-bench gpu-check", capsys,
                     ["gpu-check", "--archive", tmp_path / "absent.tar.gz", "--out", tmp_path / "out"],
                     "--archive", "absent.tar.gz: no such file")


def test_charts_and_figures_from_measured_sections(tmp_path):
    pytest.importorskip("matplotlib")

    def aug(backend, rate, op=None):
        return {"bench": "aug", "backend": backend, "op": op, "k": 8, "batch": 64, "views": 512, "inputs": "device",
                "views_per_s": rate, "threads": 1}

    train_row = {"bench": "train", "device": "cuda", "feed": "synthetic", "prefetch": True, "model": "WRN-28-2",
                 "batch": 64, "k": 8, "bf16": True, "compile": False, "steps_per_s": 20.0, "projected_hours": 14.6,
                 "peak_memory_gib": 5.0, "phase_seconds_per_step": {"forward": 0.01, "backward": 0.03},
                 "phase_shares": {"forward": 0.25, "backward": 0.75}}
    sections = {
        "augmentation": {"status": "timed_out", "reason": "cpu part", "details": {"reports": {
            "cuda": {"results": [aug("pil", 9e3), aug("numba-cuda", 2.5e7), aug("numba-cuda", 3e7, op="rotate")]}}}},
        "training": {"status": "measured", "details": {"report": {"results": [train_row]}}},
        "learning": {"status": "measured", "details": {"evaluations": [
            {"step": 250, "acc_ema": 0.2, "acc_raw": 0.25}, {"step": 500, "acc_ema": 0.35, "acc_raw": 0.33}]}},
    }
    charts = gpu_check.draw(sections, tmp_path)
    for name in ("views_per_s", "per_op", "step_split", "learning_curve"):
        assert charts[name] == f"{name}.png" and (tmp_path / charts[name]).stat().st_size > 1000, name
    figs = gpu_check.figures(sections)
    cuda = [f for f in figs if f["name"] == "cuda_views_per_s"]
    assert [f["value"] for f in cuda] == [2.5e7] and cuda[0]["unit"] == "views/s"
    assert any(f["name"] == "pil_views_per_s" for f in figs), "PIL from the cuda part when the cpu part did not finish"
    assert gpu_check.summarize(sections, figs)["cuda_best_views_per_s"] == 2.5e7


@pytest.mark.parametrize("variables, threads, cap", [
    ({}, 256, None),
    ({"REMIXMATCH_CUDA_THREADS": "128"}, 128, None),
    ({"REMIXMATCH_CUDA_MAX_REGISTERS": "80"}, 256, 80),
])
def test_the_kernel_tuning_variables_reach_the_launch_and_the_jit(variables, threads, cap):
    import os

    probe = ("from remixmatch.kernels.cuda import MAX_REGISTERS; from remixmatch.kernels.cuda_launch import apply_launch; "
             "caps = {MAX_REGISTERS[k] for k in ('apply_ops_kernel', 'apply_ops_kernel_global', 'apply_ops_kernel_tiled')}; "
             "print(apply_launch(32, 32).threads_per_block, *caps)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMIXMATCH_CUDA_")}
    done = subprocess.run([sys.executable, "-c", probe], env={**env, **variables}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(threads), str(cap)]


@pytest.mark.parametrize("design, kernel, dynamic_shared", [
    (None, "apply_ops_kernel_global", 0),
    ("tiled", "apply_ops_kernel_tiled", 4 * (96 + 96 + 2 * 768)),
    ("shared-optin", "apply_ops_kernel", 3 * 96 * 96 * 3 + 4 * (96 + 96 + 2 * 768)),
])
def test_the_large_view_design_variable_picks_the_96x96_kernel(design, kernel, dynamic_shared):
    """REMIXMATCH_CUDA_LARGE_VIEWS picks the kernel of views over 48 KiB; 32x32 keeps the shared one."""
    import os

    probe = ("from remixmatch.kernels.cuda_launch import apply_launch; "
             "print(apply_launch(96, 96).kernel, apply_launch(96, 96).dynamic_shared_bytes, apply_launch(32, 32).kernel)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMIXMATCH_CUDA_")}
    variables = {"REMIXMATCH_CUDA_LARGE_VIEWS": design} if design else {}
    done = subprocess.run([sys.executable, "-c", probe], env={**env, **variables}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [kernel, str(dynamic_shared), "apply_ops_kernel"]


@pytest.mark.parametrize("variable, value, message", [
    ("REMIXMATCH_CUDA_THREADS", "100", "REMIXMATCH_CUDA_THREADS='100': threads per block must be a multiple of 32"),
    ("REMIXMATCH_CUDA_LARGE_VIEWS", "shared", "REMIXMATCH_CUDA_LARGE_VIEWS='shared': the design for large views must "
                                              "be one of global, tiled, shared-optin"),
])
def test_a_bad_tuning_variable_names_itself(variable, value, message):
    import os

    done = subprocess.run([sys.executable, "-c", "import remixmatch.kernels.cuda"], capture_output=True, text=True,
                          env={**os.environ, variable: value}, timeout=300)
    assert done.returncode != 0 and message in done.stderr
