"""The tiled CUDA kernel (filter tiles staged in shared memory), run by the Numba CUDA simulator in
a process of its own, equals the CPU kernel on every neighbourhood filter and rescale in each order,
at levels 0 and 1, and on mixed chains with weak augmentation and cutout, over views of several
tiles with partial edge tiles and over views smaller than a tile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("cudasim_tiled_check.py")


def test_simulated_tiled_kernel_equals_cpu():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["views"] == 2 * 4 * 4
    assert result["mismatches"] == []
