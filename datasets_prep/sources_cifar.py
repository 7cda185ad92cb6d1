"""prep-cifar10: the official python archive (downloaded or local), its extracted folder, or an image tree.

The official batches hold (10000, 3072) uint8 rows, each the 32x32 red plane, then green, then
blue; they are stored as HWC by one reshape + transpose per batch. Class order is always the
standard CIFAR-10 order, whatever the source.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path, PurePosixPath

import numpy as np

from .decode import DecodeSpec
from .download import download, download_dir, is_url
from .errors import PrepError
from .format import DEFAULT_SHARD_ROWS, DatasetBuilder, DatasetInfo, check_output_dir
from .imagetree import IMAGE_EXTENSIONS, TAR_ERRORS, TarSource, open_tar_stream, open_tree_source, scan_tree
from .progress import Bars, progress_bars
from .sources_folder import prep_tree

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)


def prep_cifar10(
    source: str | None,
    out: Path,
    *,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    workers: int | None = None,
    expected_md5: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Shard CIFAR-10 into `out`; returns the manifest. `source` None downloads the official archive.

    `expected_md5` replaces the official MD5 for a download (`--md5`: a mirror or a re-packed copy).
    """
    check_output_dir(out, overwrite)
    source = source or CIFAR10_URL
    with progress_bars(progress) as bars:
        if is_url(source):
            with download_dir(out) as tmp:
                archive = download(source, tmp, expected_md5 or CIFAR10_MD5, bars)
                return _prep_local(archive, out, source, overwrite, shard_rows, workers, bars)
        return _prep_local(Path(source), out, source, overwrite, shard_rows, workers, bars)


def _prep_local(path: Path, out: Path, desc: str, overwrite: bool, shard_rows: int, workers, bars: Bars) -> dict:
    if not path.exists():
        raise PrepError(f"source {path} does not exist")
    if path.is_dir():
        batch_dir = next((d for d in (path, path / BATCH_DIR) if (d / TRAIN_BATCHES[0]).is_file()), None)
        if batch_dir is not None:
            batches = _read_batch_dir(batch_dir)
            return _write_batches(batches, out, f"{desc} (official batches)", overwrite, shard_rows, bars)
        return _prep_cifar_tree(path, out, desc, overwrite, shard_rows, workers, bars)
    batches = _read_official_archive(path, bars)
    if batches is None:  # a tar of images rather than the python batches
        return _prep_cifar_tree(path, out, desc, overwrite, shard_rows, workers, bars)
    return _write_batches(batches, out, f"{desc} (official python archive)", overwrite, shard_rows, bars)


