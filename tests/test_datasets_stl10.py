"""prep-stl10: the official binary layout (column-major planes), folds, streaming, MD5, each bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from datasets_helpers import assert_one_line_error, http_server, no_leftovers, run_main
from remixmatch.datasets_prep import open_shards
from remixmatch.datasets_prep import sources_stl10
from remixmatch.datasets_prep.cli import prep_stl10_main
from remixmatch.datasets_prep.sources_stl10 import IMAGE_BYTES, hwc_to_planes, planes_to_hwc
from remixmatch.datasets_prep.synthetic import (
    STL10_CLASSES,
    synthetic_stl10,
    write_stl10_archive,
    write_stl10_folder,
)

PROG = "prep-stl10"


@pytest.fixture(scope="module")
def data():
    return synthetic_stl10(train=6, test=4, unlabeled=7, fold_size=3)


def archive_and_md5(tmp_path, data, **kw):
    path = write_stl10_archive(tmp_path / "stl10_binary.tar.gz", data, **kw)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def assert_matches(out, data, encoding="raw"):
    ds = open_shards(out)
    assert ds.dataset == "stl10" and ds.class_names == STL10_CLASSES and ds.image_shape == (96, 96, 3)
    assert set(ds.splits) == {"train", "test", "unlabeled"}
    assert ds.encoding == encoding
    for split in ("train", "test", "unlabeled"):
        images, labels = data[split]
        np.testing.assert_array_equal(ds[split].images(slice(None)), images)
        np.testing.assert_array_equal(ds[split].labels, np.full(len(images), -1) if labels is None else labels)
    assert ds.manifest["folds"] == {"split": "train", "indices": data["folds"]}
    ds.verify()
    return ds


def test_column_major_planes():
    # A pixel at row 1, column 2 of the green plane: byte 9216 + 2 * 96 + 1 of the row. A reader that
    # took the planes as row-major would put it at row 2, column 1 (a transposed image).
    row = np.zeros((1, IMAGE_BYTES), np.uint8)
    row[0, 96 * 96 + 2 * 96 + 1] = 200
    hwc = planes_to_hwc(row)
    assert hwc[0, 1, 2, 1] == 200 and hwc[0, 2, 1, 1] == 0 and hwc.sum() == 200
    np.testing.assert_array_equal(hwc_to_planes(hwc), row)


def test_archive_round_trip(tmp_path, capsys, data, monkeypatch):
    monkeypatch.setattr(sources_stl10, "BLOCK_IMAGES", 2)  # several blocks per file: the streamed path
    archive, md5 = archive_and_md5(tmp_path, data)
    rc, out, err = run_main(prep_stl10_main, ["--source", archive, "--md5", md5, "--out", tmp_path / "ds",
                                              "--shard-rows", 3], capsys)
    assert rc == 0, err
    assert "stl10 [raw]: " in out and "unlabeled 7 rows in 3 shards (" in out
    ds = assert_matches(tmp_path / "ds", data)
    assert ds["unlabeled"].sources([6]) == ["unlabeled_X.bin:6"]


def test_transposed_image_is_caught(tmp_path, capsys, data):
    # An asymmetric image through the whole prep: it must come back exactly, not as its transpose.
    image = np.zeros((96, 96, 3), np.uint8)
    image[10, 70] = (255, 0, 0)
    image[:5, :, 2] = 9
    mine = {**data, "train": (np.concatenate([image[None], data["train"][0][1:]]), data["train"][1])}
    write_stl10_folder(tmp_path / "src", mine)
    rc, _, err = run_main(prep_stl10_main, ["--source", tmp_path / "src", "--out", tmp_path / "ds"], capsys)
    assert rc == 0, err
    stored = open_shards(tmp_path / "ds")["train"].images(0)
    np.testing.assert_array_equal(stored, image)
    assert tuple(stored[10, 70]) == (255, 0, 0) and tuple(stored[70, 10]) == (0, 0, 0)


def test_folder_download_and_encoded(tmp_path, capsys, data):
    root = write_stl10_folder(tmp_path / "x", data)
    for source in (tmp_path / "x", root):
        out = tmp_path / f"ds-{source.name}"
        rc, _, err = run_main(prep_stl10_main, ["--source", source, "--out", out], capsys)
        assert rc == 0, err
        assert_matches(out, data)
    archive, md5 = archive_and_md5(tmp_path, data)
    with http_server(tmp_path) as base:
        rc, _, err = run_main(prep_stl10_main, ["--source", base + archive.name, "--md5", md5,
                                                "--out", tmp_path / "ds-dl"], capsys)
    assert rc == 0, err
    assert open_shards(tmp_path / "ds-dl").fingerprint == open_shards(tmp_path / "ds-x").fingerprint
    rc, out, err = run_main(prep_stl10_main, ["--source", root, "--encoded", "--out", tmp_path / "png"], capsys)
    assert rc == 0, err
    assert "stl10 [png]" in out
    ds = assert_matches(tmp_path / "png", data, encoding="png")
    assert ds["test"].encoded([0])[0].startswith(b"\x89PNG")
    assert no_leftovers(tmp_path, "ds-dl") == []


def test_wrong_md5(tmp_path, capsys, data):
    archive, _ = archive_and_md5(tmp_path, data)
    rc, _, err = run_main(prep_stl10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, str(archive), "MD5", "91f7769df0f17e558f3565bffb0c7dfb", "not the official")
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def folds_text(lines):
    return "".join(" ".join(map(str, f)) + "\n" for f in lines).encode()


BAD = {
    "truncated-images": ({"train_X.bin": b"\0" * (6 * IMAGE_BYTES - 1)}, ("train_X.bin", "not a whole number", "truncated")),
    "short-labels": ({"test_y.bin": bytes([1, 2, 3])}, ("test_y.bin", "3 labels for 4 images")),
    "label-out-of-range": ({"train_y.bin": bytes([1, 2, 11, 4, 5, 6])}, ("train_y.bin", "label 11 out of range 1..10", "row 2")),
    "label-zero": ({"test_y.bin": bytes([0, 2, 3, 4])}, ("test_y.bin", "label 0 out of range", "row 0")),
    "fold-out-of-range": ({"fold_indices.txt": folds_text([[0, 1]] * 9 + [[2, 6]])}, ("fold_indices.txt line 10", "index 6 out of range 0..5")),
    "fold-repeated": ({"fold_indices.txt": folds_text([[0, 1]] * 3 + [[4, 3, 4]] + [[0]] * 6)}, ("fold_indices.txt line 4", "index 4 repeated")),
    "fold-count": ({"fold_indices.txt": folds_text([[0, 1]] * 9)}, ("fold_indices.txt", "9 folds, expected 10")),
    "missing-member": ({"unlabeled_X.bin": None}, ("lacks stl10_binary/unlabeled_X.bin",)),
    "class-names": ({"class_names.txt": b"a\nb\n"}, ("class_names.txt", "2 (2 distinct) class names, expected 10")),
}


@pytest.mark.parametrize("damage", sorted(BAD))
@pytest.mark.parametrize("kind", ["archive", "folder"])
def test_bad_input(tmp_path, capsys, data, damage, kind):
    members, fragments = BAD[damage]
    if kind == "archive":
        source, md5 = archive_and_md5(tmp_path, data, members=members)
        argv = ["--source", source, "--md5", md5]
    else:
        source = write_stl10_folder(tmp_path / "x", data, members=members)
        argv = ["--source", source]
    rc, _, err = run_main(prep_stl10_main, [*argv, "--out", tmp_path / "ds"], capsys)
    assert rc == 2, err
    assert_one_line_error(err, PROG, *fragments)
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def test_truncated_archive(tmp_path, capsys, data):
    archive, _ = archive_and_md5(tmp_path, data)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) * 2 // 3])
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    rc, _, err = run_main(prep_stl10_main, ["--source", archive, "--md5", md5, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, str(archive), "corrupt or truncated")
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def test_reads_in_bounded_blocks(tmp_path, capsys, data, monkeypatch):
    """No read asks for more than one block of images: a whole .bin file is never held in memory."""
    monkeypatch.setattr(sources_stl10, "BLOCK_IMAGES", 2)
    asked = []
    real = sources_stl10._read_exact

    def spy(f, n):
        asked.append(n)
        return real(f, n)

    monkeypatch.setattr(sources_stl10, "_read_exact", spy)
    write_stl10_folder(tmp_path / "x", data)
    rc, _, err = run_main(prep_stl10_main, ["--source", tmp_path / "x", "--out", tmp_path / "ds"], capsys)
    assert rc == 0, err
    assert max(asked) == 2 * IMAGE_BYTES and sum(asked) == 17 * IMAGE_BYTES
