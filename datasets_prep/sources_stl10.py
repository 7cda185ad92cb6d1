"""prep-stl10: the official binary archive (downloaded or local, MD5 checked) or its extracted folder.

``stl10_binary/`` holds ``train_X.bin`` (5,000 images), ``test_X.bin`` (8,000) and
``unlabeled_X.bin`` (100,000): each image is 3 channel planes of 96x96 bytes, every plane in
column-major order (all of column 0 top to bottom, then column 1...). ``train_y.bin`` and
``test_y.bin`` hold one byte per image, labels 1..10 (stored as 0..9; unlabeled rows get -1).
``class_names.txt`` has one name a line; ``fold_indices.txt`` 10 lines of zero-based train rows
(1,000 each), the official labeled folds, kept in the manifest.

Streamed: images are read in blocks (never a whole .bin file in memory; unlabeled_X.bin is
2.8 GB). An archive is read twice: a first pass takes the MD5 and the small members (labels,
names, folds) and checks everything, so the second pass, which writes the shards, reads images
whose labels are already known whatever the member order.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator

import numpy as np

from .download import download, download_dir, is_url
from .errors import PrepError
from .format import DEFAULT_SHARD_ROWS, DatasetBuilder, DatasetInfo, check_output_dir
from .imagetree import TAR_ERRORS, open_tar_stream
from .official import official_archive
from .progress import Bars, progress_bars

STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
STL10_MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
BINARY_DIR = "stl10_binary"
SIDE = 96
IMAGE_SHAPE = (SIDE, SIDE, 3)
IMAGE_BYTES = SIDE * SIDE * 3
NUM_CLASSES = 10
NUM_FOLDS = 10
SPLITS = ("train", "test", "unlabeled")
LABEL_FILES = {"train": "train_y.bin", "test": "test_y.bin"}  # the unlabeled split has none
CLASS_NAMES_FILE = "class_names.txt"
FOLDS_FILE = "fold_indices.txt"
SMALL_FILES = (*LABEL_FILES.values(), CLASS_NAMES_FILE, FOLDS_FILE)
BLOCK_IMAGES = 1024  # 28 MB of pixels per read


def image_file(split: str) -> str:
    return f"{split}_X.bin"


def planes_to_hwc(block: np.ndarray) -> np.ndarray:
    """(k, 27648) uint8 rows of column-major channel planes -> (k, 96, 96, 3) HWC, as a strided view.

    Byte c * 9216 + x * 96 + y of a row is channel c of the pixel at row y, column x.
    """
    return block.reshape(len(block), 3, SIDE, SIDE).transpose(0, 3, 2, 1)


def hwc_to_planes(images: np.ndarray) -> np.ndarray:
    """The inverse of planes_to_hwc: (k, 96, 96, 3) -> (k, 27648) bytes in the files' layout."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).reshape(len(images), IMAGE_BYTES)


