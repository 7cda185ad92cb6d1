"""``rmm-bench gpu-check``: every CUDA path proven and the GPU figures measured, in one bounded run.

    rmm-bench gpu-check --archive PATH --out DIR [--shards DIR] [--budget 480] [--learn-seconds 100]
                        [--bundle DIR] [--skip SECTION ...] [--numba-cache DIR] [--rehearse]

Made for a GPU machine lent for minutes: ``SECTIONS`` (what each does: docs/gpu.md), each a list of
commands run by :func:`remixmatch.bench.section_runner.run_section` within the smaller of its own cap
and what is left of ``--budget``. A section that fails or runs out of time is recorded as such and
the later ones still run; one that needs a GPU is skipped, with the reason, where CUDA does not
answer. Each section starts from an empty folder (a second run on a warm machine works), and all
share one ``NUMBA_CACHE_DIR`` (``--numba-cache``): the CUDA kernels compile once, in the environment
section's warm-up (``WARM_JOBS``), and every later process loads them. ``--rehearse``: without a GPU,
every section runs its own command in its CPU form at tiny sizes (the gpu tests collect and skip);
exit 1 if a section fails or times out.

``DIR/report.json`` (``"command": "gpu-check"``, the common header of :mod:`remixmatch.bench.report`)::

    "sections": {"<name>": {"status": "measured" | "failed" | "timed_out" | "skipped",
                            "reason": "..." (all but measured), "seconds": 12.3, "bound_seconds": 90,
                            "commands": [{"exit": 0, "seconds": 12.1}, ...],
                            "details": {...}}},       # what the section's own files say: section_details()
    "figures": [a FigureRow (remixmatch.bench.rows), ...],
    "summary": {"gpu", "tests": {"passed", "failed", "skipped", "errors"} | null,
                "cuda_best_views_per_s", "goal_views_per_s": 2e7, "train_steps_per_s",
                "train_synthetic_steps_per_s", "train_compiled_steps_per_s",
                "train_bn_reference_steps_per_s",   # ready tensors, --bn-mode reference
                "projected_hours", "final_ema_accuracy", "learning_steps"},
    "charts": {"views_per_s" | "per_op" | "step_split" | "learning_curve": "<name>.png" | {"skipped": "..."}}

``DIR/report.md`` is the human summary, the charts beside it. ``--bundle DIR2`` copies what a lent
machine may send back (at most 8 files): report.json, report.md, the charts, and ``logs.tar.gz``
with every section's logs, report.md and JUnit XML.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from remixmatch.common.atomic import atomic_target, atomic_write_json
from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.trainer.curves import read_metrics

from . import section_runner
from .charts import draw_charts
from .core import add_out, check_out, cuda_unavailable_reason, error_reason
from .errors import BenchError
from .gpu_env import one_line
from .report import RunConditions, finish_report, format_hours, format_rate, machine_info, markdown_table, new_report, report_main
from .rows import FigureRow
from .section_runner import Section

PROG = "rmm-bench gpu-check"
GOAL_VIEWS_PER_S = 2e7  # strong views/s at 32x32 on one H100-class GPU
MIN_SECTION_S = 15  # a section offered less than this is skipped: the budget is spent
# The gpu-marked tests, one pytest command each: a file that runs out of time loses only its own counts.
GPU_TESTS = ("tests/test_kernels_gpu.py", "tests/test_gpu_training.py", "tests/test_pipeline_dali.py")
TEST_TIMEOUT_S = 240  # per test, where pytest-timeout is installed
BUNDLE_LIMIT = 8  # files a lent machine sends back
LEARN_EVAL_EVERY = 250
AUG_PARTS = (("cuda", "cuda"),)  # (sub-folder, rmm-bench aug --device): the CUDA rows only
# The kernel-tuning section's variants of the CUDA kernel: (sub-folder, environment, image side; None:
# the CIFAR-10 archive's 32x32). First the three designs for 96x96 views (docs/gpu.md, "CUDA
# kernel resources"): global memory (the default), filter tiles staged in shared memory, the whole
# view in opted-in shared memory. Then 32x32: ptxas predicts 25% occupancy at 256 threads and 104
# registers; a cap of 80 would allow 3 blocks per SM but spills.
TUNING = (("size96-global", {"REMIXMATCH_CUDA_LARGE_VIEWS": "global"}, 96),
          ("size96-tiled", {"REMIXMATCH_CUDA_LARGE_VIEWS": "tiled"}, 96),
          ("size96-shared-optin", {"REMIXMATCH_CUDA_LARGE_VIEWS": "shared-optin"}, 96),
          ("max-registers-80", {"REMIXMATCH_CUDA_MAX_REGISTERS": "80"}, None),
          ("threads-128", {"REMIXMATCH_CUDA_THREADS": "128"}, None))
# The one place where environment variables choose the CUDA kernels' launch tuning
# (kernels.cuda.LaunchTuning): the kernel-tuning section's children, through tuned_main.
THREADS_ENV, MAX_REGISTERS_ENV, LARGE_VIEWS_ENV = (
    "REMIXMATCH_CUDA_THREADS", "REMIXMATCH_CUDA_MAX_REGISTERS", "REMIXMATCH_CUDA_LARGE_VIEWS")

# In the order the first lent slot needs the figures: the views/s, the step time and the learning
# curve first; the tests, split per file, after them; what the budget may not reach last.
SECTIONS = (
    Section("data", 90, False),
    Section("environment", 150, False),
    Section("augmentation", 90, True),
    Section("training", 120, True),
    Section("learning", 200, True),
    Section("pipeline", 60, True),
    Section("correctness", 180, True, keep_going=True),
    Section("launcher", 120, True),
    Section("training-compile", 150, True),
    Section("bn-mode", 90, True),
    Section("kernel-tuning", 150, True, keep_going=True),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)
DEFAULT_BUDGET_S = 480


@dataclass(frozen=True)
class CheckConfig:
    out: Path
    archive: Path
    shards: Path  # where the data section writes (or found) the shards
    budget_s: int = DEFAULT_BUDGET_S
    learn_seconds: int = 100
    bundle: Path | None = None
    skip: tuple[str, ...] = field(default_factory=tuple)
    rehearse: bool = False  # every section runs its CPU form at tiny sizes (no GPU needed)
    numba_cache: Path | None = None  # NUMBA_CACHE_DIR of every section (default OUT/numba-cache)

    def as_dict(self) -> dict:
        return {"out": str(self.out), "archive": self.archive.name, "shards": str(self.shards),
                "budget_s": self.budget_s, "learn_seconds": self.learn_seconds,
                "bundle": None if self.bundle is None else str(self.bundle), "skip": list(self.skip),
                "rehearse": self.rehearse, "numba_cache": str(self.cache_dir)}

    @property
    def cache_dir(self) -> Path:
        return self.numba_cache or self.out / "numba-cache"


# ---- where the run is ---------------------------------------------------------------------------------

def cuda_reason() -> str | None:
    """Why CUDA sections cannot run here, or None: torch (the benchmarks' probe) and numba-cuda must
    both see a device."""
    if (reason := cuda_unavailable_reason()) is not None:
        return reason
    try:
        from numba import cuda

        return None if cuda.is_available() else "numba-cuda sees no CUDA device"
    except Exception as error:  # noqa: BLE001
        return f"numba.cuda is not importable ({error_reason(error)})"


def default_cuda_home(environ=os.environ) -> None:
    """numba-cuda finds NVVM through cuda-pathfinder or $CUDA_HOME: a system toolkit there is named
    for this process (whose cuda_reason() probes first) and every section (the Makefile sets it too)."""
    if "CUDA_HOME" not in environ and Path("/usr/local/cuda").is_dir():
        environ["CUDA_HOME"] = "/usr/local/cuda"


def child_env(config: CheckConfig) -> dict:
    """The sections' environment: the archive for the real-image tests and prep, the CUDA toolkit,
    and one Numba cache folder for every section."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", REMIXMATCH_CIFAR10_JPG=str(config.archive.resolve()),
               NUMBA_CACHE_DIR=str(config.cache_dir.resolve()))
    default_cuda_home(env)
    return env


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _bench(*args: str) -> list[str]:
    return _python("-m", "remixmatch.bench.cli", *args)


