"""``rmm-bench gpu-check`` and ``make gpu-check``: the GPU machine's one command, rehearsed without a GPU.

The rehearsal (``--rehearse``) runs every section's own command in its CPU form at tiny sizes: the
correctness section runs the real pytest command (with pytest-timeout loaded where it is installed,
as on the GPU machine), which collects the gpu tests and skips them. The sections' commands are
checked to parse with the commands they call, so a typo cannot first surface on a machine lent for
minutes; the report's schema is checked by the same function that checks the reports committed
under reports/gpu/."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from datasets_helpers import REPO, assert_cli_error, cifar_archive
from remixmatch.bench import gpu_check
from remixmatch.bench.cli import main

CUDA_SECTIONS = [s.name for s in gpu_check.SECTIONS if s.needs_cuda]
# What the CI rehearsal leaves out to stay cheap: sections whose CPU forms other tests already run
# (rmm-bench aug / train / pipeline, rmm-train with --time-limit and through the elastic agent) and
# whose commands are checked to parse below, in both forms. `make gpu-check GPU_REHEARSE=1` runs them all.
CI_SKIP = ("augmentation", "training", "learning", "pipeline", "launcher", "bn-mode", "kernel-tuning")


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """The whole command as the GPU machine runs it, in rehearsal mode, on a small synthetic archive."""
    root = tmp_path_factory.mktemp("gpu_check")
    archive, _ = cifar_archive(root)
    out, sent = root / "out", root / "sent"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "remixmatch.bench.cli", "gpu-check", "--rehearse", "--archive",
                           str(archive), "--out", str(out), "--bundle", str(sent), "--budget", "200",
                           "--learn-seconds", "3", *(f"--skip={name}" for name in CI_SKIP)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": out, "sent": sent, "report": json.loads((out / "report.json").read_text()), "stderr": done.stderr,
            "seconds": time.perf_counter() - started}


def test_the_rehearsal_runs_each_sections_own_command_and_ends_0(rehearsal):
    sections = rehearsal["report"]["sections"]
    assert list(sections) == list(gpu_check.SECTION_NAMES)
    ran = [name for name in gpu_check.SECTION_NAMES if name not in CI_SKIP and name != "training-compile"]
    for name in ran:
        assert sections[name]["status"] == "measured", (name, sections[name].get("reason"))
    assert "rehearsal" in sections["training-compile"]["reason"]
    env = sections["environment"]["details"]["report"]["environment"]
    assert env["torch"]["version"] and env["numba"]["numba"] and "nvvm" in env["numba"]
    warm = sections["environment"]["details"]["warm"]["jobs"]
    assert [job["job"] for job in warm] == [job[0] for job in gpu_check.WARM_JOBS]
    assert warm[-1]["compiled"] and all("regs" in job["folder"] for job in warm[:-1])
    assert (rehearsal["out"] / "shards" / "manifest.json").is_file()
    for name in CI_SKIP:
        assert sections[name] == {"status": "skipped", "reason": "--skip"}, name


def test_the_rehearsal_runs_the_gpu_tests_command_with_pytest_timeout_and_counts_the_skips(rehearsal):
    """The command that stopped at exit 3 on the GPU machine (pytest-timeout registered twice)."""
    pytest.importorskip("pytest_timeout")
    correctness = rehearsal["report"]["sections"]["correctness"]
    assert [c["exit"] for c in correctness["commands"]] == [0] * len(gpu_check.GPU_TESTS)
    tests = rehearsal["report"]["summary"]["tests"]
    assert tests["skipped"] > 0 and tests["failed"] == tests["errors"] == 0
    with tarfile.open(rehearsal["sent"] / "logs.tar.gz") as logs:
        names = logs.getnames()
        assert {f"correctness/junit-{i + 1}.xml" for i in range(len(gpu_check.GPU_TESTS))} <= set(names)
        log = logs.extractfile("correctness/log1.txt").read().decode()
    assert "--timeout=" in " ".join(_section("correctness").commands(_config(Path("o")), Path("c"))[0])
    assert "Plugin already registered" not in log


def test_the_rehearsal_report_has_the_schema_and_the_bundle_fits_what_comes_back(rehearsal):
    report = rehearsal["report"]
    assert gpu_check.schema_problems(report) == []
    sent = sorted(p.name for p in rehearsal["sent"].iterdir())
    assert len(sent) <= gpu_check.BUNDLE_LIMIT and {"report.json", "report.md", "logs.tar.gz"} <= set(sent)
    with tarfile.open(rehearsal["sent"] / "logs.tar.gz") as logs:
        assert "data/log1.txt" in logs.getnames() and "environment/log1.txt" in logs.getnames()
    assert "| correctness | measured |" in (rehearsal["sent"] / "report.md").read_text()


def _config(tmp_path, **kw):
    return gpu_check.CheckConfig(out=tmp_path, archive=tmp_path / "a.tar.gz", shards=tmp_path / "shards", **kw)


def _section(name, **replaced):
    return dataclasses.replace(next(s for s in gpu_check.SECTIONS if s.name == name), **replaced)


def test_without_a_gpu_a_cuda_section_skips_with_its_reason_unless_rehearsed(tmp_path):
    section = _section("training", commands=lambda config, folder: [[sys.executable, "-c", "pass"]])
    skipped = gpu_check.run_section(section, _config(tmp_path), 100, "no CUDA device", lambda line: None)
    assert skipped == {"status": "skipped", "reason": "no CUDA device"}
    ran = gpu_check.run_section(section, _config(tmp_path, rehearse=True), 1000, "no CUDA device", lambda line: None)
    assert ran["status"] == "measured" and ran["bound_seconds"] == 1000, "a rehearsal: the budget alone bounds it"
    on_gpu = gpu_check.run_section(section, _config(tmp_path), 1000, None, lambda line: None)
    assert on_gpu["bound_seconds"] == section.cap_s


def test_a_second_run_on_a_warm_machine_starts_each_section_clean(tmp_path):
    """The launcher and learning runs refuse a folder that holds a run: run_section clears it first."""
    refuse = "import pathlib, sys; p = pathlib.Path(sys.argv[1]); sys.exit(3 if p.exists() else p.write_text('run') - 3)"
    section = _section("launcher", commands=lambda config, folder: [[sys.executable, "-c", refuse, str(folder / "run")]],
                       problem=lambda details, config, commands: None)
    for _ in range(2):
        assert gpu_check.run_section(section, _config(tmp_path), 100, None, lambda line: None)["status"] == "measured"


def test_the_sections_run_in_the_order_the_first_slot_needs_them():
    assert gpu_check.SECTION_NAMES == (
        "data", "environment", "augmentation", "training", "learning", "pipeline", "correctness", "launcher",
        "training-compile", "bn-mode", "kernel-tuning")
    (command,) = _section("augmentation").commands(_config(Path("o")), Path("o/augmentation"))
    assert command[command.index("--device") + 1] == "cuda", "the augmentation section: CUDA rows only"
    assert command[-2:] == ["--out", str(Path("o/augmentation/cuda"))]


def test_the_correctness_section_is_one_pytest_per_file_without_naming_the_timeout_plugin(tmp_path, monkeypatch):
    """Each file its own JUnit XML, so a timeout keeps what ran; no -p for pytest-timeout, which
    pytest loads itself where it is installed (naming it again: 'Plugin already registered')."""
    for installed in (True, False):
        monkeypatch.setattr(gpu_check, "_has_module", lambda name: installed)
        commands = _section("correctness").commands(_config(tmp_path), tmp_path / "c")
        assert [argv[-1] for argv in commands] == list(gpu_check.GPU_TESTS)
        for i, argv in enumerate(commands):
            assert "pytest_timeout" not in argv and "timeout" not in [argv[j + 1] for j, a in enumerate(argv) if a == "-p"]
            assert any(a.startswith("--timeout=") for a in argv) == installed
            assert f"--junitxml={tmp_path / 'c' / f'junit-{i + 1}.xml'}" in argv
    assert _section("correctness").keep_going


def test_the_counts_of_the_test_files_that_finished_are_kept(tmp_path):
    case = '<testcase classname="{0}" name="{1}">{2}</testcase>'
    (tmp_path / "junit-1.xml").write_text("<testsuite>" + case.format("a", "ok", "") + case.format(
        "a", "s", '<skipped message="no GPU"/>') + "</testsuite>")
    (tmp_path / "junit-2.xml").write_text("<testsuite>" + case.format("b", "bad", '<failure message="x"/>') + "</testsuite>")
    (tmp_path / "junit-3.xml").write_text("<testsuite")  # the file whose pytest was stopped
    details = gpu_check.read_tests(tmp_path)
    merged = details["tests"]
    assert (merged["passed"], merged["failed"], merged["skipped"], merged["errors"]) == (1, 1, 1, 0)
    assert merged["failed_tests"] == ["b::bad"] and details["files"] == 2
    gpu, rehearsal = _config(tmp_path), _config(tmp_path, rehearse=True)
    problem = _section("correctness").problem
    assert problem(details, gpu, 3).startswith("1 failed")
    only_skips = {"passed": 0, "failed": 0, "skipped": 4, "errors": 0, "failed_tests": []}
    assert problem({"tests": only_skips, "files": 3}, rehearsal, 3) is None
    assert problem({"tests": only_skips, "files": 3}, gpu, 3) == "no gpu test passed"
    assert problem({"tests": only_skips, "files": 2}, rehearsal, 3) == "JUnit XML of 2 of 3 test files"
    assert problem(gpu_check.read_tests(tmp_path / "absent"), rehearsal, 3).startswith("no JUnit XML")


def test_every_section_shares_one_numba_cache_and_the_cuda_toolkit(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    env = gpu_check.child_env(_config(tmp_path, numba_cache=tmp_path / "cache"))
    assert env["NUMBA_CACHE_DIR"] == str((tmp_path / "cache").resolve())
    assert env.get("CUDA_HOME") == ("/usr/local/cuda" if Path("/usr/local/cuda").is_dir() else None)
    assert gpu_check.child_env(_config(tmp_path))["NUMBA_CACHE_DIR"] == str((tmp_path / "numba-cache").resolve())


def test_a_warm_up_job_in_a_rehearsal_builds_its_kernels_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    job = gpu_check.warm_job(gpu_check.WARM_JOBS[4], rehearse=True)
    assert job["kernel"] == "apply_ops_kernel" and job["tuning"] == "regs80-threads256" and not job["compiled"]
    assert Path(job["folder"]).parent == tmp_path and Path(job["folder"]).is_dir()
    failed = gpu_check.warm_job(("bad", "no_such_kernel", {}, 32), True)
    assert failed["job"] == "bad" and failed["error"].startswith("KeyError")


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


@pytest.mark.parametrize("rehearse", [False, True], ids=["gpu", "rehearsal"])
@pytest.mark.parametrize("name", CUDA_SECTIONS)
def test_each_cuda_sections_commands_parse(name, rehearse, tmp_path):
    from remixmatch.trainer.cli import build_parser as train_parser
    from remixmatch.trainer.config import resolve

    config = _config(tmp_path, rehearse=rehearse)
    commands = _section(name).commands(config, tmp_path / name)
    if isinstance(commands, str):
        assert rehearse and name == "training-compile"
        return
    for argv in commands:
        if argv[0] == "env":  # variables for the child, then the command
            variables = dict(a.split("=", 1) for a in argv[1:argv.index(sys.executable)])
            assert gpu_check.tuning_from_env(variables)
            argv = argv[argv.index(sys.executable):]
        assert argv[0] == sys.executable
        if argv[1] == "-c" and "tuned_main" in argv[2]:  # rmm-bench under a launch tuning
            argv = [sys.executable, "-m", "remixmatch.bench.cli", *argv[3:]]
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
            assert ("cuda" in rest) != rehearse
        else:
            assert argv[1:3] == ["-m", "pytest"] and all((REPO / t).is_file() for t in gpu_check.GPU_TESTS)


def test_junit_counts_and_the_figures_of_measured_sections(tmp_path):
    (tmp_path / "junit-1.xml").write_text(
        '<testsuites><testsuite><testcase classname="a" name="ok"/><testcase classname="a" name="bad">'
        '<failure message="x"/></testcase><testcase classname="b" name="s"><skipped message="no DALI"/></testcase>'
        '</testsuite></testsuites>')
    counts = gpu_check.read_tests(tmp_path)["tests"]
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
    by_name = {f["name"]: f for f in figs}
    assert by_name["steps_per_s"]["unit"] == "steps/s" and by_name["steps_per_s"]["where"]["feed"] == "loader"
    assert by_name["projected_hours"]["unit"] == "h"
    assert by_name["peak_memory_gib"]["value"] == 5.5 and by_name["peak_memory_gib"]["unit"] == "GiB"
    assert by_name["phase_shares.backward"]["value"] == 0.6
    assert by_name["acc_ema"]["where"] == {"step": 250} and by_name["acc_raw"]["value"] == 0.25
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
    figs = [f for f in gpu_check.figures(sections) if f["name"] == "steps_per_s"]
    assert {(f["section"], f["value"]) for f in figs} == {("training", 10.0), ("bn-mode", 7.0)}
    summary = gpu_check.summarize(sections, gpu_check.figures(sections))
    assert (summary["train_synthetic_steps_per_s"], summary["train_bn_reference_steps_per_s"]) == (10.0, 7.0)
    config = gpu_check.CheckConfig(out=Path("o"), archive=Path("a.tar.gz"), shards=Path("s"))
    (command,) = _section("bn-mode").commands(config, Path("o/bn-mode"))
    assert command[command.index("--bn-mode") + 1] == "reference"


def test_make_gpu_check_runs_the_checkout_with_the_carried_archive():
    done = subprocess.run(["make", "-n", "gpu-check", "GPU_PYTHON=python3", "CIFAR10_SOURCE=/data/c10.tar.gz",
                           "CUDA_HOME=/opt/cuda"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # CUDA_HOME for this process too (its cuda_reason() probes NVVM); the namespace before the
    # machine's own PYTHONPATH, not instead of it.
    assert ("CUDA_HOME=/opt/cuda PYTHONPATH=.device/ns${PYTHONPATH:+:$PYTHONPATH} python3 -m remixmatch.bench.cli "
            "gpu-check --archive /data/c10.tar.gz") in done.stdout
    assert "make install" not in done.stdout and "--bundle" in done.stdout and "--budget 480" in done.stdout
    assert "--rehearse" not in done.stdout
    shards = done.stdout.split("--shards ")[1].split()[0]
    assert not shards.startswith((".", "bench-out")), "the shards stay out of the checkout: only the archive travels"


def test_make_gpu_check_passes_gpu_args_and_rehearses(tmp_path):
    done = subprocess.run(["make", "-n", "gpu-check", "GPU_PYTHON=python3", "CIFAR10_SOURCE=/data/c10.tar.gz",
                           "GPU_REHEARSE=1", "GPU_ARGS=--skip data --skip environment"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--rehearse --skip data --skip environment" in done.stdout and "--learn-seconds 10" in done.stdout


def test_make_gpu_check_sets_the_namespace_beside_an_existing_pythonpath(tmp_path):
    """Run for real with a stand-in python: the image's own PYTHONPATH survives."""
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho \"PYTHONPATH=$PYTHONPATH CUDA_HOME=$CUDA_HOME\" > \"$(dirname \"$0\")/seen\"\n")
    python.chmod(0o755)
    (tmp_path / "ns").mkdir()
    done = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={python}", "CIFAR10_SOURCE=/data/c10.tar.gz",
                           "CUDA_HOME=/opt/cuda", f"GPU_OUT={tmp_path / 'out'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": "/image/site"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "seen").read_text().split() == ["PYTHONPATH=.device/ns:/image/site", "CUDA_HOME=/opt/cuda"]


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
            "cuda": {"inputs": {"height": 32, "width": 32},
                     "results": [aug("pil", 9e3), aug("numba-cuda", 2.5e7), aug("numba-cuda", 3e7, op="rotate")]}}}},
        "training": {"status": "measured", "details": {"report": {"results": [train_row]}}},
        "learning": {"status": "measured", "details": {"evaluations": [
            {"step": 250, "acc_ema": 0.2, "acc_raw": 0.25}, {"step": 500, "acc_ema": 0.35, "acc_raw": 0.33}]}},
    }
    charts = gpu_check.draw(sections, tmp_path)
    for name in ("views_per_s", "per_op", "step_split", "learning_curve"):
        assert charts[name] == f"{name}.png" and (tmp_path / charts[name]).stat().st_size > 1000, name
    figs = gpu_check.figures(sections)
    cuda = [f for f in figs if f["name"] == "views_per_s" and f["where"]["backend"] == "numba-cuda"]
    assert [(f["value"], f["where"].get("op")) for f in cuda] == [(2.5e7, None), (3e7, "rotate")]
    assert cuda[0]["unit"] == "views/s" and cuda[0]["where"]["size"] == [32, 32] and cuda[0]["where"]["part"] == "cuda"
    assert any(f["where"]["backend"] == "pil" for f in figs), "PIL from the cuda part when the cpu part did not finish"
    assert gpu_check.summarize(sections, figs)["cuda_best_views_per_s"] == 2.5e7


