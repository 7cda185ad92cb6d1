"""``rmm-bench aug --busy N``: the CPU kernel when the cores are oversubscribed.

On a CPU training step the loader's kernel renders the next step's views while torch's threads
compute this one, so more threads are runnable than there are cores. This section measures the
headline call (K = 8 views of the 64 images, 512 views, policies drawn afresh for every call) with
1 thread and with ``--threads`` threads under 0, 1, ..., N busy processes (each a Python loop that
never sleeps), in ``ROUNDS`` rounds that alternate the conditions, so that whatever else the machine
runs meanwhile falls on every condition alike. The machine's load average is recorded before and
after. Each run is ``CALLS`` calls after a warm-up (core.time_calls); its figure is views over their total time.

Each row names its thread policy: ``fixed`` (the count set once, as the product runs the kernel) or,
with ``--threads`` above 1, ``adaptive`` (an ablation: before each call, the threads that would not
take a core from another runnable task, :func:`adaptive_threads`). The section records the OpenMP
wait policy the kernel's workers started with (kernels/threads.py) and whether the goal holds: with
``--busy`` busy processes, the fixed ``--threads`` row's worst run at least ``GOAL_WORST`` of the
1-thread median; idle, its median at least ``GOAL_IDLE`` of it.
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
# Stops by itself once its parent (whose pid is filled in) is gone, so a bench killed before its
# cleanup leaves no spinner; the pid is given, not read by the child, which may start after the end.
BUSY_LOOP = "import os\nwhile os.getppid() == {parent}:\n    pass\n"
GOAL_WORST = 0.9  # under busy processes: worst run / 1-thread median (the goal)
GOAL_IDLE = 1.8   # idle: median / 1-thread median
LOADAVG = "/proc/loadavg"


def runnable_tasks(path: str = LOADAVG) -> int | None:
    """Tasks runnable on the machine now, the caller included (``running/total``, the 4th field of
    /proc/loadavg); None where there is no such file."""
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        return None


def adaptive_threads(requested: int, cores: int, runnable: int | None) -> int:
    """The threads that take no core from another runnable task: the cores minus the other runnable
    tasks (``runnable`` counts the caller), at least 1, at most ``requested`` (all of it when unknown)."""
    if runnable is None:
        return requested
    return max(1, min(requested, cores - (runnable - 1)))


@contextmanager
def busy_processes(count: int):
    """``count`` processes that keep one core busy each, stopped (by their pid) on leaving."""
    loop = BUSY_LOOP.format(parent=os.getpid())
    procs = [subprocess.Popen([sys.executable, "-c", loop], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
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
    from remixmatch.kernels.threads import wait_policy
    from remixmatch.pipeline.policy import uniform_policies

    pixels = work.images.pixels
    views = batch * k
    sources = np.repeat(np.arange(batch, dtype=np.int32), k)
    out = np.empty((views, *pixels.shape[1:]), np.uint8)
    rng = np.random.default_rng([work.seed, 24])
    cores = os.cpu_count() or 1
    # (threads, policy): 1 thread, --threads fixed, and --threads adaptive (when above 1).
    variants = [(1, "fixed")] + ([(threads, "fixed"), (threads, "adaptive")] if threads > 1 else [])
    saved = numba.get_num_threads()

    def run_once(n_threads: int, policy: str) -> float:
        """A warm-up call, then ``calls`` timed back to back, each with policies drawn afresh (adaptive:
        each call's thread count picked just before it)."""
        drawn = iter([uniform_policies(views, depth, rng).arrays() for _ in range(calls + 1)])
        numba.set_num_threads(n_threads)

        def call():
            if policy == "adaptive":
                numba.set_num_threads(adaptive_threads(n_threads, cores, runnable_tasks()))
            kernels.apply_ops(pixels, *next(drawn), sources=sources, out=out)

        timing = time_calls(call, 1, 0.0, min_calls=calls, max_calls=calls)
        return views / timing.median_seconds

    rates: dict[tuple[int, int, str], list[float]] = {(b, *v): [] for b in range(busy + 1) for v in variants}
    load_before = _loadavg()
    try:
        for round_ in range(rounds):
            for b in range(busy + 1):
                with busy_processes(b):
                    # Alternate the variants' order too: none always runs first.
                    for t, policy in (variants if round_ % 2 == 0 else variants[::-1]):
                        rates[(b, t, policy)].append(run_once(t, policy))
                log(f"oversubscription round {round_ + 1}/{rounds}, {b} busy: "
                    + ", ".join(f"{t} {policy} {rates[(b, t, policy)][-1] / 1e3:.0f}k views/s"
                                for t, policy in variants))
    finally:
        numba.set_num_threads(saved)
    load_after = _loadavg()
    rows = oversubscription_rows(rates, views)
    return {"rounds": rounds, "calls_per_run": calls, "views_per_call": views, "cores": cores,
            "numba_threading_layer": numba.threading_layer(), "omp_wait": wait_policy(),
            "loadavg_before": load_before, "loadavg_after": load_after, "rows": rows,
            "goal": goal(rows, threads, busy)}


def oversubscription_rows(rates: dict, views: int) -> list[dict]:
    """A row per (busy processes, threads, policy) from its runs' views/s, with its ratios to the
    1-thread median of the same busy count."""
    rows = []
    for (b, t, policy), figures in rates.items():
        one = statistics.median(rates[(b, 1, "fixed")])
        rows.append({"busy_processes": b, "threads": t, "policy": policy, "views": views, "runs": figures,
                     "median_views_per_s": statistics.median(figures), "worst_views_per_s": min(figures),
                     "worst_vs_1_thread_median": min(figures) / one,
                     "median_vs_1_thread_median": statistics.median(figures) / one})
    return rows


def goal(rows: list[dict], threads: int, busy: int) -> dict:
    """Whether the fixed ``threads`` rows meet the goal: worst >= GOAL_WORST x the 1-thread median under
    ``busy`` busy processes, median >= GOAL_IDLE x idle. ``met`` is None with 1 thread (nothing to compare)."""
    def fixed(b: int) -> dict | None:
        return next((r for r in rows if r["busy_processes"] == b and r["threads"] == threads
                     and r["policy"] == "fixed"), None)

    loaded, idle = fixed(busy), fixed(0)
    if threads < 2 or busy < 1 or loaded is None or idle is None:
        return {"worst_under_busy": None, "idle_median": None, "met": None}
    worst, idle_median = loaded["worst_vs_1_thread_median"], idle["median_vs_1_thread_median"]
    return {"worst_under_busy": worst, "idle_median": idle_median,
            "met": worst >= GOAL_WORST and idle_median >= GOAL_IDLE}


def render_oversubscription(section: dict, h: str = "##") -> list[str]:
    from .report import markdown_table

    wait = section["omp_wait"]
    settings = ", ".join(f"{k}={v}" for k, v in (wait["omp_wait"] or {}).items()) or "libgomp's default"
    target = section["goal"]
    if target["met"] is None:
        verdict = "Goal: not evaluated (it needs --threads above 1 and --busy of at least 1)."
    else:
        verdict = (f"Goal (fixed threads: worst run with the most busy processes >= {GOAL_WORST}x the 1-thread "
                   f"median, idle median >= {GOAL_IDLE}x): **{'met' if target['met'] else 'not met'}** "
                   f"(worst {target['worst_under_busy']:.2f}x, idle {target['idle_median']:.2f}x).")
    lines = ["", f"{h} The CPU kernel under oversubscription", "", verdict, "",
             f"{section['views_per_call']} views a call (K = 8 of 64 images, policies drawn per call), "
             f"{section['calls_per_run']} calls a run, {section['rounds']} alternating runs per condition, "
             f"{section['cores']} cores, Numba layer {section['numba_threading_layer']}, OpenMP wait: {settings} "
             f"(set by {wait['set_by']}); "
             f"load average before {section['loadavg_before']}, after {section['loadavg_after']}.", ""]
    table = [[str(r["busy_processes"]), str(r["threads"]), r["policy"], f"{r['median_views_per_s'] / 1e3:.0f}k",
              f"{r['worst_views_per_s'] / 1e3:.0f}k", f"{r['median_vs_1_thread_median']:.2f}x",
              f"{r['worst_vs_1_thread_median']:.2f}x"] for r in section["rows"]]
    lines.append(markdown_table(["busy processes", "threads", "policy", "median views/s", "worst views/s",
                                 "median vs 1-thread median", "worst vs 1-thread median"], table))
    return lines


__all__ = ["busy_processes", "measure_oversubscription", "render_oversubscription", "oversubscription_rows", "goal",
           "adaptive_threads", "runnable_tasks"]