def _train(*args: str) -> list[str]:
    return _python("-m", "remixmatch.trainer.cli", *args)


def _here(function: str, *args: str) -> list[str]:
    """A command that runs ``function(argv)`` of this module in a child process."""
    code = f"import sys; from remixmatch.bench.gpu_check import {function} as f; sys.exit(f(sys.argv[1:]))"
    return _python("-c", code, *args)


# ---- the sections' commands ---------------------------------------------------------------------------

# What the rehearsal (--rehearse) shrinks every section to: a model of 8 channels and one block per
# stage, 4 labeled images a step with K = 2, 10 labels and 10 held out, 8x8 synthetic images in the
# augmentation rows. Small enough that the whole run ends within about 3 minutes on 2 cores.
REHEARSAL_MODEL = ("--width", "8", "--blocks-per-stage", "1")
REHEARSAL_STEP = ("--batch", "4", "--k", "2")
REHEARSAL_DATA = ("--labels", "10", "--valid", "10")
REHEARSAL_AUG = ("--device", "cpu", "--size", "8", "--threads", "1", "--reps", "5")
REHEARSAL_TUNING = (0, 3)  # the variants the rehearsal runs: one large-view design, one register cap
LAUNCH_STEPS = {False: (200, 300), True: (4, 6)}  # the launcher's run, then its --resume (rehearsal: True)


