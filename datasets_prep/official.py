"""Reading an official dataset archive (CIFAR-100, STL-10) in one streaming pass, its MD5 taken on the way.

The MD5 covers every byte of the file: the tar reader stops at the end-of-archive marker, so the
rest (padding, the gzip trailer) is read through the same hash after the pass. Callers collect
what they need inside the pass and check it only after the MD5 matched, so a wrong file is
reported as one, not as whatever its content happens to break first.
"""

from __future__ import annotations

import hashlib
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import PrepError
from .imagetree import TAR_ERRORS
from .progress import Bars

_DRAIN_CHUNK = 1 << 20


class HashingReader:
    """A read-only file that feeds an MD5 and a progress bar with every byte read through it."""

    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]):
        self._raw = raw
        self._advance = advance
        self.md5 = hashlib.md5()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.md5.update(data)
        self._advance(len(data))
        return data

    def hexdigest_of_whole_file(self) -> str:
        while self.read(_DRAIN_CHUNK):
            pass
        return self.md5.hexdigest()


def check_md5(path: Path, actual: str, expected: str, official: str) -> None:
    if actual != expected.lower():
        raise PrepError(
            f"{path}: MD5 {actual}, expected {expected.lower()} (corrupt, or not the official {official})"
        )


@contextmanager
def official_archive(path: Path, expected_md5: str | None, official: str, bars: Bars) -> Iterator[tarfile.TarFile]:
    """A tar archive opened for one front-to-back pass; on leaving, its MD5 is checked (None: not checked).

    Tar errors (truncated, corrupt, not a tar) become one-line PrepErrors naming the file.
    """
    with open(path, "rb") as raw:
        reader = HashingReader(raw, bars.task(f"read {path.name}", path.stat().st_size, unit="bytes"))
        try:
            with tarfile.open(fileobj=reader, mode="r|*") as tf:
                yield tf
            actual = reader.hexdigest_of_whole_file()
        except TAR_ERRORS as e:
            raise PrepError(f"{path}: corrupt or truncated archive ({e})") from None
    if expected_md5 is not None:
        check_md5(path, actual, expected_md5, official)
