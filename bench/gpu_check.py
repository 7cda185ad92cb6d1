"""``rmm-bench gpu-check``: every CUDA path proven and the GPU figures measured, in one bounded run.

    rmm-bench gpu-check --archive PATH --out DIR [--shards DIR] [--budget 420] [--learn-seconds 100]
                        [--bundle DIR] [--skip SECTION ...]

Made for a GPU machine lent for minutes: the run ends within ``--budget`` seconds, whatever hangs.
Each section is a child process with a wall-clock bound (:mod:`remixmatch.bench.bounded`): the
smaller of its own cap and what is left of the budget. A section that fails or runs out of time is
recorded as such and the sections after it still run; one that needs a GPU is skipped, with the
reason, where CUDA does not answer (so the same command rehearses on a CPU machine and ends 0).
Sections, in order (``SECTIONS``):

1. ``data``: the CIFAR-10 shards from ``--archive`` (prep-cifar10), unless ``--shards`` has them;
2. ``environment``: GPU, driver, torch, numba, numba-cuda, NVVM, ptxas, the CUDA kernel's JIT
   compile time (``rmm-bench gpu-env``);
3. ``correctness``: the ``gpu``-marked tests (kernels shared- and global-memory vs the CPU kernel on
   real images, the CUDA loader vs the CPU loader, a float32 CUDA step vs the CPU step), with the
   archive passed to them, counted from pytest's JUnit XML;
4. ``augmentation``: ``rmm-bench aug --device cuda --quick``: CUDA views/s at N = 512, 8,192, 65,536
   with per-view arrays on the device and on the host, per-op rows; then ``--device cpu``: the same
   images through the CPU kernel and PIL;
5. ``pipeline``: the torch loader on CUDA at B = 64 and 256, K = 8, prefetch (``rmm-bench pipeline
   --device cuda``);
6. ``training``: WRN-28-2, B = 64, K = 8, bf16 and channels_last: steps/s from ready tensors and from
   the loader, the step split, peak memory, the 2^20-step projection (``rmm-bench train --device cuda``);
7. ``launcher``: ``rmm-train --gpus 1 --sync-bn`` through the elastic agent on NCCL, then a
   ``--resume`` that adds steps; both must exit 0 and leave summary.json and checkpoints;
8. ``learning``: ``rmm-train --preset cifar10-250`` for ``--learn-seconds`` of training
   (``--time-limit``), evaluating every 250 steps: the learning curve;
9. ``training-compile``: the ready-tensor step with ``torch.compile``, if the budget has room left;
10. ``bn-mode``: the ready-tensor step under the reference's interleaved batch norm (``--bn-mode
    reference``: K + 2 chunks of B), against ``training``'s one forward, if there is room;
11. ``kernel-tuning``: the CUDA rows at 96x96 (synthetic images) under each design for views larger
    than 48 KiB of shared memory (``REMIXMATCH_CUDA_LARGE_VIEWS``: global, tiled, shared-optin), then
    at 32x32 with apply_ops_kernel capped at 80 registers and with 128 threads per block
    (``REMIXMATCH_CUDA_MAX_REGISTERS`` / ``REMIXMATCH_CUDA_THREADS``), as far as there is room.

``DIR/report.json`` (``"command": "gpu-check"``, the common header of :mod:`remixmatch.bench.report`)::

    "sections": {"<name>": {"status": "measured" | "failed" | "timed_out" | "skipped",
                            "reason": "..." (all but measured), "seconds": 12.3, "bound_seconds": 90,
                            "details": {...}}},       # what the section's own files say (below)
    "figures": [{"section": "augmentation", "name": "cuda_views_per_s", "value": 2.1e7,
                 "unit": "views/s", "where": {"views": 65536, "inputs": "device"}}, ...],
    "summary": {"gpu", "tests": {"passed", "failed", "skipped", "errors"} | null,
                "cuda_best_views_per_s", "goal_views_per_s": 2e7, "train_steps_per_s",
                "train_synthetic_steps_per_s", "train_compiled_steps_per_s",
                "train_bn_reference_steps_per_s",   # ready tensors, --bn-mode reference
                "projected_hours", "final_ema_accuracy"}

Details: ``environment``, ``pipeline``, ``training``, ``training-compile`` and ``bn-mode`` embed their section's
report.json (``report``), ``augmentation`` its two (``reports``: ``cuda``, then ``cpu``, the same run's CPU
kernel and PIL, in a command of its own so that a slow CPU compile cannot cost the CUDA rows); ``correctness`` the test counts and the failed tests' names;
``kernel-tuning`` its variants' reports (``reports``); ``launcher`` each command's exit status, seconds and the steps summary.json recorded;
``learning`` the evaluations (step, EMA and raw accuracy) and summary.json's accuracy.

``DIR/report.md`` is the human summary, with charts beside it (``views_per_s.png``,
``step_split.png`` from :mod:`remixmatch.bench.charts`, ``learning_curve.png``). ``--bundle DIR2``
copies what a lent machine may send back (at most 8 files): report.json, report.md, the charts, and
``logs.tar.gz`` with every section's log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from remixmatch.common.cli import OneLineParser, positive_int

from .bounded import run_bounded
from .errors import BenchError
from .report import (
    RunConditions, finish_report, format_hours, format_rate, machine_info, markdown_table, new_report, report_main,
)

PROG = "rmm-bench gpu-check"
GOAL_VIEWS_PER_S = 2e7  # strong views/s at 32x32 on one H100-class GPU
MIN_SECTION_S = 15  # a section offered less than this is skipped: the budget is spent
GPU_TESTS = ("tests/test_kernels_gpu.py", "tests/test_gpu_training.py", "tests/test_pipeline_dali.py")
TEST_TIMEOUT_S = 240  # per test, where pytest-timeout is installed
BUNDLE_LIMIT = 8  # files a lent machine sends back
LEARN_EVAL_EVERY = 250
AUG_PARTS = (("cuda", "cuda"), ("cpu", "cpu"))  # (sub-folder, rmm-bench aug --device)
# The kernel-tuning section's variants of the CUDA kernel: (sub-folder, environment, image side; None:
# the CIFAR-10 archive's 32x32). First the three designs for 96x96 views, which no GPU has compared
# yet (README, "CUDA kernel resources"): global memory (the default), filter tiles staged in shared
# memory, the whole view in opted-in shared memory. Then 32x32: ptxas predicts 25% occupancy at 256
# threads and 104 registers; a cap of 80 would allow 3 blocks per SM but spills.
TUNING = (("size96-global", {"REMIXMATCH_CUDA_LARGE_VIEWS": "global"}, 96),
          ("size96-tiled", {"REMIXMATCH_CUDA_LARGE_VIEWS": "tiled"}, 96),
          ("size96-shared-optin", {"REMIXMATCH_CUDA_LARGE_VIEWS": "shared-optin"}, 96),
          ("max-registers-80", {"REMIXMATCH_CUDA_MAX_REGISTERS": "80"}, None),
          ("threads-128", {"REMIXMATCH_CUDA_THREADS": "128"}, None))


@dataclass(frozen=True)
class Section:
    name: str
    cap_s: int  # its own wall-clock bound (the budget left may be smaller)
    needs_cuda: bool


SECTIONS = (
    Section("data", 90, False),
    Section("environment", 90, False),
    Section("correctness", 150, True),
    Section("augmentation", 150, True),
    Section("pipeline", 60, True),
    Section("training", 120, True),
    Section("launcher", 120, True),
    Section("learning", 240, True),
    Section("training-compile", 150, True),
    Section("bn-mode", 90, True),
    Section("kernel-tuning", 150, True),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


@dataclass(frozen=True)
class CheckConfig:
    out: Path
    archive: Path
    shards: Path  # where the data section writes (or found) the shards
    budget_s: int = 420
    learn_seconds: int = 100
    bundle: Path | None = None
    skip: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {"out": str(self.out), "archive": self.archive.name, "shards": str(self.shards),
                "budget_s": self.budget_s, "learn_seconds": self.learn_seconds,
                "bundle": None if self.bundle is None else str(self.bundle), "skip": list(self.skip)}


# ---- where the run is ---------------------------------------------------------------------------------

def cuda_reason() -> str | None:
    """Why CUDA sections cannot run here, or None: torch and numba-cuda must both see a device."""
    try:
        import torch
    except Exception as error:  # noqa: BLE001
        return f"torch is not importable ({type(error).__name__})"
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"
    try:
        from numba import cuda

        if not cuda.is_available():
            return "numba-cuda sees no CUDA device"
    except Exception as error:  # noqa: BLE001
        return f"numba.cuda is not importable ({type(error).__name__}: {error})"
    return None


def child_env(config: CheckConfig) -> dict:
    """The sections' environment: the archive for the real-image tests and prep; numba-cuda pointed
    at a system toolkit when no NVVM wheel is there (it looks in $CUDA_HOME)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", REMIXMATCH_CIFAR10_JPG=str(config.archive.resolve()))
    if "CUDA_HOME" not in env and Path("/usr/local/cuda").is_dir():
        env["CUDA_HOME"] = "/usr/local/cuda"
    return env


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _bench(*args: str) -> list[str]:
    return _python("-m", "remixmatch.bench.cli", *args)


