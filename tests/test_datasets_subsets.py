"""Labeled subsets: splitmix64 golden values, balance, determinism, hold-out, JSON round trip, bad requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datasets_helpers import assert_one_line_error, run_main
from remixmatch.datasets_prep import DatasetBuilder, DatasetInfo, PrepError, open_shards
from remixmatch.datasets_prep.cli import shards_main
from remixmatch.datasets_prep.subsets import (
    labeled_subset,
    load_subset,
    row_keys,
    save_subset,
    splitmix64,
    splitmix64_int,
)

LABELS = np.arange(200) % 10


def test_splitmix64_golden_values():
    # splitmix64 with state 0 yields 0xe220a8397b1dcdaf first (Vigna's reference generator).
    assert splitmix64_int(0) == 0xE220A8397B1DCDAF
    assert splitmix64_int(1) == 0x910A2DEC89025CC1
    assert splitmix64_int(2**64 - 1) == 0xE4D971771B652C20
    values = [0, 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 123456789]
    got = splitmix64(np.array(values, dtype=np.uint64))
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [splitmix64_int(v) for v in values]
    assert [int(k) for k in row_keys(3, seed=5)] == [splitmix64_int(i ^ splitmix64_int(5)) for i in range(3)]


def test_golden_subset():
    """Pinned indices: a change here changes every experiment's labeled set."""
    s = labeled_subset(LABELS, 20, seed=1, n_valid=10)
    assert s.labeled.tolist() == [
        29,
        31,
        51,
        90,
        92,
        104,
        108,
        115,
        116,
        143,
        144,
        147,
        152,
        153,
        155,
        178,
        189,
        190,
        196,
        197,
    ]
    assert s.valid.tolist() == [30, 36, 43, 84, 105, 107, 132, 149, 151, 168]
    s = labeled_subset(LABELS, 13, seed=7)
    assert s.labeled.tolist() == [12, 30, 41, 51, 53, 63, 67, 88, 115, 152, 174, 179, 196]


def test_balance_determinism_and_seeds():
    labels = np.repeat(np.arange(10), 50)
    np.random.default_rng(0).shuffle(labels)
    a = labeled_subset(labels, 40, seed=3)
    assert np.bincount(labels[a.labeled], minlength=10).tolist() == [4] * 10
    assert np.array_equal(a.labeled, labeled_subset(labels.tolist(), 40, seed=3).labeled)
    assert not np.array_equal(a.labeled, labeled_subset(labels, 40, seed=4).labeled)
    assert np.all(np.diff(a.labeled) > 0)
    # Growing N keeps the smaller set: the ranking per class is the same, only cut later.
    assert set(a.labeled) <= set(labeled_subset(labels, 250, seed=3).labeled)


def test_remainder_spread_over_classes():
    s = labeled_subset(LABELS, 13, seed=7)
    counts = np.bincount(LABELS[s.labeled], minlength=10)
    assert counts.sum() == 13 and set(counts.tolist()) == {1, 2}


def test_validation_hold_out_and_unlabeled():
    labels = np.repeat(np.arange(4), 30)
    s = labeled_subset(labels, 8, seed=0, n_valid=12)
    assert np.bincount(labels[s.valid], minlength=4).tolist() == [3] * 4
    assert not set(s.labeled) & set(s.valid)
    unlabeled = s.unlabeled()
    assert len(unlabeled) == 120 - 12 and not set(unlabeled) & set(s.valid)
    assert set(s.labeled) <= set(unlabeled)  # labeled rows stay in the unlabeled stream


def test_unlabeled_rows_are_never_chosen():
    labels = np.array([-1] * 50 + [0] * 5 + [1] * 5)
    s = labeled_subset(labels, 6, seed=1, num_classes=2)
    assert np.all(labels[s.labeled] >= 0)