@pytest.mark.parametrize("variables, threads, cap, design", [
    ({}, 256, None, "global"),
    ({"REMIXMATCH_CUDA_THREADS": "128"}, 128, None, "global"),
    ({"REMIXMATCH_CUDA_MAX_REGISTERS": "80"}, 256, 80, "global"),
    ({"REMIXMATCH_CUDA_LARGE_VIEWS": "tiled"}, 256, None, "tiled"),
])
def test_the_kernel_tuning_variables_make_the_launch_tuning(variables, threads, cap, design):
    from remixmatch.kernels.cuda import LaunchTuning, kernels

    tuning = gpu_check.tuning_from_env(variables)
    assert tuning == LaunchTuning(threads, cap, design)
    apply = kernels(tuning)["apply_ops_kernel"]
    assert apply.targetoptions.get("max_registers") == cap


def test_every_tuning_variant_is_a_tuning_of_its_own():
    tunings = [gpu_check.tuning_from_env(variables) for _, variables, _ in gpu_check.TUNING]
    assert len(set(tunings)) == len(gpu_check.TUNING)


@pytest.mark.parametrize("variable, value, message", [
    ("REMIXMATCH_CUDA_THREADS", "100", "REMIXMATCH_CUDA_THREADS='100': threads per block 100: must be a multiple of 32 in 32..1024"),
    ("REMIXMATCH_CUDA_MAX_REGISTERS", "many", "REMIXMATCH_CUDA_MAX_REGISTERS='many': not a whole number"),
    ("REMIXMATCH_CUDA_LARGE_VIEWS", "shared", "REMIXMATCH_CUDA_LARGE_VIEWS='shared': large-view design 'shared': "
                                              "must be one of global, tiled, shared-optin"),
])
def test_a_bad_tuning_variable_names_itself(variable, value, message, capsys):
    with pytest.raises(ValueError) as error:
        gpu_check.tuning_from_env({variable: value})
    assert str(error.value) == message
    os.environ[variable] = value
    try:
        assert gpu_check.tuned_main(["aug", "--help"]) == 2
    finally:
        del os.environ[variable]
    assert message in capsys.readouterr().err