def section_commands(name: str, config: CheckConfig, folder: Path) -> list[list[str]] | str:
    """The commands of a section (run in order, each within what is left of its bound), or the
    reason it is skipped. Under ``config.rehearse`` each section's CPU form at tiny sizes."""
    shards, tiny = str(config.shards), config.rehearse
    if name == "data":
        if (config.shards / "manifest.json").is_file():
            return f"shards already prepared in {config.shards}"
        prep = "import sys; from remixmatch.datasets_prep.cli import prep_cifar10_main as m; sys.exit(m(sys.argv[1:]))"
        return [_python("-c", prep, "--source", str(config.archive), "--out", shards, "--overwrite")]
    if name == "environment":
        return [_here("warm_main", "--out", str(folder / "warm.json"), *(("--rehearse",) if tiny else ())),
                _bench("gpu-env", "--out", str(folder))]
    if name == "correctness":
        # pytest-timeout, where installed, is already loaded by pytest as the plugin "timeout": naming
        # it again with -p registers it twice and pytest stops before any test (exit 3).
        timeout = [f"--timeout={TEST_TIMEOUT_S}"] if _has_module("pytest_timeout") else []
        return [_python("-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *timeout,
                        f"--junitxml={folder / f'junit-{i + 1}.xml'}", test)
                for i, test in enumerate(GPU_TESTS)]
    if name == "augmentation":
        if tiny:
            return [_bench("aug", *REHEARSAL_AUG, "--quick", "--out", str(folder / part)) for part, _ in AUG_PARTS]
        return [_bench("aug", "--device", device, "--quick", "--images", str(config.archive), "--out", str(folder / part))
                for part, device in AUG_PARTS]
    if name in ("pipeline", "training", "training-compile", "bn-mode"):
        extra = {"pipeline": ("--shards", shards), "training": ("--shards", shards), "training-compile": ("--compile",),
                 "bn-mode": ("--bn-mode", "reference")}[name]
        command = "pipeline" if name == "pipeline" else "train"
        if not tiny:
            return [_bench(command, "--device", "cuda", "--quick", *extra, "--out", str(folder))]
        if name == "training-compile":
            return "rehearsal: torch.compile's CPU build alone takes minutes on 2 cores"
        sizes = REHEARSAL_STEP + REHEARSAL_DATA + (() if command == "pipeline" else REHEARSAL_MODEL)
        return [_bench(command, "--device", "cpu", "--quick", "--threads", "1", *sizes, *extra, "--out", str(folder))]
    if name == "kernel-tuning":
        def images(size):  # a size other than the archive's: synthetic images of that size
            return ("--size", str(size)) if size else ("--images", str(config.archive))

        variants = [TUNING[i] for i in REHEARSAL_TUNING] if tiny else TUNING
        return [["env", *(f"{k}={v}" for k, v in env.items()),
                 *_here("tuned_main", "aug", *(REHEARSAL_AUG if tiny else ("--device", "cuda", *images(size))),
                        "--quick", "--out", str(folder / part))]
                for part, env, size in variants]
    if name == "launcher":
        run = folder / "run"
        first, resumed = LAUNCH_STEPS[tiny]
        where = (("--device", "cpu", "--procs", "1", *REHEARSAL_MODEL, *REHEARSAL_STEP, *REHEARSAL_DATA) if tiny
                 else ("--gpus", "1", "--sync-bn", "--labels", "250"))
        every = "2" if tiny else "100"
        common = [*where, "--data", shards, "--out", str(run), "--quiet", "--eval-every", every, "--ckpt-every", every,
                  "--log-every", every, *(("--eval-split", "valid") if tiny else ())]
        return [_train(*common, "--steps", str(first)), _train(*common, "--steps", str(resumed), "--resume")]
    if name == "learning":
        where = (("--device", "cpu", *REHEARSAL_MODEL, *REHEARSAL_STEP, *REHEARSAL_DATA, "--eval-split", "valid")
                 if tiny else ())
        every = "2" if tiny else str(LEARN_EVAL_EVERY)
        return [_train("--preset", "cifar10-250", *where, "--data", shards, "--out", str(folder / "run"), "--quiet",
                       "--time-limit", str(config.learn_seconds), "--eval-every", every,
                       "--log-every", every, "--ckpt-every", "100000")]
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
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed" if case.find("failure") is not None else "errors"] += 1
            counts["failed_tests"].append(name)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            counts["skip_reasons"].append(f"{name}: {skip.get('message', '')}"[:200])
        else:
            counts["passed"] += 1
    return counts


