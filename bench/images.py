"""Benchmark inputs: the images every backend augments.

Where they come from, first match wins: ``--images`` (a tar archive or a directory of PNG/JPEG
files: the first images of its ``train/`` part), else a shard directory (``--shards DIR``, else
``$REMIXMATCH_SHARDS``: the first rows of its train split), else a seeded synthetic set (smooth
colour gradients, soft blobs and noise, so that histogram ops and filters see image-like
statistics). The report names which.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remixmatch.common.paths import SHARDS_ENV, DataPath, resolve_path

from .errors import BenchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT = "train"
SYNTHETIC_SIZE = 32


class ImageInputError(BenchError):
    """The images named on the command line cannot be read as a benchmark batch."""


@dataclass(frozen=True)
class ImageSet:
    pixels: np.ndarray  # (B, H, W, 3) uint8, C-contiguous
    kind: str  # "shards", "cifar10-jpg" / "archive", "directory" or "synthetic"
    source: str  # the dataset's or file's name (no full path: reports are shared), or the seed

    def describe(self) -> dict:
        count, height, width, _ = self.pixels.shape
        return {"images": self.kind, "source": self.source, "count": count, "height": height, "width": width}

    def tiled(self, count: int) -> np.ndarray:
        """``count`` images: this set repeated, for batches larger than the set (GPU sizes)."""
        reps = -(-count // len(self.pixels))
        return np.ascontiguousarray(np.tile(self.pixels, (reps, 1, 1, 1))[:count])


def load_images(count: int, *, images: str | Path | None = None, shards: str | Path | None = None,
                seed: int = 0, size: int | None = None) -> ImageSet:
    """The benchmark batch: ``images`` (an archive or a directory) if given, else the shard
    directory of ``shards`` or ``$REMIXMATCH_SHARDS``, else the synthetic set (``size`` x ``size``,
    default 32). A ``size`` that read images do not have is refused."""
    if images is not None:
        path = Path(images)
        if path.is_dir():
            return _of_size(read_directory(path, count), size, f"--images {path}")
        if path.is_file():
            return _of_size(read_archive(path, count), size, f"--images {path}")
        raise ImageInputError(f"--images {path}: no such file or directory")
    source = resolve_path(shards, "--shards", SHARDS_ENV)
    if source is not None:
        return _of_size(read_shards(source, count), size, f"shards {source}")
    return synthetic_images(count, seed, size or SYNTHETIC_SIZE)


def _of_size(image_set: ImageSet, size: int | None, where: str) -> ImageSet:
    height, width = image_set.pixels.shape[1:3]
    if size is not None and (height, width) != (size, size):
        raise ImageInputError(f"{where}: images are {width}x{height}, not the --size {size}x{size} asked for")
    return image_set


def open_split(source: DataPath, split: str = SPLIT):
    """The ``split`` of a shard directory, checked to hold RGB images of one size (the datasets
    code is imported here, so that the benchmarks import without pyarrow)."""
    from remixmatch.datasets_prep import PrepError, open_shards

    try:
        rows = open_shards(source.path)[split]
    except PrepError as error:
        raise ImageInputError(f"{source.origin}: {error}") from None
    if rows.image_shape is None:
        raise ImageInputError(f"{source}: images of mixed sizes; a batch needs one size (prep-folder --size S)")
    if rows.image_shape[2] != 3:
        raise ImageInputError(f"{source}: {rows.image_shape[2]}-channel images; the kernels take RGB")
    return rows


def read_shards(source: DataPath, count: int) -> ImageSet:
    """The first ``count`` rows of the train split, in row order."""
    rows = open_split(source)
    if len(rows) < count:
        raise ImageInputError(f"{source}: {len(rows)} {SPLIT} rows, need {count}")
    dataset = rows.shardset.dataset
    return ImageSet(np.ascontiguousarray(rows.images(np.arange(count))), "shards", f"{dataset} ({source.path.name})")


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
