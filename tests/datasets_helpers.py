"""Shared helpers for the dataset tests: synthetic sources in the official formats, a local HTTP server, CLI runs."""

from __future__ import annotations

import functools
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from remixmatch.datasets_prep.sources_cifar import CIFAR10_CLASSES, TEST_BATCH, TRAIN_BATCHES
from remixmatch.datasets_prep.synthetic import synthetic_batches, write_cifar10_archive

REPO = Path(__file__).resolve().parents[1]
REAL_CIFAR_JPG = REPO / ".." / "shared" / "data" / "cifar10-jpg.tar.gz"


def cifar_archive(tmp_path: Path, per_batch: int = 20, seed: int = 0, name: str = "cifar-10-python.tar.gz", **kw):
    """(path, batches) of a small synthetic official-format archive."""
    batches = synthetic_batches(per_batch, seed)
    return write_cifar10_archive(tmp_path / name, batches, **kw), batches


def expected_splits(batches) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What prep-cifar10 must store for `batches`: split -> (HWC images, labels)."""
    train = [batches[n] for n in TRAIN_BATCHES]
    return {
        "train": (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])),
        "test": batches[TEST_BATCH],
    }


def image_bytes(array: np.ndarray, fmt: str = "PNG", **save_kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.squeeze() if array.ndim == 3 and array.shape[2] == 1 else array).save(buf, fmt, **save_kw)
    return buf.getvalue()


def random_image(rng: np.random.Generator, h: int = 32, w: int = 32, c: int = 3) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def write_tree(
    root: Path,
    layout: dict[str, int] | dict[str, dict[str, int]],
    *,
    size: tuple[int, int] = (32, 32),
    fmt: str = "PNG",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write PNG/JPEG files: layout {class: n} or {split: {class: n}}; returns relative path -> pixels written."""
    rng = np.random.default_rng(seed)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    written = {}

    def fill(folder: Path, rel: str, count: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            arr = random_image(rng, size[1], size[0])
            name = f"{rel}/{i:04d}.{ext}"
            (root / name).write_bytes(image_bytes(arr, fmt))
            written[name] = arr

    for key, value in layout.items():
        if isinstance(value, dict):
            for cls, count in value.items():
                fill(root / key / cls, f"{key}/{cls}", count)
        else:
            fill(root / key, key, value)
    return written


def tar_directory(src: Path, dest: Path, arcname: str | None = None) -> Path:
    mode = "w:gz" if dest.name.endswith("gz") else "w"
    with tarfile.open(dest, mode) as tf:
        tf.add(src, arcname=arcname if arcname is not None else src.name)
    return dest


def svhn_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (32, 32, 3, n) uint8 and y (n, 1) float64 with labels 1..10, as in the official files."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.float64).reshape(n, 1)
    return x, y


def write_svhn(folder: Path, sizes: dict[str, int], *, compress: bool = True, seed: int = 0) -> dict[str, tuple]:
    """Write {split}_32x32.mat files with scipy (the test oracle); returns split -> (X, y)."""
    import scipy.io

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (split, n) in enumerate(sizes.items()):
        x, y = svhn_arrays(n, seed + i)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y}, do_compression=compress)
        arrays[split] = (x, y)
    return arrays


@contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve `directory` on 127.0.0.1 (ephemeral port) from a thread; yields the base URL ending in '/'."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            return None  # keep the access log out of the test output

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_main(main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """Run a CLI entry point in-process; (exit status, stdout, stderr). argparse exits become statuses."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(err: str, prog: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def assert_cli_error(main: Callable[[Sequence[str]], int], prog: str, capsys, argv: Sequence[str], *fragments: str,
                     status: int = 2) -> None:
    """``main(argv)`` fails with ``status`` and one line, ``prog: error: ...``, naming every fragment."""
    rc, _, err = run_main(main, argv, capsys)
    assert rc == status, f"exit status {rc}, stderr {err!r}"
    assert_one_line_error(err, prog, *fragments)


def cli_subprocess(entry: str, argv: Sequence[str], **kw) -> subprocess.Popen:
    """Start a CLI entry point (e.g. 'prep_cifar10_main') in a fresh interpreter."""
    code = f"import sys; from remixmatch.datasets_prep.cli import {entry}; sys.exit({entry}())"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **kw,
    )


def no_leftovers(parent: Path, out_name: str) -> list[str]:
    """Entries beside the output named after it that a failed prep must not leave (tmp, old, download dirs)."""
    return sorted(p.name for p in parent.iterdir() if p.name != out_name and out_name in p.name)


CLASSES = CIFAR10_CLASSES
