"""prep-cifar10: every source kind, the download path, and each kind of bad input."""

from __future__ import annotations

import hashlib
import pickle
import signal
import time

import numpy as np
import pytest

from datasets_helpers import (
    CLASSES,
    assert_one_line_error,
    cifar_archive,
    cli_subprocess,
    expected_splits,
    http_server,
    image_bytes,
    no_leftovers,
    random_image,
    run_main,
    tar_directory,
    write_tree,
)
from remixmatch.datasets_prep import ShardError, open_shards
from remixmatch.datasets_prep.cli import prep_cifar10_main
from remixmatch.datasets_prep.synthetic import batch_pickle, meta_pickle, synthetic_batches, write_cifar10_archive

PROG = "prep-cifar10"


def assert_matches(out, batches):
    ds = open_shards(out)
    assert ds.dataset == "cifar10" and ds.class_names == CLASSES and ds.image_shape == (32, 32, 3)
    for split, (images, labels) in expected_splits(batches).items():
        part = ds[split]
        np.testing.assert_array_equal(part.labels, labels)
        np.testing.assert_array_equal(part.images(slice(None)), images)
    ds.verify()


def test_official_archive_round_trip(tmp_path, capsys):
    archive, batches = cifar_archive(tmp_path)
    rc, out, err = run_main(
        prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds", "--shard-rows", 30], capsys
    )
    assert rc == 0, err
    assert "train 100 rows in 4 shards" in out and err == ""
    assert_matches(tmp_path / "ds", batches)
    sources = open_shards(tmp_path / "ds")["train"].sources([0, 20, 99])
    assert sources == ["data_batch_1:0", "data_batch_2:0", "data_batch_5:19"]


def test_planar_rows_become_hwc(tmp_path, capsys):
    # One image whose red, green and blue planes are distinguishable: HWC must put them last.
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, :, :, 0], image[0, :, :, 1], image[0, :, :, 2] = 10, 20, 30
    image[0, 0, 1] = (1, 2, 3)
    batches = {name: (image, np.array([7])) for name in synthetic_batches(1)}
    archive = write_cifar10_archive(tmp_path / "c.tar.gz", batches)
    assert run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)[0] == 0
    stored = open_shards(tmp_path / "ds")["test"].images(0)
    assert tuple(stored[0, 1]) == (1, 2, 3) and tuple(stored[5, 5]) == (10, 20, 30)


def test_extracted_batches_folder(tmp_path, capsys):
    archive, batches = cifar_archive(tmp_path)
    import tarfile

    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    for source in (tmp_path / "x", tmp_path / "x" / "cifar-10-batches-py"):
        out = tmp_path / f"ds-{source.name}"
        rc, _, err = run_main(prep_cifar10_main, ["--source", source, "--out", out], capsys)
        assert rc == 0, err
        assert_matches(out, batches)


@pytest.mark.parametrize("as_tar", [False, True])
def test_image_tree(tmp_path, capsys, as_tar):
    layout = {split: {c: n for c in CLASSES} for split, n in (("train", 3), ("test", 2))}
    written = write_tree(tmp_path / "cifar10-png", layout)
    source = tar_directory(tmp_path / "cifar10-png", tmp_path / "tree.tar.gz") if as_tar else tmp_path / "cifar10-png"
    rc, _, err = run_main(prep_cifar10_main, ["--source", source, "--out", tmp_path / "ds"], capsys)
    assert rc == 0, err
    ds = open_shards(tmp_path / "ds")
    for split in ("train", "test"):
        part = ds[split]
        assert len(part) == 10 * layout[split]["cat"]
        assert list(np.bincount(part.labels)) == [layout[split]["cat"]] * 10
        prefix = "cifar10-png/" if as_tar else ""
        for i, name in enumerate(part.sources(range(len(part)))):
            rel = name.removeprefix(prefix)
            np.testing.assert_array_equal(part.images(i), written[rel])
            assert CLASSES[part.labels[i]] == rel.split("/")[1]


def test_download_with_md5(tmp_path, capsys):
    (tmp_path / "www").mkdir()
    archive, batches = cifar_archive(tmp_path / "www")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with http_server(archive.parent) as base:
        rc, _, err = run_main(
            prep_cifar10_main, ["--source", base + archive.name, "--md5", md5, "--out", tmp_path / "ds"], capsys
        )
    assert rc == 0, err
    assert_matches(tmp_path / "ds", batches)
    assert no_leftovers(tmp_path, "ds") == []  # the download directory is gone


