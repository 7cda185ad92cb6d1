"""Benchmark reports: what machine and software ran, and writing ``report.json`` / ``report.md``.

The layout of ``report.json`` is :class:`remixmatch.bench.rows.Report`; its ``results`` rows are
the other dataclasses of :mod:`remixmatch.bench.rows`.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from remixmatch.common.atomic import atomic_write_json, atomic_write_text
from remixmatch.common.versions import package_versions  # the bench commands import it from here too

from .rows import SCHEMA_VERSION, Report  # noqa: F401 (SCHEMA_VERSION: read from here too)


# Distribution names whose versions a report records (importlib.metadata: nothing gets imported).
PACKAGES = ("numpy", "numba", "numba-cuda", "pillow", "torch", "remixmatch")


def _processor_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine_info(gpu: str | None = None) -> dict:
    """The machine, without anything that names it (no hostname, user or paths)."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _processor_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "memory_gib": _memory_gib(),
        "gpu": gpu,
    }


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (/proc/stat: everything but idle and iowait)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]  # user..steal; guest is in user
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_seconds() -> float:
    # Children count once reaped, so worker pools must be joined before the run is closed.
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class RunConditions:
    """How much of the machine other processes took while a benchmark ran.

    On a shared machine another job on one of two cores halves a two-thread figure; recording it
    tells a slow figure from a slow kernel.
    """

    def __init__(self) -> None:
        try:
            self.load_at_start = [round(v, 2) for v in os.getloadavg()]
        except (OSError, AttributeError):
            self.load_at_start = None
        self.busy_at_start = _machine_busy_seconds()
        self.own_at_start = _own_cpu_seconds()

    def finish(self, wall_seconds: float) -> dict:
        busy = _machine_busy_seconds()
        other = None
        if busy is not None and self.busy_at_start is not None:
            # Tick rounding can make a quiet machine read slightly negative.
            other = max(0.0, (busy - self.busy_at_start) - (_own_cpu_seconds() - self.own_at_start))
        return {
            "load_average_at_start": self.load_at_start,
            "other_cpu_seconds": None if other is None else round(other, 2),
            "other_cpu_share": None if other is None else round(other / (wall_seconds * usable_cpus()), 4),
        }


def spread(values: list[float]) -> dict:
    """Median-centred summary of repeated measurements (quartiles by the inclusive method)."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "min": min(values),
        "max": max(values),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def new_report(command: str, config: dict) -> dict:
    return asdict(Report(command=command, versions=package_versions(PACKAGES), config=config))


def finish_report(report: dict, wall_seconds: float, conditions: RunConditions) -> None:
    report["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    report["wall_seconds"] = round(wall_seconds, 2)
    report["conditions"] = conditions.finish(wall_seconds)


def write_report(out_dir: Path, report: dict, markdown: str, stem: str = "report") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    # A reader (CI, a plotting script) never sees a half-written report.
    atomic_write_json(json_path, report, indent=2, allow_nan=False)
    atomic_write_text(md_path, markdown)
    return json_path, md_path


# ---- markdown -------------------------------------------------------------------------------------

def format_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    return f"{value:,.0f}"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def format_share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_hours(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} h ({value / 24:.1f} days)" if value >= 48 else f"{value:.1f} h"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(report: dict) -> str:
    m, v, t = report["machine"], report["versions"], report["threads"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    threads = ", ".join(f"{key} {value}" for key, value in t.items() if value is not None)
    return (
        f"Machine: {m['processor']}, {m['cpus_usable']} of {m['cpu_count']} CPUs usable, "
        f"{m['memory_gib']} GiB{gpu}; {m['platform']}.  \n"
        f"Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None) + ".  \n"
        f"Threads: {threads}."
    )


# Above this share of the machine taken by other processes, a report says its figures are low.
BUSY_SHARE = 0.05


def conditions_line(report: dict) -> str:
    c = report["conditions"]
    if c["other_cpu_share"] is None:
        return "Conditions: other processes' CPU use was not measured (no /proc/stat)."
    line = (f"Conditions: load average at start {c['load_average_at_start'][0]}; other processes used "
            f"{c['other_cpu_seconds']:.1f} CPU-s ({100 * c['other_cpu_share']:.1f}% of the machine) during the run.")
    if c["other_cpu_share"] > BUSY_SHARE:
        line += "  \n**Other work competed for the CPUs: these figures are lower than on an idle machine.**"
    return line


# ---- the commands' main ----------------------------------------------------------------------------

def command_main(argv, *, prog, build_parser, run, interrupted: str = "interrupted") -> int:
    """The main() of every rmm-bench command: ``run(parsed arguments)``, its exit status. Bad input:
    one line and the error's exit status (:func:`remixmatch.common.cli.run_cli`)."""
    from remixmatch.common.cli import run_cli

    return run_cli(prog, lambda: run(build_parser().parse_args(argv)), interrupted=interrupted)


def report_main(argv, *, prog, build_parser, config_from_args, run, render_markdown, progress_line=str,
                after=None, stem: str = "report", interrupted: str = "interrupted", log=None, show=print) -> int:
    """The main() of every report command: parse, check, run (progress on stderr, or through
    ``log``; the run's machine, wall time and conditions recorded), write ``STEM.json`` and ``STEM.md``, ``show`` the markdown, then ``after(config, report,
    log)`` if given. Bad input: one line and the error's exit status (:func:`remixmatch.common.cli.run_cli`)."""
    import sys

    def print_log(item) -> None:
        print(item if isinstance(item, str) else progress_line(item), file=sys.stderr, flush=True)

    log = log or print_log

    def body(args) -> int:
        config = config_from_args(args)
        conditions, started = RunConditions(), time.perf_counter()
        report = run(config, log)
        if report["machine"] is None:
            report["machine"] = machine_info()
        if report["created"] is None:  # not finished by the command itself
            finish_report(report, time.perf_counter() - started, conditions)
        text = render_markdown(report)
        json_path, md_path = write_report(config.out, report, text, stem)
        show(text)
        log(f"wrote {json_path} and {md_path}")
        if after is not None:
            after(config, report, log)
        return 0

    return command_main(argv, prog=prog, build_parser=build_parser, run=body, interrupted=interrupted)

