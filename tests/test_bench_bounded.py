"""A section's child process is bounded in wall time, whatever it does with its output."""

from __future__ import annotations

import sys
import time

from remixmatch.bench.section_runner import run_bounded

# Prints, then hangs holding its output open, with a grandchild that holds it open too.
HANGS = ("import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
         "print('started', flush=True); time.sleep(120)")


def test_a_hung_child_and_its_grandchild_are_stopped_at_the_bound(tmp_path):
    lines = []
    start = time.perf_counter()
    outcome = run_bounded([sys.executable, "-c", HANGS], timeout_s=2, log=lines.append, log_file=tmp_path / "log.txt")
    assert time.perf_counter() - start < 20
    assert outcome.timed_out and outcome.code is None
    assert "started" in outcome.tail and outcome.last_line().startswith("started")
    assert "started" in (tmp_path / "log.txt").read_text()
    assert lines[0] == "started" and "its time bound" in lines[-1]


def test_a_finished_child_gives_its_status_and_last_line():
    code = "import sys; print('out'); print('err line', file=sys.stderr); sys.exit(3)"
    merged = run_bounded([sys.executable, "-c", code], timeout_s=60)
    assert merged.code == 3 and not merged.timed_out and set(merged.tail) == {"out", "err line"}
    errors_only = run_bounded([sys.executable, "-c", code], timeout_s=60, merge_stdout=False)
    assert errors_only.tail == ("err line",) and errors_only.last_line() == "err line"