def merged_junit_counts(paths: list[Path]) -> dict | None:
    """The counts of several pytest runs' JUnit XML files added up (None: none could be read)."""
    read = [counts for counts in map(junit_counts, paths) if counts is not None]
    return {key: sum((counts[key] for counts in read[1:]), read[0][key]) for key in read[0]} if read else None


def section_details(name: str, folder: Path) -> dict:
    """``environment``, ``pipeline``, ``training``, ``training-compile``, ``bn-mode``: the section's
    report.json (``report``; ``environment`` also ``warm``, each warm-up job's seconds, cache folder
    and cache hit); ``augmentation``, ``kernel-tuning``: each part's (``reports``); ``correctness``: the
    test counts summed over the files, with the failed tests' names; ``launcher``: what summary.json
    and the checkpoints say; ``learning``: the evaluations (step, EMA and raw accuracy) and summary.json's."""
    if name in ("augmentation", "kernel-tuning"):
        parts = [entry[0] for entry in (AUG_PARTS if name == "augmentation" else TUNING)]
        reports = {part: _read_json(folder / part / "report.json") for part in parts}
        return {"reports": {part: report for part, report in reports.items() if report is not None}}
    if name in ("pipeline", "training", "training-compile", "bn-mode", "environment"):
        found = {"report": _read_json(folder / "report.json"),
                 "warm": _read_json(folder / "warm.json") if name == "environment" else None}
        return {key: value for key, value in found.items() if value is not None}
    if name == "correctness":
        counts = merged_junit_counts(sorted(folder.glob("junit-*.xml")))
        return {"tests": counts, "files": len(list(folder.glob("junit-*.xml")))} if counts is not None else {}
    summary = _read_json(folder / "run" / "summary.json") or {}
    if name == "launcher":
        checkpoints = sorted(p.name for p in (folder / "run" / "checkpoints").glob("ckpt-*.pt"))
        return {"summary_steps": summary.get("steps"), "world_size": summary.get("world_size"),
                "device": summary.get("device"), "checkpoints": checkpoints,
                "sync_bn": (summary.get("config") or {}).get("sync_bn")}
    if name == "learning":
        evaluations = read_metrics(folder / "run" / "metrics.jsonl")[1]
        return {"evaluations": [{key: e[key] for key in ("step", "acc_ema", "acc_raw")} for e in evaluations],
                "steps": summary.get("steps"), "accuracy": summary.get("accuracy"),
                "wall_seconds": summary.get("wall_seconds"),
                "model": (summary.get("model") or {}).get("name")}
    return {}


def launcher_problem(details: dict, steps: int = LAUNCH_STEPS[False][1]) -> str | None:
    """The launcher section's own check: the resumed run reached its steps and wrote a checkpoint."""
    if details.get("summary_steps") != steps:
        return f"summary.json records {details.get('summary_steps')} steps, not the {steps} the resume asked for"
    return None if details.get("checkpoints") else "no checkpoint written"


def correctness_problem(tests: dict | None, files_run: int, files_read: int, rehearse: bool) -> str | None:
    """Why the test section failed though pytest exited 0, or None. On a GPU some test must pass;
    in a rehearsal every file must have been collected (the gpu tests then skip)."""
    if tests is None:
        return "no JUnit XML: pytest stopped before collecting"
    if tests["failed"] or tests["errors"]:
        return f"{tests['failed']} failed, {tests['errors']} errors: {', '.join(tests['failed_tests'][:5])}"
    if rehearse:
        return None if files_read == files_run else f"JUnit XML of {files_read} of {files_run} test files"
    return None if tests["passed"] else "no gpu test passed"


# ---- running --------------------------------------------------------------------------------------------

