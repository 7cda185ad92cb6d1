"""``rmm-bench gpu-env --out DIR``: what a GPU machine has (GPU, driver, torch, numba-cuda, NVVM, ptxas,
the CUDA kernel's JIT compile time), every probe's answer or its error, never a crash. NVVM is probed
first: without it no CUDA kernel compiles. The report's ``environment``: docs/gpu.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from remixmatch.common.cli import OneLineParser

from .core import CommandConfig, command_parser, error_reason, gpu_count, out_flag, time_calls
from .report import RunConditions, finish_report, machine_info, new_report, package_versions

PROG = "rmm-bench gpu-env"
COMPILE_IMAGES = 8  # the compile probe's batch: 8 images x 8 views, 32x32
COMPILE_K = 8


def one_line(error: BaseException) -> str:
    """An error as one line of at most 300 characters (a probe's or a warm-up job's)."""
    return error_reason(error)[:300]


def _probe(errors: dict, name: str, call: Callable[[], object]):
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - a probe reports what failed; it never stops the others
        errors[name] = one_line(error)
        return None


def nvidia_smi() -> dict | None:
    """Name and driver from nvidia-smi (None without it)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    done = subprocess.run([tool, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30, check=True)
    name, driver, memory = [part.strip() for part in done.stdout.splitlines()[0].split(",")]
    return {"name": name, "driver": driver, "memory": memory}


def torch_facts() -> dict:
    import torch

    facts = {"version": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "device_count": gpu_count(), "bf16_supported": None}
    if facts["device_count"]:
        props = torch.cuda.get_device_properties(0)
        facts["bf16_supported"] = torch.cuda.is_bf16_supported()
        facts["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                           "memory_gib": round(props.total_memory / 2**30, 1),
                           "multiprocessors": props.multi_processor_count}
    return facts


def numba_facts(errors: dict) -> dict:
    """Versions and the CUDA pieces numba-cuda found: NVVM first (without it nothing compiles)."""
    import numba

    facts = {"numba": numba.__version__, "numba_cuda": package_versions(("numba-cuda",))["numba-cuda"],
             "cuda_home": os.environ.get("CUDA_HOME")}
    from numba import cuda

    from remixmatch.kernels import numba_internals

    facts["nvvm"] = _probe(errors, "nvvm", numba_internals.nvvm_version)
    facts["nvvm_path"] = _probe(errors, "nvvm_path", numba_internals.nvvm_location)
    facts["available"] = bool(_probe(errors, "cuda_available", cuda.is_available))
    if facts["available"]:
        facts["runtime"] = _probe(errors, "runtime", lambda: ".".join(map(str, cuda.runtime.get_version())))
        facts["driver_api"] = _probe(errors, "driver_api", numba_internals.driver_version)
    return facts


def kernel_compile_seconds() -> dict:
    """The CUDA kernel's JIT cost in this process: the first call minus the fastest of 3 steady ones
    (same arrays, all on the device)."""
    import numpy as np
    from numba import cuda

    from remixmatch.kernels import NUM_OPS, apply_ops
    from remixmatch.kernels.cuda_launch import apply_launch

    rng = np.random.default_rng(0)
    n = COMPILE_IMAGES * COMPILE_K
    images = cuda.to_device(rng.integers(0, 256, (COMPILE_IMAGES, 32, 32, 3), dtype=np.uint8))
    args = [cuda.to_device(a) for a in (rng.integers(0, NUM_OPS, (n, 2)).astype(np.int32),
                                        rng.random((n, 2, 2), dtype=np.float32),
                                        rng.random((n, 3, 2), dtype=np.float32),
                                        np.repeat(np.arange(COMPILE_IMAGES, dtype=np.int32), COMPILE_K))]
    out = cuda.device_array((n, 32, 32, 3), np.uint8)
    timing = time_calls(lambda: apply_ops(images, *args[:3], sources=args[3], out=out, check_values=False),
                        reps=3, rep_seconds=0.0, max_calls=1, sync=cuda.synchronize)
    first, steady = timing.first_seconds, min(timing.per_call)
    return {"seconds": round(first - steady, 2), "first_call_seconds": round(first, 3),
            "steady_call_seconds": steady, "views": n, "size": [32, 32], "kernel": apply_launch(32, 32).kernel}


def probe_environment() -> dict:
    errors: dict = {}
    smi = _probe(errors, "nvidia_smi", nvidia_smi)
    torch_info = _probe(errors, "torch", torch_facts) or {}
    numba_info = _probe(errors, "numba", lambda: numba_facts(errors)) or {}
    from .ptx import find_ptxas

    ptxas = find_ptxas()
    device = torch_info.get("device")
    env = {"gpu": device, "driver": (smi or {}).get("driver") or numba_info.get("driver_api"),
           "nvidia_smi": smi, "torch": torch_info, "numba": numba_info,
           "ptxas": None if ptxas is None else str(ptxas), "kernel_compile": None, "errors": errors}
    if numba_info.get("available"):
        env["kernel_compile"] = _probe(errors, "kernel_compile", kernel_compile_seconds)
    return env


@dataclass(frozen=True)
class EnvConfig(CommandConfig):
    out: Path = out_flag()


def run(config: EnvConfig, log: Callable[[object], None]) -> dict:
    started, conditions = time.perf_counter(), RunConditions()
    report = new_report("gpu-env", config.as_dict())
    env = probe_environment()
    for name, error in env["errors"].items():
        log(f"{name}: {error}")
    gpu = (env["gpu"] or {}).get("name")
    report.update(machine=machine_info(gpu), environment=env,
                  summary={"gpu": gpu, "driver": env["driver"], "nvvm": env["numba"].get("nvvm"),
                           "kernel_compile_seconds": (env["kernel_compile"] or {}).get("seconds")})
    finish_report(report, time.perf_counter() - started, conditions)
    return report


def render_markdown(report: dict) -> str:
    env = report["environment"]
    torch_info, numba_info = env["torch"], env["numba"]
    gpu = env["gpu"] or {}
    compile_info = env["kernel_compile"] or {}
    lines = ["# rmm-bench gpu-env", "",
             f"- GPU: {gpu.get('name', 'none')} (compute {gpu.get('capability', '-')}, {gpu.get('memory_gib', '-')} GiB, "
             f"{gpu.get('multiprocessors', '-')} SMs); driver {env['driver'] or '-'}",
             f"- torch {torch_info.get('version', '-')} (CUDA {torch_info.get('cuda') or '-'}, cuDNN "
             f"{torch_info.get('cudnn') or '-'}, bf16 {torch_info.get('bf16_supported')})",
             f"- numba {numba_info.get('numba', '-')}, numba-cuda {numba_info.get('numba_cuda') or '-'}: NVVM "
             f"{numba_info.get('nvvm') or '-'} ({numba_info.get('nvvm_path') or 'not found'}), runtime "
             f"{numba_info.get('runtime') or '-'}, CUDA_HOME {numba_info.get('cuda_home') or 'unset'}",
             f"- ptxas: {env['ptxas'] or 'none'}",
             f"- CUDA kernel JIT compile: {compile_info['seconds']} s ({compile_info['kernel']}, first call "
             f"{compile_info['first_call_seconds']} s)" if "seconds" in compile_info else
             "- CUDA kernel JIT compile: not measured"]
    lines += [f"- {name} failed: {error}" for name, error in env["errors"].items()]
    return "\n".join(lines) + "\n"


config_from_args = EnvConfig.from_args


def build_parser() -> OneLineParser:
    return command_parser(PROG, "What this machine's GPU stack is: GPU, driver, torch, numba-cuda, NVVM, ptxas, and "
                                "the CUDA kernel's JIT compile time.", EnvConfig)
