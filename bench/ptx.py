"""``rmm-bench ptx``: what each CUDA kernel costs an SM, with no GPU: registers, spills, shared
memory and the theoretical occupancy they allow.

Every kernel of :func:`remixmatch.kernels.cuda.kernel_signatures` is compiled to PTX for sm_80 and
sm_90 (numba-cuda: each kernel lowered once, then NVVM per arch) and assembled with ``ptxas -v``. ``"section": "kernel"`` rows
give each kernel as declared, with the occupancy at each view size of :data:`SIZES` where the
launcher uses it; ``"sweep"`` rows (not with --quick) each register cap of :data:`CAPS` and block
size of :data:`BLOCK_SIZES`: the evidence for the declared choice. Occupancy is the CUDA occupancy
calculator's (registers rounded to 256 per warp, 1 KiB of shared memory reserved per block, 2,048
threads and 32 blocks per SM). Rows: :class:`~remixmatch.bench.rows.PtxRow`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from remixmatch.common.cli import OneLineParser

from .core import CommandConfig, command_parser, flag, measured, out_flag
from .render import table
from .report import new_report
from .rows import PtxRow, skipped

PROG = "rmm-bench ptx"


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of a compute capability (CUDA C Programming Guide, compute capabilities table)."""

    name: str
    cc: tuple[int, int]
    gpu: str
    registers: int = 65536
    threads: int = 2048
    warps: int = 64
    blocks: int = 32
    shared_bytes: int = 0  # the most shared memory an SM can give its blocks
    reserved_shared_per_block: int = 1024  # taken by the runtime from every block (sm_80 and later)


ARCHS = (Arch("sm_80", (8, 0), "A100", shared_bytes=164 * 1024),
         Arch("sm_90", (9, 0), "H100", shared_bytes=228 * 1024))
SIZES = ((32, 32), (96, 96))  # CIFAR-10 / SVHN and STL-10
CAPS = (None, 128, 96, 80, 72, 64)
# The per-view kernels: their register pressure decides how many views an SM holds at once (the
# weak-augmentation kernel uses ~30 registers and is never register-bound).
SWEPT_KERNELS = ("apply_ops_kernel", "apply_ops_kernel_global", "apply_ops_kernel_tiled")
BLOCK_SIZES = (128, 256, 512)
REGISTER_UNIT = 256  # registers are allocated per warp in units of this many
SHARED_UNIT = 128  # shared memory is allocated per block in units of this many bytes


def occupancy(arch: Arch, registers: int, threads: int, shared: int) -> dict:
    """Resident blocks and warps per SM for a launch of ``threads`` per block using ``shared`` bytes
    of shared memory per block (static + dynamic), at ``registers`` per thread."""
    warps_per_block = -(-threads // 32)
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    shared_alloc = -(-(shared + arch.reserved_shared_per_block) // SHARED_UNIT) * SHARED_UNIT
    # On a tie the hardware's fixed limits are named first: registers only "limit" when lower.
    limits = {
        "threads": arch.threads // threads,
        "blocks": arch.blocks,
        "shared memory": arch.shared_bytes // shared_alloc,
        "registers": arch.registers // (per_warp * warps_per_block) if registers else arch.blocks,
    }
    limited_by = min(limits, key=limits.get)
    blocks = limits[limited_by]
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps_per_block,
            "occupancy": blocks * warps_per_block / arch.warps, "limited_by": limited_by}


# ---- ptxas ----------------------------------------------------------------------------------------

def find_ptxas() -> Path | None:
    """The CUDA 12 wheel's ptxas (the CUDA extra), else ``ptxas`` on PATH, else a toolkit's under
    ``$CUDA_HOME`` or ``/usr/local/cuda`` (a GPU machine with a system toolkit and no wheel)."""
    candidates = []
    with contextlib.suppress(ImportError):  # no CUDA extra: the other places
        import nvidia.cuda_nvcc as nvcc

        candidates += [Path(root) / "bin" / "ptxas" for root in nvcc.__path__]
    on_path = shutil.which("ptxas")
    candidates += [Path(on_path)] if on_path else []
    candidates += [Path(root) / "bin" / "ptxas"
                   for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if root]
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes cumulative stack size)?"
                   r"(?:, (\d+) bytes smem)?")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(text: str) -> dict:
    """The resources of the one entry point in ``ptxas -v`` output."""
    used, spills = _USED.search(text), _SPILLS.search(text)
    if used is None or spills is None:
        raise RuntimeError(f"unexpected ptxas output: {' '.join(text.split())[:300]}")
    return {"registers": int(used.group(1)), "spill_store_bytes": int(spills.group(2)),
            "spill_load_bytes": int(spills.group(3)), "stack_bytes": int(spills.group(1)),
            "static_shared_bytes": int(used.group(4) or 0), "barriers": int(used.group(2) or 0)}


