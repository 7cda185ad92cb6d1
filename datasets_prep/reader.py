"""Reading a shard directory: memory-mapped Arrow shards, labels as numpy, images gathered by index.

`open_shards(path)` returns a `ShardSet`; `ds["train"]` is a `Split`. Shards are opened with
``pa.memory_map`` and ``read_all()``, which maps the file rather than reading it, so opening a
dataset costs a few milliseconds whatever its size and pages come in as rows are touched.

Copy semantics follow numpy: a slice (or a single int) of contiguous rows inside one shard is a
read-only view of the mapped file; an index array always gives a new array (or fills `out`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import pyarrow as pa

from .errors import ShardError, VerifyError
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    dataset_fingerprint,
    sha256_of_file,
)

IndexLike = Union[int, slice, Sequence[int], np.ndarray]


def open_shards(path: str | Path) -> "ShardSet":
    """Open a shard directory written by the prep tools (it must hold a manifest.json)."""
    return ShardSet(path)


def _load_manifest(directory: Path) -> dict:
    if not directory.is_dir():
        raise ShardError(f"{directory}: no such shard directory")
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ShardError(f"{directory}: not a shard directory (no {MANIFEST_NAME}; an interrupted prep leaves none)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{manifest_path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ShardError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{manifest_path}: format version {manifest.get('format_version')} is not supported "
            f"(this reader reads version {FORMAT_VERSION})"
        )
    try:
        fingerprint = dataset_fingerprint(manifest)
    except (KeyError, TypeError) as e:
        raise ShardError(f"{manifest_path}: incomplete manifest ({e})") from None
    if manifest.get("fingerprint") != fingerprint:
        raise ShardError(f"{manifest_path}: fingerprint does not match the manifest's contents (edited by hand?)")
    return manifest


class ShardSet:
    """A prepared dataset: its manifest and, per split, a lazily opened `Split`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = _load_manifest(self.path)
        self._splits: dict[str, Split] = {}

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.manifest["splits"])

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        shape = self.manifest["image_shape"]
        return tuple(shape) if shape else None

    @property
    def encoding(self) -> str:
        return self.manifest["encoding"]

    @property
    def fingerprint(self) -> str:
        """Content identity (see format.dataset_fingerprint); labeled subsets are tied to it."""
        return self.manifest["fingerprint"]

    def __contains__(self, split: str) -> bool:
        return split in self.manifest["splits"]

    def __iter__(self) -> Iterator[str]:
        return iter(self.splits)

    @property
    def folds(self) -> tuple[np.ndarray, ...] | None:
        """The official labeled folds (STL-10): int64 rows of `folds_split`, in the file's order; None if none."""
        entry = self.manifest.get("folds")
        return None if entry is None else tuple(np.asarray(f, dtype=np.int64) for f in entry["indices"])

    @property
    def folds_split(self) -> str | None:
        entry = self.manifest.get("folds")
        return None if entry is None else entry["split"]

    def __getitem__(self, split: str) -> "Split | JoinedSplit":
        """A split, or several joined by "+" ("train+unlabeled": the rows of train, then of unlabeled)."""
        if "+" in split:
            return JoinedSplit(self, split.split("+"))
        if split not in self.manifest["splits"]:
            raise ShardError(f"{self.path}: no split {split!r} (splits: {', '.join(self.splits)})")
        if split not in self._splits:
            self._splits[split] = Split(self, split)
        return self._splits[split]

    def shard_paths(self, split: str | None = None) -> list[Path]:
        names = [split] if split else list(self.splits)
        return [self.path / shard["file"] for name in names for shard in self.manifest["splits"][name]["shards"]]

    def verify(self, progress: Callable[[int], None] | None = None) -> None:
        """Check every shard's size and sha256 against the manifest; raise ShardError naming each bad file.

        `progress`, if given, is called with the number of bytes checked after each shard.
        """
        problems = []
        total = 0
        for name in self.splits:
            for shard in self.manifest["splits"][name]["shards"]:
                total += 1
                path = self.path / shard["file"]
                if not path.is_file():
                    problems.append(f"{shard['file']} (missing)")
                    continue
                size = path.stat().st_size
                if size != shard["bytes"]:
                    problems.append(f"{shard['file']} (size {size} bytes, manifest says {shard['bytes']})")
                else:
                    digest = sha256_of_file(path)
                    if digest != shard["sha256"]:
                        problems.append(
                            f"{shard['file']} (sha256 {digest[:16]}..., manifest says {shard['sha256'][:16]}...)"
                        )
                if progress is not None:
                    progress(size)
        if problems:
            raise VerifyError(
                f"{self.path}: {len(problems)} of {total} shards fail verification: {'; '.join(problems)}"
            )

    def __reduce__(self):
        # Pickled by path (e.g. into data-loading worker processes): each process maps the files itself.
        return (open_shards, (str(self.path),))

    def __repr__(self) -> str:
        splits = ", ".join(f"{s}={self.manifest['splits'][s]['rows']}" for s in self.splits)
        return f"ShardSet({str(self.path)!r}, dataset={self.dataset!r}, {splits})"


