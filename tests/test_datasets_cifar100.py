"""prep-cifar100: the official archive and its folder, fine and coarse labels, MD5, each bad input."""

from __future__ import annotations

import hashlib
import tarfile

import numpy as np
import pytest

from datasets_helpers import assert_one_line_error, http_server, no_leftovers, run_main
from remixmatch.datasets_prep import open_shards
from remixmatch.datasets_prep.cli import prep_cifar100_main
from remixmatch.datasets_prep.synthetic import (
    cifar100_meta_pickle,
    cifar100_split_pickle,
    synthetic_cifar100,
    write_cifar100_archive,
)

PROG = "prep-cifar100"


def archive_and_md5(tmp_path, per_split=12, **kw):
    splits = synthetic_cifar100(per_split)
    path = write_cifar100_archive(tmp_path / "cifar-100-python.tar.gz", splits, **kw)
    return path, hashlib.md5(path.read_bytes()).hexdigest(), splits


@pytest.mark.parametrize("coarse", [False, True])
def test_archive_round_trip(tmp_path, capsys, coarse):
    archive, md5, splits = archive_and_md5(tmp_path)
    argv = ["--source", archive, "--md5", md5, "--out", tmp_path / "ds", "--shard-rows", 5] + (["--coarse"] if coarse else [])
    rc, out, err = run_main(prep_cifar100_main, argv, capsys)
    assert rc == 0, err
    assert "train 12 rows in 3 shards" in out
    ds = open_shards(tmp_path / "ds")
    assert ds.dataset == ("cifar100-coarse" if coarse else "cifar100") and ds.image_shape == (32, 32, 3)
    assert ds.num_classes == (20 if coarse else 100)
    assert ds.class_names[3] == ("coarse_03" if coarse else "fine_03")  # from meta
    for split, (images, fine, coarse_labels) in splits.items():
        np.testing.assert_array_equal(ds[split].labels, coarse_labels if coarse else fine)
        np.testing.assert_array_equal(ds[split].images(slice(None)), images)
    ds.verify()


def test_extracted_folder_and_download(tmp_path, capsys):
    archive, md5, splits = archive_and_md5(tmp_path)
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    for source in (tmp_path / "x", tmp_path / "x" / "cifar-100-python"):
        out = tmp_path / f"ds-{source.name}"
        rc, _, err = run_main(prep_cifar100_main, ["--source", source, "--out", out], capsys)  # a folder has no MD5
        assert rc == 0, err
        np.testing.assert_array_equal(open_shards(out)["test"].images(slice(None)), splits["test"][0])
    with http_server(tmp_path) as base:
        rc, _, err = run_main(prep_cifar100_main, ["--source", base + archive.name, "--md5", md5,
                                                   "--out", tmp_path / "ds-dl"], capsys)
    assert rc == 0, err
    assert open_shards(tmp_path / "ds-dl").fingerprint == open_shards(tmp_path / "ds-x").fingerprint
    assert no_leftovers(tmp_path, "ds-dl") == []


def test_wrong_md5(tmp_path, capsys):
    archive, _, _ = archive_and_md5(tmp_path)
    rc, _, err = run_main(prep_cifar100_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, str(archive), "MD5", "eb9058c3a382ffc7106e4002c42a8d85", "not the official")
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def bad_archive(tmp_path, damage):
    if damage == "missing-member":
        return archive_and_md5(tmp_path, members={"meta": None})[:2], ("lacks cifar-100-python/meta",)
    if damage == "label-out-of-range":
        images, fine, coarse = synthetic_cifar100(4)["test"]
        fine = fine.copy()
        fine[2] = 100
        blob = cifar100_split_pickle(images, fine, coarse, "test")
        return archive_and_md5(tmp_path, members={"test": blob})[:2], ("test", "label 100 out of range 0..99", "row 2")
    if damage == "meta-names":
        blob = cifar100_meta_pickle(fine_names=["x"] * 100)
        return archive_and_md5(tmp_path, members={"meta": blob})[:2], ("meta", "fine_label_names", "expected 100")
    if damage == "wrong-shape":
        blob = cifar100_split_pickle(np.zeros((2, 16, 16, 3), np.uint8), [0, 1], [0, 0], "train")
        return archive_and_md5(tmp_path, members={"train": blob})[:2], ("train", "expected uint8 (N, 3072)")
    archive, md5, _ = archive_and_md5(tmp_path)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    return (archive, hashlib.md5(archive.read_bytes()).hexdigest()), ("corrupt or truncated",)


@pytest.mark.parametrize("damage", ["missing-member", "label-out-of-range", "meta-names", "wrong-shape", "truncated"])
def test_bad_archive(tmp_path, capsys, damage):
    (archive, md5), fragments = bad_archive(tmp_path, damage)
    rc, _, err = run_main(prep_cifar100_main, ["--source", archive, "--md5", md5, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, *fragments)
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def test_folder_missing_a_member(tmp_path, capsys):
    archive, _, _ = archive_and_md5(tmp_path)
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    (tmp_path / "x" / "cifar-100-python" / "test").unlink()
    rc, _, err = run_main(prep_cifar100_main, ["--source", tmp_path / "x", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "cifar-100-python", "no test")
    assert no_leftovers(tmp_path, "ds") == []
