"""``rmm-bench gpu-check``: every CUDA path proven and the GPU figures measured, in one bounded run.

The sections, the options, the rehearsal (``--rehearse``), the report and the bundle: docs/gpu.md.
Each section is a :class:`CheckSection` (its commands, what its files say, its own check), run by
:func:`remixmatch.bench.section_runner.run_section`; the figures are the rows of the reports the
sections wrote, read as ``rmm-bench compare`` reads them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from remixmatch.common.atomic import atomic_target, atomic_write_json
from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.trainer.curves import read_metrics

from . import section_runner
from .charts import draw_charts
from .compare import IDENTITY, METRICS, row_values
from .core import CommandConfig, check_out, command_parser, cuda_unavailable_reason, flag, out_flag
from .errors import BenchError
from .gpu_env import one_line
from .report import RunConditions, finish_report, format_hours, format_rate, machine_info, markdown_table, new_report, report_main
from .rows import FigureRow, unit_of
from .section_runner import Section

PROG = "rmm-bench gpu-check"
GOAL_VIEWS_PER_S = 2e7  # strong views/s at 32x32 on one H100-class GPU
DEFAULT_BUDGET_S = 480
MIN_SECTION_S = 15  # a section offered less than this is skipped: the budget is spent
# The gpu-marked tests, one pytest command each: a file that runs out of time loses only its own counts.
GPU_TESTS = ("tests/test_kernels_gpu.py", "tests/test_gpu_training.py", "tests/test_pipeline_dali.py")
TEST_TIMEOUT_S = 240  # per test, where pytest-timeout is installed
BUNDLE_LIMIT = 8  # files a lent machine sends back
LEARN_EVAL_EVERY = 250
# The kernel-tuning section's variants of the CUDA kernel (docs/gpu.md, "CUDA kernel resources"):
# (sub-folder, environment, image side; None: the archive's 32x32).
TUNING = (("size96-global", {"REMIXMATCH_CUDA_LARGE_VIEWS": "global"}, 96),
          ("size96-tiled", {"REMIXMATCH_CUDA_LARGE_VIEWS": "tiled"}, 96),
          ("size96-shared-optin", {"REMIXMATCH_CUDA_LARGE_VIEWS": "shared-optin"}, 96),
          ("max-registers-80", {"REMIXMATCH_CUDA_MAX_REGISTERS": "80"}, None),
          ("threads-128", {"REMIXMATCH_CUDA_THREADS": "128"}, None))
# The one place where environment variables choose the CUDA kernels' launch tuning
# (kernels.cuda.LaunchTuning): the kernel-tuning section's children, through tuned_main.
THREADS_ENV, MAX_REGISTERS_ENV, LARGE_VIEWS_ENV = (
    "REMIXMATCH_CUDA_THREADS", "REMIXMATCH_CUDA_MAX_REGISTERS", "REMIXMATCH_CUDA_LARGE_VIEWS")
# What the rehearsal shrinks every section to (docs/gpu.md, "The rehearsal").
REHEARSAL_MODEL = ("--width", "8", "--blocks-per-stage", "1")
REHEARSAL_STEP = ("--batch", "4", "--k", "2", "--labels", "10", "--valid", "10")
REHEARSAL_AUG = ("--device", "cpu", "--size", "8", "--threads", "1", "--reps", "5")
REHEARSAL_TUNING = (0, 3)  # the variants the rehearsal runs: one large-view design, one register cap
LAUNCH_STEPS = {False: (200, 300), True: (4, 6)}  # the launcher's run, then its --resume (rehearsal: True)


def cuda_reason() -> str | None:
    """Why CUDA sections cannot run here, or None: torch and numba-cuda must both see a device."""
    from .aug import cuda_unavailable_reason as numba_cuda_reason

    return cuda_unavailable_reason() or numba_cuda_reason()


def default_cuda_home(environ=os.environ) -> None:
    """numba-cuda finds NVVM through cuda-pathfinder or $CUDA_HOME: a system toolkit there is named
    for this process (whose cuda_reason() probes first) and every section (the Makefile sets it too)."""
    if "CUDA_HOME" not in environ and Path("/usr/local/cuda").is_dir():
        environ["CUDA_HOME"] = "/usr/local/cuda"


def child_env(config: CheckConfig) -> dict:
    """The sections' environment: the archive for the real-image tests, the CUDA toolkit, one Numba cache."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", REMIXMATCH_CIFAR10_JPG=str(config.archive.resolve()),
               NUMBA_CACHE_DIR=str(config.cache_dir.resolve()))
    default_cuda_home(env)
    return env