def _train(*args: str) -> list[str]:
    return _python("-m", "remixmatch.trainer.cli", *args)


# ---- the sections' commands ---------------------------------------------------------------------------

def section_commands(name: str, config: CheckConfig, folder: Path) -> list[list[str]] | str:
    """The commands of a section (run in order, each within what is left of its bound), or the
    reason it is skipped."""
    shards = str(config.shards)
    if name == "data":
        if (config.shards / "manifest.json").is_file():
            return f"shards already prepared in {config.shards}"
        prep = "import sys; from remixmatch.datasets_prep.cli import prep_cifar10_main as m; sys.exit(m(sys.argv[1:]))"
        return [_python("-c", prep, "--source", str(config.archive), "--out", shards, "--overwrite")]
    if name == "environment":
        return [_bench("gpu-env", "--out", str(folder))]
    if name == "correctness":
        timeout = ["-p", "pytest_timeout", f"--timeout={TEST_TIMEOUT_S}"] if _has_module("pytest_timeout") else []
        return [_python("-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *timeout,
                        f"--junitxml={folder / 'junit.xml'}", *GPU_TESTS)]
    if name == "augmentation":
        # CUDA first: the CPU kernel's compile on a fresh machine is the slow part, and its rows are
        # the comparison, not the point.
        return [_bench("aug", "--device", device, "--quick", "--images", str(config.archive), "--out", str(folder / part))
                for part, device in AUG_PARTS]
    if name == "pipeline":
        return [_bench("pipeline", "--device", "cuda", "--quick", "--shards", shards, "--out", str(folder))]
    if name == "training":
        return [_bench("train", "--device", "cuda", "--quick", "--shards", shards, "--out", str(folder))]
    if name == "training-compile":
        return [_bench("train", "--device", "cuda", "--quick", "--compile", "--out", str(folder))]
    if name == "bn-mode":
        return [_bench("train", "--device", "cuda", "--quick", "--bn-mode", "reference", "--out", str(folder))]
    if name == "kernel-tuning":
        # A size other than the archive's: synthetic images of that size.
        return [["env", *(f"{k}={v}" for k, v in env.items()),
                 *_bench("aug", "--device", "cuda", "--quick",
                         *(("--size", str(size)) if size else ("--images", str(config.archive))), "--out", str(folder / part))]
                for part, env, size in TUNING]
    if name == "launcher":
        run = folder / "run"
        common = ["--gpus", "1", "--sync-bn", "--data", shards, "--labels", "250", "--out", str(run), "--quiet",
                  "--eval-every", "100", "--ckpt-every", "100", "--log-every", "50"]
        return [_train(*common, "--steps", "200"), _train(*common, "--steps", "300", "--resume")]
    if name == "learning":
        return [_train("--preset", "cifar10-250", "--data", shards, "--out", str(folder / "run"), "--quiet",
                       "--time-limit", str(config.learn_seconds), "--eval-every", str(LEARN_EVAL_EVERY),
                       "--log-every", "50", "--ckpt-every", "100000")]
    raise BenchError(f"unknown section {name!r}")


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---- what each section's files say ----------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def junit_counts(path: Path) -> dict | None:
    """Passed / failed / skipped / errors from pytest's JUnit XML, with the failed tests' names."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "failed_tests": [], "skip_reasons": []}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            counts["failed_tests"].append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            counts["failed_tests"].append(name)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            counts["skip_reasons"].append(f"{name}: {skip.get('message', '')}"[:200])
        else:
            counts["passed"] += 1
    return counts


def metrics_evaluations(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"step": r["step"], "acc_ema": r["acc_ema"], "acc_raw": r["acc_raw"]} for r in records if r.get("eval")]


def section_details(name: str, folder: Path) -> dict:
    if name in ("augmentation", "kernel-tuning"):
        parts = [entry[0] for entry in (AUG_PARTS if name == "augmentation" else TUNING)]
        reports = {part: _read_json(folder / part / "report.json") for part in parts}
        return {"reports": {part: report for part, report in reports.items() if report is not None}}
    if name in ("environment", "pipeline", "training", "training-compile", "bn-mode"):
        report = _read_json(folder / "report.json")
        return {"report": report} if report is not None else {}
    if name == "correctness":
        counts = junit_counts(folder / "junit.xml")
        return {"tests": counts} if counts is not None else {}
    if name == "launcher":
        summary = _read_json(folder / "run" / "summary.json") or {}
        checkpoints = sorted(p.name for p in (folder / "run" / "checkpoints").glob("ckpt-*.pt"))
        return {"summary_steps": summary.get("steps"), "world_size": summary.get("world_size"),
                "device": summary.get("device"), "checkpoints": checkpoints,
                "sync_bn": (summary.get("config") or {}).get("sync_bn")}
    if name == "learning":
        summary = _read_json(folder / "run" / "summary.json") or {}
        return {"evaluations": metrics_evaluations(folder / "run"), "steps": summary.get("steps"),
                "accuracy": summary.get("accuracy"), "wall_seconds": summary.get("wall_seconds"),
                "model": (summary.get("model") or {}).get("name")}
    return {}


def launcher_problem(details: dict) -> str | None:
    """The launcher section's own check: the resumed run reached its steps and wrote a checkpoint."""
    if details.get("summary_steps") != 300:
        return f"summary.json records {details.get('summary_steps')} steps, not the 300 the resume asked for"
    if not details.get("checkpoints"):
        return "no checkpoint written"
    return None


