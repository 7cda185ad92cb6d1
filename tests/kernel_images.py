"""Test images for the kernel tests: real CIFAR-10 photos plus synthetic edge cases, grouped by size.

The CIFAR-10 images are the first two JPEGs of each class directory, in archive order, from
``shared/data/cifar10-jpg.tar.gz`` next to the repository (decoded with PIL to RGB uint8). When the
archive is absent the groups hold only the synthetic images and :func:`cifar_images` returns None,
so tests that need real photos can skip cleanly.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

def _find_archive() -> Path:
    # REMIXMATCH_CIFAR10_JPG names it anywhere (e.g. a copy carried to a GPU machine, where the
    # shared folder beside the checkout does not travel); by default it sits beside the checkout.
    named = os.environ.get("REMIXMATCH_CIFAR10_JPG")
    if named:
        return Path(named)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg.tar.gz"


CIFAR_ARCHIVE = _find_archive()
PER_CLASS = 2
CLASSES = 10


@dataclass(frozen=True)
class ImageGroup:
    """Images of one size, stacked (B, H, W, 3) uint8, with one label per image for messages."""

    name: str
    labels: tuple[str, ...]
    images: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]


@lru_cache(maxsize=1)
def cifar_images() -> tuple[tuple[str, ...], np.ndarray] | None:
    """(labels, images (20, 32, 32, 3) uint8) from the archive, or None when it is not there."""
    if not CIFAR_ARCHIVE.is_file():
        return None
    labels: list[str] = []
    images: list[np.ndarray] = []
    per_dir: dict[str, int] = {}
    with tarfile.open(CIFAR_ARCHIVE, "r:gz") as archive:
        for member in archive:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            directory = member.name.rsplit("/", 1)[0]
            if per_dir.get(directory, 0) >= PER_CLASS:
                continue
            per_dir[directory] = per_dir.get(directory, 0) + 1
            data = archive.extractfile(member).read()
            with Image.open(io.BytesIO(data)) as im:
                images.append(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())
            labels.append(member.name.split("/", 1)[-1])
            if len(images) >= PER_CLASS * CLASSES:
                break
    if not images:
        return None
    stacked = np.stack(images)
    stacked.setflags(write=False)
    return tuple(labels), stacked


def _ramp(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    r = x * 255 // max(width - 1, 1)
    g = y * 255 // max(height - 1, 1)
    b = (x + y) * 255 // max(width + height - 2, 1)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _checker(height: int, width: int, cell: int = 1) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    board = (((y // cell) + (x // cell)) % 2 * 255).astype(np.uint8)
    return np.repeat(board[..., None], 3, axis=-1)


def _synthetic(height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3)
    red = np.zeros(shape, np.uint8)
    red[..., 0] = rng.integers(0, 256, (height, width), dtype=np.uint8)
    colour_checker = _checker(height, width).copy()
    colour_checker[..., 1] = 255 - colour_checker[..., 1]
    two_level = np.where(rng.random(shape) < 0.5, 10, 200).astype(np.uint8)
    narrow = rng.integers(100, 104, shape, dtype=np.uint8)
    one_pixel = np.full(shape, 50, np.uint8)
    one_pixel[0, 0] = (200, 0, 255)
    return {
        "zeros": np.zeros(shape, np.uint8),
        "full255": np.full(shape, 255, np.uint8),
        "const77": np.full(shape, 77, np.uint8),
        "red_only": red,
        "checker": _checker(height, width),
        "checker_rgb": colour_checker,
        "checker4": _checker(height, width, 4),
        "noise": rng.integers(0, 256, shape, dtype=np.uint8),
        "ramp": _ramp(height, width),
        "two_level": two_level,
        "narrow_range": narrow,
        "one_pixel": one_pixel,
    }


def _group(name: str, images: dict[str, np.ndarray]) -> ImageGroup:
    stacked = np.ascontiguousarray(np.stack(list(images.values())))
    stacked.setflags(write=False)
    return ImageGroup(name, tuple(images), stacked)


@lru_cache(maxsize=1)
def image_groups() -> tuple[ImageGroup, ...]:
    """Every test image, one group per size: 32x32 (CIFAR + edge cases), non-square, 96x96, tiny."""
    cifar = cifar_images()
    main: dict[str, np.ndarray] = {}
    if cifar is not None:
        main.update(zip(cifar[0], cifar[1]))
    main.update(_synthetic(32, 32, 0))

    # Non-square images with natural content where the archive is there: two photos side by side.
    wide = _synthetic(24, 40, 1)
    tall = _synthetic(37, 29, 2)
    if cifar is not None:
        photos = cifar[1]
        wide["photo_pair"] = np.concatenate([photos[0][:24], photos[3][:24, :8]], axis=1)
        tall["photo_stack"] = np.concatenate([photos[5][:, :29], photos[8][:5, 3:]], axis=0)
    wide_keys = ("photo_pair", "noise", "ramp", "checker_rgb", "red_only", "two_level")
    tall_keys = ("photo_stack", "noise", "ramp", "checker", "narrow_range", "one_pixel")
    wide = {k: wide[k] for k in wide_keys if k in wide}
    tall = {k: tall[k] for k in tall_keys if k in tall}

    # A larger image (STL-10's size): longer fixed-point walks, wider rotations and resamplings.
    large = _synthetic(96, 96, 3)
    if cifar is not None:
        upscaled = Image.fromarray(cifar[1][12]).resize((96, 96), Image.Resampling.BICUBIC)
        large["photo_x3"] = np.asarray(upscaled, dtype=np.uint8)
    large = {k: large[k] for k in ("photo_x3", "noise", "ramp", "checker4") if k in large}

    groups = [_group("32x32", main), _group("24x40", wide), _group("37x29", tall), _group("96x96", large)]
    # Tiny images exercise the filters' border rules: 3x3 SMOOTH needs 3x3, 5x5 BLUR needs 5x5.
    for height, width in ((5, 5), (4, 4), (3, 3), (2, 2)):
        small = _synthetic(height, width, 10 + height)
        groups.append(_group(f"{height}x{width}", {k: small[k] for k in ("noise", "ramp", "checker", "const77")}))
    return tuple(groups)


def group(name: str) -> ImageGroup:
    for g in image_groups():
        if g.name == name:
            return g
    raise KeyError(name)
