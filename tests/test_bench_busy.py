"""rmm-bench aug --busy (bench/busy.py): the thread policies' rows, the goal's verdict, the adaptive
rule from given inputs, and busy processes that never outlive the bench. Nothing here asserts a speed."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from remixmatch.bench import busy


@pytest.mark.parametrize("requested, cores, runnable, expected", [
    (2, 2, 1, 2),     # only the caller runs: both cores
    (2, 2, 2, 1),     # one other task: it keeps its core
    (2, 2, 3, 1),     # two busy processes on 2 cores: one thread, never fewer
    (8, 16, 5, 8),    # capped by the request
    (8, 16, 13, 4),
    (4, 2, None, 4),  # no /proc/loadavg: as requested
])
def test_adaptive_threads_take_no_core_from_another_task(requested, cores, runnable, expected):
    assert busy.adaptive_threads(requested, cores, runnable) == expected


def test_runnable_tasks_reads_the_running_count(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.10 2.50 1.20 7/412 99123\n")
    assert busy.runnable_tasks(str(loadavg)) == 7
    assert busy.runnable_tasks(str(tmp_path / "absent")) is None
    loadavg.write_text("garbled\n")
    assert busy.runnable_tasks(str(loadavg)) is None


def _rows(idle_two: list[float], loaded_two: list[float]) -> list[dict]:
    rates = {(0, 1, "fixed"): [100.0, 100.0, 100.0], (0, 2, "fixed"): idle_two, (0, 2, "adaptive"): [90.0] * 3,
             (2, 1, "fixed"): [50.0, 60.0, 40.0], (2, 2, "fixed"): loaded_two, (2, 2, "adaptive"): [50.0] * 3}
    return busy.oversubscription_rows(rates, 512)


def test_goal_needs_the_worst_loaded_run_and_the_idle_median():
    rows = _rows(idle_two=[180.0, 185.0, 170.0], loaded_two=[45.0, 70.0, 66.0])  # worst 45 / median 50
    row = next(r for r in rows if r["busy_processes"] == 2 and r["threads"] == 2 and r["policy"] == "fixed")
    assert row["worst_vs_1_thread_median"] == pytest.approx(0.9) and row["median_vs_1_thread_median"] == pytest.approx(1.32)
    assert busy.goal(rows, 2, 2) == pytest.approx({"worst_under_busy": 0.9, "idle_median": 1.8, "met": True})
    assert busy.goal(_rows([180.0] * 3, [44.0, 70.0, 66.0]), 2, 2)["met"] is False   # worst 0.88x
    assert busy.goal(_rows([170.0, 179.0, 200.0], [60.0] * 3), 2, 2)["met"] is False  # idle 1.79x
    assert busy.goal(rows, 1, 2)["met"] is None


def test_a_short_measurement_names_each_rows_policy_and_renders_the_verdict():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    work = SimpleNamespace(images=SimpleNamespace(pixels=pixels), seed=0)
    section = busy.measure_oversubscription(work, 2, 1, lambda _: None, batch=4, k=2, depth=2, rounds=1, calls=1)
    assert [(r["busy_processes"], r["threads"], r["policy"]) for r in section["rows"]] == [
        (0, 1, "fixed"), (0, 2, "fixed"), (0, 2, "adaptive"), (1, 1, "fixed"), (1, 2, "fixed"), (1, 2, "adaptive")]
    assert section["omp_wait"]["set_by"] in ("remixmatch", "user")
    assert section["goal"]["met"] in (True, False)
    text = "\n".join(busy.render_oversubscription(section))
    assert ("**met**" in text) != ("**not met**" in text)
    assert "| 1 | 2 | adaptive |" in text


def test_busy_processes_stop_when_the_bench_dies_without_cleaning_up():
    # The script prints its busy child's pid, then exits at once, skipping the context manager's kill.
    script = ("import os, subprocess, sys\nfrom remixmatch.bench import busy\n"
              "orig = subprocess.Popen\n"
              "def popen(*a, **k):\n    p = orig(*a, **k)\n    print(p.pid, flush=True)\n    return p\n"
              "busy.subprocess.Popen = popen\n"
              "with busy.busy_processes(1):\n    os._exit(0)  # no cleanup: the child must notice on its own\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"  # a zombie has stopped
    except FileNotFoundError:
        return False