# ---- running --------------------------------------------------------------------------------------------

def run_section(section: Section, config: CheckConfig, left_s: float, reason: str | None, log) -> dict:
    folder = config.out / section.name
    if section.name in config.skip:
        return {"status": "skipped", "reason": "--skip"}
    if section.needs_cuda and reason is not None:
        return {"status": "skipped", "reason": reason}
    bound = min(section.cap_s, left_s)
    if bound < MIN_SECTION_S:
        return {"status": "skipped", "reason": f"the run's budget is spent ({left_s:.0f} s left)"}
    commands = section_commands(section.name, config, folder)
    if isinstance(commands, str):
        return {"status": "skipped", "reason": commands}
    folder.mkdir(parents=True, exist_ok=True)
    env = child_env(config)
    start, status, why, exits = time.perf_counter(), "measured", None, []
    for i, argv in enumerate(commands):
        left = bound - (time.perf_counter() - start)
        log(f"== {section.name} [{i + 1}/{len(commands)}] (bound {left:.0f} s): {' '.join(argv[1:])[:200]}")
        outcome = run_bounded(argv, timeout_s=left, log=lambda line: log(f"   {line}"),
                              log_file=folder / f"log{i + 1}.txt", env=env)
        exits.append({"exit": outcome.code, "seconds": outcome.seconds})
        if outcome.timed_out:
            status, why = "timed_out", f"command {i + 1} stopped at the section's bound ({bound:.0f} s): {outcome.last_line()}"
            break
        if outcome.code != 0:
            status, why = "failed", f"command {i + 1} exit status {outcome.code}: {outcome.last_line()}"
            break
    result = {"status": status, "seconds": round(time.perf_counter() - start, 1), "bound_seconds": round(bound),
              "commands": exits, "details": section_details(section.name, folder)}
    if status == "measured" and section.name == "launcher":
        problem = launcher_problem(result["details"])
        if problem:
            status, why = "failed", problem
            result["status"] = status
    if section.name == "correctness" and status == "measured" and (result["details"].get("tests") or {}).get("passed", 0) == 0:
        status, why = "failed", "no gpu test passed"
        result["status"] = status
    if why:
        result["reason"] = why
    return result