# ---- the sections: their commands ---------------------------------------------------------------------

def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _bench(*args: str) -> list[str]:
    return _python("-m", "remixmatch.bench.cli", *args)


def _train(*args: str) -> list[str]:
    return _python("-m", "remixmatch.trainer.cli", *args)


def _call(module: str, function: str, *args: str) -> list[str]:
    """A command that runs ``function(argv)`` of ``module`` in a child process."""
    return _python("-c", f"import sys; from {module} import {function} as f; sys.exit(f(sys.argv[1:]))", *args)


def data_commands(config: CheckConfig, folder: Path) -> list[list[str]] | str:
    if (config.shards / "manifest.json").is_file():
        return f"shards already prepared in {config.shards}"
    return [_call("remixmatch.datasets_prep.cli", "prep_cifar10_main", "--source", str(config.archive), "--out",
                  str(config.shards), "--overwrite")]


def environment_commands(config: CheckConfig, folder: Path) -> list[list[str]]:
    rehearse = ["--rehearse"] if config.rehearse else []
    return [_call(__name__, "warm_main", "--out", str(folder / "warm.json"), *rehearse),
            _bench("gpu-env", "--out", str(folder))]


def augmentation_commands(config: CheckConfig, folder: Path) -> list[list[str]]:
    where = REHEARSAL_AUG if config.rehearse else ("--device", "cuda", "--images", str(config.archive))
    return [_bench("aug", *where, "--quick", "--out", str(folder / "cuda"))]


def measure(command: str, *extra: str, shards: bool = False, unrehearsed: str | None = None):
    """The commands of a section that runs ``rmm-bench COMMAND --quick``: on CUDA, or its CPU form at
    tiny sizes (``unrehearsed``: why the rehearsal skips it)."""
    def commands(config: CheckConfig, folder: Path) -> list[list[str]] | str:
        args = (*extra, *(("--shards", str(config.shards)) if shards else ()), "--out", str(folder))
        if not config.rehearse:
            return [_bench(command, "--device", "cuda", "--quick", *args)]
        sizes = REHEARSAL_STEP + (REHEARSAL_MODEL if command == "train" else ())
        return unrehearsed or [_bench(command, "--device", "cpu", "--quick", "--threads", "1", *sizes, *args)]
    return commands


def tuning_commands(config: CheckConfig, folder: Path) -> list[list[str]]:
    variants = [TUNING[i] for i in REHEARSAL_TUNING] if config.rehearse else TUNING
    return [["env", *(f"{k}={v}" for k, v in env.items()),
             *_call(__name__, "tuned_main", "aug", *(REHEARSAL_AUG if config.rehearse else (
                 "--device", "cuda", *(("--size", str(size)) if size else ("--images", str(config.archive))))),
                    "--quick", "--out", str(folder / part))]
            for part, env, size in variants]


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def correctness_commands(config: CheckConfig, folder: Path) -> list[list[str]]:
    # pytest-timeout, where installed, is already loaded by pytest as the plugin "timeout": naming it
    # again with -p registers it twice and pytest stops before any test (exit 3).
    timeout = [f"--timeout={TEST_TIMEOUT_S}"] if _has_module("pytest_timeout") else []
    return [_python("-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *timeout,
                    f"--junitxml={folder / f'junit-{i + 1}.xml'}", test) for i, test in enumerate(GPU_TESTS)]


def _train_run(config: CheckConfig, folder: Path, every: int, *args: str, ckpt_every: str = "") -> list[str]:
    """An rmm-train run in ``folder/run``, evaluating and logging every ``every`` steps; in a
    rehearsal on the CPU at tiny sizes, every 2 steps."""
    tiny = ("--device", "cpu", *REHEARSAL_MODEL, *REHEARSAL_STEP, "--eval-split", "valid") if config.rehearse else ()
    every = "2" if config.rehearse else str(every)
    return _train(*args, *tiny, "--data", str(config.shards), "--out", str(folder / "run"), "--quiet",
                  "--eval-every", every, "--log-every", every, "--ckpt-every", ckpt_every or every)


