"""Atomic writes: a file appears whole under its name, or the old one stays as it was.

A reader may open a run's summary, a checkpoint, a report or an export while it is being written, and
a write may be killed half way. So every such file is written under a temporary sibling name,
``.<name>.tmp-<pid>`` (hidden, in the same directory: the rename stays on one file system and is
atomic), and renamed onto its name once complete; a failed write removes the temporary file.

    atomic_write_text(run_dir / "summary.txt", text)
    atomic_write_json(run_dir / "summary.json", summary)           # indent 1 and a final newline
    with atomic_target(out) as tmp:                                 # for writers that take a path
        fig.savefig(tmp, format="png")

Only the standard library: ``remixmatch.common`` imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: str | os.PathLike) -> Path:
    """The temporary name ``path`` is written under: ``.<name>.tmp-<pid>`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary sibling to write; renames it onto ``path`` when the block ends without an
    error. On an error (or an interrupt) the temporary file is removed and ``path`` is untouched.
    Nothing is written when the block writes nothing: a missing temporary file is an error."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 1, **dump_kw) -> Path:
    """``obj`` as JSON (``json.dumps(obj, indent=indent, **dump_kw)``) and a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **dump_kw) + "\n")


__all__ = ["atomic_target", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "temporary_sibling"]
