"""Downloading an official archive into a temporary directory, verified by MD5 before anything reads it."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import PrepError
from .progress import Bars

URL_SCHEMES = ("http://", "https://", "ftp://", "file://")


def is_url(source: str) -> bool:
    return source.lower().startswith(URL_SCHEMES)


@contextmanager
def download_dir(out: Path) -> Iterator[Path]:
    """A temporary directory beside the output (same filesystem, usually roomier than /tmp), removed afterwards."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{out.name}.download-", dir=out.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def download(url: str, directory: Path, expected_md5: str | None, bars: Bars) -> Path:
    """Fetch `url` into `directory`; raise PrepError unless it arrives whole and with `expected_md5`."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    dest = directory / name
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            advance = bars.task(f"download {name}", total, unit="bytes")
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
                received += len(chunk)
                advance(len(chunk))
    except urllib.error.HTTPError as e:
        raise PrepError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise PrepError(f"cannot download {url}: {reason}") from None
    if total is not None and received != total:
        raise PrepError(f"download of {url} is truncated: {received} of {total} bytes")
    actual = digest.hexdigest()
    if expected_md5 is not None and actual != expected_md5.lower():
        raise PrepError(
            f"download of {url} has MD5 {actual}, expected {expected_md5.lower()} (corrupt or not the official file)"
        )
    return dest