# ---- figures ----------------------------------------------------------------------------------------------

def _report_of(sections: dict, name: str) -> dict | None:
    return (sections.get(name) or {}).get("details", {}).get("report")


def aug_rows(sections: dict) -> list[dict]:
    """The augmentation rows: CUDA from the cuda part; the CPU kernel and PIL from the cpu part, or
    from the cuda part's own PIL rows when the cpu part did not finish."""
    reports = (sections.get("augmentation") or {}).get("details", {}).get("reports", {})
    cuda_rows = (reports.get("cuda") or {}).get("results", [])
    others = (reports.get("cpu") or reports.get("cuda") or {}).get("results", [])
    return ([r for r in cuda_rows if r.get("backend") == "numba-cuda"]
            + [r for r in others if r.get("backend") != "numba-cuda"])


def figures(sections: dict) -> list[dict]:
    """Every figure the run measured, with its unit and where it was measured."""
    out: list[dict] = []

    def add(section: str, name: str, value, unit: str, **where) -> None:
        if value is not None:
            out.append({"section": section, "name": name, "value": value, "unit": unit, "where": where})

    env = _report_of(sections, "environment")
    if env:
        add("environment", "kernel_compile_seconds", (env["environment"].get("kernel_compile") or {}).get("seconds"), "s")
    for r in aug_rows(sections):
        if r.get("bench") != "aug" or "skipped" in r:
            continue
        if r["backend"] == "numba-cuda" and r["op"] is None:
            add("augmentation", "cuda_views_per_s", r["views_per_s"], "views/s", views=r["views"], inputs=r["inputs"],
                size=r.get("size", [32, 32]))
        elif r["backend"] == "numba-cuda":
            add("augmentation", "cuda_op_views_per_s", r["views_per_s"], "views/s", op=r["op"], views=r["views"])
        elif r["op"] is None:
            add("augmentation", f"{r['backend']}_views_per_s", r["views_per_s"], "views/s", views=r["views"],
                threads=r.get("threads"))
    tuning = (sections.get("kernel-tuning") or {}).get("details", {}).get("reports", {})
    for part, report in tuning.items():
        for r in report.get("results", []):
            if r.get("backend") == "numba-cuda" and r.get("op") is None and "skipped" not in r:
                add("kernel-tuning", "cuda_views_per_s", r["views_per_s"], "views/s", variant=part, views=r["views"],
                    inputs=r["inputs"], size=r.get("size", [32, 32]))
    pipeline = _report_of(sections, "pipeline")
    for r in (pipeline or {}).get("results", []):
        if r.get("device") == "cuda" and "skipped" not in r:
            add("pipeline", "loader_steps_per_s", r["steps_per_s"], "steps/s", batch=r["batch"], k=r["k"],
                prefetch=r["prefetch"])
    for section in ("training", "training-compile", "bn-mode"):
        train = _report_of(sections, section)
        bn_mode = ((train or {}).get("config") or {}).get("bn_mode", "joint")
        for r in (train or {}).get("results", []):
            if r.get("bench") != "train" or r.get("device") != "cuda" or "skipped" in r:
                continue
            where = {"feed": r["feed"], "prefetch": r["prefetch"], "model": r["model"], "batch": r["batch"],
                     "k": r["k"], "bf16": r["bf16"], "compile": r.get("compile", False), "bn_mode": bn_mode}
            add(section, "train_steps_per_s", r["steps_per_s"], "steps/s", **where)
            add(section, "projected_hours", r["projected_hours"], "h", **where)
            add(section, "peak_memory_gib", r.get("peak_memory_gib"), "GiB", **where)
            for phase, share in r.get("phase_shares", {}).items():
                add(section, "phase_share", share, "fraction of the step", phase=phase, **where)
    learning = (sections.get("learning") or {}).get("details", {})
    for e in learning.get("evaluations", []):
        add("learning", "ema_accuracy", e["acc_ema"], "fraction", step=e["step"])
        add("learning", "raw_accuracy", e["acc_raw"], "fraction", step=e["step"])
    tests = (sections.get("correctness") or {}).get("details", {}).get("tests")
    if tests:
        for key in ("passed", "failed", "skipped", "errors"):
            add("correctness", f"tests_{key}", tests[key], "tests")
    return out


