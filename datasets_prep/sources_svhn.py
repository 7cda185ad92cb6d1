"""prep-svhn: the official SVHN cropped-digit .mat files (train, test, optional extra) -> shards.

Each file holds X uint8 (32, 32, 3, N) and y (N, 1) with labels 1..10, where 10 means the digit
0; stored labels are the digits themselves (class names "0".."9"). Files are streamed in blocks
of images, so `extra` (531,131 images) needs no more memory than one block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .download import download, download_dir, is_url
from .errors import PrepError
from .format import DEFAULT_SHARD_ROWS, DatasetBuilder, DatasetInfo, check_output_dir
from .matfile import MatFile
from .progress import Bars, progress_bars

SVHN_BASE_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = {  # split -> (file name, MD5 of the official file)
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}
SVHN_CLASSES = tuple(str(d) for d in range(10))
IMAGE_SHAPE = (32, 32, 3)
BLOCK_IMAGES = 8192


def prep_svhn(
    source: str | None,
    out: Path,
    *,
    extra: bool = False,
    overwrite: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    expected_md5: dict[str, str] | None = None,
    progress: bool | None = None,
) -> dict:
    """Shard SVHN into `out`. `source`: a folder holding the .mat files, or a base URL (default: the official one).

    `extra` adds the extra split (train and test are always prepared). `expected_md5` maps file
    names to MD5s that replace the official ones for a download (`--md5 FILE=HEX`: a mirror).
    """
    check_output_dir(out, overwrite)
    splits = ["train", "test"] + (["extra"] if extra else [])
    source = source or SVHN_BASE_URL
    md5s = {name: md5 for name, md5 in SVHN_FILES.values()}
    md5s.update(expected_md5 or {})
    with progress_bars(progress) as bars:
        if is_url(source):
            with download_dir(out) as tmp:
                base = source if source.endswith("/") else source + "/"
                files = {}
                for split in splits:
                    name = SVHN_FILES[split][0]
                    files[split] = download(base + name, tmp, md5s[name], bars)
                return _write(files, out, source, overwrite, shard_rows, bars)
        folder = Path(source)
        if not folder.is_dir():
            raise PrepError(
                f"source {folder} does not exist" if not folder.exists() else f"source {folder} is not a folder"
            )
        files = {}
        for split in splits:
            path = folder / SVHN_FILES[split][0]
            if not path.is_file():
                raise PrepError(f"{folder}: no {path.name}")
            files[split] = path
        return _write(files, out, str(folder), overwrite, shard_rows, bars)


def _read_labels(mat: MatFile) -> np.ndarray:
    y = mat["y"].read().reshape(-1)
    bad = np.flatnonzero((y != np.round(y)) | (y < 1) | (y > 10))
    if bad.size:
        raise PrepError(f"{mat.path.name}: label {y[bad[0]]:g} out of range 1..10 at row {int(bad[0])}")
    labels = y.astype(np.int16)
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    return labels


def _write(files: dict[str, Path], out: Path, desc: str, overwrite: bool, shard_rows: int, bars: Bars) -> dict:
    info = DatasetInfo("svhn", SVHN_CLASSES, IMAGE_SHAPE, "raw", desc)
    mats = {}
    try:
        # Open (index) every file first, so that a bad file fails before any shard is written.
        for split, path in files.items():
            mats[split] = MatFile(path)
            mat = mats[split]
            x = mat["X"]
            if x.dims[:3] != (32, 32, 3) or len(x.dims) != 4 or x.dtype != np.uint8:
                raise PrepError(f"{path.name}: X is {x.dtype} {x.dims}, expected uint8 (32, 32, 3, N)")
            y = mat["y"]
            if y.size != x.dims[3]:
                raise PrepError(f"{path.name}: {y.size} labels for {x.dims[3]} images")
        with DatasetBuilder(out, info, overwrite=overwrite, shard_rows=shard_rows) as builder:
            for split, mat in mats.items():
                labels = _read_labels(mat)
                writer = builder.split(split)
                advance = bars.task(f"svhn {split}", len(labels))
                done = 0
                for block in mat["X"].iter_last_axis(BLOCK_IMAGES):
                    k = len(block)
                    # Column-major (32, 32, 3, N) arrives as (k, channel, column, row): -> (k, row, column, channel).
                    hwc = block.transpose(0, 3, 2, 1)
                    sources = [f"{mat.path.name}:{i}" for i in range(done, done + k)]
                    writer.write(labels[done : done + k], hwc, sources)
                    done += k
                    advance(k)
                builder.close_split(split)
            return builder.commit()
    finally:
        for mat in mats.values():
            mat.close()
