"""The CUDA kernels compile to PTX for Ampere (sm_80) and Hopper (sm_90) with no GPU present, the PTX
holds no fused multiply-add (FMA contraction would round differently from the CPU kernel and Pillow),
and ``rmm-bench ptx`` reports every kernel's resources from that PTX: no kernel may spill."""

from __future__ import annotations

import re

import json

import pytest

from remixmatch.bench import all_sections, ptx
from remixmatch.bench.cli import main
from remixmatch.kernels.cuda import kernel_signatures

KERNELS = sorted(kernel_signatures())


@pytest.fixture(scope="module")
def ptx_files(tmp_path_factory):
    """Every kernel's PTX for sm_80 and sm_90, compiled once for this module (NVVM takes minutes)."""
    return ptx.compile_all_ptx(tmp_path_factory.mktemp("ptx"), lambda line: None)


@pytest.fixture(scope="module")
def ptx_by_target(ptx_files):
    return {(name, arch.cc): path.read_text() for (name, arch), path in ptx_files.items()}


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


@pytest.mark.parametrize("name", KERNELS)
def test_no_float_division_or_reciprocal(ptx_by_target, name):
    """ptxas expands div.rn.f64 / div.rn.f32 / rcp into a refinement made of DFMA and FFMA: exact, but
    then the SASS check (tests/test_kernels_gpu.py) could not forbid fused multiply-adds. Autocontrast's
    255 / d is a host table (pixel_math.AUTOCONTRAST_SCALE), so no kernel divides a float."""
    for cc in ((8, 0), (9, 0)):
        found = sorted({m for m in re.findall(r"\b(?:div|rcp|sqrt)\.[\w.]*f(?:32|64)\b", ptx_by_target[name, cc])})
        assert not found, f"{name} sm_{cc[0]}{cc[1]}: {found}"


def test_float_math_uses_round_to_nearest_intrinsics(ptx_by_target):
    # The blend and filter arithmetic must be present as separate, explicitly rounded operations.
    ptx = ptx_by_target["apply_ops_kernel", (9, 0)]
    assert "mul.rn.f32" in ptx and "add.rn.f32" in ptx
    assert "mul.rn.f64" in ptx and "add.rn.f64" in ptx


def test_the_resource_report_covers_every_kernel_without_spills(ptx_files, tmp_path, monkeypatch, capsys):
    reason = ptx.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    # The report assembles this module's PTX (compiling it again would double the suite's NVVM time).
    monkeypatch.setattr(ptx, "compile_all_ptx", lambda directory, log: ptx_files)
    assert main(["ptx", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert "No kernel spills as declared." in (tmp_path / "report.md").read_text()
    capsys.readouterr()
    rows = report["results"]
    declared = [r for r in rows if r["section"] == "kernel"]
    assert sorted({(r["kernel"], r["arch"]) for r in declared}) == sorted(
        (name, arch.name) for name in kernel_signatures() for arch in ptx.ARCHS)
    for r in declared:
        assert r["spill_store_bytes"] == 0 and r["spill_load_bytes"] == 0, f"{r['kernel']} {r['arch']} spills"
        assert 0 < r["registers"] <= 255
        assert r["launches"], f"{r['kernel']} is launched at no size"
        for launch in r["launches"]:
            assert 0 < launch["occupancy"] <= 1 and launch["blocks_per_sm"] >= 1
    sizes = {launch["size"] for r in declared if r["kernel"].startswith("apply_ops") for launch in r["launches"]}
    assert sizes == {"32x32", "96x96"}, "each view size is served by one of the per-view kernels"
    assert report["summary"]["spills"] == []
    assert not [r for r in rows if r["section"] == "sweep"], "--quick: no sweep"
    # rmm-bench all's headline reads the same section.
    sections = {"ptx": {"status": "measured", "report": report}}
    assert all_sections.summarize(sections, None)["max_spill_bytes"] == 0


def _fake_ptxas(folder):
    folder.mkdir(parents=True)
    tool = folder / "ptxas"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    return tool


def test_ptxas_is_found_on_path_or_under_cuda_home_without_the_wheel(tmp_path, monkeypatch):
    """A GPU machine with a system toolkit and no CUDA 12 wheel still assembles the report."""
    import sys

    monkeypatch.setitem(sys.modules, "nvidia.cuda_nvcc", None)  # the wheel is absent
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    home = _fake_ptxas(tmp_path / "toolkit" / "bin")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "toolkit"))
    assert ptx.find_ptxas() == home
    on_path = _fake_ptxas(tmp_path / "path")
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    assert ptx.find_ptxas() == on_path


def test_every_large_view_design_has_its_launch_and_occupancy():
    """At 96x96 each design of REMIXMATCH_CUDA_LARGE_VIEWS launches its own kernel, whatever the
    default: the report predicts the occupancy of all three (no compile needed for the arithmetic)."""
    from remixmatch.kernels.cuda import LARGE_VIEW_DESIGNS

    sm_80, sm_90 = ptx.ARCHS
    found = {}
    for name, registers, static in (("apply_ops_kernel", 116, 64), ("apply_ops_kernel_global", 192, 64),
                                    ("apply_ops_kernel_tiled", 176, 1264)):
        for arch in (sm_80, sm_90):
            for launch in ptx.launches(name, {"registers": registers, "static_shared_bytes": static}, arch):
                if launch["size"] == "96x96":
                    (design,) = launch["designs"]
                    found[design, arch.name] = (name, launch["dynamic_shared_bytes"], launch["occupancy"],
                                                launch["limited_by"])
    assert sorted({design for design, _ in found}) == sorted(LARGE_VIEW_DESIGNS)
    assert found["global", "sm_90"] == ("apply_ops_kernel_global", 0, 0.125, "registers")
    assert found["tiled", "sm_90"] == ("apply_ops_kernel_tiled", 4 * (96 + 96 + 2 * 768), 0.125, "registers")
    # 89,856 B of opted-in shared memory: two blocks in an H100's 228 KiB, one in an A100's 164 KiB.
    assert found["shared-optin", "sm_90"] == ("apply_ops_kernel", 89856, 0.25, "shared memory")
    assert found["shared-optin", "sm_80"] == ("apply_ops_kernel", 89856, 0.125, "shared memory")
    summary = ptx.summarize([{"section": "kernel", "kernel": "apply_ops_kernel", "arch": "sm_90", "registers": 116,
                              "max_registers": None, "spill_store_bytes": 0, "spill_load_bytes": 0,
                              "launches": ptx.launches("apply_ops_kernel", {"registers": 116,
                                                                            "static_shared_bytes": 64}, sm_90)}], None)
    assert summary["declared"]["apply_ops_kernel@sm_90"]["occupancy"] == {"32x32": 0.25, "96x96 (shared-optin)": 0.25}