def summarize(sections: dict, figs: list[dict]) -> dict:
    def best(name: str, **match):
        values = [f["value"] for f in figs if f["name"] == name and all(f["where"].get(k) == v for k, v in match.items())]
        return max(values) if values else None

    env = _report_of(sections, "environment")
    learning = (sections.get("learning") or {}).get("details", {})
    tests = (sections.get("correctness") or {}).get("details", {}).get("tests")
    loader_hours = [f["value"] for f in figs if f["name"] == "projected_hours" and f["where"]["feed"] == "loader"
                    and f["where"]["prefetch"] and f["section"] == "training"]
    evaluations = learning.get("evaluations") or []
    return {
        "gpu": ((env or {}).get("environment", {}).get("gpu") or {}).get("name"),
        "tests": None if tests is None else {k: tests[k] for k in ("passed", "failed", "skipped", "errors")},
        "cuda_best_views_per_s": best("cuda_views_per_s", size=[32, 32]),
        "goal_views_per_s": GOAL_VIEWS_PER_S,
        "train_steps_per_s": best("train_steps_per_s", feed="loader", prefetch=True, bn_mode="joint"),
        "train_synthetic_steps_per_s": best("train_steps_per_s", feed="synthetic", compile=False, bn_mode="joint"),
        "train_compiled_steps_per_s": best("train_steps_per_s", feed="synthetic", compile=True),
        "train_bn_reference_steps_per_s": best("train_steps_per_s", feed="synthetic", bn_mode="reference"),
        "projected_hours": min(loader_hours) if loader_hours else None,
        "final_ema_accuracy": evaluations[-1]["acc_ema"] if evaluations else None,
        "learning_steps": learning.get("steps"),
    }