def assemble(ptxas: Path, ptx_file: Path, arch: Arch, max_registers: int | None) -> dict:
    cap = [f"-maxrregcount={max_registers}"] if max_registers else []
    done = subprocess.run([str(ptxas), "-v", f"-arch={arch.name}", *cap, str(ptx_file), "-o", "/dev/null"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed on {ptx_file.name} for {arch.name}: {done.stderr.strip()[-300:]}")
    return parse_ptxas(done.stdout + done.stderr)


def ptxas_version(ptxas: Path) -> str:
    done = subprocess.run([str(ptxas), "--version"], capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown"


# ---- rows -----------------------------------------------------------------------------------------

def _size_name(height: int, width: int) -> str:
    return f"{height}x{width}"


def launches(name: str, resources: dict, arch: Arch, threads: int | None = None) -> list[dict]:
    """The kernel's launches at each of SIZES where the launcher uses it under some design for large
    views, with the designs that launch it so and its occupancy."""
    from remixmatch.kernels.cuda import LARGE_VIEW_DESIGNS
    from remixmatch.kernels.cuda_launch import launch_shape

    found = []
    for height, width in SIZES:
        designs: dict = {}
        for design in LARGE_VIEW_DESIGNS:
            shape = launch_shape(name, height, width, design)
            if shape is not None:
                designs.setdefault(shape, []).append(design)
        for shape, names in designs.items():
            block = threads or shape.threads_per_block
            found.append({"size": _size_name(height, width), "designs": names, "threads_per_block": block,
                          "dynamic_shared_bytes": shape.dynamic_shared_bytes,
                          **occupancy(arch, resources["registers"], block,
                                      resources["static_shared_bytes"] + shape.dynamic_shared_bytes)})
    return found


def _launch_name(launch: dict) -> str:
    """The launch's size, with its designs where not every design launches the kernel so."""
    from remixmatch.kernels.cuda import LARGE_VIEW_DESIGNS

    designs = launch.get("designs", list(LARGE_VIEW_DESIGNS))
    return launch["size"] if len(designs) == len(LARGE_VIEW_DESIGNS) else f"{launch['size']} ({', '.join(designs)})"


def kernel_rows(ptxas: Path, ptx_files: dict, sweep: bool, log: Callable) -> list[dict]:
    from remixmatch.kernels.cuda import MAX_REGISTERS

    rows = []
    for (name, arch), ptx_file in ptx_files.items():
        declared = MAX_REGISTERS.get(name)
        resources = assemble(ptxas, ptx_file, arch, declared)
        row = asdict(PtxRow(section="kernel", kernel=name, arch=arch.name, gpu=arch.gpu, max_registers=declared,
                            **resources, launches=launches(name, resources, arch)))
        log(row)
        rows.append(row)
        if not sweep or name not in SWEPT_KERNELS:
            continue
        for cap in CAPS:
            swept = resources if cap == declared else assemble(ptxas, ptx_file, arch, cap)
            for threads in BLOCK_SIZES:
                rows.append(asdict(PtxRow(section="sweep", kernel=name, arch=arch.name, gpu=arch.gpu, max_registers=cap,
                                          **swept, launches=launches(name, swept, arch, threads))))
    return rows


def _compile_ptx(job: tuple[str, str]) -> tuple[str, float]:
    """One kernel to PTX for every arch, in a worker process: one lowering, then NVVM per arch (the
    lowering is most of the time). Returns (kernel, seconds)."""
    from remixmatch.kernels.cuda import kernel_signatures
    from remixmatch.kernels.numba_internals import kernel_ptx

    name, directory = job
    kernel, signature = kernel_signatures()[name]
    start = time.perf_counter()
    for cc, ptx in kernel_ptx(kernel.py_func, signature, [arch.cc for arch in ARCHS]).items():
        arch = next(a for a in ARCHS if a.cc == cc)
        (Path(directory) / f"{name}.{arch.name}.ptx").write_text(ptx, encoding="utf-8")
    return name, time.perf_counter() - start


def compile_all_ptx(directory: Path, log: Callable) -> dict:
    """One PTX file per (kernel, arch), written under ``directory``. Lowering a kernel takes most of a
    minute on one core: the kernels compile in a pool of one process per core, each lowered once for
    all archs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from remixmatch.kernels.cuda import kernel_signatures

    jobs = [(name, str(directory)) for name in kernel_signatures()]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    files = {}
    # spawn: a forked child would inherit this process's CUDA driver state and threads.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, seconds in pool.map(_compile_ptx, jobs):
            log(f"{name}: PTX for {', '.join(arch.name for arch in ARCHS)} in {seconds:.1f} s")
            for arch in ARCHS:
                files[name, arch] = Path(directory) / f"{name}.{arch.name}.ptx"
    return files


def unavailable_reason() -> str | None:
    if find_ptxas() is None:
        return "no ptxas (install the CUDA extra: numba-cuda[cu12] brings nvidia-cuda-nvcc; or put a toolkit's on PATH or under $CUDA_HOME)"
    try:
        from remixmatch.kernels.numba_internals import nvvm_version

        nvvm_version()
    except Exception as error:  # noqa: BLE001 - any failure to load NVVM means: no PTX here
        return f"no NVVM to compile PTX ({' '.join(str(error).split())[:200]})"
    return None


def summarize(rows: list[dict], version: str | None) -> dict:
    declared = [r for r in measured(rows) if r["section"] == "kernel"]
    return {
        "ptxas": version,
        "spills": [f"{r['kernel']}@{r['arch']}" for r in declared
                   if r["spill_store_bytes"] or r["spill_load_bytes"]],
        "declared": {f"{r['kernel']}@{r['arch']}": {
            "registers": r["registers"], "max_registers": r["max_registers"],
            "occupancy": {_launch_name(launch): launch["occupancy"] for launch in r["launches"]}} for r in declared},
    }


@dataclass(frozen=True)
class PtxConfig(CommandConfig):
    out: Path = out_flag()
    quick: bool = flag(False, "the kernels as declared only, no register-cap and block-size sweep")


def run(config: PtxConfig, log: Callable[[object], None]) -> dict:
    report = new_report("ptx", config.as_dict())
    report["inputs"] = {"archs": [a.name for a in ARCHS], "sizes": [_size_name(*s) for s in SIZES],
                        "caps": list(CAPS), "block_sizes": list(BLOCK_SIZES)}
    reason = unavailable_reason()
    version = None
    if reason is not None:
        report["results"] = [skipped(PtxRow, reason, section="kernel")]
        log(report["results"][0])
    else:
        ptxas = find_ptxas()
        version = ptxas_version(ptxas)
        with tempfile.TemporaryDirectory(prefix="rmm-ptx-") as tmp:
            report["results"] = kernel_rows(ptxas, compile_all_ptx(Path(tmp), log), not config.quick, log)
    report["summary"] = summarize(report["results"], version)
    return report


# ---- markdown -------------------------------------------------------------------------------------

def _launch_cells(row: dict) -> str:
    return "; ".join(f"{_launch_name(x)}: {x['threads_per_block']} thr, {x['dynamic_shared_bytes']:,} B dyn, "
                     f"{x['blocks_per_sm']} blocks = {100 * x['occupancy']:.1f}% ({x['limited_by']})"
                     for x in row["launches"]) or "-"


def _cap(value) -> str:
    return "none" if value is None else str(value)


KERNEL = (("kernel", lambda r: r["kernel"]), ("arch", lambda r: r["arch"]))
SPILLS = ("spill st/ld B", lambda r: f"{r['spill_store_bytes']}/{r['spill_load_bytes']}")
DECLARED_COLUMNS = (*KERNEL, ("max_registers", lambda r: _cap(r["max_registers"])), ("registers", lambda r: str(r["registers"])),
                    SPILLS, ("stack B", lambda r: str(r["stack_bytes"])),
                    ("static smem B", lambda r: str(r["static_shared_bytes"])), ("launches", _launch_cells))
SWEEP_COLUMNS = (*KERNEL, ("cap", lambda r: _cap(r["max_registers"])), ("registers", lambda r: str(r["registers"])),
                 SPILLS, ("launch", _launch_cells))


def body(report: dict, heading: str = "##") -> list[str]:
    rows = report["results"]
    if rows and "skipped" in rows[0]:
        return [f"{heading} CUDA kernel resources", "", f"Skipped: {rows[0]['skipped']}."]
    spills = report["summary"]["spills"]
    lines = [
        f"{heading} CUDA kernel resources (ptxas -v, no GPU needed)", "",
        f"{report['summary']['ptxas']}. Occupancy: resident warps per SM / 64, from registers, shared memory "
        "(+1 KiB reserved per block), 2,048 threads and 32 blocks per SM.", "",
        table(DECLARED_COLUMNS, [r for r in rows if r["section"] == "kernel"]), "",
        f"**Spills as declared: {', '.join(spills)}.**" if spills else "No kernel spills as declared.",
    ]
    if sweep := [r for r in rows if r["section"] == "sweep"]:
        lines += ["", f"{heading}# Register cap and block size sweep", "", table(SWEEP_COLUMNS, sweep)]
    return lines


# ---- command line ---------------------------------------------------------------------------------

def build_parser() -> OneLineParser:
    return command_parser(PROG, "CUDA kernel registers, spills, shared memory and theoretical occupancy for sm_80 "
                                "and sm_90, from ptxas -v (no GPU needed).", PtxConfig)


config_from_args = PtxConfig.from_args


def progress_line(r: dict) -> str:
    if "skipped" in r:
        return f"ptx: skipped ({r['skipped']})"
    return (f"{r['kernel']} {r['arch']} (cap {_cap(r['max_registers'])}): {r['registers']} registers, "
            f"spills {r['spill_store_bytes']}/{r['spill_load_bytes']} B; {_launch_cells(r)}")
