"""Host side of the CUDA backend: device views of the inputs, device copies of the tables, launch."""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .cuda import THREADS_PER_BLOCK, apply_ops_kernel, shared_bytes, weak_augment_kernel
from .tables import kernel_tables

WEAK_THREADS_PER_BLOCK = 256
# Dynamic shared memory a block may use without opting in to more (every CUDA GPU since Kepler).
SHARED_BYTES_LIMIT = 48 * 1024


def _is_torch(array) -> bool:
    return type(array).__module__.startswith("torch")


def _device_view(array, stream):
    """A Numba device array over ``array`` (no copy for CUDA arrays; host arrays are copied)."""
    if isinstance(array, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(array), stream=stream)
    if hasattr(array, "__cuda_array_interface__"):
        return cuda.as_cuda_array(array)
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
    tables = kernel_tables(height, width)
    return tuple(cuda.to_device(np.ascontiguousarray(t)) for t in (
        tables.rotations, tables.rescale_y.bounds, tables.rescale_y.coefs,
        tables.rescale_x.bounds, tables.rescale_x.coefs))


def _allocate_out(images, n_views, height, width):
    if _is_torch(images):
        import torch

        return torch.empty((n_views, height, width, 3), dtype=torch.uint8, device=images.device)
    return cuda.device_array((n_views, height, width, 3), np.uint8)


def _view_arrays(sources, flips, offsets, n_views, stream):
    if sources is None:
        sources = np.arange(n_views, dtype=np.int32)
    if flips is None:
        flips, offsets = np.zeros(0, np.int32), np.zeros((0, 2), np.int32)
    return tuple(_device_view(a, stream) for a in (sources, flips, offsets))


def _launch_arrays(images, sources, flips, offsets, out, stream, n_views, height, width):
    """The stream, the output (allocated if not given) and device views of every array a launch reads."""
    stream = _resolve_stream(stream, images)
    if out is None:
        out = _allocate_out(images, n_views, height, width)
    views = _view_arrays(sources, flips, offsets, n_views, stream)
    return (stream, out, _device_view(images, stream), _device_view(out, stream), *views)


def _current_device_id() -> int:
    return getattr(cuda.get_current_device(), "id", 0)  # the simulator's device has no id


def apply_ops_device(images, op_ids, levels, rand, cutout, sources, flips, offsets, pad, out,
                     stream, n_views, height, width):
    if shared_bytes(height, width) > SHARED_BYTES_LIMIT:
        from .api import AugmentInputError

        raise AugmentInputError(
            f"apply_ops: {height}x{width} views need {shared_bytes(height, width)} bytes of shared "
            f"memory per block on CUDA, more than {SHARED_BYTES_LIMIT}; use the CPU backend")
    stream, out, d_images, d_out, d_sources, d_flips, d_offsets = _launch_arrays(
        images, sources, flips, offsets, out, stream, n_views, height, width)
    rotations, bounds_y, coef_y, bounds_x, coef_x = _device_tables(height, width, _current_device_id())
    apply_ops_kernel[n_views, THREADS_PER_BLOCK, stream, shared_bytes(height, width)](
        d_images.reshape(d_images.shape[0], height * width * 3), d_sources, d_flips, d_offsets,
        np.int32(pad), _device_view(op_ids, stream), _device_view(levels, stream),
        _device_view(rand, stream), np.float64(cutout), np.int32(height), np.int32(width),
        d_out.reshape(n_views, height * width * 3), rotations, bounds_y, coef_y, bounds_x, coef_x)
    return out


def weak_augment_device(images, flips, offsets, sources, pad, out, stream, n_views, height, width):
    stream, out, d_images, d_out, d_sources, d_flips, d_offsets = _launch_arrays(
        images, sources, flips, offsets, out, stream, n_views, height, width)
    total = n_views * height * width
    blocks = (total + WEAK_THREADS_PER_BLOCK - 1) // WEAK_THREADS_PER_BLOCK
    weak_augment_kernel[blocks, WEAK_THREADS_PER_BLOCK, stream](
        d_images.reshape(d_images.shape[0], height * width * 3), d_sources, d_flips, d_offsets,
        np.int32(pad), np.int32(height), np.int32(width), d_out.reshape(n_views, height * width * 3))
    return out