# ---- charts ------------------------------------------------------------------------------------------------

def learning_chart(sections: dict, out: Path) -> str | dict:
    evaluations = (sections.get("learning") or {}).get("details", {}).get("evaluations") or []
    if not evaluations:
        return {"skipped": "the learning section has no evaluation"}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"skipped": "matplotlib is not installed (pip install 'remixmatch[plots]')"}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [e["step"] for e in evaluations]
    ax.plot(steps, [100 * e["acc_ema"] for e in evaluations], marker="o", label="EMA model")
    ax.plot(steps, [100 * e["acc_raw"] for e in evaluations], marker=".", label="raw model")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("cifar10-250, the first minutes")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "learning_curve.png"
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path.name


def draw(sections: dict, out: Path) -> dict:
    from .charts import draw_charts

    # The charts of rmm-bench all read its section names and one report per section: the aug rows of
    # both parts go in one.
    aug, rows = sections.get("augmentation", {}), aug_rows(sections)
    as_all = {"aug": (aug, {"results": rows} if rows else None)}
    for name, section in (("train", "training"), ("pipeline", "pipeline")):
        as_all[name] = (sections.get(section, {}), sections.get(section, {}).get("details", {}).get("report"))
    as_all = {k: ({**v, "status": "measured", "report": report} if report is not None
                  else {**v, "status": v.get("status", "skipped"), "reason": v.get("reason", "not run")})
              for k, (v, report) in as_all.items()}
    drawn = draw_charts(as_all, out)
    charts = {name: drawn[name] for name in ("views_per_s", "per_op", "step_split") if name in drawn}
    charts["learning_curve"] = learning_chart(sections, out)
    return charts


# ---- markdown ------------------------------------------------------------------------------------------------

