"""The markdown of a report: one frame around every command's blocks.

A command gives its body, ``body(report, h)``: inputs, headline, tables and skipped rows, its
headings at level ``h``. :func:`frame` puts the title, the machine, the conditions and the time taken
around it; ``rmm-bench all`` puts the same bodies, a level lower, under its own frame.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .report import conditions_line, format_share, machine_line, markdown_table, report_main

Column = tuple[str, Callable[[dict], str]]  # a table column: its header and how a row fills its cell


def table(columns: Sequence[Column], rows: Sequence[dict]) -> str:
    return markdown_table([header for header, _ in columns], [[cell(r) for _, cell in columns] for r in rows])


def skipped_block(lines: Sequence[str], h: str = "##") -> list[str]:
    """The ``Skipped`` block: one line per thing not measured, with its reason (nothing when none)."""
    return ["", f"{h} Skipped", "", *lines] if lines else []


def frame(report: dict, title: str, body: Sequence[str]) -> str:
    """A command's report.md: its title, the machine and conditions, its body, the time the run took."""
    lines = [f"# {title}", "", machine_line(report), "", conditions_line(report), "", *body,
             "", f"Run took {report['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def share_range(value: float | None, low: float | None, high: float | None) -> str:
    """A share, with its range from the repetitions' spread when that range holds zero: the
    difference is inside the noise, and a bare "-8.5%" would read as a measured effect."""
    if value is None or low is None or high is None or not low <= 0 <= high:
        return format_share(value)
    return f"{format_share(value)} (inside the noise: {format_share(low)} to {format_share(high)})"


def ratio_range(slow: dict, fast: dict) -> tuple[float, float]:
    """The range of ``1 - slow / fast`` over the two rows' min-max spreads of steps/s."""
    a, b = slow["spread"], fast["spread"]
    return 1.0 - a["max"] / b["min"], 1.0 - a["min"] / b["max"]


def module_main(argv, module, **options) -> int:
    """:func:`report_main` of a command module: its ``PROG``, ``build_parser``, ``config_from_args``,
    ``run``, ``progress_line`` (if any) and markdown (``render_markdown``, else its ``body`` framed
    under ``TITLE`` or ``PROG``)."""
    render = getattr(module, "render_markdown", None) or (
        lambda report: frame(report, getattr(module, "TITLE", module.PROG), module.body(report)))
    return report_main(argv, prog=module.PROG, build_parser=module.build_parser,
                       config_from_args=module.config_from_args, run=module.run, render_markdown=render,
                       progress_line=getattr(module, "progress_line", str), **options)
