"""prep-cifar100: the official python archive (downloaded or local, MD5 checked) or its extracted folder.

``cifar-100-python/`` holds ``train`` (50,000 images) and ``test`` (10,000): pickled dicts with
``data`` (N, 3072) uint8 planar rows (the 32x32 red plane, then green, then blue), ``fine_labels``
(0..99) and ``coarse_labels`` (0..19); ``meta`` holds ``fine_label_names`` and
``coarse_label_names``. Fine labels are stored by default, the 20 superclasses with `coarse`;
class names always come from ``meta``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from .download import download, download_dir, is_url
from .errors import PrepError
from .format import DEFAULT_SHARD_ROWS, DatasetBuilder, DatasetInfo, check_output_dir
from .official import official_archive
from .progress import Bars, progress_bars
from .sources_cifar import _unpickle

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
BATCH_DIR = "cifar-100-python"
SPLITS = ("train", "test")  # member name = split name
META = "meta"
MEMBERS = (*SPLITS, META)
IMAGE_SHAPE = (32, 32, 3)
LABEL_KEYS = {False: ("fine_labels", "fine_label_names", 100), True: ("coarse_labels", "coarse_label_names", 20)}


def prep_cifar100(
    source: str | None,
    out: Path,
    *,
    coarse: bool = False,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    expected_md5: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Shard CIFAR-100 into `out`; returns the manifest. `source` None downloads the official archive.

    `expected_md5` replaces the official MD5 (`--md5`: a mirror or a re-packed copy); a local archive is
    checked too, an extracted folder is not (it has no MD5 to check).
    """
    check_output_dir(out, overwrite)
    source = source or CIFAR100_URL
    md5 = expected_md5 or CIFAR100_MD5
    with progress_bars(progress) as bars:
        if is_url(source):
            with download_dir(out) as tmp:
                archive = download(source, tmp, md5, bars)
                blobs = _read_archive(archive, None, bars)  # checked as it arrived
                return _write(blobs, out, f"{source} (official python archive)", coarse, overwrite, shard_rows, bars)
        path = Path(source)
        if not path.exists():
            raise PrepError(f"source {path} does not exist")
        if path.is_dir():
            blobs = _read_folder(path)
            return _write(blobs, out, f"{source} (extracted {BATCH_DIR}/)", coarse, overwrite, shard_rows, bars)
        blobs = _read_archive(path, md5, bars)
        return _write(blobs, out, f"{source} (official python archive)", coarse, overwrite, shard_rows, bars)


def _read_folder(path: Path) -> dict[str, tuple[bytes, str]]:
    folder = path / BATCH_DIR if (path / BATCH_DIR).is_dir() else path
    blobs = {}
    for name in MEMBERS:
        member = folder / name
        if not member.is_file():
            raise PrepError(f"{folder}: no {name} (expected the extracted {BATCH_DIR}/ folder)")
        blobs[name] = (member.read_bytes(), str(member))
    return blobs


def _read_archive(path: Path, md5: str | None, bars: Bars) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, where) of the three members, read in one pass; the MD5 is checked before anything is parsed."""
    blobs = {}
    with official_archive(path, md5, "cifar-100-python.tar.gz", bars) as tf:
        for member in tf:
            name = PurePosixPath(member.name)
            if member.isfile() and name.parent.name == BATCH_DIR and name.name in MEMBERS:
                blobs[name.name] = (tf.extractfile(member).read(), f"{path}:{BATCH_DIR}/{name.name}")
    missing = [n for n in MEMBERS if n not in blobs]
    if missing:
        raise PrepError(f"{path}: lacks {', '.join(f'{BATCH_DIR}/{m}' for m in missing)}")
    return blobs


def class_names(meta: dict, coarse: bool, where: str) -> tuple[str, ...]:
    _, key, count = LABEL_KEYS[coarse]
    names = meta.get(key)
    if not isinstance(names, (list, tuple)):
        raise PrepError(f"{where}: no {key}")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(names) != count or len(set(names)) != count:
        raise PrepError(f"{where}: {key} holds {len(names)} ({len(set(names))} distinct) names, expected {count}")
    return names


def split_arrays(batch: dict, coarse: bool, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(HWC images as a strided view, int16 labels) of one unpickled split, checked."""
    key, _, count = LABEL_KEYS[coarse]
    data = batch.get("data")
    labels = batch.get(key)
    if not isinstance(data, np.ndarray) or labels is None:
        raise PrepError(f"{where}: not a CIFAR-100 split (no data array or {key})")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise PrepError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    labels = np.asarray(labels)
    if labels.shape != (len(data),):
        raise PrepError(f"{where}: {labels.size} {key} for {len(data)} images")
    bad = np.flatnonzero((labels < 0) | (labels >= count))
    if bad.size:
        raise PrepError(f"{where}: label {int(labels[bad[0]])} out of range 0..{count - 1} at row {int(bad[0])}")
    # Planar rows (R plane, G plane, B plane) -> HWC; the writer copies this strided view once.
    return data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int16)


def _write(blobs, out: Path, desc: str, coarse: bool, overwrite: bool, shard_rows: int, bars: Bars) -> dict:
    meta_blob, meta_where = blobs[META]
    names = class_names(_unpickle(meta_blob, meta_where, "CIFAR-100 meta file"), coarse, meta_where)
    # Every split is parsed and checked before the first shard is written.
    splits = {}
    for split in SPLITS:
        blob, where = blobs.pop(split)
        splits[split] = split_arrays(_unpickle(blob, where, "CIFAR-100 split"), coarse, where)
    dataset = "cifar100-coarse" if coarse else "cifar100"
    info = DatasetInfo(dataset, names, IMAGE_SHAPE, "raw", desc)
    with DatasetBuilder(out, info, overwrite=overwrite, shard_rows=shard_rows) as builder:
        for split, (images, labels) in splits.items():
            writer = builder.split(split)
            advance = bars.task(f"{dataset} {split}", len(labels))
            writer.write(labels, images, [f"{split}:{i}" for i in range(len(labels))])
            advance(len(labels))
            builder.close_split(split)
        return builder.commit()
