"""The CUDA kernels compile to PTX for Ampere (sm_80) and Hopper (sm_90) with no GPU present, and the
PTX holds no fused multiply-add: FMA contraction would round differently from the CPU kernel and Pillow."""

from __future__ import annotations

import re

import pytest
from numba import cuda

from remixmatch.kernels.cuda import kernel_signatures

KERNELS = sorted(kernel_signatures())


@pytest.fixture(scope="module")
def ptx_by_target():
    compiled = {}
    for name, (kernel, signature) in kernel_signatures().items():
        for cc in ((8, 0), (9, 0)):
            ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=cc)
            compiled[name, cc] = ptx
    return compiled


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("name", KERNELS)
def test_kernel_compiles_to_ptx(ptx_by_target, name, cc):
    ptx = ptx_by_target[name, cc]
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert re.search(rf"\.entry\s+\S*{name}", ptx), f"no entry point for {name}"


@pytest.mark.parametrize("name", KERNELS)
def test_no_fused_multiply_add(ptx_by_target, name):
    for cc in ((8, 0), (9, 0)):
        fused = [line.strip() for line in ptx_by_target[name, cc].splitlines() if re.search(r"\bfma\.", line)]
        assert not fused, f"{name} sm_{cc[0]}{cc[1]}: contracted FMA in PTX: {fused[:3]}"


def test_float_math_uses_round_to_nearest_intrinsics(ptx_by_target):
    # The blend and filter arithmetic must be present as separate, explicitly rounded operations.
    ptx = ptx_by_target["apply_ops_kernel", (9, 0)]
    assert "mul.rn.f32" in ptx and "add.rn.f32" in ptx
    assert "mul.rn.f64" in ptx and "add.rn.f64" in ptx
