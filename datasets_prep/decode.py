"""Decoding image files into uint8 arrays, in a process pool, in order.

The main process reads file bytes (from disk or a tar stream) and hands chunks to worker
processes; results come back in submission order, with at most a few chunks in flight so memory
stays bounded whatever the size of the tree. Workers report bad input as a message, which the
main process raises as a PrepError naming the file.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import PrepError

# PIL resampling filters by the names the CLI accepts.
FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
ENCODED_FORMATS = {"PNG": "png", "JPEG": "jpeg"}  # PIL format name -> manifest encoding
CHUNK_IMAGES = 512
CHUNK_BYTES = 16 << 20
# Below this many images a pool costs more (worker start-up) than it saves.
POOL_MIN_IMAGES = 4096


@dataclass(frozen=True)
class DecodeSpec:
    """What every image of a prep must become."""

    mode: str = "RGB"  # PIL mode of the stored pixels: "RGB" (C=3) or "L" (C=1)
    size: tuple[int, int] | None = None  # (width, height) to resize to, or None
    resample: str = "bicubic"  # filter name for resizing
    expect: tuple[int, int] | None = None  # required (width, height) when not resizing
    expect_from: str = ""  # the file that fixed `expect`, for the mixed-size message
    expect_reason: str = ""  # e.g. "CIFAR-10 images are 32x32"
    keep_encoded: bool = False  # only check the files (PNG/JPEG), do not decode to pixels

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3


@dataclass
class ChunkResult:
    pixels: np.ndarray | None = None  # (k, H, W, C) uint8
    formats: list[str] | None = None  # manifest encodings, when keeping the encoded bytes
    error: str | None = None


def image_size(blob: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the header alone; raises ValueError naming the file if it is no image."""
    try:
        with Image.open(io.BytesIO(blob)) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(f"{name}: not a readable image ({_reason(e)})") from None


def decode_chunk(spec: DecodeSpec, names: list[str], blobs: list[bytes]) -> ChunkResult:
    """Decode (or, with keep_encoded, check) one chunk; never raises for bad input, reports it instead."""
    formats: list[str] = []
    out: np.ndarray | None = None
    for i, (name, blob) in enumerate(zip(names, blobs)):
        try:
            im = Image.open(io.BytesIO(blob))
            if spec.keep_encoded:
                fmt = ENCODED_FORMATS.get(im.format or "")
                if fmt is None:
                    return ChunkResult(error=f"{name}: {im.format} image; --encoded keeps only PNG and JPEG files")
                im.verify()
                formats.append(fmt)
                continue
            if spec.size is None and spec.expect is not None and im.size != spec.expect:
                w, h = im.size
                if spec.expect_reason:
                    return ChunkResult(error=f"{name} is {w}x{h}; {spec.expect_reason}")
                ew, eh = spec.expect
                return ChunkResult(
                    error=f"mixed image sizes: {spec.expect_from} is {ew}x{eh}, {name} is {w}x{h} "
                    "(use --size S to resize)"
                )
            if im.mode != spec.mode:
                im = im.convert(spec.mode)
            if spec.size is not None and im.size != spec.size:
                im = im.resize(spec.size, resample=FILTERS[spec.resample])
            arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            return ChunkResult(error=f"{name}: not a readable image ({_reason(e)})")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if out is None:
            out = np.empty((len(blobs), *arr.shape), dtype=np.uint8)
        out[i] = arr
    if spec.keep_encoded:
        return ChunkResult(formats=formats)
    return ChunkResult(pixels=out)


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    func: Callable[[T], R], items: Iterable[T], workers: int, in_flight_per_worker: int = 3
) -> Iterator[tuple[T, R]]:
    """Yield (item, func(item)) in input order, computed by `workers` processes (inline if workers <= 1).

    Unlike Pool.imap this does not drain `items` ahead of the consumer: at most
    workers * in_flight_per_worker items are pending, so reading a large archive stays streaming.
    `func` must be picklable (a module-level function or a functools.partial of one).
    """
    if workers <= 1:
        for item in items:
            yield item, func(item)
        return
    # spawn: workers must not inherit the parent's threads (rich's refresh thread) or locks.
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    window: deque[tuple[T, Future]] = deque()
    try:
        for item in items:
            window.append((item, executor.submit(func, item)))
            if len(window) >= workers * in_flight_per_worker:
                head, future = window.popleft()
                yield head, _result(future)
        while window:
            head, future = window.popleft()
            yield head, _result(future)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _result(future: Future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise PrepError(
            "a decoding worker process died (out of memory? or a script without an "
            "`if __name__ == '__main__':` guard); try --workers 1"
        ) from None
