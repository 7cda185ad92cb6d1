"""``rmm-bench compare A/report.json B/report.json``: every figure of two reports side by side, with
the ratio B / A, so a change can be judged against the last report from the same machine.

Works on any rmm-bench report (``all`` or a single command; an ``all`` report's sections are
compared section by section). A figure is named by where it lives: ``summary.<path>`` for the
headline figures, or ``<command>: <row identity> <metric>`` for a results row, its identity made of
the row's descriptive fields (backend, device, feed, op, K, batch, kernel, arch, ...); a gpu-check
report's ``figures`` compare row by row too, each named by its section, name and ``where``
(:class:`~remixmatch.bench.rows.FigureRow`). Figures in one
report only are listed with ``-`` on the other side. Exit status 2, one line, when a file is missing
or is not a report.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import fields
from pathlib import Path

from remixmatch.common.cli import OneLineParser

from .errors import BenchError
from .report import command_main, markdown_table
from .rows import FigureRow, keys, metrics

PROG = "rmm-bench compare"
# What a row measured, and the fields that name it: from the typed rows' metadata (remixmatch.bench.rows).
METRICS = metrics()
IDENTITY = keys()
# gpu-check's figures: their own names and value (FigureRow is not one of the results rows).
FIGURE_METRICS = tuple(f.name for f in fields(FigureRow) if f.metadata.get("metric"))
FIGURE_IDENTITY = tuple(f.name for f in sorted((f for f in fields(FigureRow) if "key" in f.metadata),
                                               key=lambda f: f.metadata["key"]))
SKIP_SUMMARY = ("paper_steps", "goal_torch_vs_reference", "goal_met", "views_bit_exact")


class CompareError(BenchError):
    """A file that cannot be compared: one line."""


def load_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CompareError(f"{path}: not a JSON report ({' '.join(str(error).split())})") from None
    if not isinstance(report, dict) or "schema_version" not in report or "command" not in report:
        raise CompareError(f"{path}: not an rmm-bench report (no schema_version / command)")
    return report


def flatten(prefix: str, value, out: dict) -> None:
    """Every finite number in ``value`` into ``out``, named by its path from ``prefix`` (``a.b.c``)."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            out[prefix] = float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in SKIP_SUMMARY:
                flatten(f"{prefix}.{key}" if prefix else key, item, out)


def row_values(rows: list, metric_names: tuple[str, ...], identity: tuple[str, ...]):
    """Per measured row: its naming fields (those set) and its figures by name, a dict-valued
    metric's items named ``metric.item``."""
    for row in rows:
        if isinstance(row, dict) and "skipped" not in row:
            values: dict[str, float] = {}
            for metric in metric_names:
                flatten(metric, row.get(metric), values)
            yield {key: row[key] for key in identity if row.get(key) is not None}, values


def _row_figures(label: str, rows: list, metric_names: tuple[str, ...], identity: tuple[str, ...],
                 found: dict) -> None:
    seen: dict[str, int] = {}
    for names, values in row_values(rows, metric_names, identity):
        # a dict among the naming fields by its own items
        name = " ".join(f"{key}={value}" for field_name, item in names.items()
                        for key, value in (item.items() if isinstance(item, dict) else [(field_name, item)]))
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:  # rows alike in every descriptive field: told apart by their order
            name += f" #{seen[name]}"
        for metric, value in values.items():
            found[f"{label}: {name} {metric}"] = value


def figures(report: dict, scope: str = "") -> dict[str, float]:
    """Every comparable figure of a report, by name."""
    found: dict[str, float] = {}
    command = report["command"]
    label = f"{scope}{command}"
    if command == "all":
        for name, section in report.get("sections", {}).items():
            if section.get("status") == "measured" and "report" in section:
                found.update(figures(section["report"], scope=f"{name}/"))
        flatten(f"{label} summary", report.get("summary") or {}, found)
        flatten(f"{label} projection", report.get("projection") or {}, found)
        return found
    flatten(f"{label} summary", report.get("summary") or {}, found)
    rows = list(report.get("results") or []) + list(report.get("scaling") or [])
    _row_figures(label, rows, METRICS, IDENTITY, found)
    _row_figures(label, list(report.get("figures") or []), FIGURE_METRICS, FIGURE_IDENTITY, found)
    return found


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if 1e3 <= abs(value) < 1e9:
        return f"{value:,.0f}"
    if value == 0 or 1e-3 <= abs(value) < 1e3:
        return f"{value:.4g}"
    return f"{value:.3e}"


def compare(a: dict, b: dict) -> list[tuple[str, float | None, float | None, float | None]]:
    fa, fb = figures(a), figures(b)
    names = list(fa) + [name for name in fb if name not in fa]
    table = []
    for name in names:
        va, vb = fa.get(name), fb.get(name)
        ratio = vb / va if va not in (None, 0.0) and vb is not None else None
        table.append((name, va, vb, ratio))
    return table


def render(table, path_a: Path, path_b: Path, a: dict, b: dict) -> str:
    def machine(report):
        m = report.get("machine") or {}
        return f"{m.get('processor', '?')}, {m.get('cpus_usable', '?')} CPUs, GPU {m.get('gpu') or 'none'}"

    lines = [
        f"# rmm-bench compare: A = {path_a} ({a.get('created')}), B = {path_b} ({b.get('created')})",
        "",
        f"A: {machine(a)}.  \nB: {machine(b)}.",
    ]
    if (a.get("machine") or {}).get("processor") != (b.get("machine") or {}).get("processor"):
        lines += ["", "**The two reports come from different machines: the ratios compare machines too.**"]
    lines += ["", markdown_table(["figure", "A", "B", "B / A"],
                                 [[name, _number(va), _number(vb), "-" if r is None else f"{r:.3f}"]
                                  for name, va, vb, r in table]), ""]
    return "\n".join(lines)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Two rmm-bench reports side by side, with the ratio B / A.")
    parser.add_argument("a", type=Path, help="the earlier report.json (A)")
    parser.add_argument("b", type=Path, help="the later report.json (B)")
    return parser


def _run(args) -> int:
    a, b = load_report(args.a), load_report(args.b)
    print(render(compare(a, b), args.a, args.b, a, b))
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(argv, prog=PROG, build_parser=build_parser, run=_run)


if __name__ == "__main__":
    sys.exit(main())
