"""The CPU kernel's threads: the loader's rule against torch's threads, and the OpenMP wait policy
Numba's runtime starts with (passive unless the user chose one, whose setting is left alone)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from remixmatch.kernels.threads import loader_threads

# torch's intra-op count, at least 1, at most NUMBA_NUM_THREADS.
@pytest.mark.parametrize("torch_threads, numba_max, expected", [
    (2, None, 2),    # one process on 2 cores: the render runs between steps, on both
    (1, None, 1),    # --threads 1: the run's budget holds for the kernel too
    (8, 16, 8),      # one of 2 CPU processes on 16 cores: its share
    (16, 8, 8),      # NUMBA_NUM_THREADS caps it
    (0, None, 1),
])
def test_loader_threads_follow_torchs_count(torch_threads, numba_max, expected):
    assert loader_threads(torch_threads, numba_max) == expected


PROBE = """
import os, sys
import remixmatch.kernels
from remixmatch.kernels.threads import wait_policy
print(repr(os.environ.get("OMP_WAIT_POLICY")), repr(os.environ.get("GOMP_SPINCOUNT")), wait_policy())
"""


def probe(**env_vars) -> tuple[str, str]:
    """stdout and stderr of a fresh process that imports remixmatch.kernels; libgomp prints the
    settings it started with to stderr (OMP_DISPLAY_ENV; it shows an unset policy as PASSIVE too, but
    the spin count tells them apart: 0 only when waiting passively)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="verbose", NUMBA_THREADING_LAYER="omp", **env_vars)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def test_numba_workers_wait_passively_and_the_environment_is_left_as_it_was():
    out, displayed = probe()
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in displayed and "GOMP_SPINCOUNT = '0'" in displayed
    assert out == "None None {'omp_wait': {'OMP_WAIT_POLICY': 'passive'}, 'set_by': 'remixmatch'}"


@pytest.mark.parametrize("setting, shown", [
    ({"OMP_WAIT_POLICY": "active"}, "OMP_WAIT_POLICY = 'ACTIVE'"),
    ({"GOMP_SPINCOUNT": "300000"}, "GOMP_SPINCOUNT = '300000'"),
])
def test_a_users_wait_setting_is_left_alone(setting, shown):
    out, displayed = probe(**setting)
    assert shown in displayed and "GOMP_SPINCOUNT = '0'" not in displayed
    (key, value), = setting.items()
    assert f"'omp_wait': {{'{key}': '{value}'}}, 'set_by': 'user'" in out
    assert out.startswith(f"{value!r} None" if key == "OMP_WAIT_POLICY" else f"None {value!r}")
