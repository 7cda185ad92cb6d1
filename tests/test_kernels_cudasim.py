"""The CUDA kernels, run by the Numba CUDA simulator in a process of their own, equal the CPU kernels
on every op, on chains of depth 4, with the appended cutout and with the fused weak augmentation,
under both CTAugment semantics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("cudasim_check.py")


def test_simulated_cuda_equals_cpu():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["views"] >= 40
    assert result["mismatches"] == []