def run_section(section: Section, config: CheckConfig, left_s: float, reason: str | None, log) -> dict:
    """One section within the smaller of its cap and ``left_s``, or the reason it is skipped."""
    if section.name in config.skip:
        return {"status": "skipped", "reason": "--skip"}
    if section.needs_cuda and reason is not None and not config.rehearse:
        return {"status": "skipped", "reason": reason}
    bound = min(section.cap_s, left_s)
    if bound < MIN_SECTION_S:
        return {"status": "skipped", "reason": f"the run's budget is spent ({left_s:.0f} s left)"}
    folder = config.out / section.name
    commands = section_commands(section.name, config, folder)
    if isinstance(commands, str):
        return {"status": "skipped", "reason": commands}
    # A second run on a warm machine starts clean: the launcher and learning runs refuse a folder
    # that holds a run already, and stale files would be read as this run's.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    result = section_runner.run_section(section, commands, bound_s=bound, log=log, log_dir=folder,
                                        env=child_env(config))
    why = result.pop("reason", None)
    details = result["details"] = section_details(section.name, folder)
    if result["status"] == "measured":
        problem = (launcher_problem(details, LAUNCH_STEPS[config.rehearse][1]) if section.name == "launcher" else
                   correctness_problem(details.get("tests"), len(commands), details.get("files", 0), config.rehearse)
                   if section.name == "correctness" else None)
        if problem:
            result["status"], why = "failed", problem
    return {**result, "reason": why} if why else result


# ---- figures ----------------------------------------------------------------------------------------------

def _details(sections: dict, name: str) -> dict:
    return (sections.get(name) or {}).get("details", {})


def _report_of(sections: dict, name: str) -> dict | None:
    return _details(sections, name).get("report")


def aug_rows(sections: dict) -> list[dict]:
    """The augmentation section's rows, the CUDA ones first."""
    rows = (_details(sections, "augmentation").get("reports", {}).get("cuda") or {}).get("results", [])
    return sorted(rows, key=lambda r: r.get("backend") != "numba-cuda")


def figures(sections: dict) -> list[dict]:
    """Every figure the run measured (a FigureRow each), from its sections' own rows and files."""
    out: list[dict] = []

    def add(section: str, name: str, value, unit: str, **where) -> None:
        if value is not None:
            out.append(asdict(FigureRow(section=section, name=name, value=value, unit=unit, where=where)))

    if env := _report_of(sections, "environment"):
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
    for part, report in _details(sections, "kernel-tuning").get("reports", {}).items():
        for r in report.get("results", []):
            if r.get("backend") == "numba-cuda" and r.get("op") is None and "skipped" not in r:
                add("kernel-tuning", "cuda_views_per_s", r["views_per_s"], "views/s", variant=part, views=r["views"],
                    inputs=r["inputs"], size=r.get("size", [32, 32]))
    for r in (_report_of(sections, "pipeline") or {}).get("results", []):
        if r.get("device") == "cuda" and "skipped" not in r:
            add("pipeline", "loader_steps_per_s", r["steps_per_s"], "steps/s", batch=r["batch"], k=r["k"],
                prefetch=r["prefetch"])
    for section in ("training", "training-compile", "bn-mode"):
        train = _report_of(sections, section) or {}
        bn_mode = (train.get("config") or {}).get("bn_mode", "joint")
        for r in train.get("results", []):
            if r.get("bench") != "train" or r.get("device") != "cuda" or "skipped" in r:
                continue
            where = {"feed": r["feed"], "prefetch": r["prefetch"], "model": r["model"], "batch": r["batch"],
                     "k": r["k"], "bf16": r["bf16"], "compile": r.get("compile", False), "bn_mode": bn_mode}
            add(section, "train_steps_per_s", r["steps_per_s"], "steps/s", **where)
            add(section, "projected_hours", r["projected_hours"], "h", **where)
            add(section, "peak_memory_gib", r.get("peak_memory_gib"), "GiB", **where)
            for phase, share in r.get("phase_shares", {}).items():
                add(section, "phase_share", share, "fraction of the step", phase=phase, **where)
    for e in _details(sections, "learning").get("evaluations", []):
        add("learning", "ema_accuracy", e["acc_ema"], "fraction", step=e["step"])
        add("learning", "raw_accuracy", e["acc_raw"], "fraction", step=e["step"])
    for key, value in (_details(sections, "correctness").get("tests") or {}).items():
        if key in ("passed", "failed", "skipped", "errors"):
            add("correctness", f"tests_{key}", value, "tests")
    return out


