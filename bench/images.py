"""Benchmark inputs: the images every backend augments and the policies (op ids, levels, random
numbers) every backend applies to them.

Images are real CIFAR-10 by default: the first images of the train split of the shared
``cifar10-jpg.tar.gz`` in archive order, decoded with PIL. Without that archive a seeded synthetic set
(smooth colour gradients, soft blobs and noise, so that histogram ops and filters see image-like
statistics) stands in, and the report says so. Policies are drawn from a seeded NumPy Generator, one
per (workload, seed), so every backend of a run sees identical inputs.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# <repo>/../shared/data/cifar10-jpg.tar.gz: the shared data sits beside the repository checkout.
DEFAULT_ARCHIVE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT = "train"
SYNTHETIC_SIZE = 32


class ImageInputError(ValueError):
    """The images named on the command line cannot be read as a benchmark batch."""


@dataclass(frozen=True)
class ImageSet:
    pixels: np.ndarray  # (B, H, W, 3) uint8, C-contiguous
    kind: str  # "cifar10-jpg" (an archive), "directory" or "synthetic"
    source: str  # the archive's or directory's name (no full path: reports are shared), or the seed

    def describe(self) -> dict:
        count, height, width, _ = self.pixels.shape
        return {"images": self.kind, "source": self.source, "count": count, "height": height, "width": width}

    def tiled(self, count: int) -> np.ndarray:
        """``count`` images: this set repeated, for batches larger than the set (GPU sizes)."""
        reps = -(-count // len(self.pixels))
        return np.ascontiguousarray(np.tile(self.pixels, (reps, 1, 1, 1))[:count])


def load_images(count: int, path: str | Path | None = None, seed: int = 0) -> ImageSet:
    """The benchmark batch: ``path`` (an archive or a directory) if given, else the shared CIFAR-10
    archive if present, else the synthetic set."""
    if path is None:
        if DEFAULT_ARCHIVE.is_file():
            return read_archive(DEFAULT_ARCHIVE, count)
        return synthetic_images(count, seed)
    path = Path(path)
    if path.is_dir():
        return read_directory(path, count)
    if path.is_file():
        return read_archive(path, count)
    raise ImageInputError(f"--images {path}: no such file or directory")


def _in_split(member_path: str) -> bool:
    return SPLIT in Path(member_path).parts[:-1]


def read_archive(path: Path, count: int) -> ImageSet:
    """The first ``count`` images under a ``train`` directory of a tar archive, in archive order."""
    decoded = []
    try:
        # Streaming mode reads members in order without building the full index of 60k members.
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if not (member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES) and _in_split(member.name)):
                    continue
                decoded.append(_decode(archive.extractfile(member).read(), f"{path.name}:{member.name}"))
                if len(decoded) == count:
                    break
    except tarfile.TarError as error:
        raise ImageInputError(f"--images {path}: not a readable tar archive ({error})") from error
    if len(decoded) < count:
        raise ImageInputError(f"--images {path}: {len(decoded)} images under a '{SPLIT}/' directory, need {count}")
    kind = "cifar10-jpg" if path.name.startswith("cifar10") else "archive"
    return ImageSet(_stack(decoded, path.name), kind, path.name)


def read_directory(path: Path, count: int) -> ImageSet:
    """The first ``count`` images of a directory tree in sorted path order (its ``train/`` subtree
    when it has one, so a directory unpacked from the archive gives the same split)."""
    root = path / SPLIT if (path / SPLIT).is_dir() else path
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if len(files) < count:
        raise ImageInputError(f"--images {path}: {len(files)} image files, need {count}")
    decoded = [_decode(p.read_bytes(), str(p)) for p in files[:count]]
    return ImageSet(_stack(decoded, path.name), "directory", path.name)


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ImageInputError(f"--images: cannot decode {name} ({error})") from error


def _stack(decoded: list[np.ndarray], name: str) -> np.ndarray:
    shapes = {image.shape for image in decoded}
    if len(shapes) != 1:
        raise ImageInputError(f"--images {name}: images differ in size {sorted(shapes)}; a batch needs one size")
    return np.ascontiguousarray(np.stack(decoded))


def synthetic_images(count: int, seed: int = 0, size: int = SYNTHETIC_SIZE) -> ImageSet:
    rng = np.random.default_rng([seed, 0x1A6E])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    images = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        # A two-colour gradient along a random direction ...
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * x + np.sin(angle) * y
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = a * (1 - t[..., None]) + b * t[..., None]
        # ... a few soft blobs as "objects" ...
        for _ in range(rng.integers(1, 4)):
            cy, cx, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.3)
            weight = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))[..., None]
            image = image * (1 - weight) + rng.uniform(0, 255, 3) * weight
        # ... and sensor-like noise, so no two pixels are exactly equal by construction.
        image += rng.normal(0, 6, image.shape)
        images[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return ImageSet(images, "synthetic", f"seed {seed}")


@dataclass(frozen=True)
class Policies:
    """Per-view arguments of ``apply_ops``; view ``n`` augments image ``sources[n]``."""

    op_ids: np.ndarray  # (N, depth) int32
    levels: np.ndarray  # (N, depth, 2) float32 in [0, 1)
    rand: np.ndarray  # (N, depth + 1, 2) float32 in [0, 1)
    sources: np.ndarray  # (N,) int32

    @property
    def views(self) -> int:
        return len(self.op_ids)

    @property
    def depth(self) -> int:
        return self.op_ids.shape[1]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.op_ids, self.levels, self.rand, self.sources

    def image_range(self, start: int, stop: int, k: int) -> Policies:
        """The views of images [start, stop) with sources renumbered from 0 (a worker's chunk)."""
        views = slice(start * k, stop * k)
        return Policies(self.op_ids[views], self.levels[views], self.rand[views], self.sources[views] - np.int32(start))


def _view_sources(images: int, k: int) -> np.ndarray:
    # Image-major: the K views of one image are adjacent, so a chunk of images is a slice of views.
    return np.repeat(np.arange(images, dtype=np.int32), k)


def random_policies(images: int, k: int, depth: int, seed: int) -> Policies:
    """K strong views per image: each of ``depth`` ops uniform over all ops (identity included),
    every level and random number uniform in [0, 1)."""
    from remixmatch.kernels.ops import NUM_OPS

    rng = np.random.default_rng([seed, images, k, depth])
    n = images * k
    return Policies(
        rng.integers(0, NUM_OPS, (n, depth), dtype=np.int32),
        rng.random((n, depth, 2), dtype=np.float32),
        rng.random((n, depth + 1, 2), dtype=np.float32),
        _view_sources(images, k),
    )


def single_op_policies(images: int, k: int, op_id: int, seed: int) -> Policies:
    """K views per image that all apply one op once (depth 1) at uniform levels: that op's cost."""
    rng = np.random.default_rng([seed, images, k, 1, 1000 + op_id])
    n = images * k
    return Policies(
        np.full((n, 1), op_id, np.int32),
        rng.random((n, 1, 2), dtype=np.float32),
        rng.random((n, 2, 2), dtype=np.float32),
        _view_sources(images, k),
    )
