"""Synthetic CIFAR-10 archives in the official python format, for tests and benchmarks.

Nothing here can reach the real download, so the official-format code path is exercised with
archives built the way the original is: a gzip'd tar of ``cifar-10-batches-py/`` holding pickled
dicts (protocol 2, bytes keys) with ``data`` (N, 3072) uint8 planar rows and ``labels`` lists,
plus ``batches.meta``; members in the original archive's order. Like the originals (written by
Python 2), bytes are pickled as ``str`` opcodes, so loading costs what loading the real files does.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from .sources_cifar import BATCH_DIR, CIFAR10_CLASSES, META, TEST_BATCH, TRAIN_BATCHES

# Member order of the official cifar-10-python.tar.gz.
OFFICIAL_MEMBER_ORDER = (
    "data_batch_4",
    "readme.html",
    "test_batch",
    "data_batch_3",
    "batches.meta",
    "data_batch_2",
    "data_batch_5",
    "data_batch_1",
)


class _Python2StylePickler(pickle._Pickler):
    """Protocol 2, with bytes written as Python 2 `str` (BINSTRING) rather than Python 3's _codecs.encode call.

    Python 3 pickles bytes at protocol 2 as a latin-1 text round trip, which makes random pixel
    data half again as large and slow to load; the official files hold raw strings.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes_as_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes_as_str


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Python2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def synthetic_batches(per_batch: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (images (N, 32, 32, 3) uint8 HWC, labels (N,) int64) for the five train batches and the test batch."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        labels = np.arange(per_batch) % len(CIFAR10_CLASSES)
        rng.shuffle(labels)
        batches[name] = (images, labels)
    return batches


def batch_pickle(images_hwc: np.ndarray, labels, name: str = "batch") -> bytes:
    """One official-format batch: planar rows (all red, all green, all blue), pickled like the original."""
    planar = np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)).reshape(len(images_hwc), -1)
    obj = {
        b"batch_label": name.encode(),
        b"labels": [int(v) for v in labels],
        b"data": planar,
        b"filenames": [f"synthetic_{i:05d}.png".encode() for i in range(len(images_hwc))],
    }
    return _dumps(obj)


def meta_pickle(class_names=CIFAR10_CLASSES) -> bytes:
    return _dumps({b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in class_names], b"num_vis": 3072})


def write_cifar10_archive(
    path: str | Path,
    batches: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    compresslevel: int = 6,
    members: dict[str, bytes] | None = None,
) -> Path:
    """Write `batches` (from synthetic_batches) as an official-format archive.

    `members` replaces or adds raw member bytes (to build damaged archives in tests).
    """
    path = Path(path)
    blobs = {name: batch_pickle(images, labels, name) for name, (images, labels) in batches.items()}
    blobs[META] = meta_pickle()
    blobs["readme.html"] = b"<html>synthetic CIFAR-10 in the official format</html>\n"
    blobs.update(members or {})
    order = [n for n in OFFICIAL_MEMBER_ORDER if n in blobs] + [n for n in blobs if n not in OFFICIAL_MEMBER_ORDER]
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    kwargs = {"compresslevel": compresslevel} if mode == "w:gz" else {}
    with tarfile.open(path, mode, **kwargs) as tf:
        info = tarfile.TarInfo(BATCH_DIR)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
        for name in order:
            info = tarfile.TarInfo(f"{BATCH_DIR}/{name}")
            info.size = len(blobs[name])
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(blobs[name]))
    return path