def test_download_md5_mismatch(tmp_path, capsys):
    (tmp_path / "www").mkdir()
    archive, _ = cifar_archive(tmp_path / "www")
    with http_server(archive.parent) as base:
        # No --md5: the official MD5 is expected, and a synthetic archive cannot have it.
        rc, _, err = run_main(prep_cifar10_main, ["--source", base + archive.name, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "MD5", "c58f30108f718f92721af3b95e74349a", archive.name)
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def test_download_errors(tmp_path, capsys):
    (tmp_path / "www").mkdir()
    with http_server(tmp_path / "www") as base:
        rc, _, err = run_main(prep_cifar10_main, ["--source", base + "absent.tar.gz", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "cannot download", "absent.tar.gz", "404")
    assert no_leftovers(tmp_path, "ds") == []


def test_file_url(tmp_path, capsys):
    archive, batches = cifar_archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    rc, _, err = run_main(
        prep_cifar10_main, ["--source", archive.as_uri(), "--md5", md5, "--out", tmp_path / "ds"], capsys
    )
    assert rc == 0, err
    assert_matches(tmp_path / "ds", batches)


def test_missing_source(tmp_path, capsys):
    rc, _, err = run_main(prep_cifar10_main, ["--source", tmp_path / "nope.tar.gz", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "nope.tar.gz", "does not exist")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not-an-archive"])
def test_damaged_archive(tmp_path, capsys, damage):
    archive, _ = cifar_archive(tmp_path)
    raw = archive.read_bytes()
    if damage == "truncated":
        archive.write_bytes(raw[: len(raw) // 2])
    elif damage == "corrupt":
        archive.write_bytes(raw[:2000] + bytes(b ^ 0x5A for b in raw[2000:4000]) + raw[4000:])
    else:
        archive.write_bytes(b"this is not an archive\n" * 100)
    rc, _, err = run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, str(archive))
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def test_archive_missing_a_batch(tmp_path, capsys):
    batches = synthetic_batches(5)
    del batches["data_batch_3"]
    archive = write_cifar10_archive(tmp_path / "c.tar.gz", batches)
    rc, _, err = run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "lacks cifar-10-batches-py/data_batch_3")


def test_label_out_of_range_in_batch(tmp_path, capsys):
    batches = synthetic_batches(5)
    images, labels = batches["data_batch_2"]
    labels = labels.copy()
    labels[3] = 12
    batches["data_batch_2"] = (images, labels)
    archive = write_cifar10_archive(tmp_path / "c.tar.gz", batches)
    rc, _, err = run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "data_batch_2", "label 12 out of range", "row 3")
    assert not (tmp_path / "ds").exists()


def test_meta_with_other_classes(tmp_path, capsys):
    archive, _ = cifar_archive(tmp_path, members={"batches.meta": meta_pickle(("x",) * 10)})
    rc, _, err = run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "batches.meta", "not the standard CIFAR-10 classes")


def test_pickle_naming_other_globals_is_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    archive, _ = cifar_archive(tmp_path, members={"data_batch_1": pickle.dumps({b"data": Evil()}, protocol=2)})
    rc, out, err = run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2 and "owned" not in out
    assert_one_line_error(err, PROG, "data_batch_1", "refusing to load", "print")


def test_batch_with_wrong_shape(tmp_path, capsys):
    bad = batch_pickle(np.zeros((4, 16, 16, 3), np.uint8), [0, 1, 2, 3])  # 768 bytes per row
    archive, _ = cifar_archive(tmp_path, members={"test_batch": bad})
    rc, _, err = run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "test_batch", "expected uint8 (N, 3072)")


def cifar_tree(root, per_class=1):
    return write_tree(root, {split: {c: per_class for c in CLASSES} for split in ("train", "test")})


def test_unknown_class_folder(tmp_path, capsys):
    cifar_tree(tmp_path / "t")
    write_tree(tmp_path / "t", {"train": {"unicorn": 1}})
    rc, _, err = run_main(prep_cifar10_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "unknown class folder 'train/unicorn'")


