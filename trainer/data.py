"""A run's data: the shards, its labeled subset (made once, then read back on resume), the rows it
evaluates on and the per-channel statistics the model normalises with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remixmatch.datasets_prep import PrepError, open_shards
from remixmatch.datasets_prep.subsets import fold_subset, labeled_subset, load_subset, save_subset
from remixmatch.pipeline import TrainData, train_data

SUBSET_FILE = "labeled.json"
# --input-scaling reference: the reference's x 2/255 - 1, as the model's (x / 255 - mean) / std.
REFERENCE_SCALING = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass
class RunData:
    shards: object  # ShardSet
    subset: object  # LabeledSubset
    train: TrainData
    eval_split: object  # Split evaluated
    eval_rows: np.ndarray  # its rows
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def channel_statistics(split, rows: np.ndarray, chunk_pixels: int = 1 << 23) -> tuple[tuple, tuple]:
    """Per-channel mean and standard deviation of ``rows`` on the [0, 1] scale, exact (float64 sums
    over every pixel), read in chunks of about ``chunk_pixels`` pixels (8192 images at 32x32, 910 at
    96x96) so a large split never sits in memory as floats."""
    h, w, _ = split.images(rows[:1]).shape[1:] if len(rows) else (1, 1, 3)
    chunk = max(1, chunk_pixels // (h * w))
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    for start in range(0, len(rows), chunk):
        pixels = split.images(np.sort(rows[start:start + chunk])).reshape(-1, 3).astype(np.float64)
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
        count += pixels.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m / 255) for m in mean), tuple(float(s / 255) for s in std)


def load_run_data(config, run_dir: Path, resuming: bool) -> RunData:
    shards = open_shards(config.data)
    subset_path = Path(run_dir) / SUBSET_FILE
    if resuming and subset_path.exists():
        subset = load_subset(subset_path, expect_fingerprint=shards.fingerprint)
    else:
        try:
            if config.fold >= 0:
                subset = fold_subset(shards, config.fold)
            else:
                subset = labeled_subset(shards, config.labels, config.seed, n_valid=config.valid)
        except PrepError as error:
            what = f"--fold {config.fold}" if config.fold >= 0 else f"--labels {config.labels} --valid {config.valid}"
            raise PrepError(f"{what} on {shards.path}: {error}") from None
        save_subset(subset, subset_path, labels=shards[subset.split].labels)
    data = train_data(shards, subset, split=subset.split)
    if config.eval_split == "valid":
        eval_split, eval_rows = shards["train"], subset.valid
    else:
        eval_split = shards[config.eval_split]
        eval_rows = np.arange(len(eval_split), dtype=np.int64)
    if config.input_scaling == "reference":
        mean, std = REFERENCE_SCALING
    else:
        mean, std = channel_statistics(data.split, data.unlabeled)
    return RunData(shards, subset, data, eval_split, eval_rows, mean, std)
