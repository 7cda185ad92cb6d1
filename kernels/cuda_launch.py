"""Host side of the CUDA backend: device views of the inputs, device copies of the tables, launch."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import cuda

from .args import apply_args, weak_args
from .compile import cuda_simulated
from .cuda import (
    LARGE_VIEW_DESIGNS, LARGE_VIEWS, LARGE_VIEWS_ENV, THREADS_PER_BLOCK, TILE_BYTES, apply_ops_kernel,
    apply_ops_kernel_global, apply_ops_kernel_tiled, shared_bytes, tiled_shared_bytes, weak_augment_kernel,
)
from .scalar import LUT_SIZE, PARAMS_F, PARAMS_I
from .tables import kernel_tables, level_form_table

WEAK_THREADS_PER_BLOCK = 256
# Shared memory a block may use without opting in to more (every CUDA GPU since Kepler).
DEFAULT_SHARED_BYTES = 48 * 1024
# Views whose buffers need more take the design LARGE_VIEWS names (kernels/cuda.py); the simulator
# tests lower it to send small views there.
SHARED_BYTES_LIMIT = DEFAULT_SHARED_BYTES
# Static shared memory of the apply kernels: the per-view parameters, and the tiled kernel's tile.
PARAMS_BYTES = 4 * PARAMS_I + 8 * PARAMS_F
TILED_STATIC_BYTES = TILE_BYTES + PARAMS_BYTES
# What the shared-optin design may opt in to: the least per-block maximum of the GPUs this targets
# (A100, sm_80: 163 KiB; H100, sm_90: 227 KiB). Larger views take the global-memory kernel.
SHARED_OPTIN_BYTES_LIMIT = 163 * 1024
# Blocks of the global-memory kernel (each holds one view's buffers in global memory at a time):
# enough to fill an H100's 132 SMs several times over, few enough to keep the scratch small.
GLOBAL_BLOCKS = 1024


class LaunchShape(NamedTuple):
    kernel: str  # a name of kernel_signatures()
    threads_per_block: int
    dynamic_shared_bytes: int


def apply_launch(height: int, width: int, design: str | None = None) -> LaunchShape:
    """The kernel that applies the ops to height x width views, and how it is launched: a view in
    the shared memory of its block when it fits the default limit, else as ``design`` (default
    LARGE_VIEWS) says: in global memory, in global memory with filter tiles staged in shared memory,
    or in shared memory opted in up to SHARED_OPTIN_BYTES_LIMIT (global memory above that; for the
    tiled kernel, above sides that add up to about 10,400 pixels, where its words outgrow 48 KiB)."""
    design = design or LARGE_VIEWS
    if design not in LARGE_VIEW_DESIGNS:
        raise ValueError(f"large-view design {design!r}: must be one of {', '.join(LARGE_VIEW_DESIGNS)} "
                         f"(as {LARGE_VIEWS_ENV})")
    dynamic_shared = shared_bytes(height, width)
    if dynamic_shared <= SHARED_BYTES_LIMIT or (
            design == "shared-optin" and dynamic_shared + PARAMS_BYTES <= SHARED_OPTIN_BYTES_LIMIT):
        return LaunchShape("apply_ops_kernel", THREADS_PER_BLOCK, dynamic_shared)
    words = tiled_shared_bytes(height, width)
    if design == "tiled" and words + TILED_STATIC_BYTES <= DEFAULT_SHARED_BYTES:
        return LaunchShape("apply_ops_kernel_tiled", THREADS_PER_BLOCK, words)
    return LaunchShape("apply_ops_kernel_global", THREADS_PER_BLOCK, 0)


def launch_shape(kernel: str, height: int, width: int, design: str | None = None) -> LaunchShape | None:
    """How ``kernel`` is launched for height x width views under ``design`` (default LARGE_VIEWS);
    None when another kernel serves them."""
    shape = apply_launch(height, width, design) if kernel != "weak_augment_kernel" else LaunchShape(
        kernel, WEAK_THREADS_PER_BLOCK, 0)
    return shape if shape.kernel == kernel else None


def _is_torch(array) -> bool:
    return type(array).__module__.startswith("torch")


def _device_view(array, stream):
    """A Numba device array over ``array`` (no copy for CUDA arrays; host arrays are copied)."""
    if isinstance(array, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(array), stream=stream)
    if hasattr(array, "__cuda_array_interface__"):
        # No sync: the launch is ordered on the caller's stream (torch's current one by default);
        # Numba's default would block the host on the producer's stream at every call.
        return cuda.as_cuda_array(array, sync=False)
    return array  # already a Numba (or simulator) device array


def _resolve_stream(stream, images):
    if stream is not None:
        if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
            return cuda.external_stream(stream.cuda_stream)
        return stream
    if _is_torch(images):
        import torch

        return cuda.external_stream(torch.cuda.current_stream(images.device).cuda_stream)
    return cuda.default_stream()


@functools.lru_cache(maxsize=16)
def _device_tables(height: int, width: int, device_id: int):
    # Per (image size, device): the tables are a few hundred kB and never change.
    del device_id
    return tuple(cuda.to_device(np.ascontiguousarray(t)) for t in kernel_tables(height, width).arrays())


@functools.lru_cache(maxsize=16)
def _device_forms(semantics: str, device_id: int):
    del device_id
    return cuda.to_device(np.ascontiguousarray(level_form_table(semantics)))


def _allocate_out(images, n_views, height, width):
    if _is_torch(images):
        import torch

        return torch.empty((n_views, height, width, 3), dtype=torch.uint8, device=images.device)
    return cuda.device_array((n_views, height, width, 3), np.uint8)


def _launch_setup(images, out, stream, n_views, height, width):
    """The stream, the output (allocated if not given) and how a launch places each array it reads."""
    stream = _resolve_stream(stream, images)
    if out is None:
        out = _allocate_out(images, n_views, height, width)
    return stream, out, functools.partial(_device_view, stream=stream)


def _current_device_id() -> int:
    return getattr(cuda.get_current_device(), "id", 0)  # the simulator's device has no id


_opted_in: dict = {}  # (device id, argument types) -> dynamic shared bytes the function allows


def _allow_dynamic_shared(kernel, args, nbytes: int) -> None:
    """Lets ``kernel``, as compiled for ``args``, launch with ``nbytes`` of dynamic shared memory
    above the default 48 KiB (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, set once per device
    and argument types). numba-cuda has no public call for it (NVIDIA/numba-cuda#94): this sets it
    on the driver function of the kernel's compiled overload, the way numba-cuda sets the shared
    memory carveout. The simulator has no such limit."""
    if nbytes <= DEFAULT_SHARED_BYTES or cuda_simulated():
        return
    from numba.cuda.cudadrv.driver import binding, driver

    argtypes = tuple(kernel.typeof_pyval(arg) for arg in args)
    key = (_current_device_id(), argtypes)
    if _opted_in.get(key, 0) >= nbytes:
        return
    device = cuda.get_current_device()
    most = device.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    if nbytes + PARAMS_BYTES > most:
        raise ValueError(f"{LARGE_VIEWS_ENV}=shared-optin: a view needs {nbytes} B of shared memory, "
                         f"this GPU allows a block {most} B")
    function = kernel.compile(argtypes)._codelibrary.get_cufunc()
    attribute = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attribute, nbytes, function.handle, device.id)
    _opted_in[key] = nbytes


def apply_ops_device(images, op_ids, levels, rand, cutout_level, sources, flips, offsets, pad, out,
                     stream, n_views, height, width, semantics="corrected"):
    stream, out, place = _launch_setup(images, out, stream, n_views, height, width)
    tables = _device_tables(height, width, _current_device_id())
    forms = _device_forms(semantics, _current_device_id())
    args = apply_args(images, op_ids, levels, rand, forms, cutout_level, sources, flips, offsets, pad,
                      place(out), tables, place)
    launch = apply_launch(height, width)
    if launch.kernel == "apply_ops_kernel":
        _allow_dynamic_shared(apply_ops_kernel, args, launch.dynamic_shared_bytes)
        apply_ops_kernel[n_views, launch.threads_per_block, stream, launch.dynamic_shared_bytes](*args)
    else:
        # Numba's allocations, even for torch input: their release waits for the device, so the
        # scratch outlives the kernel whatever stream it runs on.
        blocks = min(n_views, GLOBAL_BLOCKS)
        scratch = cuda.device_array((blocks, 3 * height * width * 3), np.uint8, stream=stream)
        if launch.kernel == "apply_ops_kernel_tiled":
            apply_ops_kernel_tiled[blocks, launch.threads_per_block, stream, launch.dynamic_shared_bytes](
                *args, scratch)
        else:
            words = cuda.device_array((blocks, height + width + 2 * LUT_SIZE), np.int32, stream=stream)
            apply_ops_kernel_global[blocks, launch.threads_per_block, stream](*args, scratch, words)
    return out


def weak_augment_device(images, flips, offsets, sources, pad, out, stream, n_views, height, width):
    stream, out, place = _launch_setup(images, out, stream, n_views, height, width)
    total = n_views * height * width
    blocks = (total + WEAK_THREADS_PER_BLOCK - 1) // WEAK_THREADS_PER_BLOCK
    weak_augment_kernel[blocks, WEAK_THREADS_PER_BLOCK, stream](
        *weak_args(images, flips, offsets, sources, pad, place(out), place))
    return out
