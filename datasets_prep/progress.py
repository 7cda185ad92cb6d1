"""Progress bars for the prep tools: rich bars on stderr with rate and ETA, silent off a terminal.

Prep runs in CI logs and pipes too, where redrawn bars are noise; so bars are drawn only when
stderr is a terminal, and the same calls are no-ops otherwise.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Advance = Callable[[int], None]


class _RateColumn(ProgressColumn):
    """Items per second in the task's own unit (rows/s, or bytes/s shown as kB/s, MB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.finished and task.elapsed:
            speed = task.completed / task.elapsed  # finished within one sample: rich has no rate
        unit = task.fields.get("unit", "rows")
        if speed is None:
            return Text(f"-- {unit}/s", style="progress.data.speed")
        if unit == "bytes":
            return Text(f"{decimal(int(speed))}/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} {unit}/s", style="progress.data.speed")


class _CountColumn(ProgressColumn):
    """done/total: rows as plain counts, bytes in kB/MB/GB."""

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "bytes":
            total = decimal(int(task.total)) if task.total is not None else "?"
            return Text(f"{decimal(int(task.completed))}/{total}", style="progress.download")
        total = f"{int(task.total):,}" if task.total is not None else "?"
        return Text(f"{int(task.completed):,}/{total}", style="progress.download")


class Bars:
    """Hands out one bar per task; `task()` returns the function that advances it."""

    def __init__(self, progress: Progress | None):
        self._progress = progress

    def task(self, description: str, total: int | None, unit: str = "rows") -> Advance:
        if self._progress is None:
            return _ignore
        progress = self._progress
        task_id = progress.add_task(description, total=total, unit=unit)
        return lambda n: progress.advance(task_id, n)


def _ignore(_n: int) -> None:
    return None


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextmanager
def progress_bars(enabled: bool | None = None) -> Iterator[Bars]:
    """Context that yields a `Bars`; bars are drawn only if `enabled` (default: stderr is a TTY)."""
    if enabled is None:
        enabled = stderr_is_terminal()
    if not enabled:
        yield Bars(None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        _CountColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with progress:
        yield Bars(progress)
