"""The CPU kernel's Numba threads: how their OpenMP workers wait, and how many a loader gives it.

**Wait policy.** Numba's ``omp`` threading layer runs on libgomp, whose threads, once out of work,
spin (GOMP_SPINCOUNT, 300000 turns by default) before they sleep; the caller spins the same way at
the call's closing barrier. When more threads are runnable than there are cores (other processes,
or torch's threads beside a loader that prefetches), the spinning threads take the cores from the
thread that still holds views, and 2 threads ran at 0.4-0.6x of one (docs/results.md, "The OpenMP
wait policy under load"). With ``OMP_WAIT_POLICY=passive`` a waiting thread sleeps at once: the same
runs gave 2 threads 1.0-1.7x of one (median), their worst run with busy processes 1.04x or better. So :func:`start_numba_threads` starts Numba's threading layer with that policy, unless the
user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (then theirs holds, untouched).

libgomp reads its environment once, when it is loaded; Numba loads it when its threading layer
starts. The variable is set only for that moment and removed again, so it reaches Numba's runtime
alone: torch loads its own libgomp copy (torch/lib) and child processes inherit the user's
environment as it was. Every CPU kernel entry point calls :func:`start_numba_threads` when
:mod:`remixmatch.kernels` is imported, which is before the loader or a CLI sets a thread count.

**Loader threads.** :func:`loader_threads` gives the loader's kernel as many threads as torch's
intra-op pool has (the process's share of the cores: all of them alone, ``cores // N`` for each of N
CPU processes), at most NUMBA_NUM_THREADS. On the CPU the run's render does not overlap torch's step:
the step is synchronous and ``loader.prepare()`` follows it (trainer/loop.py), so the render runs while
torch's threads are idle, and it is the step's data wait. Measured against the rule "the cores torch
leaves free" (1 thread on 2 cores): 2.5x the data wait, no step faster (docs/results.md, "The loader's
kernel threads beside torch").
"""

from __future__ import annotations

import os

from .numba_internals import numba_threads_started

# Set for Numba's OpenMP runtime unless the user set any of USER_WAIT_SETTINGS.
WAIT_DEFAULTS = {"OMP_WAIT_POLICY": "passive"}
USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

_wait: dict | None = None  # what start_numba_threads found and did (wait_policy())


def start_numba_threads(environ=None) -> dict:
    """Starts Numba's threading layer once, its OpenMP workers waiting passively unless the user
    chose otherwise; returns :func:`wait_policy`. ``environ``: the environment to read and set
    (default ``os.environ``, the one libgomp reads)."""
    global _wait
    if _wait is not None:
        return dict(_wait)
    import numba

    environ = os.environ if environ is None else environ
    user = {key: environ[key] for key in USER_WAIT_SETTINGS if key in environ}
    if numba_threads_started():
        _wait = {"omp_wait": user or None, "set_by": "started before remixmatch.kernels was imported"}
        return dict(_wait)
    added = {} if user else {k: v for k, v in WAIT_DEFAULTS.items() if k not in environ}
    environ.update(added)
    try:
        numba.get_num_threads()  # launches the threading layer (and loads libgomp) now
    finally:
        for key in added:
            environ.pop(key, None)
    _wait = {"omp_wait": user or added or None, "set_by": "user" if user else "remixmatch"}
    return dict(_wait)


def wait_policy() -> dict:
    """``{"omp_wait": {variable: value} | None, "set_by": ...}``: the wait settings Numba's OpenMP
    runtime started with, and who chose them."""
    return start_numba_threads()


def loader_threads(torch_threads: int, numba_max: int | None = None) -> int:
    """The loader's kernel threads: torch's intra-op count (the process's share of the cores), at least 1
    and at most ``numba_max`` (NUMBA_NUM_THREADS)."""
    threads = max(1, torch_threads)
    return threads if numba_max is None else max(1, min(threads, numba_max))


def use_threads(threads: int) -> None:
    """Sets this thread's Numba thread count (thread-local in Numba) if it differs."""
    import numba

    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)


__all__ = ["WAIT_DEFAULTS", "USER_WAIT_SETTINGS", "start_numba_threads", "wait_policy", "loader_threads",
           "use_threads"]