# -- the official python batches --------------------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """Loads only what a CIFAR batch holds: dicts, lists, bytes, ints and numpy arrays.

    A pickle can run arbitrary code through the globals it names; a downloaded archive is not
    trusted, so only numpy's array reconstruction helpers (and _codecs.encode) may be named.
    """

    _ALLOWED = {
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            # How Python 3 writes bytes at protocol 2 (the originals, from Python 2, need no global).
            import _codecs

            return _codecs.encode
        tail = module.rsplit(".", 1)[-1]
        if module.split(".")[0] == "numpy" and (tail, name) in self._ALLOWED:
            if module == "numpy":
                return getattr(np, name)
            return getattr(_numpy_core(tail), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _numpy_core(submodule: str):
    # numpy 2 moved numpy.core to numpy._core; pickles name either.
    for base in ("numpy._core", "numpy.core"):
        try:
            return importlib.import_module(f"{base}.{submodule}")
        except ImportError:
            continue
    raise pickle.UnpicklingError(f"numpy has no core module {submodule}")


def _unpickle(blob: bytes, where: str, what: str = "CIFAR-10 batch") -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # any failure to unpickle untrusted bytes is bad input
        raise PrepError(f"{where}: not a {what} ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise PrepError(f"{where}: not a {what} (a {type(obj).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data = batch.get("data")
    labels = batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise PrepError(f"{where}: not a CIFAR-10 batch (no data array or labels)")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise PrepError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    labels = np.asarray(labels)
    if labels.shape != (len(data),):
        raise PrepError(f"{where}: {len(labels)} labels for {len(data)} images")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:
        raise PrepError(f"{where}: label {int(labels[bad[0]])} out of range 0..9 at row {int(bad[0])}")
    return data, labels.astype(np.int16)


def _check_meta(meta: dict, where: str) -> None:
    names = meta.get("label_names")
    if names is None:
        raise PrepError(f"{where}: no label_names")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if names != CIFAR10_CLASSES:
        raise PrepError(f"{where}: classes {list(names)} are not the standard CIFAR-10 classes in order")


def _collect(blobs: dict[str, bytes], origin: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in blobs]
    if missing:
        raise PrepError(f"{origin}: lacks {', '.join(f'{BATCH_DIR}/{m}' for m in missing)}")
    if META in blobs:
        _check_meta(_unpickle(blobs[META], f"{origin}:{BATCH_DIR}/{META}"), f"{origin}:{BATCH_DIR}/{META}")
    batches = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        where = f"{origin}:{BATCH_DIR}/{name}"
        batches[name] = _batch_arrays(_unpickle(blobs.pop(name), where), where)
    return batches


def _read_batch_dir(directory: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    blobs = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        path = directory / name
        if path.is_file():
            blobs[name] = path.read_bytes()
    return _collect(blobs, str(directory))


def _read_official_archive(path: Path, bars: Bars) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Read the batches in one streaming pass; None if the archive is an image tree instead."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    blobs: dict[str, bytes] = {}
    advance = bars.task(f"read {path.name}", path.stat().st_size, unit="bytes")
    try:
        with open_tar_stream(path, advance) as tf:
            for member in tf:
                name = PurePosixPath(member.name)
                if not member.isfile():
                    continue
                if name.name in wanted and name.parent.name == BATCH_DIR:
                    blobs[name.name] = tf.extractfile(member).read()
                elif not blobs and name.suffix.lower() in IMAGE_EXTENSIONS:
                    return None
    except TAR_ERRORS as e:
        raise PrepError(f"{path}: corrupt or truncated archive ({e})") from None
    if not blobs:
        raise PrepError(f"{path}: neither the official CIFAR-10 python archive nor a tree of images")
    return _collect(blobs, str(path))


def _write_batches(batches, out: Path, desc: str, overwrite: bool, shard_rows: int, bars: Bars) -> dict:
    info = DatasetInfo("cifar10", CIFAR10_CLASSES, IMAGE_SHAPE, "raw", desc)
    plan = {"train": TRAIN_BATCHES, "test": (TEST_BATCH,)}
    with DatasetBuilder(out, info, overwrite=overwrite, shard_rows=shard_rows) as builder:
        for split, names in plan.items():
            writer = builder.split(split)
            advance = bars.task(f"cifar10 {split}", sum(len(batches[n][0]) for n in names))
            for name in names:
                data, labels = batches[name]
                # Planar rows (R plane, G plane, B plane) -> HWC; the writer copies this strided view once.
                hwc = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
                sources = [f"{name}:{i}" for i in range(len(data))]
                writer.write(labels, hwc, sources)
                advance(len(data))
            builder.close_split(split)
        return builder.commit()


# -- image trees (e.g. the JPEG export of CIFAR-10) ----------------------------------------------


def _prep_cifar_tree(path: Path, out: Path, desc: str, overwrite, shard_rows, workers, bars: Bars) -> dict:
    tree = open_tree_source(path, bars)
    listing = scan_tree(tree, class_names=CIFAR10_CLASSES, required_splits=("train", "test"))
    spec = DecodeSpec(mode="RGB", expect=(32, 32), expect_reason="CIFAR-10 images are 32x32")
    kind = "image archive" if isinstance(tree, TarSource) else "image tree"
    return prep_tree(
        listing,
        tree,
        out,
        dataset="cifar10",
        spec=spec,
        source_desc=f"{desc} ({kind})",
        overwrite=overwrite,
        shard_rows=shard_rows,
        workers=workers,
        bars=bars,
    )