def test_the_launcher_meets_on_the_loopback_address_and_interface(monkeypatch):
    """In a VM socket.getfqdn() may not resolve: a single-node launch names 127.0.0.1 and, unless the
    user set one, NCCL's loopback interface; on a torch whose LaunchConfig lacks local_addr it still builds."""
    import dataclasses

    from torch.distributed.launcher.api import LaunchConfig

    from remixmatch.trainer.distributed import World, make_launch_config, single_node_network_env

    world = World("launch", 1, True, 1, max_restarts=0)
    built = make_launch_config(LaunchConfig, world)
    assert built.rdzv_endpoint.startswith("127.0.0.1:")
    if "local_addr" in {f.name for f in dataclasses.fields(LaunchConfig)}:
        assert built.local_addr == "127.0.0.1"
    older = dataclasses.make_dataclass("LaunchConfig", [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
        for f in dataclasses.fields(LaunchConfig) if f.name not in ("local_addr", "shutdown_timeout")])
    assert make_launch_config(older, world).rdzv_endpoint.startswith("127.0.0.1:")
    environ = {}
    single_node_network_env(environ)
    assert environ == {"NCCL_SOCKET_IFNAME": "lo"}
    environ = {"NCCL_SOCKET_IFNAME": "eth1"}
    single_node_network_env(environ)
    assert environ == {"NCCL_SOCKET_IFNAME": "eth1"}
