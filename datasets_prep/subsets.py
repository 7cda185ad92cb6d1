"""Labeled subsets: a class-balanced, seeded choice of N labeled rows (plus an optional validation hold-out).

The choice must be the same on any machine and with any numpy, so it does not use numpy's random
generators (whose streams are not promised stable across versions). Each row gets a key from
splitmix64, a fixed 64-bit integer hash, of (seed, row index); within each class the rows with
the smallest keys are labeled, the next ones form the validation hold-out. The unlabeled set is
every row of the split except the validation rows (ReMixMatch also uses the labeled rows as
unlabeled data).

When N is not a multiple of the number of classes, the N mod K extra labels go to the classes
with the smallest class keys (also from splitmix64 of the seed), so no class is favoured by its id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from remixmatch.common.atomic import atomic_write_json

from .errors import PrepError

SUBSET_FORMAT = "remixmatch-labeled-subset"
SUBSET_FORMAT_VERSION = 1
MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
# Class keys come from a stream disjoint from row keys (row indices never reach 2**63).
_CLASS_STREAM = 1 << 63


def splitmix64_int(x: int) -> int:
    """splitmix64's output function for one 64-bit value (plain Python ints; the reference)."""
    z = (x + _GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & MASK64
    return z ^ (z >> 31)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64_int over a uint64 array (uint64 arithmetic wraps modulo 2**64, as the hash needs)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def row_keys(n_rows: int, seed: int) -> np.ndarray:
    """The ranking key of each row index for `seed`."""
    seed_key = splitmix64_int(seed & MASK64)
    return splitmix64(np.arange(n_rows, dtype=np.uint64) ^ np.uint64(seed_key))


@dataclass(frozen=True)
class LabeledSubset:
    n_labeled: int
    seed: int
    n_valid: int
    num_classes: int
    num_rows: int  # rows of the split the indices refer to
    labeled: np.ndarray  # int64, ascending
    valid: np.ndarray  # int64, ascending
    split: str = "train"
    dataset: str | None = None
    fingerprint: str | None = None  # of the shard directory (ShardSet.fingerprint), when known
    fold: int | None = None  # the official fold the labeled rows are (fold_subset); None: chosen by seed

    def unlabeled(self) -> np.ndarray:
        """Rows used as unlabeled data: the whole split except the validation hold-out."""
        keep = np.ones(self.num_rows, dtype=bool)
        keep[self.valid] = False
        return np.flatnonzero(keep)

    def to_json(self, labels: np.ndarray | None = None) -> dict:
        doc = {
            "format": SUBSET_FORMAT,
            "format_version": SUBSET_FORMAT_VERSION,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "split": self.split,
            "num_rows": self.num_rows,
            "num_classes": self.num_classes,
            "n_labeled": self.n_labeled,
            "seed": self.seed,
            "n_valid": self.n_valid,
            "method": "per class, rows ranked by splitmix64(row ^ splitmix64(seed)); labeled first, then valid",
            "unlabeled": "all rows of the split except valid",
        }
        if self.fold is not None:
            doc["fold"] = self.fold
            doc["method"] = f"the dataset's official fold {self.fold}, exactly"
        if labels is not None:
            doc["labeled_per_class"] = np.bincount(labels[self.labeled], minlength=self.num_classes).tolist()
            doc["valid_per_class"] = np.bincount(labels[self.valid], minlength=self.num_classes).tolist()
        doc["labeled"] = self.labeled.tolist()
        doc["valid"] = self.valid.tolist()
        return doc


def _quotas(total: int, num_classes: int, seed: int) -> np.ndarray:
    quotas = np.full(num_classes, total // num_classes, dtype=np.int64)
    extra = total % num_classes
    if extra:
        seed_key = splitmix64_int(seed & MASK64)
        class_keys = splitmix64(np.arange(num_classes, dtype=np.uint64) ^ np.uint64(seed_key ^ _CLASS_STREAM))
        quotas[np.argsort(class_keys, kind="stable")[:extra]] += 1
    return quotas


def labeled_subset(
    source,
    n_labeled: int,
    seed: int,
    n_valid: int = 0,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    split: str = "train",
) -> LabeledSubset:
    """Choose `n_labeled` class-balanced labeled rows and `n_valid` validation rows from the rest.

    `source` is a ShardSet (its `split` is used), a Split, or an array of labels (-1 = unlabeled,
    never chosen). The same (labels, n_labeled, seed, n_valid) always gives the same indices.
    """
    dataset = fingerprint = None
    if hasattr(source, "fingerprint") and hasattr(source, "splits"):  # ShardSet
        shardset, source = source, source[split]
    elif hasattr(source, "shardset"):  # Split
        shardset, split = source.shardset, source.name
    else:
        shardset = None
    if shardset is not None:
        dataset, fingerprint = shardset.dataset, shardset.fingerprint
        num_classes = num_classes or shardset.num_classes
        class_names = class_names or shardset.class_names
        labels = np.asarray(source.labels)
    else:
        labels = np.asarray(source)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise PrepError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if num_classes < 1:
        raise PrepError("no classes: the labels hold no labeled row")
    bad = np.flatnonzero((labels < -1) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise PrepError(f"label {int(labels[i])} at row {i} out of range 0..{num_classes - 1} (-1 = unlabeled)")
    if n_labeled < 1:
        raise PrepError(f"the number of labels must be >= 1, not {n_labeled}")
    if n_valid < 0:
        raise PrepError(f"the validation size must be >= 0, not {n_valid}")

    keys = row_keys(len(labels), seed)
    label_quota = _quotas(n_labeled, num_classes, seed)
    valid_quota = _quotas(n_valid, num_classes, seed + 1) if n_valid else np.zeros(num_classes, np.int64)
    labeled_parts, valid_parts = [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        ranked = members[np.argsort(keys[members], kind="stable")]
        need = int(label_quota[c] + valid_quota[c])
        if len(ranked) < need:
            name = class_names[c] if class_names else str(c)
            what = f"{int(label_quota[c])} labels" + (f" + {int(valid_quota[c])} validation rows" if n_valid else "")
            raise PrepError(
                f"class '{name}' holds {len(ranked)} labeled rows, {what} requested "
                f"({n_labeled} labels{f', {n_valid} validation' if n_valid else ''} over {num_classes} classes)"
            )
        labeled_parts.append(ranked[: label_quota[c]])
        valid_parts.append(ranked[label_quota[c] : need])
    return LabeledSubset(
        n_labeled=n_labeled,
        seed=seed,
        n_valid=n_valid,
        num_classes=num_classes,
        num_rows=len(labels),
        labeled=np.sort(np.concatenate(labeled_parts)).astype(np.int64),
        valid=np.sort(np.concatenate(valid_parts)).astype(np.int64),
        split=split,
        dataset=dataset,
        fingerprint=fingerprint,
    )


def fold_subset(shardset, fold: int, *, unlabeled_splits: Sequence[str] | None = None) -> LabeledSubset:
    """The dataset's official fold `fold` as the labeled rows, exactly (STL-10's fold_indices.txt).

    The subset indexes the folds' split joined with `unlabeled_splits` (default: "unlabeled" when
    the dataset has it), so every row of both is unlabeled data, as in the paper's STL-10 runs:
    split "train+unlabeled", the train rows first. Nothing is held out for validation.
    """
    folds = shardset.folds
    if folds is None:
        raise PrepError(f"{shardset.path}: dataset {shardset.dataset} has no official folds (--fold is for STL-10)")
    if not 0 <= fold < len(folds):
        raise PrepError(f"fold {fold} out of range 0..{len(folds) - 1} ({shardset.dataset} has {len(folds)} folds)")
    if unlabeled_splits is None:
        unlabeled_splits = [s for s in ("unlabeled",) if s in shardset]
    split = "+".join([shardset.folds_split, *unlabeled_splits])
    rows = shardset[split]
    labeled = np.sort(folds[fold])
    labels = np.asarray(rows.labels)
    if labeled.size and (labeled.max() >= len(shardset[shardset.folds_split]) or np.any(labels[labeled] < 0)):
        raise PrepError(f"{shardset.path}: fold {fold} names rows without a label")
    return LabeledSubset(
        n_labeled=len(labeled),
        seed=0,
        n_valid=0,
        num_classes=shardset.num_classes,
        num_rows=len(rows),
        labeled=labeled.astype(np.int64),
        valid=np.empty(0, np.int64),
        split=split,
        dataset=shardset.dataset,
        fingerprint=shardset.fingerprint,
        fold=fold,
    )


def save_subset(subset: LabeledSubset, path: str | Path, labels: np.ndarray | None = None) -> Path:
    """Write the subset as JSON (atomically: a reader never sees half a file). `labels` adds per-class counts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, subset.to_json(None if labels is None else np.asarray(labels)))


def load_subset(path: str | Path, *, expect_fingerprint: str | None = None) -> LabeledSubset:
    """Read a subset written by save_subset; with `expect_fingerprint`, refuse one made for other data."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PrepError(f"{path}: no such subset file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrepError(f"{path}: unreadable subset file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != SUBSET_FORMAT:
        raise PrepError(f"{path}: not a labeled-subset file")
    if doc.get("format_version") != SUBSET_FORMAT_VERSION:
        raise PrepError(f"{path}: subset format version {doc.get('format_version')} is not supported")
    if expect_fingerprint is not None and doc.get("fingerprint") != expect_fingerprint:
        raise PrepError(
            f"{path}: made for dataset fingerprint {str(doc.get('fingerprint'))[:12]}..., "
            f"not for these shards ({expect_fingerprint[:12]}...)"
        )
    try:
        subset = LabeledSubset(
            n_labeled=int(doc["n_labeled"]),
            seed=int(doc["seed"]),
            n_valid=int(doc["n_valid"]),
            num_classes=int(doc["num_classes"]),
            num_rows=int(doc["num_rows"]),
            labeled=np.asarray(doc["labeled"], dtype=np.int64),
            valid=np.asarray(doc["valid"], dtype=np.int64),
            split=doc.get("split", "train"),
            dataset=doc.get("dataset"),
            fingerprint=doc.get("fingerprint"),
            fold=None if doc.get("fold") is None else int(doc["fold"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PrepError(f"{path}: incomplete subset file ({type(e).__name__}: {e})") from None
    for name, rows in (("labeled", subset.labeled), ("valid", subset.valid)):
        if rows.size and (rows.min() < 0 or rows.max() >= subset.num_rows):
            raise PrepError(f"{path}: {name} index out of range 0..{subset.num_rows - 1}")
    if len(subset.labeled) != subset.n_labeled or len(subset.valid) != subset.n_valid:
        raise PrepError(f"{path}: index counts do not match n_labeled / n_valid")
    return subset