class _SplitRows:
    """What a split and splits joined as one share: their shard set, name, pickling and description."""

    def __init__(self, shardset: ShardSet, name: str):
        self.name = name
        self.shardset = shardset
        self.image_shape = shardset.image_shape
        self.encoding = shardset.encoding

    def __reduce__(self):
        # Reopened by path in the receiving process: a worker maps the files itself.
        return (_reopen_split, (str(self.shardset.path), self.name))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, rows={len(self)}, encoding={self.encoding!r}, "
                f"image_shape={self.image_shape})")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.shardset.class_names


class Split(_SplitRows):
    """The rows of one split across its shards, memory-mapped."""

    def __init__(self, shardset: ShardSet, name: str):
        super().__init__(shardset, name)
        entry = shardset.manifest["splits"][name]
        self._batches: list[pa.RecordBatch] = []
        for shard in entry["shards"]:
            self._batches.extend(_open_shard(shardset.path / shard["file"], shard["rows"], shardset))
        lengths = [b.num_rows for b in self._batches]
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._len = int(self._starts[-1])
        if self._len != entry["rows"]:
            raise ShardError(f"{shardset.path}: split {name} holds {self._len} rows, manifest says {entry['rows']}")
        # Per record batch: the image column as a (rows, H, W, C) uint8 view of the mapped file.
        self._pixel_views = [_pixel_view(b, self.image_shape) for b in self._batches] if self.encoding == "raw" else []
        self._labels: np.ndarray | None = None
        self._indices: np.ndarray | None = None

    def __len__(self) -> int:
        return self._len

    @property
    def labels(self) -> np.ndarray:
        """int16 class ids, -1 = no label; a read-only view of the mapped file when the split is one shard."""
        if self._labels is None:
            self._labels = self._column_numpy("label")
        return self._labels

    @property
    def indices(self) -> np.ndarray:
        """The `index` column (int64 row numbers 0..len-1, as written)."""
        if self._indices is None:
            self._indices = self._column_numpy("index")
        return self._indices

    def _column_numpy(self, column: str) -> np.ndarray:
        parts = [b.column(column).to_numpy(zero_copy_only=True) for b in self._batches]
        if len(parts) == 1:
            return parts[0]  # a view of the mapped file, read-only
        joined = np.concatenate(parts)
        joined.flags.writeable = False  # read-only either way, so callers cannot come to rely on writing
        return joined

    def sources(self, indices: IndexLike) -> list[str]:
        result = []
        for i in self._index_array(indices):
            batch, row = self._locate(int(i))
            result.append(batch.column("source")[row].as_py())
        return result

    # -- images ----------------------------------------------------------------------------------

    def images(self, indices: IndexLike, out: np.ndarray | None = None) -> np.ndarray:
        """Images as uint8 (N,H,W,C) (or (H,W,C) for an int).

        A slice of contiguous rows inside one shard, or an int, returns a read-only view of the
        mapped file; anything else gathers into a new array, or into `out` if given. Encoded
        datasets are decoded here (all selected images must then share one size).
        """
        if self.encoding != "raw":
            return self._decode(indices, out)
        if isinstance(indices, (int, np.integer)):
            b, row = self._locate_index(self._normalize_scalar(indices))
            view = self._pixel_views[b][row]
            if out is not None:
                out[...] = view
                return out
            return view
        if isinstance(indices, slice):
            start, stop, step = indices.indices(self._len)
            if step == 1 and out is None:
                view = self._contiguous_view(start, max(start, stop))
                if view is not None:
                    return view
        rows = self._index_array(indices)
        return self._gather(rows, out)

    def _contiguous_view(self, start: int, stop: int) -> np.ndarray | None:
        if stop == start:
            return np.empty((0, *self.image_shape), dtype=np.uint8)
        b = int(np.searchsorted(self._starts, start, side="right")) - 1
        if stop > self._starts[b + 1]:
            return None  # crosses a shard boundary: gather instead
        first = start - int(self._starts[b])
        return self._pixel_views[b][first : first + (stop - start)]

    def _gather(self, rows: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        shape = (len(rows), *self.image_shape)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
        if len(self._pixel_views) == 1:
            np.take(self._pixel_views[0], rows, axis=0, out=out)
            return out
        batch_of_row = np.searchsorted(self._starts, rows, side="right") - 1
        for b in np.unique(batch_of_row):
            mask = batch_of_row == b
            out[mask] = self._pixel_views[b][rows[mask] - self._starts[b]]
        return out

    def encoded(self, indices: IndexLike) -> list[bytes]:
        """The stored file bytes of encoded datasets (PNG/JPEG), one bytes object per row."""
        if self.encoding == "raw":
            raise ShardError(f"{self.shardset.path}: split {self.name} holds raw pixels; use images()")
        result = []
        for i in self._index_array(indices):
            batch, row = self._locate(int(i))
            result.append(_binary_value(batch.column("image"), row))
        return result

    def _decode(self, indices: IndexLike, out: np.ndarray | None) -> np.ndarray:
        from PIL import Image

        scalar = isinstance(indices, (int, np.integer))
        rows = self._index_array(indices)
        decoded = []
        for i, blob in zip(rows, self.encoded(rows)):
            with Image.open(io.BytesIO(blob)) as im:
                arr = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "L") else im)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            if decoded and arr.shape != decoded[0].shape:
                raise ShardError(
                    f"split {self.name}: rows {int(rows[0])} and {int(i)} decode to different sizes "
                    f"{decoded[0].shape} and {arr.shape}; use encoded() for mixed sizes"
                )
            decoded.append(arr)
        if scalar:
            return decoded[0]
        if not decoded:
            return np.empty((0, *(self.image_shape or (0, 0, 3))), dtype=np.uint8)
        if out is None:
            return np.stack(decoded)
        out[...] = np.stack(decoded)
        return out

    # -- index plumbing ----------------------------------------------------------------------------

    def _normalize_scalar(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index out of range for split {self.name} of {self._len} rows")
        return i

    def _index_array(self, indices: IndexLike) -> np.ndarray:
        if isinstance(indices, (int, np.integer)):
            return np.array([self._normalize_scalar(indices)], dtype=np.int64)
        if isinstance(indices, slice):
            return np.arange(*indices.indices(self._len), dtype=np.int64)
        rows = np.asarray(indices)
        if rows.size == 0:
            return np.empty(0, dtype=np.int64)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"indices must be an int, a slice or a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.int64, copy=False)
        if rows.min() < 0:
            rows = np.where(rows < 0, rows + self._len, rows)
        if rows.min() < 0 or rows.max() >= self._len:
            bad = rows[(rows < 0) | (rows >= self._len)][0]
            raise IndexError(f"index {int(bad)} out of range for split {self.name} of {self._len} rows")
        return rows

    def _locate_index(self, row: int) -> tuple[int, int]:
        """(record batch number, row within it) of a split row."""
        b = int(np.searchsorted(self._starts, row, side="right")) - 1
        return b, row - int(self._starts[b])

    def _locate(self, row: int) -> tuple[pa.RecordBatch, int]:
        b, local = self._locate_index(row)
        return self._batches[b], local


class JoinedSplit(_SplitRows):
    """Splits read as one: the rows of the first, then of the next (STL-10's train + unlabeled as one
    pool of unlabeled rows). It answers what a Split answers (len, labels, images, encoded, sources)."""

    def __init__(self, shardset: ShardSet, names: Sequence[str]):
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ShardError(f"{shardset.path}: {'+'.join(names)!r} does not name distinct splits joined by '+'")
        super().__init__(shardset, "+".join(names))
        self.parts = [shardset[n] for n in names]
        self._starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.concatenate([p.labels for p in self.parts])
            self._labels.flags.writeable = False
        return self._labels

    @property
    def indices(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def _rows(self, indices: IndexLike) -> np.ndarray:
        if isinstance(indices, slice):
            return np.arange(*indices.indices(len(self)), dtype=np.int64)
        rows = np.atleast_1d(np.asarray(indices))
        if rows.size == 0:
            return np.empty(0, dtype=np.int64)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"indices must be an int, a slice or a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = np.where(rows < 0, rows + len(self), rows).astype(np.int64)
        if rows.min() < 0 or rows.max() >= len(self):
            bad = rows[(rows < 0) | (rows >= len(self))][0]
            raise IndexError(f"index {int(bad)} out of range for split {self.name} of {len(self)} rows")
        return rows

    def _each_part(self, rows: np.ndarray):
        """(part, mask of `rows` in it, its local rows) for each part some row falls in."""
        part_of_row = np.searchsorted(self._starts, rows, side="right") - 1
        for i in np.unique(part_of_row):
            mask = part_of_row == i
            yield self.parts[i], mask, rows[mask] - self._starts[i]

    def images(self, indices: IndexLike, out: np.ndarray | None = None) -> np.ndarray:
        scalar = isinstance(indices, (int, np.integer))
        rows = self._rows(indices)
        if scalar:
            ((part, _, local),) = self._each_part(rows)
            return part.images(int(local[0]), out=out)
        pieces = [(mask, part.images(local)) for part, mask, local in self._each_part(rows)]
        shape = (len(rows), *(pieces[0][1].shape[1:] if pieces else (self.image_shape or (0, 0, 3))))
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        for mask, pixels in pieces:
            out[mask] = pixels
        return out

    def encoded(self, indices: IndexLike) -> list[bytes]:
        rows = self._rows(indices)
        result: list = [None] * len(rows)
        for part, mask, local in self._each_part(rows):
            for position, blob in zip(np.flatnonzero(mask), part.encoded(local)):
                result[position] = blob
        return result

    def sources(self, indices: IndexLike) -> list[str]:
        rows = self._rows(indices)
        result: list = [None] * len(rows)
        for part, mask, local in self._each_part(rows):
            for position, name in zip(np.flatnonzero(mask), part.sources(local)):
                result[position] = f"{part.name}:{name}"
        return result


def _reopen_split(path: str, name: str) -> Split:
    return open_shards(path)[name]


def _open_shard(path: Path, rows: int, shardset: ShardSet) -> list[pa.RecordBatch]:
    if not path.is_file():
        raise ShardError(f"{path}: shard listed in the manifest is missing")
    try:
        source = pa.memory_map(str(path))
        table = pa.ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"{path}: not a readable Arrow stream ({e}); run `rmm-shards verify`") from None
    expected_image = pa.binary() if shardset.encoding != "raw" else pa.binary(int(np.prod(shardset.image_shape)))
    expected = {"index": pa.int64(), "label": pa.int16(), "image": expected_image, "source": pa.string()}
    actual = {f.name: f.type for f in table.schema}
    if actual != expected:
        raise ShardError(f"{path}: columns {actual} do not match the manifest's {expected}")
    if table.num_rows != rows:
        raise ShardError(f"{path}: holds {table.num_rows} rows, manifest says {rows}")
    return table.to_batches()


def _pixel_view(batch: pa.RecordBatch, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The FixedSizeBinary image column as a (rows, H, W, C) numpy view (no copy)."""
    column = batch.column("image")
    row_bytes = int(np.prod(image_shape))
    data = column.buffers()[1]
    flat = np.frombuffer(data, dtype=np.uint8)
    first = column.offset * row_bytes
    return flat[first : first + len(column) * row_bytes].reshape(len(column), *image_shape)


def _binary_value(column: pa.BinaryArray, row: int) -> bytes:
    # Slice the value buffer through the offsets rather than boxing a pyarrow scalar per row.
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)
    base = column.offset + row
    start, stop = int(offsets[base]), int(offsets[base + 1])
    return column.buffers()[2].slice(start, stop - start).to_pybytes()
