"""prep-folder: any class-per-folder image tree (directory or tar) -> shards. Also the tree path of prep-cifar10.

Pixels are decoded with PIL in a process pool; `--size S` resizes to SxS with a named filter;
without it every image must already share one size; `--encoded` keeps each file's bytes
(PNG or JPEG, one encoding per dataset) instead of decoding.
"""

from __future__ import annotations

import functools
import io
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from .decode import (
    CHUNK_BYTES,
    CHUNK_IMAGES,
    ENCODED_FORMATS,
    POOL_MIN_IMAGES,
    DecodeSpec,
    decode_chunk,
    default_workers,
    image_size,
    ordered_map,
)
from .errors import PrepError
from .format import DEFAULT_SHARD_ROWS, DatasetBuilder, DatasetInfo, check_output_dir
from .imagetree import TreeListing, open_tree_source, scan_tree
from .progress import Bars, progress_bars


@dataclass
class _Chunk:
    names: list[str] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    nbytes: int = 0


def _decode(spec: DecodeSpec, chunk: _Chunk):
    return decode_chunk(spec, chunk.names, chunk.blobs)


def _chunks(source, listing: TreeListing) -> Iterator[_Chunk]:
    by_key = {e.key: e for e in listing.entries}
    chunk = _Chunk()
    for key, blob in source.read([e.key for e in listing.entries]):
        entry = by_key[key]
        chunk.names.append(entry.source)
        chunk.blobs.append(blob)
        chunk.labels.append(entry.label)
        chunk.splits.append(entry.split)
        chunk.nbytes += len(blob)
        if len(chunk.names) >= CHUNK_IMAGES or chunk.nbytes >= CHUNK_BYTES:
            yield chunk
            chunk = _Chunk()
    if chunk.names:
        yield chunk


def _first_image_facts(chunk: _Chunk, spec: DecodeSpec) -> tuple[tuple[int, int], str]:
    """(width, height) and PIL format of the first image, read from its header."""
    name, blob = chunk.names[0], chunk.blobs[0]
    try:
        size = image_size(blob, name)
        with Image.open(io.BytesIO(blob)) as im:
            fmt = im.format or ""
    except (ValueError, UnidentifiedImageError, OSError) as e:
        raise PrepError(str(e)) from None
    return size, fmt


def prep_tree(
    listing: TreeListing,
    source,
    out: Path,
    *,
    dataset: str,
    spec: DecodeSpec,
    source_desc: str,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    workers: int | None = None,
    bars: Bars,
) -> dict:
    """Decode (or check) every image of a scanned tree and write the shard directory."""
    chunks = _chunks(source, listing)
    first = next(chunks)  # the listing is never empty: scan_tree rejects empty classes
    (w, h), fmt = _first_image_facts(first, spec)
    if spec.keep_encoded:
        encoding = ENCODED_FORMATS.get(fmt)
        if encoding is None:
            raise PrepError(f"{first.names[0]}: {fmt or 'unknown'} image; --encoded keeps only PNG and JPEG files")
        image_shape = None
    else:
        encoding = "raw"
        if spec.size is None and spec.expect is None:
            spec = replace(spec, expect=(w, h), expect_from=first.names[0])
        width, height = spec.size or spec.expect
        image_shape = (height, width, spec.channels)
    info = DatasetInfo(dataset, listing.class_names, image_shape, encoding, source_desc)
    total = len(listing.entries)
    if workers is None:
        workers = default_workers()
    if total < POOL_MIN_IMAGES:
        workers = 1
    first_format_file = first.names[0]

    with DatasetBuilder(out, info, overwrite=overwrite, shard_rows=shard_rows) as builder:
        writers = {s: builder.split(s) for s in listing.splits}
        advance = {s: bars.task(f"{dataset} {s}", listing.rows(s)) for s in listing.splits}
        decoded = ordered_map(functools.partial(_decode, spec), _prepend(first, chunks), workers)
        # closing(): on an error, stop the worker pool now rather than when the generator is collected.
        with closing(decoded):
            for chunk, result in decoded:
                if result.error:
                    raise PrepError(result.error)
                if spec.keep_encoded:
                    for name, got in zip(chunk.names, result.formats):
                        if got != encoding:
                            raise PrepError(
                                f"mixed encodings: {first_format_file} is {encoding.upper()}, {name} is {got.upper()} "
                                "(--encoded needs one encoding per dataset)"
                            )
                splits = np.asarray(chunk.splits)
                labels = np.asarray(chunk.labels, dtype=np.int16)
                for split in dict.fromkeys(chunk.splits):  # each split present, in order
                    rows = np.flatnonzero(splits == split)
                    whole = len(rows) == len(chunk.names)
                    images = chunk.blobs if spec.keep_encoded else result.pixels
                    if not whole:
                        images = [images[i] for i in rows] if spec.keep_encoded else images[rows]
                    names = chunk.names if whole else [chunk.names[i] for i in rows]
                    writers[split].write(labels[rows], images, names)
                    advance[split](len(rows))
        for s in listing.splits:
            builder.close_split(s)
        return builder.commit()


def _prepend(first: _Chunk, rest: Iterator[_Chunk]) -> Iterator[_Chunk]:
    yield first
    yield from rest


def prep_folder(
    source: str,
    out: Path,
    *,
    size: int | None = None,
    resample: str = "bicubic",
    mode: str = "RGB",
    encoded: bool = False,
    dataset: str | None = None,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    workers: int | None = None,
    progress: bool | None = None,
) -> dict:
    """Shard a class-per-folder tree. Classes are the sorted folder names."""
    if encoded and size is not None:
        raise PrepError("--encoded keeps the files' bytes and cannot be combined with --size")
    if size is not None and size < 1:
        raise PrepError(f"--size must be >= 1, not {size}")
    check_output_dir(out, overwrite)
    path = Path(source)
    spec = DecodeSpec(mode=mode, size=(size, size) if size else None, resample=resample, keep_encoded=encoded)
    name = dataset or _dataset_name(path)
    with progress_bars(progress) as bars:
        tree = open_tree_source(path, bars)
        listing = scan_tree(tree)
        return prep_tree(
            listing,
            tree,
            out,
            dataset=name,
            spec=spec,
            source_desc=str(path),
            overwrite=overwrite,
            shard_rows=shard_rows,
            workers=workers,
            bars=bars,
        )


def _dataset_name(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