def prep_stl10(
    source: str | None,
    out: Path,
    *,
    encoded: bool = False,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    expected_md5: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Shard STL-10 into `out` (splits train, test, unlabeled); returns the manifest.

    `source` None downloads the official archive. `encoded` stores PNG bytes instead of raw
    pixels. `expected_md5` replaces the official MD5 (`--md5`: a mirror or a re-packed copy); a local
    archive is checked too, an extracted folder is not.
    """
    check_output_dir(out, overwrite)
    source = source or STL10_URL
    md5 = expected_md5 or STL10_MD5
    with progress_bars(progress) as bars:
        if is_url(source):
            with download_dir(out) as tmp:
                archive = download(source, tmp, md5, bars)
                reader = _ArchiveSource(archive, None)  # checked as it arrived
                return _write(reader, out, f"{source} (official binary archive)", encoded, overwrite, shard_rows, bars)
        path = Path(source)
        if not path.exists():
            raise PrepError(f"source {path} does not exist")
        if path.is_dir():
            reader = _FolderSource(path / BINARY_DIR if (path / BINARY_DIR).is_dir() else path)
            return _write(reader, out, f"{source} (extracted {BINARY_DIR}/)", encoded, overwrite, shard_rows, bars)
        reader = _ArchiveSource(path, md5)
        return _write(reader, out, f"{source} (official binary archive)", encoded, overwrite, shard_rows, bars)


# -- the two kinds of source: what both give is the small files, the image files' sizes, and a pass
#    over the image files in some order ---------------------------------------------------------


class _FolderSource:
    def __init__(self, folder: Path):
        self.folder = folder

    def where(self, name: str) -> str:
        return str(self.folder / name)

    def index(self, bars: Bars) -> tuple[dict[str, bytes], dict[str, int]]:
        small, sizes = {}, {}
        for name in SMALL_FILES:
            if (self.folder / name).is_file():
                small[name] = (self.folder / name).read_bytes()
        for split in SPLITS:
            if (self.folder / image_file(split)).is_file():
                sizes[image_file(split)] = (self.folder / image_file(split)).stat().st_size
        return small, sizes

    def image_files(self, bars: Bars) -> Iterator[tuple[str, BinaryIO]]:
        for split in SPLITS:
            with open(self.folder / image_file(split), "rb") as f:
                yield image_file(split), f


class _ArchiveSource:
    def __init__(self, path: Path, md5: str | None):
        self.path = path
        self.md5 = md5

    def where(self, name: str) -> str:
        return f"{self.path}:{BINARY_DIR}/{name}"

    def _name(self, member) -> str | None:
        name = PurePosixPath(member.name)
        return name.name if member.isfile() and name.parent.name == BINARY_DIR else None

    def index(self, bars: Bars) -> tuple[dict[str, bytes], dict[str, int]]:
        image_names = {image_file(s) for s in SPLITS}
        small, sizes = {}, {}
        with official_archive(self.path, self.md5, "stl10_binary.tar.gz", bars) as tf:
            for member in tf:
                name = self._name(member)
                if name in SMALL_FILES:
                    small[name] = tf.extractfile(member).read()
                elif name in image_names:
                    sizes[name] = member.size  # its data is skipped (decompressed, hashed, not kept)
        return small, sizes

    def image_files(self, bars: Bars) -> Iterator[tuple[str, BinaryIO]]:
        image_names = {image_file(s) for s in SPLITS}
        try:
            with open_tar_stream(self.path) as tf:
                for member in tf:
                    name = self._name(member)
                    if name in image_names:
                        yield name, tf.extractfile(member)
        except TAR_ERRORS as e:
            raise PrepError(f"{self.path}: corrupt or truncated archive ({e})") from None


# -- checks of the small files -------------------------------------------------------------------


def _labels(blob: bytes, where: str, rows: int, images_where: str) -> np.ndarray:
    y = np.frombuffer(blob, np.uint8)
    if len(y) != rows:
        raise PrepError(f"{where}: {len(y)} labels for {rows} images in {images_where} (truncated?)")
    bad = np.flatnonzero((y < 1) | (y > NUM_CLASSES))
    if bad.size:
        raise PrepError(f"{where}: label {int(y[bad[0]])} out of range 1..{NUM_CLASSES} at row {int(bad[0])}")
    return (y.astype(np.int16) - 1)


def _class_names(blob: bytes, where: str) -> tuple[str, ...]:
    try:
        names = tuple(line.strip() for line in blob.decode().splitlines() if line.strip())
    except UnicodeDecodeError:
        raise PrepError(f"{where}: not a text file of class names") from None
    if len(names) != NUM_CLASSES or len(set(names)) != NUM_CLASSES:
        raise PrepError(f"{where}: {len(names)} ({len(set(names))} distinct) class names, expected {NUM_CLASSES}")
    return names


def parse_folds(blob: bytes, where: str, train_rows: int) -> tuple[tuple[int, ...], ...]:
    """The official folds: one line each of zero-based train rows, none repeated within a line."""
    try:
        lines = [line for line in blob.decode().splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise PrepError(f"{where}: not a text file of fold indices") from None
    if len(lines) != NUM_FOLDS:
        raise PrepError(f"{where}: {len(lines)} folds, expected {NUM_FOLDS} lines of train indices")
    folds = []
    for number, line in enumerate(lines, 1):
        try:
            rows = [int(t) for t in line.split()]
        except ValueError:
            raise PrepError(f"{where} line {number}: not a list of integers") from None
        bad = [r for r in rows if not 0 <= r < train_rows]
        if bad:
            raise PrepError(f"{where} line {number}: index {bad[0]} out of range 0..{train_rows - 1}")
        seen = set()
        for r in rows:
            if r in seen:
                raise PrepError(f"{where} line {number}: index {r} repeated")
            seen.add(r)
        folds.append(tuple(rows))
    return tuple(folds)


class _Checked:
    """Everything the second pass needs, from a first pass that found nothing wrong."""

    def __init__(self, source, small: dict[str, bytes], sizes: dict[str, int]):
        missing = [n for n in (*(image_file(s) for s in SPLITS), *SMALL_FILES) if n not in small and n not in sizes]
        if missing:
            where = source.path if isinstance(source, _ArchiveSource) else source.folder
            raise PrepError(f"{where}: lacks {', '.join(f'{BINARY_DIR}/{m}' for m in missing)}")
        self.rows = {}
        for split in SPLITS:
            name = image_file(split)
            size = sizes[name]
            if size % IMAGE_BYTES or size == 0:
                raise PrepError(
                    f"{source.where(name)}: {size} bytes is not a whole number of 96x96x3 images "
                    f"({IMAGE_BYTES} bytes each; truncated?)"
                )
            self.rows[split] = size // IMAGE_BYTES
        self.labels = {split: _labels(small[f], source.where(f), self.rows[split], image_file(split))
                       for split, f in LABEL_FILES.items()}
        self.labels["unlabeled"] = np.full(self.rows["unlabeled"], -1, np.int16)
        self.class_names = _class_names(small[CLASS_NAMES_FILE], source.where(CLASS_NAMES_FILE))
        self.folds = parse_folds(small[FOLDS_FILE], source.where(FOLDS_FILE), self.rows["train"])


# -- writing ---------------------------------------------------------------------------------------


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _png_encoder() -> Callable[[np.ndarray], bytes]:
    from PIL import Image

    def encode(image: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "PNG")
        return buf.getvalue()

    return encode


def _write(source, out: Path, desc: str, encoded: bool, overwrite: bool, shard_rows: int, bars: Bars) -> dict:
    checked = _Checked(source, *source.index(bars))
    info = DatasetInfo("stl10", checked.class_names, IMAGE_SHAPE, "png" if encoded else "raw", desc,
                       folds=checked.folds, folds_split="train")
    encode = _png_encoder() if encoded else None
    with DatasetBuilder(out, info, overwrite=overwrite, shard_rows=shard_rows) as builder:
        # One split at a time, in the source's member order: one shard buffer in memory.
        for name, f in source.image_files(bars):
            split = name.removesuffix("_X.bin")
            rows, labels = checked.rows[split], checked.labels[split]
            writer = builder.split(split)
            advance = bars.task(f"stl10 {split}", rows)
            done = 0
            while done < rows:
                k = min(BLOCK_IMAGES, rows - done)
                blob = _read_exact(f, k * IMAGE_BYTES)
                if len(blob) != k * IMAGE_BYTES:
                    raise PrepError(f"{source.where(name)}: ends after {done * IMAGE_BYTES + len(blob)} bytes "
                                    f"of {rows * IMAGE_BYTES} (changed while read?)")
                images = planes_to_hwc(np.frombuffer(blob, np.uint8).reshape(k, IMAGE_BYTES))
                if encode is not None:
                    images = [encode(np.ascontiguousarray(image)) for image in images]
                writer.write(labels[done:done + k], images, [f"{name}:{i}" for i in range(done, done + k)])
                done += k
                advance(k)
            builder.close_split(split)
        return builder.commit()