def render_markdown(report: dict) -> str:
    s, sections = report["summary"], report["sections"]
    tests = s["tests"]
    lines = [
        "# rmm-bench gpu-check", "",
        f"GPU: **{s['gpu'] or 'none'}**; created {report['created']}; the run took {report['wall_seconds']:.0f} s "
        f"of a {report['config']['budget_s']} s budget.", "",
        "## Headline", "",
        "- Tests (gpu-marked): " + ("not run" if tests is None else
                                    f"{tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped, "
                                    f"{tests['errors']} errors"),
        f"- CUDA kernel, 32x32: best {format_rate(s['cuda_best_views_per_s'])} strong views/s (goal "
        f"{format_rate(s['goal_views_per_s'])})",
        f"- Training (WRN-28-2, B = 64, K = 8, bf16): {_num(s['train_steps_per_s'])} steps/s loader-fed, "
        f"{_num(s['train_synthetic_steps_per_s'])} from ready tensors, {_num(s['train_compiled_steps_per_s'])} compiled, "
        f"{_num(s.get('train_bn_reference_steps_per_s'))} under the reference's interleaved batch norm; "
        f"2^20 steps: {format_hours(s['projected_hours'])}",
        f"- Learning: EMA accuracy {_pct(s['final_ema_accuracy'])} after {s['learning_steps'] or '-'} steps", "",
        markdown_table(["section", "status", "seconds", "bound", "note"],
                       [[name, sec["status"], str(sec.get("seconds", "-")), str(sec.get("bound_seconds", "-")),
                         sec.get("reason", "")] for name, sec in sections.items()]),
    ]
    figs = report["figures"]
    if figs:
        lines += ["", "## Figures", "", markdown_table(
            ["section", "figure", "value", "unit", "where"],
            [[f["section"], f["name"], _num(f["value"]), f["unit"],
              ", ".join(f"{k}={v}" for k, v in f["where"].items())] for f in figs])]
    charts = [f"![{name}]({value})" for name, value in report["charts"].items() if isinstance(value, str)]
    if charts:
        lines += ["", "## Charts", "", *charts]
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# ---- the schema, for readers of a committed report ------------------------------------------------------------

STATUSES = ("measured", "failed", "timed_out", "skipped")
SUMMARY_KEYS = ("gpu", "tests", "cuda_best_views_per_s", "goal_views_per_s", "train_steps_per_s",
                "train_synthetic_steps_per_s", "train_compiled_steps_per_s", "projected_hours",
                "final_ema_accuracy", "learning_steps")


def schema_problems(report: dict) -> list[str]:
    """What a gpu-check report.json lacks or gets wrong (empty: it is well formed)."""
    problems = []
    if report.get("command") != "gpu-check":
        problems.append(f"command is {report.get('command')!r}, not 'gpu-check'")
    for key in ("schema_version", "created", "wall_seconds", "machine", "versions", "config", "sections", "figures",
                "summary", "charts"):
        if key not in report:
            problems.append(f"no {key!r}")
    if problems:
        return problems
    machine = report["machine"]
    if not {"processor", "cpu_count", "memory_gib", "gpu"} <= machine.keys():
        problems.append("machine lacks processor / cpu_count / memory_gib / gpu")
    sections = report["sections"]
    if list(sections) != list(SECTION_NAMES):
        problems.append(f"sections are {list(sections)}, not {list(SECTION_NAMES)}")
    for name, sec in sections.items():
        if sec.get("status") not in STATUSES:
            problems.append(f"section {name}: status {sec.get('status')!r}")
        elif sec["status"] != "measured" and not sec.get("reason"):
            problems.append(f"section {name}: {sec['status']} without a reason")
        elif sec["status"] in ("measured", "failed", "timed_out") and not isinstance(sec.get("seconds"), (int, float)):
            problems.append(f"section {name}: ran without seconds")
    for i, fig in enumerate(report["figures"]):
        if not ({"section", "name", "value", "unit", "where"} <= fig.keys()) or not fig["unit"]:
            problems.append(f"figure {i}: needs section, name, value, unit and where")
        elif fig["section"] not in sections or sections[fig["section"]]["status"] == "skipped":
            problems.append(f"figure {i} ({fig['name']}): from a section that did not run")
    missing = [key for key in SUMMARY_KEYS if key not in report["summary"]]
    if missing:
        problems.append(f"summary lacks {missing}")
    if report["summary"].get("gpu") != machine.get("gpu"):
        problems.append("summary and machine name different GPUs")
    return problems


