"""Synthetic archives in the official formats (CIFAR-10, CIFAR-100, STL-10), for tests and benchmarks.

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


# -- CIFAR-100: cifar-100-python/{train, test, meta} ---------------------------------------------


def cifar100_split_pickle(images_hwc: np.ndarray, fine, coarse, name: str) -> bytes:
    planar = np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)).reshape(len(images_hwc), -1)
    return _dumps({
        b"filenames": [f"synthetic_{i:05d}.png".encode() for i in range(len(images_hwc))],
        b"batch_label": name.encode(),
        b"fine_labels": [int(v) for v in fine],
        b"coarse_labels": [int(v) for v in coarse],
        b"data": planar,
    })


def cifar100_meta_pickle(fine_names=None, coarse_names=None) -> bytes:
    fine_names = fine_names if fine_names is not None else [f"fine_{i:02d}" for i in range(100)]
    coarse_names = coarse_names if coarse_names is not None else [f"coarse_{i:02d}" for i in range(20)]
    return _dumps({b"fine_label_names": [n.encode() for n in fine_names],
                   b"coarse_label_names": [n.encode() for n in coarse_names]})


def synthetic_cifar100(per_split: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """split -> (images (N, 32, 32, 3) HWC, fine labels, coarse labels = fine // 5) for train and test."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split in ("train", "test"):
        images = rng.integers(0, 256, size=(per_split, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, per_split)
        splits[split] = (images, fine, fine // 5)
    return splits


def write_cifar100_archive(path: str | Path, splits, *, members: dict[str, bytes | None] | None = None) -> Path:
    """`splits` from synthetic_cifar100 as cifar-100-python.tar.gz; `members` replaces (None: drops) members."""
    blobs = {name: cifar100_split_pickle(*arrays, name) for name, arrays in splits.items()}
    blobs["meta"] = cifar100_meta_pickle()
    blobs.update(members or {})
    return _write_tar(Path(path), "cifar-100-python", ("file.txt~", "train", "test", "meta"), blobs)


# -- STL-10: stl10_binary/{train,test,unlabeled}_X.bin, {train,test}_y.bin, class_names.txt,
#    fold_indices.txt; images as column-major channel planes ---------------------------------------

STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
STL10_MEMBER_ORDER = ("test_X.bin", "test_y.bin", "train_X.bin", "train_y.bin", "unlabeled_X.bin",
                      "class_names.txt", "fold_indices.txt")


def synthetic_stl10(train: int, test: int, unlabeled: int, fold_size: int, seed: int = 0) -> dict:
    """split -> (images (N, 96, 96, 3) HWC, labels 0..9 or None), and "folds": 10 lists of train rows."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        data[split] = (images, None if split == "unlabeled" else rng.integers(0, 10, n))
    data["folds"] = [rng.permutation(train)[:fold_size].tolist() for _ in range(10)]
    return data


def stl10_members(data: dict) -> dict[str, bytes]:
    """The member bytes of stl10_binary/ for `data` (from synthetic_stl10)."""
    from .sources_stl10 import hwc_to_planes

    blobs = {}
    for split in ("train", "test", "unlabeled"):
        images, labels = data[split]
        blobs[f"{split}_X.bin"] = hwc_to_planes(images).tobytes()
        if labels is not None:
            blobs[f"{split}_y.bin"] = (np.asarray(labels) + 1).astype(np.uint8).tobytes()
    blobs["class_names.txt"] = ("\n".join(STL10_CLASSES) + "\n").encode()
    blobs["fold_indices.txt"] = "".join(" ".join(map(str, f)) + " \n" for f in data["folds"]).encode()
    return blobs


def write_stl10_archive(path: str | Path, data: dict, *, members: dict[str, bytes | None] | None = None) -> Path:
    """`data` as stl10_binary.tar.gz, members in the official order; `members` replaces (None: drops) members."""
    blobs = stl10_members(data)
    blobs.update(members or {})
    return _write_tar(Path(path), "stl10_binary", STL10_MEMBER_ORDER, blobs)


def write_stl10_folder(folder: str | Path, data: dict, *, members: dict[str, bytes | None] | None = None) -> Path:
    """`data` as an extracted stl10_binary/ folder under `folder`."""
    root = Path(folder) / "stl10_binary"
    root.mkdir(parents=True, exist_ok=True)
    blobs = stl10_members(data)
    blobs.update(members or {})
    for name, blob in blobs.items():
        if blob is not None:
            (root / name).write_bytes(blob)
    return root


def _write_tar(path: Path, top: str, order, blobs: dict[str, bytes | None]) -> Path:
    blobs = {n: b for n, b in blobs.items() if b is not None}
    names = [n for n in order if n in blobs] + [n for n in blobs if n not in order]
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    kwargs = {"compresslevel": 1} if mode == "w:gz" else {}
    with tarfile.open(path, mode, **kwargs) as tf:
        info = tarfile.TarInfo(top)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
        for name in names:
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(blobs[name])
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(blobs[name]))
    return path