def summarize(sections: dict, figs: list[dict]) -> dict:
    def best(name: str, **match):
        values = [f["value"] for f in figs if f["name"] == name and all(f["where"].get(k) == v for k, v in match.items())]
        return max(values) if values else None

    learning, tests = _details(sections, "learning"), _details(sections, "correctness").get("tests")
    loader_hours = [f["value"] for f in figs if f["name"] == "projected_hours" and f["where"]["feed"] == "loader"
                    and f["where"]["prefetch"] and f["section"] == "training"]
    evaluations = learning.get("evaluations") or []
    return {
        "gpu": ((_report_of(sections, "environment") or {}).get("environment", {}).get("gpu") or {}).get("name"),
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


def draw(sections: dict, out: Path) -> dict:
    """The charts of rmm-bench all, from its section names and one report each, and the learning curve."""
    rows = aug_rows(sections)
    reports = {"aug": ("augmentation", {"results": rows} if rows else None),
               "train": ("training", _report_of(sections, "training")),
               "pipeline": ("pipeline", _report_of(sections, "pipeline"))}
    as_all = {name: {**sections.get(section, {}), "status": "measured", "report": report} if report is not None
              else {"status": "skipped", "reason": "not run", **sections.get(section, {})}
              for name, (section, report) in reports.items()}
    as_all["learning"] = {"evaluations": _details(sections, "learning").get("evaluations")}
    return draw_charts(as_all, out, names=("views_per_s", "per_op", "step_split", "learning_curve"))


# ---- markdown ------------------------------------------------------------------------------------------------

def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def render_markdown(report: dict) -> str:
    s, sections = report["summary"], report["sections"]
    tests = s["tests"]
    final = s["final_ema_accuracy"]
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
        f"- Learning: EMA accuracy {'-' if final is None else f'{100 * final:.2f}%'} after "
        f"{s['learning_steps'] or '-'} steps", "",
        markdown_table(["section", "status", "seconds", "bound", "note"],
                       [[name, sec["status"], str(sec.get("seconds", "-")), str(sec.get("bound_seconds", "-")),
                         sec.get("reason", "")] for name, sec in sections.items()]),
    ]
    if figs := report["figures"]:
        lines += ["", "## Figures", "", markdown_table(
            ["section", "figure", "value", "unit", "where"],
            [[f["section"], f["name"], _num(f["value"]), f["unit"],
              ", ".join(f"{k}={v}" for k, v in f["where"].items())] for f in figs])]
    if charts := [f"![{name}]({value})" for name, value in report["charts"].items() if isinstance(value, str)]:
        lines += ["", "## Charts", "", *charts]
    return "\n".join(lines) + "\n"


# ---- the schema, for readers of a committed report ------------------------------------------------------------

STATUSES = ("measured", "failed", "timed_out", "skipped")
SUMMARY_KEYS = ("gpu", "tests", "cuda_best_views_per_s", "goal_views_per_s", "train_steps_per_s",
                "train_synthetic_steps_per_s", "train_compiled_steps_per_s", "projected_hours",
                "final_ema_accuracy", "learning_steps")
FIGURE_FIELDS = {f.name for f in fields(FigureRow)}


def schema_problems(report: dict) -> list[str]:
    """What a gpu-check report.json lacks or gets wrong (empty: it is well formed)."""
    problems = [] if report.get("command") == "gpu-check" else [f"command is {report.get('command')!r}, not 'gpu-check'"]
    problems += [f"no {key!r}" for key in ("schema_version", "created", "wall_seconds", "machine", "versions", "config",
                                          "sections", "figures", "summary", "charts") if key not in report]
    if problems:
        return problems
    machine, sections = report["machine"], report["sections"]
    if not {"processor", "cpu_count", "memory_gib", "gpu"} <= machine.keys():
        problems.append("machine lacks processor / cpu_count / memory_gib / gpu")
    if list(sections) != list(SECTION_NAMES):
        problems.append(f"sections are {list(sections)}, not {list(SECTION_NAMES)}")
    for name, sec in sections.items():
        if sec.get("status") not in STATUSES:
            problems.append(f"section {name}: status {sec.get('status')!r}")
        elif sec["status"] != "measured" and not sec.get("reason"):
            problems.append(f"section {name}: {sec['status']} without a reason")
        elif sec["status"] != "skipped" and not isinstance(sec.get("seconds"), (int, float)):
            problems.append(f"section {name}: ran without seconds")
    for i, fig in enumerate(report["figures"]):
        if not FIGURE_FIELDS <= fig.keys() or not fig["unit"]:
            problems.append(f"figure {i}: needs section, name, value, unit and where")
        elif fig["section"] not in sections or sections[fig["section"]]["status"] == "skipped":
            problems.append(f"figure {i} ({fig['name']}): from a section that did not run")
    if missing := [key for key in SUMMARY_KEYS if key not in report["summary"]]:
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
    with atomic_target(logs) as tmp, tarfile.open(tmp, "w:gz") as archive:
        for path in sorted(out.glob("*/log*.txt")) + sorted(out.glob("*/report.md")) + sorted(out.glob("*/junit*.xml")):
            archive.add(path, arcname=str(path.relative_to(out)))
    names.append(logs.name)
    assert len(names) <= BUNDLE_LIMIT, names
    return names