def launcher_commands(config: CheckConfig, folder: Path) -> list[list[str]]:
    where = ("--procs", "1") if config.rehearse else ("--gpus", "1", "--sync-bn", "--labels", "250")
    return [_train_run(config, folder, 100, *where, "--steps", str(steps), *resume)
            for steps, resume in zip(LAUNCH_STEPS[config.rehearse], ((), ("--resume",)))]


def learning_commands(config: CheckConfig, folder: Path) -> list[list[str]]:
    return [_train_run(config, folder, LEARN_EVAL_EVERY, "--preset", "cifar10-250", "--time-limit",
                       str(config.learn_seconds), ckpt_every="100000")]


# ---- the sections: what their files say, and their own checks --------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_reports(folder: Path) -> dict:
    """The section's report.json (``report``), its sub-folders' in the order they were written
    (``reports``: the augmentation and kernel-tuning parts), and the warm-up's (``warm``)."""
    parts = sorted(folder.glob("*/report.json"), key=lambda path: path.stat().st_mtime)
    found = {"report": _read_json(folder / "report.json"), "warm": _read_json(folder / "warm.json"),
             "reports": {path.parent.name: report for path in parts if (report := _read_json(path)) is not None}}
    return {key: value for key, value in found.items() if value}


def read_tests(folder: Path) -> dict:
    """The test counts summed over the JUnit XML files pytest finished (``files``), with the failed
    tests' names and the skip reasons."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "failed_tests": [], "skip_reasons": []}
    files = 0
    for path in sorted(folder.glob("junit-*.xml")):
        try:
            cases = list(ElementTree.parse(path).getroot().iter("testcase"))
        except (OSError, ElementTree.ParseError):  # its pytest was stopped while writing it
            continue
        files += 1
        for case in cases:
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failed" if case.find("failure") is not None else "errors"] += 1
                counts["failed_tests"].append(name)
            elif (skip := case.find("skipped")) is not None:
                counts["skipped"] += 1
                counts["skip_reasons"].append(f"{name}: {skip.get('message', '')}"[:200])
            else:
                counts["passed"] += 1
    return {"tests": counts, "files": files} if files else {}


def tests_problem(details: dict, config: CheckConfig, commands: int) -> str | None:
    """On a GPU some test must pass; in a rehearsal every file must have been collected (the gpu tests skip)."""
    tests = details.get("tests")
    if tests is None:
        return "no JUnit XML: pytest stopped before collecting"
    if tests["failed"] or tests["errors"]:
        return f"{tests['failed']} failed, {tests['errors']} errors: {', '.join(tests['failed_tests'][:5])}"
    if config.rehearse:
        return None if details["files"] == commands else f"JUnit XML of {details['files']} of {commands} test files"
    return None if tests["passed"] else "no gpu test passed"


def read_launcher(folder: Path) -> dict:
    summary = _read_json(folder / "run" / "summary.json") or {}
    return {"summary_steps": summary.get("steps"), "world_size": summary.get("world_size"),
            "device": summary.get("device"), "sync_bn": (summary.get("config") or {}).get("sync_bn"),
            "checkpoints": sorted(p.name for p in (folder / "run" / "checkpoints").glob("ckpt-*.pt"))}


def launcher_problem(details: dict, config: CheckConfig, commands: int) -> str | None:
    """The resumed run reached its steps and wrote a checkpoint."""
    steps = LAUNCH_STEPS[config.rehearse][1]
    if details.get("summary_steps") != steps:
        return f"summary.json records {details.get('summary_steps')} steps, not the {steps} the resume asked for"
    return None if details.get("checkpoints") else "no checkpoint written"


def read_learning(folder: Path) -> dict:
    summary = _read_json(folder / "run" / "summary.json") or {}
    evaluations = read_metrics(folder / "run" / "metrics.jsonl")[1]
    return {"evaluations": [{key: e[key] for key in ("step", "acc_ema", "acc_raw")} for e in evaluations],
            "steps": summary.get("steps"), "accuracy": summary.get("accuracy"),
            "wall_seconds": summary.get("wall_seconds"), "model": (summary.get("model") or {}).get("name")}


@dataclass(frozen=True, kw_only=True)
class CheckSection(Section):
    """A gpu-check section: its commands in order (or why it is skipped), what its files say (its
    ``details``), and why it failed though every command exited 0 (None: it did not)."""

    commands: Callable[[CheckConfig, Path], list[list[str]] | str]
    read: Callable[[Path], dict] = read_reports
    problem: Callable[[dict, CheckConfig, int], str | None] | None = None


# In the order the first lent slot needs the figures: the views/s, the step time and the learning
# curve first; the tests, split per file, after them; what the budget may not reach last.
SECTIONS = (
    CheckSection("data", 90, False, commands=data_commands),
    CheckSection("environment", 150, False, commands=environment_commands),
    CheckSection("augmentation", 90, True, commands=augmentation_commands),
    CheckSection("training", 120, True, commands=measure("train", shards=True)),
    CheckSection("learning", 200, True, commands=learning_commands, read=read_learning),
    CheckSection("pipeline", 60, True, commands=measure("pipeline", shards=True)),
    CheckSection("correctness", 180, True, keep_going=True, commands=correctness_commands, read=read_tests,
                 problem=tests_problem),
    CheckSection("launcher", 120, True, commands=launcher_commands, read=read_launcher, problem=launcher_problem),
    CheckSection("training-compile", 150, True, commands=measure(
        "train", "--compile", unrehearsed="rehearsal: torch.compile's CPU build alone takes minutes on 2 cores")),
    CheckSection("bn-mode", 90, True, commands=measure("train", "--bn-mode", "reference")),
    CheckSection("kernel-tuning", 150, True, keep_going=True, commands=tuning_commands),
)
SECTION_NAMES = tuple(s.name for s in SECTIONS)


@dataclass(frozen=True)
class CheckConfig(CommandConfig):
    out: Path = out_flag("report.json, report.md, charts, logs")
    archive: Path = flag(None, "the CIFAR-10 archive (cifar10-jpg.tar.gz or the official tarball): the shards and "
                               "the real images of the kernel tests", type=Path, required=True)
    shards: Path = flag(None, "the shard directory (made from --archive when it has no manifest; default OUT/shards)",
                        type=Path)
    budget_s: int = flag(DEFAULT_BUDGET_S, f"seconds the whole run may take ({DEFAULT_BUDGET_S})", option="budget",
                         metavar="BUDGET", type=positive_int)
    learn_seconds: int = flag(100, "seconds of training in the learning section (100)", type=positive_int)
    bundle: Path | None = flag(None, "also copy report.json, report.md, the charts and logs.tar.gz here (at most 8 "
                                     "files)", type=Path)
    skip: tuple[str, ...] = flag((), f"leave a section out (repeatable): {', '.join(SECTION_NAMES)}", parsed=[],
                                 action="append", choices=SECTION_NAMES, metavar="SECTION")
    rehearse: bool = flag(False, "on a machine without a GPU: every section runs its own command in its CPU form at "
                                 "tiny sizes (the tests collect and skip); exit 1 if a section fails")
    numba_cache: Path | None = flag(None, "NUMBA_CACHE_DIR of every section: where the CUDA kernels are compiled once "
                                          "(default OUT/numba-cache)", type=Path)

    def as_dict(self) -> dict:  # the archive by its name only: reports are shared
        return {**super().as_dict(), "archive": self.archive.name, "skip": list(self.skip),
                "numba_cache": str(self.cache_dir)}

    @property
    def cache_dir(self) -> Path:
        return self.numba_cache or self.out / "numba-cache"


def run_section(section: CheckSection, config: CheckConfig, left_s: float, reason: str | None, log) -> dict:
    """One section within the smaller of its cap and ``left_s``, or the reason it is skipped. In a
    rehearsal ``left_s`` alone: the caps are sized for the GPU forms, and the CPU forms run rows the GPU
    skips (the pipeline section's DALI numba_function row compiles the kernel for minutes on 2 busy cores)."""
    if section.name in config.skip:
        return {"status": "skipped", "reason": "--skip"}
    if section.needs_cuda and reason is not None and not config.rehearse:
        return {"status": "skipped", "reason": reason}
    bound = left_s if config.rehearse else min(section.cap_s, left_s)
    if bound < MIN_SECTION_S:
        return {"status": "skipped", "reason": f"the run's budget is spent ({left_s:.0f} s left)"}
    folder = config.out / section.name
    commands = section.commands(config, folder)
    if isinstance(commands, str):
        return {"status": "skipped", "reason": commands}
    # A second run on a warm machine starts clean: the launcher and learning runs refuse a folder
    # that holds a run already, and stale files would be read as this run's.
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    result = section_runner.run_section(section, commands, bound_s=bound, log=log, log_dir=folder,
                                        env=child_env(config))
    result["details"] = details = section.read(folder)
    problem = section.problem and result["status"] == "measured" and section.problem(details, config, len(commands))
    if problem:
        result.update(status="failed", reason=problem)
    return result


# ---- figures, summary, charts -------------------------------------------------------------------------

# Details of a train row that a GPU run compares too.
TRAIN_DETAILS = ("peak_memory_gib", "phase_shares")


def figures(sections: dict) -> list[dict]:
    """Every number the sections measured, a FigureRow each: the metrics of the rows of every report a
    section wrote, named as ``rmm-bench compare`` names them (a report without rows, gpu-env's: its
    summary's numbers), and the learning run's accuracies per evaluation."""
    out: list[dict] = []
    for section, result in sections.items():
        details = result.get("details") or {}
        sets = [({}, details.get("evaluations") or [], ("acc_ema", "acc_raw"), ("step",))]
        for part, report in (details.get("reports") or {"": details.get("report")}).items():
            if report is None:
                continue
            inputs, rows = report.get("inputs") or {}, report.get("results") or []
            context = {**({"part": part} if part else {}),
                       **({"size": [inputs["height"], inputs["width"]]} if "height" in inputs else {})}
            summary = report.get("summary") or {}
            sets.append((context, rows, (*METRICS, *TRAIN_DETAILS), IDENTITY) if rows else
                        (context, [summary], tuple(summary), ()))
        for context, rows, metric_names, identity in sets:
            for names, values in row_values(rows, metric_names, identity):
                out += [asdict(FigureRow(section=section, name=name, value=value, unit=unit_of(name),
                                         where={**context, **names})) for name, value in values.items()]
    return out


def _details(sections: dict, name: str) -> dict:
    return (sections.get(name) or {}).get("details") or {}


def summarize(sections: dict, figs: list[dict]) -> dict:
    def best(of: tuple[str, ...], name: str, pick=max, **match):
        values = [f["value"] for f in figs if f["section"] in of and f["name"] == name
                  and all(f["where"].get(k) == v for k, v in match.items())]
        return pick(values) if values else None

    cuda_loader = {"device": "cuda", "feed": "loader", "prefetch": True}
    learning, tests = _details(sections, "learning"), _details(sections, "correctness").get("tests")
    evaluations = learning.get("evaluations") or []
    env = _details(sections, "environment").get("report") or {}
    return {
        "gpu": ((env.get("environment") or {}).get("gpu") or {}).get("name"),
        "tests": None if tests is None else {k: tests[k] for k in ("passed", "failed", "skipped", "errors")},
        "cuda_best_views_per_s": best(("augmentation", "kernel-tuning"), "views_per_s", backend="numba-cuda",
                                      op=None, size=[32, 32]),
        "goal_views_per_s": GOAL_VIEWS_PER_S,
        "train_steps_per_s": best(("training", "training-compile"), "steps_per_s", **cuda_loader),
        "train_synthetic_steps_per_s": best(("training",), "steps_per_s", device="cuda", feed="synthetic"),
        "train_compiled_steps_per_s": best(("training-compile",), "steps_per_s", device="cuda", feed="synthetic"),
        "train_bn_reference_steps_per_s": best(("bn-mode",), "steps_per_s", device="cuda", feed="synthetic"),
        "projected_hours": best(("training",), "projected_hours", min, **cuda_loader),
        "final_ema_accuracy": evaluations[-1]["acc_ema"] if evaluations else None,
        "learning_steps": learning.get("steps"),
    }


def draw(sections: dict, out: Path) -> dict:
    """The charts of rmm-bench all, from the reports it would have under its section names, and the learning curve."""
    reports = {"aug": ("augmentation", (_details(sections, "augmentation").get("reports") or {}).get("cuda")),
               "train": ("training", _details(sections, "training").get("report")),
               "pipeline": ("pipeline", _details(sections, "pipeline").get("report"))}
    as_all = {name: {**sections[section], "status": "measured", "report": report} if report is not None
              else {"status": "skipped", "reason": "not run", **sections.get(section, {})}
              for name, (section, report) in reports.items()}
    as_all["learning"] = {"evaluations": _details(sections, "learning").get("evaluations")}
    return draw_charts(as_all, out, names=("views_per_s", "per_op", "step_split", "learning_curve"))


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def render_markdown(report: dict) -> str:
    s, sections = report["summary"], report["sections"]
    tests, final = s["tests"], s["final_ema_accuracy"]
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
        if not {f.name for f in fields(FigureRow)} <= fig.keys() or not fig["unit"]:
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
        for pattern in ("*/log*.txt", "*/report.md", "*/junit*.xml"):
            for path in sorted(out.glob(pattern)):
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
    return command_parser(PROG, "Every CUDA path proven and the GPU figures measured in one run bounded by --budget: "
                                "environment, gpu tests, kernel views/s, loader steps/s, training steps/s with the "
                                "step split, the launcher, and a short real run's learning curve.", CheckConfig)


def config_from_args(args) -> CheckConfig:
    if not args.archive.is_file():
        raise BenchError(f"--archive {args.archive}: no such file")
    check_out(args.out)
    return CheckConfig.from_args(args, shards=args.shards or args.out / "shards", skip=tuple(args.skip))


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
# the run's NUMBA_CACHE_DIR: (name, kernel, launch tuning's fields, view side); "cpu": the CPU kernels'
# compile_all(). Each cap and block size caches in a folder of its own, so kernel-tuning's two 32x32
# tunings are warmed too.
WARM_JOBS = (("apply-32", "apply_ops_kernel", {}, 32),
             ("global-96", "apply_ops_kernel_global", {"large_views": "global"}, 96),
             ("tiled-96", "apply_ops_kernel_tiled", {"large_views": "tiled"}, 96),
             ("weak-32", "weak_augment_kernel", {}, 32),
             ("apply-32-regs80", "apply_ops_kernel", {"max_registers": 80}, 32),
             ("apply-32-threads128", "apply_ops_kernel", {"threads_per_block": 128}, 32),
             ("cpu", None, {}, 32))


def warm_job(job: tuple, rehearse: bool) -> dict:
    """One WARM_JOBS entry in this process: compiled by a launch on a few views (the path every section
    takes), from the cache or not; a failure as ``error``. In a rehearsal the CUDA jobs only build their
    dispatchers and cache folders (nothing compiles without a device)."""
    name, kernel, options, side = job
    start = time.perf_counter()
    try:
        return {"job": name, **_warm(kernel, options, side, rehearse), "seconds": round(time.perf_counter() - start, 1)}
    except Exception as error:  # noqa: BLE001 - one job's failure is reported; the others still warm
        return {"job": name, "error": one_line(error)}


def _warm(kernel: str | None, options: dict, side: int, rehearse: bool) -> dict:
    from remixmatch import kernels

    if kernel is None:
        kernels.compile_all()
        return {"compiled": True}
    import numpy as np

    from remixmatch.kernels import cuda as kernels_cuda
    from remixmatch.kernels.numba_internals import cache_counts, cache_path

    tuning = kernels_cuda.LaunchTuning(**options)
    dispatcher = kernels_cuda.kernels(tuning)[kernel]
    result = {"kernel": kernel, "tuning": tuning.cache_key(), "folder": cache_path(dispatcher)}
    if rehearse:
        return {**result, "compiled": False, "reason": "rehearsal: no CUDA device"}
    from numba import cuda

    kernels_cuda.use_tuning(tuning)
    rng, n = np.random.default_rng(0), 16
    images = cuda.to_device(rng.integers(0, 256, (4, side, side, 3), dtype=np.uint8))
    sources = np.repeat(np.arange(4, dtype=np.int32), 4)
    if kernel == "weak_augment_kernel":
        kernels.weak_augment(images, np.zeros(n, np.int32), np.zeros((n, 2), np.int32), sources=sources, pad=2)
    else:
        kernels.apply_ops(images, rng.integers(0, kernels.NUM_OPS, (n, 2)).astype(np.int32),
                          rng.random((n, 2, 2), dtype=np.float32), rng.random((n, 3, 2), dtype=np.float32),
                          sources=sources)
    cuda.synchronize()
    hits, misses = cache_counts(dispatcher) or (0, 0)
    return {**result, "compiled": True, "cache": "hit" if hits and not misses else "miss" if misses else "unknown"}


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
        jobs = list(pool.map(warm_job, WARM_JOBS, [args.rehearse] * len(WARM_JOBS)))
    for job in jobs:
        print(json.dumps(job), file=sys.stderr, flush=True)
    atomic_write_json(args.out, {"seconds": round(time.perf_counter() - start, 1), "jobs": jobs})
    if failed := [job["job"] for job in jobs if "error" in job]:
        print(f"{PROG} warm-up: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