def test_more_labels_than_a_class_holds():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(PrepError, match=r"class 'bee' holds 3 labeled rows, 5 labels requested") as err:
        labeled_subset(labels, 10, seed=0, class_names=("ant", "bee"))
    assert "\n" not in str(err.value)
    with pytest.raises(PrepError, match=r"class '1' holds 3 labeled rows, 2 labels \+ 2 validation rows"):
        labeled_subset(labels, 4, seed=0, n_valid=4)


def test_label_out_of_range():
    with pytest.raises(PrepError, match=r"label 5 at row 2 out of range 0\.\.2"):
        labeled_subset(np.array([0, 1, 5, 2]), 3, seed=0, num_classes=3)
    with pytest.raises(PrepError, match=r"label -2 at row 0"):
        labeled_subset(np.array([-2, 1]), 1, seed=0, num_classes=2)


def test_bad_requests():
    with pytest.raises(PrepError, match=">= 1"):
        labeled_subset(LABELS, 0, seed=0)
    with pytest.raises(PrepError, match=">= 0"):
        labeled_subset(LABELS, 10, seed=0, n_valid=-1)
    with pytest.raises(PrepError, match="1-D integer"):
        labeled_subset(np.zeros(5), 1, seed=0)


def small_dataset(path, seed=0):
    rng = np.random.default_rng(seed)
    info = DatasetInfo("toy", ("a", "b"), (2, 2, 1), "raw", "unit test")
    with DatasetBuilder(path, info) as builder:
        builder.split("train").write(
            np.arange(40) % 2, rng.integers(0, 256, (40, 2, 2, 1), dtype=np.uint8), [str(i) for i in range(40)]
        )
        builder.commit()
    return open_shards(path)


def test_json_round_trip_with_dataset_identity(tmp_path):
    ds = small_dataset(tmp_path / "ds")
    s = labeled_subset(ds, 6, seed=2, n_valid=4)
    assert s.dataset == "toy" and s.fingerprint == ds.fingerprint
    path = save_subset(s, tmp_path / "run" / "labeled.json", labels=ds["train"].labels)
    doc = json.loads(path.read_text())
    assert doc["n_labeled"] == 6 and doc["seed"] == 2 and doc["n_valid"] == 4
    assert doc["fingerprint"] == ds.fingerprint and doc["labeled_per_class"] == [3, 3]
    back = load_subset(path, expect_fingerprint=ds.fingerprint)
    assert np.array_equal(back.labeled, s.labeled) and np.array_equal(back.valid, s.valid)
    assert np.array_equal(back.unlabeled(), s.unlabeled())
    other = small_dataset(tmp_path / "other", seed=1)
    with pytest.raises(PrepError, match="not for these shards"):
        load_subset(path, expect_fingerprint=other.fingerprint)


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(PrepError, match="no such subset file"):
        load_subset(tmp_path / "absent.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(PrepError, match="unreadable"):
        load_subset(tmp_path / "x.json")
    s = labeled_subset(LABELS, 10, seed=0)
    doc = s.to_json()
    doc["labeled"][0] = 999
    (tmp_path / "y.json").write_text(json.dumps(doc))
    with pytest.raises(PrepError, match="out of range"):
        load_subset(tmp_path / "y.json")


def test_subset_command(tmp_path, capsys):
    small_dataset(tmp_path / "ds")
    rc, out, err = run_main(
        shards_main, ["subset", tmp_path / "ds", "--labels", 4, "--seed", 1, "--out", tmp_path / "s.json"], capsys
    )
    assert rc == 0, err
    assert "4 labeled" in out and load_subset(tmp_path / "s.json").n_labeled == 4
    rc, _, err = run_main(
        shards_main, ["subset", tmp_path / "ds", "--labels", 50, "--seed", 1, "--out", tmp_path / "t.json"], capsys
    )
    assert rc == 2
    assert_one_line_error(err, "rmm-shards subset", "class 'a' holds 20 labeled rows, 25 labels requested")
