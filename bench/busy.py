"""``rmm-bench aug --busy N``: the CPU kernel when the cores are oversubscribed.

On a CPU training step the loader's kernel renders the next step's views while torch's threads
compute this one, so more threads are runnable than there are cores. This section measures the
headline call (K = 8 views of the 64 images, 512 views, policies drawn afresh for every call) with
1 thread and with ``--threads`` threads under 0, 1, ..., N busy processes (each a Python loop that
never sleeps), in ``ROUNDS`` rounds that alternate the conditions, so that whatever else the machine
runs meanwhile falls on every condition alike. The machine's load average is recorded before and
after. Each run is ``CALLS`` calls after a warm-up; its figure is views over their total time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np

from .core import time_calls

ROUNDS = 5
CALLS = 20
BUSY_LOOP = "while True:\n    pass\n"


@contextmanager
def busy_processes(count: int):
    """``count`` processes that keep one core busy each, stopped (by their pid) on leaving."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
             for _ in range(count)]
    try:
        time.sleep(0.2 if procs else 0.0)  # let them start spinning
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def measure_oversubscription(work, threads: int, busy: int, log, *, batch: int, k: int, depth: int,
                             rounds: int = ROUNDS, calls: int = CALLS) -> dict:
    """views/s of ``rounds`` alternating runs per (busy processes, threads); their worst and median.
    Each call renders ``k`` views of ``depth`` ops for each of ``batch`` images (aug passes its headline
    shape: this module does not import aug, which imports it)."""
    import numba

    from remixmatch import kernels
    from remixmatch.pipeline.policy import uniform_policies

    pixels = work.images.pixels
    views = batch * k
    sources = np.repeat(np.arange(batch, dtype=np.int32), k)
    out = np.empty((views, *pixels.shape[1:]), np.uint8)
    rng = np.random.default_rng([work.seed, 24])
    thread_counts = sorted({1, threads})
    saved = numba.get_num_threads()

    def run_once(n_threads: int) -> float:
        """A warm-up call, then ``calls`` timed back to back, each with policies drawn afresh."""
        drawn = iter([uniform_policies(views, depth, rng).arrays() for _ in range(calls + 1)])
        numba.set_num_threads(n_threads)
        timing = time_calls(lambda: kernels.apply_ops(pixels, *next(drawn), sources=sources, out=out), 1, 0.0,
                            min_calls=calls, max_calls=calls)
        return views / timing.median_seconds

    rates: dict[tuple[int, int], list[float]] = {(b, t): [] for b in range(busy + 1) for t in thread_counts}
    load_before = _loadavg()
    try:
        for round_ in range(rounds):
            for b in range(busy + 1):
                with busy_processes(b):
                    # Alternate the thread counts' order too: neither always runs first.
                    for t in (thread_counts if round_ % 2 == 0 else thread_counts[::-1]):
                        rates[(b, t)].append(run_once(t))
                log(f"oversubscription round {round_ + 1}/{rounds}, {b} busy: "
                    + ", ".join(f"{t} thread{'s' if t > 1 else ''} {rates[(b, t)][-1] / 1e3:.0f}k views/s"
                                for t in thread_counts))
    finally:
        numba.set_num_threads(saved)
    load_after = _loadavg()
    rows = []
    for (b, t), figures in rates.items():
        one = statistics.median(rates[(b, 1)])
        rows.append({"busy_processes": b, "threads": t, "views": views, "runs": figures,
                     "median_views_per_s": statistics.median(figures), "worst_views_per_s": min(figures),
                     "worst_vs_1_thread_median": min(figures) / one,
                     "median_vs_1_thread_median": statistics.median(figures) / one})
    return {"rounds": rounds, "calls_per_run": calls, "views_per_call": views, "cores": os.cpu_count(),
            "numba_threading_layer": numba.threading_layer(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "loadavg_before": load_before, "loadavg_after": load_after, "rows": rows}


def render_oversubscription(section: dict, h: str = "##") -> list[str]:
    from .report import markdown_table

    lines = ["", f"{h} The CPU kernel under oversubscription", "",
             f"{section['views_per_call']} views a call (K = 8 of 64 images, policies drawn per call), "
             f"{section['calls_per_run']} calls a run, {section['rounds']} alternating runs per condition, "
             f"{section['cores']} cores, Numba layer {section['numba_threading_layer']}; "
             f"load average before {section['loadavg_before']}, after {section['loadavg_after']}.", ""]
    table = [[str(r["busy_processes"]), str(r["threads"]), f"{r['median_views_per_s'] / 1e3:.0f}k",
              f"{r['worst_views_per_s'] / 1e3:.0f}k", f"{r['median_vs_1_thread_median']:.2f}x",
              f"{r['worst_vs_1_thread_median']:.2f}x"] for r in section["rows"]]
    lines.append(markdown_table(["busy processes", "threads", "median views/s", "worst views/s",
                                 "median vs 1-thread median", "worst vs 1-thread median"], table))
    return lines


__all__ = ["busy_processes", "measure_oversubscription", "render_oversubscription"]
