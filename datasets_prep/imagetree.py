"""Class-per-folder image trees, from a directory or straight from a .tar/.tar.gz (no extraction).

Layouts: ``<split>/<class>/<image>`` (when a ``train/`` folder is present) or ``<class>/<image>``
(one split, "train"). Wrapper folders around the tree (``cifar10-jpg/train/...``) are skipped.
Hidden entries (names starting with ".") and ``__MACOSX`` are ignored; any other file that is not
an image, or is not at ``<split>/<class>/<file>``, is an error naming it.

Rows are read in a fixed order: sorted paths for a directory, member order for an archive (a
compressed archive can only be read front to back).
"""

from __future__ import annotations

import tarfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator, Sequence

from .errors import PrepError
from .progress import Bars

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
SPLIT_ORDER = ("train", "test")  # listed first, in this order; other splits follow sorted
TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)

Parts = tuple[str, ...]


def _ignored(parts: Parts) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class DirectorySource:
    """A tree on disk."""

    def __init__(self, root: Path):
        self.root = root
        self.name = str(root)

    def listing(self) -> tuple[list[Parts], list[Parts]]:
        files: list[Parts] = []
        dirs: list[Parts] = []
        for path in sorted(self.root.rglob("*")):
            parts = path.relative_to(self.root).parts
            if _ignored(parts):
                continue
            if path.is_dir():
                dirs.append(parts)
            elif path.is_file():
                files.append(parts)
        return files, dirs

    def read(self, wanted: Sequence[Parts]) -> Iterator[tuple[Parts, bytes]]:
        for parts in wanted:
            path = self.root.joinpath(*parts)
            try:
                yield parts, path.read_bytes()
            except OSError as e:
                raise PrepError(f"{path}: cannot read ({e.strerror or e})") from None


class _CountingReader:
    """A read-only file that reports how many bytes were consumed (for a progress bar)."""

    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]):
        self._raw = raw
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._advance(len(data))
        return data


@contextmanager
def open_tar_stream(path: Path, advance: Callable[[int], None] | None = None) -> Iterator[tarfile.TarFile]:
    """A tar archive (any compression) opened for one front-to-back pass; `advance` gets compressed bytes read."""
    with open(path, "rb") as raw:
        fileobj = _CountingReader(raw, advance) if advance else raw
        with tarfile.open(fileobj=fileobj, mode="r|*") as tf:
            yield tf


class TarSource:
    """A tree inside a tar archive (any compression tarfile knows), read as a stream."""

    def __init__(self, path: Path, bars: Bars | None = None):
        self.path = path
        self.name = str(path)
        self._bars = bars

    @staticmethod
    def _parts(member_name: str) -> Parts:
        return tuple(p for p in PurePosixPath(member_name).parts if p not in (".", "/"))

    def listing(self) -> tuple[list[Parts], list[Parts]]:
        files: list[Parts] = []
        dirs: list[Parts] = []
        advance = (
            self._bars.task(f"scan {self.path.name}", self.path.stat().st_size, unit="bytes") if self._bars else None
        )
        try:
            with open_tar_stream(self.path, advance) as tf:
                for member in tf:
                    parts = self._parts(member.name)
                    if not parts or _ignored(parts):
                        continue
                    if member.isdir():
                        dirs.append(parts)
                    elif member.isfile():
                        files.append(parts)
        except TAR_ERRORS as e:
            raise PrepError(f"{self.path}: corrupt or truncated archive ({e})") from None
        # Folders implied by file paths (archives need not hold directory entries).
        implied = {f[:i] for f in files for i in range(1, len(f))}
        dirs = sorted(set(dirs) | implied)
        return files, dirs

    def read(self, wanted: Sequence[Parts]) -> Iterator[tuple[Parts, bytes]]:
        wanted_set = set(wanted)
        found = 0
        try:
            with open_tar_stream(self.path) as tf:
                for member in tf:
                    parts = self._parts(member.name)
                    if member.isfile() and parts in wanted_set:
                        f = tf.extractfile(member)
                        yield parts, f.read()
                        found += 1
        except TAR_ERRORS as e:
            raise PrepError(f"{self.path}: corrupt or truncated archive ({e})") from None
        if found != len(wanted_set):
            raise PrepError(f"{self.path}: archive changed while being read")


def open_tree_source(path: Path, bars: Bars | None = None) -> DirectorySource | TarSource:
    if path.is_dir():
        return DirectorySource(path)
    if path.is_file():
        if not _looks_like_tar(path):
            raise PrepError(f"{path}: not a directory or a tar archive")
        return TarSource(path, bars)
    raise PrepError(f"source {path} does not exist")


def _looks_like_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except TAR_ERRORS:
        return False


@dataclass(frozen=True)
class TreeEntry:
    split: str
    label: int
    key: Parts  # full path inside the source, used to read the file
    source: str  # what the `source` column records: the archive member or the path under the source dir