def test_empty_class_folder(tmp_path, capsys):
    cifar_tree(tmp_path / "t")
    for f in (tmp_path / "t" / "test" / "dog").iterdir():
        f.unlink()
    rc, _, err = run_main(prep_cifar10_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "'test/dog'", "empty class")


def test_empty_class_in_tar(tmp_path, capsys):
    cifar_tree(tmp_path / "t")
    for f in (tmp_path / "t" / "train" / "ship").iterdir():
        f.unlink()
    tar = tar_directory(tmp_path / "t", tmp_path / "t.tar")
    rc, _, err = run_main(prep_cifar10_main, ["--source", tar, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "'t/train/ship'", "empty class")


def test_non_image_file(tmp_path, capsys):
    cifar_tree(tmp_path / "t")
    (tmp_path / "t" / "train" / "cat" / "notes.txt").write_text("hello")
    rc, _, err = run_main(prep_cifar10_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "'train/cat/notes.txt' is not an image file")


def test_undecodable_image(tmp_path, capsys):
    cifar_tree(tmp_path / "t")
    (tmp_path / "t" / "test" / "frog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    rc, _, err = run_main(prep_cifar10_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "test/frog/broken.png", "not a readable image")
    assert no_leftovers(tmp_path, "ds") == [] and not (tmp_path / "ds").exists()


def test_tree_image_of_wrong_size(tmp_path, capsys):
    cifar_tree(tmp_path / "t")
    rng = np.random.default_rng(0)
    (tmp_path / "t" / "train" / "bird" / "big.png").write_bytes(image_bytes(random_image(rng, 40, 36)))
    rc, _, err = run_main(prep_cifar10_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "train/bird/big.png is 36x40", "32x32")


def test_output_exists_and_not_empty(tmp_path, capsys):
    archive, batches = cifar_archive(tmp_path)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("mine")
    rc, _, err = run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "not empty", "--overwrite")
    rc, _, err = run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds", "--overwrite"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "not a shard directory")
    assert (tmp_path / "ds" / "keep.txt").read_text() == "mine"


def test_overwrite_an_earlier_prep(tmp_path, capsys):
    archive, _ = cifar_archive(tmp_path, seed=0)
    assert run_main(prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds"], capsys)[0] == 0
    archive2, batches2 = cifar_archive(tmp_path, seed=1, name="other.tar.gz")
    rc, _, err = run_main(prep_cifar10_main, ["--source", archive2, "--out", tmp_path / "ds", "--overwrite"], capsys)
    assert rc == 0, err
    assert_matches(tmp_path / "ds", batches2)
    assert no_leftovers(tmp_path, "ds") == []


def test_bad_arguments_are_one_line(tmp_path, capsys):
    rc, _, err = run_main(prep_cifar10_main, ["--out", tmp_path / "ds", "--shard-rows", "0"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "--shard-rows", "must be >= 1")
    rc, _, err = run_main(prep_cifar10_main, [], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "--out")


def start_and_kill(argv, tmp_path, out_name):
    """Start prep-cifar10, SIGKILL it once its first shard is being written; returns its temporary directory."""
    proc = cli_subprocess("prep_cifar10_main", argv)
    tmp_dir = tmp_path / f"{out_name}.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if tmp_dir.is_dir() and any(tmp_dir.glob("*.partial")):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "prep finished before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return tmp_dir


def test_killed_prep_leaves_no_dataset(tmp_path):
    """SIGKILL in the middle of writing shards: no manifest, no directory under the output's name."""
    archive = write_cifar10_archive(tmp_path / "c.tar.gz", synthetic_batches(1000), compresslevel=1)
    out = tmp_path / "ds"
    argv = ["--source", archive, "--out", out, "--shard-rows", "10"]
    tmp_dir = start_and_kill(argv, tmp_path, "ds")
    assert not out.exists()
    assert tmp_dir.is_dir() and not (tmp_dir / "manifest.json").exists()
    with pytest.raises(ShardError, match="no manifest.json"):
        open_shards(tmp_dir)
    # A new prep to the same output is not disturbed by the leftover.
    proc = cli_subprocess("prep_cifar10_main", ["--source", archive, "--out", out])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    first = open_shards(out).fingerprint
    # A killed --overwrite leaves the earlier dataset whole.
    start_and_kill([*argv, "--overwrite"], tmp_path, "ds")
    ds = open_shards(out)
    assert ds.fingerprint == first and len(ds["train"]) == 5000
    ds.verify()