def run(config: CheckConfig, log: Callable[[object], None]) -> dict:
    start, conditions = time.perf_counter(), RunConditions()
    report = new_report("gpu-check", config.as_dict())
    default_cuda_home()
    reason = cuda_reason()
    log(f"CUDA: {reason or 'available'}; budget {config.budget_s} s"
        + ("; rehearsal: every section runs its CPU form" if config.rehearse else ""))
    sections: dict = {}
    for section in SECTIONS:
        left = config.budget_s - (time.perf_counter() - start)
        sections[section.name] = result = run_section(section, config, left, reason, log)
        log(f"== {section.name}: {result['status']}" + (f" ({result['reason']})" if "reason" in result else ""))
    report["sections"] = sections
    report["figures"] = figs = figures(sections)
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
    add_out(parser, "report.json, report.md, charts, logs")
    parser.add_argument("--shards", type=Path, default=None,
                        help="the shard directory (made from --archive when it has no manifest; default OUT/shards)")
    parser.add_argument("--budget", type=positive_int, default=DEFAULT_BUDGET_S,
                        help=f"seconds the whole run may take ({DEFAULT_BUDGET_S})")
    parser.add_argument("--learn-seconds", type=positive_int, default=100,
                        help="seconds of training in the learning section (100)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="also copy report.json, report.md, the charts and logs.tar.gz here (at most 8 files)")
    parser.add_argument("--skip", action="append", default=[], choices=SECTION_NAMES, metavar="SECTION",
                        help=f"leave a section out (repeatable): {', '.join(SECTION_NAMES)}")
    parser.add_argument("--rehearse", action="store_true",
                        help="on a machine without a GPU: every section runs its own command in its CPU form at "
                             "tiny sizes (the tests collect and skip); exit 1 if a section fails")
    parser.add_argument("--numba-cache", type=Path, default=None,
                        help="NUMBA_CACHE_DIR of every section: where the CUDA kernels are compiled once "
                             "(default OUT/numba-cache)")
    return parser


def config_from_args(args) -> CheckConfig:
    if not args.archive.is_file():
        raise BenchError(f"--archive {args.archive}: no such file")
    check_out(args.out)
    return CheckConfig(out=args.out, archive=args.archive, shards=args.shards or args.out / "shards",
                       budget_s=args.budget, learn_seconds=args.learn_seconds, bundle=args.bundle,
                       skip=tuple(args.skip), rehearse=args.rehearse, numba_cache=args.numba_cache)


def main(argv: list[str] | None = None) -> int:
    not_passed: list[str] = []

    def after(config: CheckConfig, report: dict, log) -> None:
        if config.bundle is not None:
            log(f"bundled {', '.join(bundle(config.out, config.bundle, report['charts']))} into {config.bundle}")
        if config.rehearse:
            not_passed.extend(f"{name} {sec['status']}" for name, sec in report["sections"].items()
                              if sec["status"] in ("failed", "timed_out"))

    code = report_main(argv, prog=PROG, build_parser=build_parser, config_from_args=config_from_args, run=run,
                       render_markdown=render_markdown, progress_line=str, after=after)
    if code == 0 and not_passed:
        print(f"{PROG}: rehearsal: {', '.join(not_passed)}", file=sys.stderr)
        return 1
    return code


# ---- the sections' own entry points (run in child processes) ----------------------------------------------

def tuning_from_env(environ=os.environ):
    """The CUDA kernels' launch tuning named by the REMIXMATCH_CUDA_* variables (the kernel-tuning
    section's children; nothing else reads them). A bad value: ValueError naming the variable."""
    from remixmatch.kernels.cuda import DEFAULT_TUNING, LaunchTuning

    threads, cap, design = (environ.get(name) for name in (THREADS_ENV, MAX_REGISTERS_ENV, LARGE_VIEWS_ENV))
    for name, value in ((THREADS_ENV, threads), (MAX_REGISTERS_ENV, cap)):
        if value is not None and not value.isdigit():
            raise ValueError(f"{name}={value!r}: not a whole number")
    try:
        return LaunchTuning(int(threads) if threads else DEFAULT_TUNING.threads_per_block,
                            int(cap) if cap else DEFAULT_TUNING.max_registers,
                            design or DEFAULT_TUNING.large_views)
    except ValueError as error:
        named = ", ".join(f"{n}={v!r}" for n, v in ((THREADS_ENV, threads), (MAX_REGISTERS_ENV, cap),
                                                      (LARGE_VIEWS_ENV, design)) if v is not None)
        raise ValueError(f"{named}: {error}") from None


def tuned_main(argv: list[str]) -> int:
    """``rmm-bench ARGV`` under the launch tuning the environment names."""
    from remixmatch.kernels.cuda import use_tuning

    try:
        tuning = tuning_from_env()
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    use_tuning(tuning)
    print(f"launch tuning: {tuning}", file=sys.stderr, flush=True)
    from .cli import main as bench_main

    return bench_main(argv)


# The kernels the environment section compiles before any other section runs, one process each, into
# the run's NUMBA_CACHE_DIR: (name, kernel, launch tuning's fields, view side). The 32x32 apply kernel,
# the 96x96 global and tiled ones, the weak one, then the two 32x32 tunings kernel-tuning measures
# (each cap and block size caches in a folder of its own). "cpu": the CPU kernels (compile_all()).
WARM_JOBS = (("apply-32", "apply_ops_kernel", {}, 32),
             ("global-96", "apply_ops_kernel_global", {"large_views": "global"}, 96),
             ("tiled-96", "apply_ops_kernel_tiled", {"large_views": "tiled"}, 96),
             ("weak-32", "weak_augment_kernel", {}, 32),
             ("apply-32-regs80", "apply_ops_kernel", {"max_registers": 80}, 32),
             ("apply-32-threads128", "apply_ops_kernel", {"threads_per_block": 128}, 32),
             ("cpu", None, {}, 32))


def warm_job(job: tuple, rehearse: bool) -> dict:
    """One WARM_JOBS entry in this process: compile it (a launch on a few views, the path every
    section takes) and say whether it came from the cache. In a rehearsal the CUDA jobs only build
    their dispatchers and cache folders (nothing compiles without a device)."""
    import numpy as np

    from remixmatch.kernels import cuda as kernels_cuda
    from remixmatch.kernels.numba_internals import cache_counts, cache_path

    name, kernel, options, side = job
    start = time.perf_counter()
    if kernel is None:
        from remixmatch import kernels

        kernels.compile_all()
        return {"job": name, "seconds": round(time.perf_counter() - start, 1), "compiled": True}
    tuning = kernels_cuda.LaunchTuning(**options)
    dispatcher = kernels_cuda.kernels(tuning)[kernel]
    result = {"job": name, "kernel": kernel, "tuning": tuning.cache_key(), "folder": cache_path(dispatcher)}
    if rehearse:
        return {**result, "compiled": False, "reason": "rehearsal: no CUDA device", "seconds": 0.0}
    from numba import cuda

    from remixmatch.kernels import NUM_OPS, apply_ops, weak_augment

    kernels_cuda.use_tuning(tuning)
    rng = np.random.default_rng(0)
    n = 16
    images = cuda.to_device(rng.integers(0, 256, (4, side, side, 3), dtype=np.uint8))
    sources = np.repeat(np.arange(4, dtype=np.int32), 4)
    if kernel == "weak_augment_kernel":
        weak_augment(images, np.zeros(n, np.int32), np.zeros((n, 2), np.int32), sources=sources, pad=2)
    else:
        apply_ops(images, rng.integers(0, NUM_OPS, (n, 2)).astype(np.int32), rng.random((n, 2, 2), dtype=np.float32),
                  rng.random((n, 3, 2), dtype=np.float32), sources=sources)
    cuda.synchronize()
    hits, misses = cache_counts(dispatcher) or (0, 0)
    return {**result, "compiled": True, "cache": "hit" if hits and not misses else "miss" if misses else "unknown",
            "seconds": round(time.perf_counter() - start, 1)}


def _warm_one(args: tuple) -> dict:
    job, rehearse = args
    try:
        return warm_job(job, rehearse)
    except Exception as error:  # noqa: BLE001 - one job's failure is reported; the others still warm
        return {"job": job[0], "error": one_line(error)}


def warm_main(argv: list[str]) -> int:
    """Compiles every WARM_JOBS entry at once, one process each, and writes what each did to --out."""
    import argparse
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    parser = argparse.ArgumentParser(prog=f"{PROG} warm-up")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rehearse", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # spawn: each job a fresh interpreter (a fork would share this one's CUDA state).
    with ProcessPoolExecutor(len(WARM_JOBS), mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = list(pool.map(_warm_one, [(job, args.rehearse) for job in WARM_JOBS]))
    for job in jobs:
        print(json.dumps(job), file=sys.stderr, flush=True)
    atomic_write_json(args.out, {"seconds": round(time.perf_counter() - start, 1), "jobs": jobs})
    if failed := [job["job"] for job in jobs if "error" in job]:
        print(f"{PROG} warm-up: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