# ---- the run ---------------------------------------------------------------------------------------------------

def bundle(out: Path, dest: Path, charts: dict) -> list[str]:
    """The few files a lent machine sends back: report.json/.md, the charts, the logs in one archive."""
    dest.mkdir(parents=True, exist_ok=True)
    names = ["report.json", "report.md"] + [value for value in charts.values() if isinstance(value, str)]
    for name in names:
        shutil.copy2(out / name, dest / name)
    logs = dest / "logs.tar.gz"
    tmp = dest / ".logs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as archive:
        for path in sorted(out.glob("*/log*.txt")) + sorted(out.glob("*/report.md")) + sorted(out.glob("*/junit.xml")):
            archive.add(path, arcname=str(path.relative_to(out)))
    os.replace(tmp, logs)
    names.append(logs.name)
    assert len(names) <= BUNDLE_LIMIT, names
    return names


def run(config: CheckConfig, log: Callable[[object], None]) -> dict:
    start, conditions = time.perf_counter(), RunConditions()
    report = new_report("gpu-check", config.as_dict())
    reason = cuda_reason()
    log(f"CUDA: {reason or 'available'}; budget {config.budget_s} s")
    sections: dict = {}
    for section in SECTIONS:
        left = config.budget_s - (time.perf_counter() - start)
        sections[section.name] = result = run_section(section, config, left, reason, log)
        log(f"== {section.name}: {result['status']}" + (f" ({result['reason']})" if "reason" in result else ""))
    figs = figures(sections)
    report["sections"] = sections
    report["figures"] = figs
    report["summary"] = summarize(sections, figs)
    report["machine"] = machine_info(report["summary"]["gpu"])
    report["charts"] = draw(sections, config.out)
    finish_report(report, time.perf_counter() - start, conditions)
    return report


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Every CUDA path proven and the GPU figures measured in one run "
                                                  "bounded by --budget: environment, gpu tests, kernel views/s, loader "
                                                  "steps/s, training steps/s with the step split, the launcher, and a "
                                                  "short real run's learning curve.")
    parser.add_argument("--archive", type=Path, required=True,
                        help="the CIFAR-10 archive (cifar10-jpg.tar.gz or the official tarball): the shards and the "
                             "real images of the kernel tests")
    parser.add_argument("--out", type=Path, required=True, help="directory for report.json, report.md, charts, logs")
    parser.add_argument("--shards", type=Path, default=None,
                        help="the shard directory (made from --archive when it has no manifest; default OUT/shards)")
    parser.add_argument("--budget", type=positive_int, default=420, help="seconds the whole run may take (420)")
    parser.add_argument("--learn-seconds", type=positive_int, default=100,
                        help="seconds of training in the learning section (100)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="also copy report.json, report.md, the charts and logs.tar.gz here (at most 8 files)")
    parser.add_argument("--skip", action="append", default=[], choices=SECTION_NAMES, metavar="SECTION",
                        help=f"leave a section out (repeatable): {', '.join(SECTION_NAMES)}")
    return parser


def config_from_args(args) -> CheckConfig:
    if not args.archive.is_file():
        raise BenchError(f"--archive {args.archive}: no such file")
    if args.out.exists() and not args.out.is_dir():
        raise BenchError(f"--out {args.out} exists and is not a directory")
    return CheckConfig(out=args.out, archive=args.archive, shards=args.shards or args.out / "shards",
                       budget_s=args.budget, learn_seconds=args.learn_seconds, bundle=args.bundle,
                       skip=tuple(args.skip))


def progress_line(item) -> str:
    return str(item)


def bundle_after_writing(config: CheckConfig, report: dict, log) -> None:
    if config.bundle is not None:
        names = bundle(config.out, config.bundle, report["charts"])
        log(f"bundled {', '.join(names)} into {config.bundle}")


def main(argv: list[str] | None = None) -> int:
    return report_main(argv, prog=PROG, build_parser=build_parser, config_from_args=config_from_args, run=run,
                       render_markdown=render_markdown, progress_line=progress_line, after=bundle_after_writing)


if __name__ == "__main__":
    sys.exit(main())
