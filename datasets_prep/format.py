"""The shard format: Arrow schema, manifest, and the writer that builds a shard directory safely.

A shard directory holds ``<split>-<i>-of-<n>.arrow`` files (Arrow IPC *stream* format, one record
batch per shard, so that ``datasets.Dataset.from_file`` opens them and a memory-mapped
``read_all()`` is zero-copy) and ``manifest.json``. Columns:

========  ============================  ===================================================
index     int64                         row number within the split (0..rows-1)
label     int16                         class id, -1 = no label
image     fixed_size_binary(H*W*C)      raw HWC uint8 pixels (encoding "raw"), or
          binary                        the encoded file bytes (encoding "png" / "jpeg")
source    string                        where the row came from (archive member, batch:row)
========  ============================  ===================================================

The directory is built as ``<out>.tmp-<pid>`` beside ``<out>``; the manifest is written last and
the directory is renamed into place, so a directory with a manifest is always complete and a
killed prep leaves only a ``.tmp-<pid>`` directory that no reader takes for a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from remixmatch.common.atomic import atomic_write_json

from .errors import PrepError

FORMAT_NAME = "remixmatch-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_SHARD_ROWS = 10_000
ENCODINGS = ("raw", "png", "jpeg")
SCHEMA_METADATA_KEY = b"remixmatch"
# An Arrow `binary` column has int32 offsets: an encoded shard is closed before it reaches this.
MAX_ENCODED_SHARD_BYTES = 1 << 30


def shard_file_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i}-of-{n}.arrow"


def tool_version() -> str:
    try:
        return version("remixmatch")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class DatasetInfo:
    """What every shard of one dataset shares; becomes the head of the manifest."""

    dataset: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int] | None  # (H, W, C); None for encoded images of mixed sizes
    encoding: str  # "raw" | "png" | "jpeg"
    source: str  # human-readable description of what was read
    # A dataset's official labeled folds (STL-10's fold_indices.txt): rows of `folds_split`, one
    # tuple per fold, in the file's order. Stored in the manifest (and its fingerprint) when present.
    folds: tuple[tuple[int, ...], ...] | None = None
    folds_split: str = "train"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, not {self.encoding!r}")
        if self.encoding == "raw" and self.image_shape is None:
            raise ValueError("raw images need an image shape")

    @property
    def row_bytes(self) -> int:
        h, w, c = self.image_shape  # type: ignore[misc]
        return h * w * c

    def image_type(self) -> pa.DataType:
        return pa.binary(self.row_bytes) if self.encoding == "raw" else pa.binary()


def shard_schema(info: DatasetInfo, split: str) -> pa.Schema:
    """The Arrow schema of one shard; its metadata repeats the manifest head so a lone shard explains itself."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dataset": info.dataset,
        "split": split,
        "image_shape": list(info.image_shape) if info.image_shape else None,
        "encoding": info.encoding,
    }
    return pa.schema(
        [
            pa.field("index", pa.int64(), nullable=False),
            pa.field("label", pa.int16(), nullable=False),
            pa.field("image", info.image_type(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
        ],
        metadata={SCHEMA_METADATA_KEY: json.dumps(meta).encode()},
    )


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def dataset_fingerprint(manifest: dict) -> str:
    """Identity of a dataset's content: what it holds, not when, where or by which tool version it was built.

    Two preps of the same input give the same fingerprint; labeled subsets record it so that they
    are never applied to different data.
    """
    content = {
        "dataset": manifest["dataset"],
        "class_names": manifest["class_names"],
        "image_shape": manifest["image_shape"],
        "encoding": manifest["encoding"],
        "splits": {
            name: [shard["sha256"] for shard in split["shards"]] for name, split in sorted(manifest["splits"].items())
        },
    }
    if manifest.get("folds") is not None:  # only datasets with official folds: other fingerprints are unchanged
        content["folds"] = manifest["folds"]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse an output that would destroy something, before any work is done.

    With --overwrite only a previous shard directory (one with a manifest) or an empty directory
    is replaced: a typo in --out must never delete an unrelated tree.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise PrepError(f"output {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise PrepError(f"output directory {out} exists and is not empty (use --overwrite to replace it)")
    if not (out / MANIFEST_NAME).is_file():
        raise PrepError(f"refusing to overwrite {out}: it is not a shard directory (no {MANIFEST_NAME})")


class SplitWriter:
    """Writes the rows of one split into shards of at most `shard_rows` rows, one record batch each.

    Shards are written under a temporary name and renamed to ``<split>-<i>-of-<n>.arrow`` when the
    split is closed and `n` is known.
    """

    def __init__(self, directory: Path, split: str, info: DatasetInfo, shard_rows: int):
        self.directory = directory
        self.split = split
        self.info = info
        self.shard_rows = shard_rows
        self.schema = shard_schema(info, split)
        self.rows = 0
        self.class_counts = np.zeros(len(info.class_names), dtype=np.int64)
        self.unlabeled = 0
        self._partials: list[tuple[Path, int]] = []  # (temporary path, rows)
        self._closed = False
        # Pending rows of the shard being filled.
        self._labels = np.empty(shard_rows, dtype=np.int16)
        self._sources: list[str] = []
        self._pending = 0
        if info.encoding == "raw":
            self._pixels = np.empty((shard_rows, info.row_bytes), dtype=np.uint8)
        self._encoded: list[bytes] = []
        self._encoded_bytes = 0

    def write(self, labels: Sequence[int] | np.ndarray, images, sources: Sequence[str]) -> None:
        """Append rows: `images` is a (k,H,W,C) uint8 array (any strides) if raw, else a list of bytes."""
        if self._closed:
            raise RuntimeError(f"split {self.split} is already closed")
        labels = np.asarray(labels)
        k = len(labels)
        if len(images) != k or len(sources) != k:
            raise ValueError("labels, images and sources must have the same length")
        self._check_labels(labels, sources)
        if self.info.encoding == "raw":
            images = np.asarray(images)
            if images.dtype != np.uint8 or images.shape[1:] != tuple(self.info.image_shape):
                raise ValueError(f"images must be uint8 {self.info.image_shape}, got {images.dtype} {images.shape[1:]}")
        done = 0
        while done < k:
            full = False  # an encoded shard reached its byte cap before its row cap
            if self.info.encoding == "raw":
                take = min(k - done, self.shard_rows - self._pending)
                h, w, c = self.info.image_shape
                dest = self._pixels[self._pending : self._pending + take].reshape(take, h, w, c)
                dest[...] = images[done : done + take]  # one strided copy (e.g. CHW -> HWC) into the shard buffer
            else:
                take = 0
                while done + take < k and self._pending + take < self.shard_rows:
                    blob = images[done + take]
                    if self._encoded and self._encoded_bytes + len(blob) > MAX_ENCODED_SHARD_BYTES:
                        full = True
                        break
                    self._encoded.append(bytes(blob))
                    self._encoded_bytes += len(blob)
                    take += 1
            self._labels[self._pending : self._pending + take] = labels[done : done + take]
            self._sources.extend(sources[done : done + take])
            self._pending += take
            done += take
            if full or self._pending == self.shard_rows:
                self._flush()

    def _check_labels(self, labels: np.ndarray, sources: Sequence[str]) -> None:
        n_classes = len(self.info.class_names)
        bad = np.flatnonzero((labels < -1) | (labels >= n_classes))
        if bad.size:
            i = int(bad[0])
            raise PrepError(f"{sources[i]}: label {int(labels[i])} out of range (-1..{n_classes - 1}, -1 = unlabeled)")
        labeled = labels[labels >= 0]
        self.class_counts += np.bincount(labeled.astype(np.int64), minlength=n_classes)
        self.unlabeled += int(len(labels) - len(labeled))

    def _flush(self) -> None:
        n = self._pending
        if n == 0:
            return
        if self.info.encoding == "raw":
            pixels = self._pixels[:n]
            images = pa.FixedSizeBinaryArray.from_buffers(self.info.image_type(), n, [None, pa.py_buffer(pixels)])
        else:
            images = pa.array(self._encoded, type=pa.binary())
        batch = pa.record_batch(
            [
                pa.array(np.arange(self.rows, self.rows + n, dtype=np.int64)),
                pa.array(self._labels[:n]),
                images,
                pa.array(self._sources, type=pa.string()),
            ],
            schema=self.schema,
        )
        path = self.directory / f"{self.split}-{len(self._partials)}.arrow.partial"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, self.schema) as writer:
            writer.write_batch(batch)
        self._partials.append((path, n))
        self.rows += n
        self._pending = 0
        self._sources = []
        self._encoded = []
        self._encoded_bytes = 0

    def close(self) -> dict:
        """Write the last shard, give the shards their final names; returns the split's manifest entry."""
        if self._closed:
            raise RuntimeError(f"split {self.split} is already closed")
        self._flush()
        self._closed = True
        if self.rows == 0:
            raise PrepError(f"split {self.split}: no rows")
        n = len(self._partials)
        shards = []
        for i, (partial, rows) in enumerate(self._partials):
            final = self.directory / shard_file_name(self.split, i, n)
            os.replace(partial, final)
            shards.append(
                {"file": final.name, "rows": rows, "bytes": final.stat().st_size, "sha256": sha256_of_file(final)}
            )
        return {
            "rows": self.rows,
            "labeled_rows": self.rows - self.unlabeled,
            "unlabeled_rows": self.unlabeled,
            "class_counts": [int(c) for c in self.class_counts],
            "shards": shards,
        }


class DatasetBuilder:
    """Builds a shard directory in ``<out>.tmp-<pid>`` and renames it into place on `commit()`.

    Used as a context manager: leaving the block with an exception (or a KeyboardInterrupt)
    removes the temporary directory, so nothing half-written is left under any name that a
    reader would accept.
    """

    def __init__(self, out: Path, info: DatasetInfo, *, overwrite: bool = False, shard_rows: int = DEFAULT_SHARD_ROWS):
        if shard_rows < 1:
            raise PrepError(f"--shard-rows must be >= 1, not {shard_rows}")
        self.out = Path(out)
        self.info = info
        self.overwrite = overwrite
        self.shard_rows = shard_rows
        self.tmp = self.out.parent / f"{self.out.name}.tmp-{os.getpid()}"
        self._splits: dict[str, SplitWriter] = {}
        self._entries: dict[str, dict] = {}
        self._committed = False

    def __enter__(self) -> "DatasetBuilder":
        check_output_dir(self.out, self.overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():  # left by an earlier process that had our pid and was killed
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def split(self, name: str) -> SplitWriter:
        if name in self._splits:
            raise RuntimeError(f"split {name} opened twice")
        writer = SplitWriter(self.tmp, name, self.info, self.shard_rows)
        self._splits[name] = writer
        return writer

    def close_split(self, name: str) -> dict:
        entry = self._splits[name].close()
        self._entries[name] = entry
        return entry

    def manifest(self) -> dict:
        h = self.info.image_shape
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dataset": self.info.dataset,
            "class_names": list(self.info.class_names),
            "num_classes": len(self.info.class_names),
            "image_shape": list(h) if h else None,
            "encoding": self.info.encoding,
            "columns": {
                "index": "int64",
                "label": "int16 (-1 = no label)",
                "image": str(self.info.image_type()),
                "source": "string",
            },
            "splits": self._entries,
            "source": self.info.source,
            **self._folds_entry(),
            "tool": {"name": "remixmatch", "version": tool_version()},
        }
        manifest["fingerprint"] = dataset_fingerprint(manifest)
        return manifest

    def _folds_entry(self) -> dict:
        if self.info.folds is None:
            return {}
        return {"folds": {"split": self.info.folds_split, "indices": [list(map(int, f)) for f in self.info.folds]}}

    def commit(self) -> dict:
        """Close open splits, write the manifest last, and move the directory into place."""
        for name in self._splits:
            if name not in self._entries:
                self.close_split(name)
        if not self._entries:
            raise PrepError("no splits were written")
        manifest = self.manifest()
        atomic_write_json(self.tmp / MANIFEST_NAME, manifest, indent=2)
        self._move_into_place()
        self._committed = True
        return manifest

    def _move_into_place(self) -> None:
        # Re-check: the output may have appeared while we were working.
        check_output_dir(self.out, self.overwrite)
        if self.out.exists() and not any(self.out.iterdir()):
            self.out.rmdir()
        if not self.out.exists():
            os.rename(self.tmp, self.out)
            return
        # --overwrite of a previous shard directory: move it aside, rename, then delete the old one,
        # so that at every instant `out` is either the old complete dataset or the new one.
        old = self.out.parent / f"{self.out.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(self.out, old)
        try:
            os.rename(self.tmp, self.out)
        except BaseException:
            os.rename(old, self.out)
            raise
        shutil.rmtree(old, ignore_errors=True)