@dataclass(frozen=True)
class TreeListing:
    source_name: str
    class_names: tuple[str, ...]
    splits: tuple[str, ...]
    entries: tuple[TreeEntry, ...]  # in reading order
    counts: dict[str, list[int]]  # per split, images per class

    def rows(self, split: str) -> int:
        return sum(self.counts[split])


def scan_tree(
    source: DirectorySource | TarSource,
    *,
    class_names: Sequence[str] | None = None,
    required_splits: Sequence[str] | None = None,
) -> TreeListing:
    """List and check a tree before any image is decoded.

    `class_names` fixes the classes and their order (CIFAR-10); without it the classes are the
    sorted folder names. `required_splits` fixes the split folders (exactly these, all present).
    """
    files, dirs = source.listing()
    name = source.name
    prefix = _wrapper_prefix(files, dirs)
    rel_files = [f[len(prefix) :] for f in files]
    rel_dirs = [d[len(prefix) :] for d in dirs if len(d) > len(prefix)]
    top_dirs = sorted({d[0] for d in rel_dirs})

    if required_splits is not None or "train" in top_dirs:
        split_layout = True
        splits = list(required_splits) if required_splits is not None else _ordered_splits(top_dirs)
        if required_splits is not None:
            for s in required_splits:
                if s not in top_dirs:
                    raise PrepError(
                        f"{name}: no {s}/ folder (expected {'/, '.join(required_splits)}/ holding one folder per class)"
                    )
            for d in top_dirs:
                if d not in required_splits:
                    raise PrepError(
                        f"{name}: unexpected folder '{_join(prefix, (d,))}' "
                        f"(expected only {', '.join(required_splits)})"
                    )
    else:
        split_layout = False
        splits = ["train"]
    if not rel_files and not rel_dirs:
        raise PrepError(f"{name}: empty tree (expected <class>/<image> or train/<class>/<image>)")

    depth = 3 if split_layout else 2

    def class_dir(split: str, cls: str) -> str:
        return _join(prefix, (split, cls) if split_layout else (cls,))

    per_split_classes: dict[str, set[str]] = {s: set() for s in splits}
    for d in rel_dirs:
        if len(d) > depth - 1:
            raise PrepError(
                f"{name}: unexpected nested folder '{_join(prefix, d)}' (images go in {_layout(split_layout)})"
            )
        if len(d) == depth - 1:
            split = d[0] if split_layout else "train"
            per_split_classes[split].add(d[-1])

    if class_names is None:
        class_names = sorted(set().union(*per_split_classes.values()))
        if not class_names:
            raise PrepError(f"{name}: no class folders (images go in {_layout(split_layout)})")
    class_index = {c: i for i, c in enumerate(class_names)}
    for split, found in per_split_classes.items():
        for c in sorted(found):
            if c not in class_index:
                raise PrepError(
                    f"{name}: unknown class folder '{class_dir(split, c)}' (expected one of: {', '.join(class_names)})"
                )
        for c in class_names:
            if c not in found:
                raise PrepError(f"{name}: split '{split}' has no folder for class '{c}'")

    counts = {s: [0] * len(class_names) for s in splits}
    entries = []
    for full, rel in zip(files, rel_files):
        if len(rel) != depth:
            raise PrepError(f"{name}: unexpected file '{_join(prefix, rel)}' (images go in {_layout(split_layout)})")
        if PurePosixPath(rel[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            raise PrepError(f"{name}: '{_join(prefix, rel)}' is not an image file")
        split = rel[0] if split_layout else "train"
        label = class_index[rel[-2]]
        counts[split][label] += 1
        entries.append(TreeEntry(split, label, full, "/".join(full)))
    for split in splits:
        for c, n in zip(class_names, counts[split]):
            if n == 0:
                raise PrepError(f"{name}: class folder '{class_dir(split, c)}' holds no images (empty class)")
    return TreeListing(name, tuple(class_names), tuple(splits), tuple(entries), counts)


def _wrapper_prefix(files: list[Parts], dirs: list[Parts]) -> Parts:
    """Folders that wrap the whole tree (one folder, no files beside it), e.g. cifar10-jpg/."""
    prefix: Parts = ()
    while True:
        depth = len(prefix)
        children = {d[depth] for d in dirs if len(d) > depth and d[:depth] == prefix}
        loose_files = [f for f in files if len(f) == depth + 1 and f[:depth] == prefix]
        if len(children) != 1 or loose_files:
            return prefix
        (only,) = children
        if only == "train":
            return prefix
        # Stop if the single child is a class folder, i.e. it holds images directly.
        if any(len(f) == depth + 2 and f[: depth + 1] == prefix + (only,) for f in files):
            return prefix
        prefix = prefix + (only,)


def _ordered_splits(top_dirs: Sequence[str]) -> list[str]:
    first = [s for s in SPLIT_ORDER if s in top_dirs]
    return first + sorted(d for d in top_dirs if d not in SPLIT_ORDER)


def _join(prefix: Parts, rel: Parts) -> str:
    return "/".join(prefix + rel)


def _layout(split_layout: bool) -> str:
    return "<split>/<class>/<image>" if split_layout else "<class>/<image>"
