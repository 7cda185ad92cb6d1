"""A benchmark section as a child process with a wall-clock bound: :func:`run_bounded` runs one
command, :func:`run_section` a section's commands in order within one bound (``rmm-bench all``,
``gpu-check`` and ``train --scaling`` all run their children here).

A section that hangs (a CUDA call that never returns, a worker waiting on a dead peer) must not
hold the report: the child runs in a process group of its own, its output is read by a thread (so
the bound holds even while the child keeps its pipe open), and at the bound the whole group gets
SIGTERM, then SIGKILL. Whatever it printed stays: passed to ``log`` line by line, copied to
``log_file``, and its last lines kept for the reason a report gives.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TERM_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
TAIL_LINES = 20


@dataclass(frozen=True)
class Outcome:
    code: int | None  # the exit status; None when the bound stopped it
    seconds: float
    tail: tuple[str, ...]  # its last lines of output

    @property
    def timed_out(self) -> bool:
        return self.code is None

    def last_line(self) -> str:
        return next((line.strip() for line in reversed(self.tail) if line.strip()), "no output")


def _stop_group(child: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, TERM_GRACE_S)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_bounded(argv: list[str], *, timeout_s: float, log: Callable[[str], None] | None = None,
                log_file: Path | None = None, env: dict | None = None, cwd: Path | None = None,
                merge_stdout: bool = True) -> Outcome:
    """Runs ``argv`` for at most ``timeout_s`` seconds. ``merge_stdout``: its stdout joins the output
    read (else it is discarded and only stderr is read)."""
    start = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    sink = open(log_file, "w", encoding="utf-8") if log_file is not None else None  # noqa: SIM115
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE if merge_stdout else subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE, text=True,
                                 errors="replace", env=env, cwd=cwd, start_new_session=True)
        stream = child.stdout if merge_stdout else child.stderr

        def read() -> None:
            for line in stream:
                tail.append(line.rstrip())
                if sink is not None:
                    sink.write(line)
                    sink.flush()
                if log is not None:
                    log(line.rstrip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            code: int | None = child.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            _stop_group(child)
            code = None
        except BaseException:  # Ctrl-C here: the section goes down with us
            _stop_group(child)
            raise
        reader.join(timeout=TERM_GRACE_S)
        # A grandchild that left the group may still hold the pipe: the reader is a daemon, so it
        # cannot keep this process alive.
        if code is None and log is not None:
            log(f"stopped after {timeout_s:.0f} s (its time bound)")
        return Outcome(code, round(time.perf_counter() - start, 1), tuple(tail))
    finally:
        if sink is not None:
            sink.close()


@dataclass(frozen=True)
class Section:
    """A section of a bounded run."""

    name: str
    cap_s: int  # its own wall-clock bound (what is left of a run's budget may be smaller)
    needs_cuda: bool
    keep_going: bool = False  # run its later commands after one fails


def run_section(section: Section, commands: list[list[str]], *, bound_s: float, log: Callable[[str], None],
                log_dir: Path, env: dict | None = None) -> dict:
    """Runs the section's ``commands`` in order, together within ``bound_s`` seconds, command i's output in
    ``log_dir/log<i>.txt``. Returns ``status`` ("measured" | "failed": one exited non-zero |
    "timed_out": the bound stopped one), ``reason`` (all but measured), ``seconds``, ``bound_seconds``
    and each command's ``{"exit", "seconds"}``. After a failure the later commands run only when the
    section keeps going; the first failure is the reason."""
    start, status, why, exits = time.perf_counter(), "measured", None, []
    for i, argv in enumerate(commands):
        left = bound_s - (time.perf_counter() - start)
        if left <= 0:
            status, why = "timed_out", f"no time left for command {i + 1} within the section's bound ({bound_s:.0f} s)"
            break
        log(f"== {section.name} [{i + 1}/{len(commands)}] (bound {left:.0f} s): {' '.join(argv[1:])[:200]}")
        outcome = run_bounded(argv, timeout_s=left, log=lambda line: log(f"   {line}"),
                              log_file=log_dir / f"log{i + 1}.txt", env=env)
        exits.append({"exit": outcome.code, "seconds": outcome.seconds})
        if outcome.timed_out:
            status, why = "timed_out", f"command {i + 1} stopped at the section's bound ({bound_s:.0f} s): {outcome.last_line()}"
            break
        if outcome.code != 0 and status == "measured":
            status, why = "failed", f"command {i + 1} exit status {outcome.code}: {outcome.last_line()}"
            if not section.keep_going:
                break
    result = {"status": status, "seconds": round(time.perf_counter() - start, 1), "bound_seconds": round(bound_s),
              "commands": exits}
    return {**result, "reason": why} if why else result


__all__ = ["Outcome", "Section", "run_bounded", "run_section"]
