"""Host side of the CUDA backend: device views of the inputs, device copies of the tables, launch."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import cuda

from .args import apply_args, weak_args
from .compile import cuda_simulated
from .cuda import LaunchTuning, TILE_BYTES, current_tuning, kernels, shared_bytes, tiled_shared_bytes
from .numba_internals import allow_dynamic_shared
from .pixel_math import LUT_SIZE, PARAMS_F, PARAMS_I
from .tables import kernel_tables, level_form_table

WEAK_THREADS_PER_BLOCK = 256
# Shared memory a block may use without opting in to more (every CUDA GPU since Kepler).
DEFAULT_SHARED_BYTES = 48 * 1024
# Views whose buffers need more take the design the launch tuning names (kernels/cuda.py); the
# simulator tests lower it to send small views there.
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


def apply_launch(height: int, width: int, design: str | None = None,
                 tuning: LaunchTuning | None = None) -> LaunchShape:
    """The kernel that applies the ops to height x width views, and how it is launched under
    ``tuning`` (default: the process's, kernels.cuda.current_tuning): a view in the shared memory of
    its block when it fits the default limit, else as ``design`` (default the tuning's large_views)
    says: in global memory, in global memory with filter tiles staged in shared memory, or in shared
    memory opted in up to SHARED_OPTIN_BYTES_LIMIT (global memory above that; for the tiled kernel,
    above sides that add up to about 10,400 pixels, where its words outgrow 48 KiB)."""
    tuning = tuning or current_tuning()
    if design is not None:
        tuning = LaunchTuning(tuning.threads_per_block, tuning.max_registers, design)
    design, threads = tuning.large_views, tuning.threads_per_block
    dynamic_shared = shared_bytes(height, width)
    if dynamic_shared <= SHARED_BYTES_LIMIT or (
            design == "shared-optin" and dynamic_shared + PARAMS_BYTES <= SHARED_OPTIN_BYTES_LIMIT):
        return LaunchShape("apply_ops_kernel", threads, dynamic_shared)
    words = tiled_shared_bytes(height, width)
    if design == "tiled" and words + TILED_STATIC_BYTES <= DEFAULT_SHARED_BYTES:
        return LaunchShape("apply_ops_kernel_tiled", threads, words)
    return LaunchShape("apply_ops_kernel_global", threads, 0)


def launch_shape(kernel: str, height: int, width: int, design: str | None = None) -> LaunchShape | None:
    """How ``kernel`` is launched for height x width views under ``design`` (default the process's
    tuning's); None when another kernel serves them."""
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


_ALIGN = 16  # bytes: every staged array starts at a multiple (the widest element is 8 bytes)


def _aligned(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN


class ViewArgStaging:
    """The small per-view arrays of a launch (op ids, levels, random numbers, sources, flips,
    offsets) from the host to the device without an allocation per launch: they are packed into a
    pinned host buffer, copied in one ``non_blocking`` copy on the launch's stream into one device
    buffer, and the buffers are reused launch after launch (grown, never shrunk). A Numba allocation
    per array and launch would synchronise the device at its deferred free, so the views of step
    t + 1 could not render while step t trains.

    Reuse is safe: the device buffer is rewritten by a copy queued on the same stream after the
    previous launch that reads it; the host buffers take turns (two of them), and one is rewritten
    only after the event recorded behind its last copy has completed, two launches back, so the host
    seldom waits. ``device`` is a torch device (on a CPU device, for tests, the buffers are plain
    memory and the copy is synchronous)."""

    HOST_BUFFERS = 2

    def __init__(self, device, stream=None):
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self.stream = stream  # a torch stream on CUDA; None on CPU
        self._cuda = self.device.type == "cuda"
        self._hosts: list = [None] * self.HOST_BUFFERS  # uint8 tensors, pinned on CUDA
        self._copied: list = [None] * self.HOST_BUFFERS  # the event behind each one's last copy
        self._turn = 0
        self.buffer = None  # the device buffer
        self._used = self._reserved = 0
        self.allocations = 0  # how many buffers were allocated (tests read it)
        self._scratch: dict = {}

    @property
    def host(self):
        return self._hosts[self._turn]

    def begin(self, nbytes: int) -> None:
        """Starts a launch whose staged arrays take at most ``nbytes`` (each aligned)."""
        self._turn = (self._turn + 1) % self.HOST_BUFFERS
        if self._copied[self._turn] is not None:
            self._copied[self._turn].synchronize()  # its last copy has read it
        if self.buffer is None or self.buffer.numel() < nbytes:
            capacity = max(nbytes, 2 * (0 if self.buffer is None else self.buffer.numel()), 4096)
            self.buffer = self._torch.empty(capacity, dtype=self._torch.uint8, device=self.device)
            self.allocations += 1
        if self.host is None or self.host.numel() < nbytes:
            self._hosts[self._turn] = self._torch.empty(self.buffer.numel(), dtype=self._torch.uint8,
                                                        pin_memory=self._cuda)
            self.allocations += 1
        self._used, self._reserved = 0, nbytes

    def place(self, array: np.ndarray):
        """Writes ``array`` into the host buffer; returns the device tensor it will hold after
        :meth:`finish` (same shape and dtype)."""
        array = np.ascontiguousarray(array)
        start, end = self._used, self._used + array.nbytes
        if end > self._reserved:
            raise ValueError(f"staging: {end} bytes placed, {self._reserved} reserved by begin()")
        self.host.numpy()[start:end] = array.reshape(-1).view(np.uint8)
        self._used = start + _aligned(array.nbytes)
        dtype = self._torch.from_numpy(np.empty(0, array.dtype)).dtype
        return self.buffer[start:end].view(dtype).view(array.shape)

    def finish(self) -> None:
        """Queues the one copy of everything placed since :meth:`begin`."""
        if not self._used:
            return
        if not self._cuda:
            self.buffer[:self._used].copy_(self.host[:self._used])
            return
        with self._torch.cuda.stream(self.stream):
            self.buffer[:self._used].copy_(self.host[:self._used], non_blocking=True)
            event = self._torch.cuda.Event()
            event.record(self.stream)
        self._copied[self._turn] = event

    def scratch(self, shape: tuple, dtype) -> object:
        """A device tensor of ``shape`` reused from launch to launch on this stream (the global and
        tiled kernels' per-block buffers)."""
        key = (tuple(shape), np.dtype(dtype).str)
        if key not in self._scratch:
            torch_dtype = self._torch.from_numpy(np.empty(0, dtype)).dtype
            self._scratch[key] = self._torch.empty(shape, dtype=torch_dtype, device=self.device)
            self.allocations += 1
        return self._scratch[key]


def staged_bytes(arrays) -> int:
    """What ViewArgStaging.begin must reserve for ``arrays`` (host arrays; others take nothing)."""
    return sum(_aligned(a.nbytes) for a in arrays if isinstance(a, np.ndarray))


_stagings: dict = {}  # (torch device index, stream handle) -> ViewArgStaging


def _staging_for(images, stream):
    """The staging of this device and stream, or None where torch cannot reach the device (the
    simulator; a machine whose torch has no CUDA): then each host array is copied by Numba."""
    if cuda_simulated():
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    device = images.device if _is_torch(images) else torch.device("cuda", _current_device_id())
    handle = int(stream)
    key = (device.index, handle)
    if key not in _stagings:
        torch_stream = torch.cuda.default_stream(device) if handle == 0 else torch.cuda.ExternalStream(
            handle, device=device)
        _stagings[key] = ViewArgStaging(device, torch_stream)
    return _stagings[key]


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


@functools.lru_cache(maxsize=16)
def _empty_device_array(shape, dtype, device_id):
    # The unused flips/offsets of a launch without a weak step: typed, empty, made once.
    del device_id
    return cuda.to_device(np.zeros(shape, dtype))


def _launch_setup(images, out, stream, n_views, height, width, host_arrays):
    """The stream, the output (allocated if not given), how a launch places each array it reads,
    and the staging of the small host arrays (None: Numba copies each). ``host_arrays``: the arrays
    the launch may stage, with the default sources it may add."""
    stream = _resolve_stream(stream, images)
    if out is None:
        out = _allocate_out(images, n_views, height, width)
    staging = _staging_for(images, stream)
    if staging is None:
        return stream, out, functools.partial(_device_view, stream=stream), None
    staging.begin(staged_bytes(host_arrays) + _aligned(4 * n_views))

    def place(array):
        if isinstance(array, np.ndarray) and array is not images:
            if array.size == 0:
                return _empty_device_array(array.shape, array.dtype.str, _current_device_id())
            return cuda.as_cuda_array(staging.place(array), sync=False)
        return _device_view(array, stream)

    return stream, out, place, staging


def _current_device_id() -> int:
    return getattr(cuda.get_current_device(), "id", 0)  # the simulator's device has no id


_opted_in: dict = {}  # (device id, argument types) -> dynamic shared bytes the function allows


def _allow_dynamic_shared(kernel, args, nbytes: int) -> None:
    """Lets ``kernel``, as compiled for ``args``, launch with ``nbytes`` of dynamic shared memory
    above the default 48 KiB (set once per device and argument types; numba_internals says how).
    The simulator has no such limit."""
    if nbytes <= DEFAULT_SHARED_BYTES or cuda_simulated():
        return
    argtypes = tuple(kernel.typeof_pyval(arg) for arg in args)
    key = (_current_device_id(), argtypes)
    if _opted_in.get(key, 0) >= nbytes:
        return
    device = cuda.get_current_device()
    most = device.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    if nbytes + PARAMS_BYTES > most:
        raise ValueError(f"large-view design shared-optin: a view needs {nbytes} B of shared memory, "
                         f"this GPU allows a block {most} B")
    allow_dynamic_shared(kernel, argtypes, nbytes, device)
    _opted_in[key] = nbytes


def apply_ops_device(images, op_ids, levels, rand, cutout_level, sources, flips, offsets, pad, out,
                     stream, n_views, height, width, semantics="corrected", tuning: LaunchTuning | None = None):
    """Launches the apply kernel ``tuning`` (default: the process's) compiles and picks."""
    tuning = tuning or current_tuning()
    stream, out, place, staging = _launch_setup(images, out, stream, n_views, height, width,
                                                (op_ids, levels, rand, sources, flips, offsets))
    tables = _device_tables(height, width, _current_device_id())
    forms = _device_forms(semantics, _current_device_id())
    args = apply_args(images, op_ids, levels, rand, forms, cutout_level, sources, flips, offsets, pad,
                      place(out), tables, place)
    if staging is not None:
        staging.finish()
    launch = apply_launch(height, width, tuning=tuning)
    kernel = kernels(tuning)[launch.kernel]
    if launch.kernel == "apply_ops_kernel":
        _allow_dynamic_shared(kernel, args, launch.dynamic_shared_bytes)
        kernel[n_views, launch.threads_per_block, stream, launch.dynamic_shared_bytes](*args)
        return out
    blocks = min(n_views, GLOBAL_BLOCKS)
    shapes = [((blocks, 3 * height * width * 3), np.uint8)]
    if launch.kernel == "apply_ops_kernel_global":
        shapes.append(((blocks, height + width + 2 * LUT_SIZE), np.int32))
    if staging is not None:
        # Reused from launch to launch: a launch on the same stream is ordered after the last one.
        scratch = [cuda.as_cuda_array(staging.scratch(shape, dtype), sync=False) for shape, dtype in shapes]
    else:
        # Numba's allocations: their release waits for the device, so they outlive the kernel.
        scratch = [cuda.device_array(shape, dtype, stream=stream) for shape, dtype in shapes]
    if launch.kernel == "apply_ops_kernel_tiled":
        kernel[blocks, launch.threads_per_block, stream, launch.dynamic_shared_bytes](*args, *scratch)
    else:
        kernel[blocks, launch.threads_per_block, stream](*args, *scratch)
    return out


def weak_augment_device(images, flips, offsets, sources, pad, out, stream, n_views, height, width):
    stream, out, place, staging = _launch_setup(images, out, stream, n_views, height, width,
                                                (flips, offsets, sources))
    total = n_views * height * width
    blocks = (total + WEAK_THREADS_PER_BLOCK - 1) // WEAK_THREADS_PER_BLOCK
    args = weak_args(images, flips, offsets, sources, pad, place(out), place)
    if staging is not None:
        staging.finish()
    kernels(current_tuning())["weak_augment_kernel"][blocks, WEAK_THREADS_PER_BLOCK, stream](*args)
    return out
