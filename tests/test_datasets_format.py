"""Shard format: writer -> reader round trips, zero-copy reads, verification, output-directory safety."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from remixmatch.datasets_prep import DatasetBuilder, DatasetInfo, PrepError, ShardError, VerifyError, open_shards
from remixmatch.datasets_prep import format as fmt
from remixmatch.datasets_prep.format import MANIFEST_NAME, check_output_dir

CLASSES = ("a", "b", "c")


def build_raw(out, n_train=25, n_test=7, shard_rows=10, seed=0, chunk=6, shape=(4, 5, 3)):
    """Write a small raw dataset in uneven chunks; returns {split: (images, labels, sources)}."""
    rng = np.random.default_rng(seed)
    data = {}
    info = DatasetInfo("toy", CLASSES, shape, "raw", "unit test")
    with DatasetBuilder(out, info, shard_rows=shard_rows) as builder:
        for split, n in (("train", n_train), ("test", n_test)):
            images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
            labels = rng.integers(-1, len(CLASSES), size=n).astype(np.int16)
            sources = [f"{split}:{i}" for i in range(n)]
            writer = builder.split(split)
            for start in range(0, n, chunk):
                writer.write(
                    labels[start : start + chunk], images[start : start + chunk], sources[start : start + chunk]
                )
            data[split] = (images, labels, sources)
        builder.commit()
    return data


def test_round_trip_and_manifest(tmp_path):
    out = tmp_path / "ds"
    data = build_raw(out)
    ds = open_shards(out)
    assert ds.splits == ("train", "test")
    assert ds.class_names == CLASSES
    assert ds.image_shape == (4, 5, 3) and ds.encoding == "raw"
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "manifest.json",
        "test-0-of-1.arrow",
        "train-0-of-3.arrow",
        "train-1-of-3.arrow",
        "train-2-of-3.arrow",
    ]
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["format_version"] == fmt.FORMAT_VERSION and m["tool"]["name"] == "remixmatch"
    assert [s["rows"] for s in m["splits"]["train"]["shards"]] == [10, 10, 5]
    for split, (images, labels, sources) in data.items():
        part = ds[split]
        assert len(part) == len(images)
        np.testing.assert_array_equal(part.labels, labels)
        assert part.labels.dtype == np.int16
        np.testing.assert_array_equal(part.indices, np.arange(len(images)))
        np.testing.assert_array_equal(part.images(slice(None)), images)
        assert part.sources(range(len(images))) == sources
        entry = m["splits"][split]
        assert entry["class_counts"] == [int((labels == c).sum()) for c in range(3)]
        assert entry["unlabeled_rows"] == int((labels == -1).sum())


def test_gather_slices_and_zero_copy(tmp_path):
    out = tmp_path / "ds"
    images = build_raw(out)["train"][0]
    part = open_shards(out)["train"]
    idx = np.array([24, 0, 13, 13, 9, 10, -1])
    np.testing.assert_array_equal(part.images(idx), images[idx])
    np.testing.assert_array_equal(part.images([3, 1]), images[[3, 1]])
    np.testing.assert_array_equal(part.images(7), images[7])
    np.testing.assert_array_equal(part.images(slice(5, 15)), images[5:15])  # crosses a shard boundary
    np.testing.assert_array_equal(part.images(slice(None, None, -3)), images[::-3])
    assert part.images([]).shape == (0, 4, 5, 3)
    view = part.images(slice(11, 19))  # inside shard 1: a view of the mapped file
    np.testing.assert_array_equal(view, images[11:19])
    assert not view.flags.owndata and not view.flags.writeable
    gathered = part.images(np.arange(11, 19))  # an index array always copies
    assert gathered.flags.owndata and gathered.flags.writeable
    out_buf = np.zeros((3, 4, 5, 3), np.uint8)
    assert part.images([1, 2, 3], out=out_buf) is out_buf
    np.testing.assert_array_equal(out_buf, images[1:4])
    with pytest.raises(IndexError, match="25"):
        part.images([25])
    with pytest.raises(TypeError):
        part.images(np.array([0.5]))


def test_labels_zero_copy_for_single_shard(tmp_path):
    out = tmp_path / "ds"
    build_raw(out, n_train=8, shard_rows=10)
    labels = open_shards(out)["train"].labels
    assert not labels.flags.owndata and not labels.flags.writeable


def test_encoded_round_trip_and_byte_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "MAX_ENCODED_SHARD_BYTES", 100)
    blobs = [bytes([i]) * (10 + i) for i in range(20)]
    info = DatasetInfo("enc", CLASSES, None, "png", "unit test")
    with DatasetBuilder(tmp_path / "enc", info, shard_rows=8) as builder:
        builder.split("train").write([i % 3 for i in range(20)], blobs, [str(i) for i in range(20)])
        m = builder.commit()
    rows = [s["rows"] for s in m["splits"]["train"]["shards"]]
    assert sum(rows) == 20 and max(rows) <= 8 and len(rows) > 3  # the byte cap closed shards early
    part = open_shards(tmp_path / "enc")["train"]
    assert part.encoding == "png" and part.image_shape is None
    assert part.encoded(range(20)) == blobs
    assert part.encoded([19, 0]) == [blobs[19], blobs[0]]


def test_raw_dataset_refuses_encoded(tmp_path):
    build_raw(tmp_path / "ds")
    with pytest.raises(ShardError, match="raw pixels"):
        open_shards(tmp_path / "ds")["train"].encoded([0])


def test_hugging_face_datasets_opens_shards(tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "ds"
    images = build_raw(out)["train"][0]
    hf = datasets.Dataset.from_file(str(out / "train-1-of-3.arrow"))
    assert hf.num_rows == 10 and hf[0]["image"] == images[10].tobytes()


def test_shards_are_arrow_streams_with_one_batch(tmp_path):
    build_raw(tmp_path / "ds")
    with pa.memory_map(str(tmp_path / "ds" / "train-0-of-3.arrow")) as source:
        reader = pa.ipc.open_stream(source)
        batches = list(reader)
    assert len(batches) == 1 and batches[0].schema.field("image").type == pa.binary(60)
    meta = json.loads(batches[0].schema.metadata[b"remixmatch"])
    assert meta["split"] == "train" and meta["image_shape"] == [4, 5, 3]


def test_verify_names_changed_and_missing_shards(tmp_path):
    out = tmp_path / "ds"
    build_raw(out)
    open_shards(out).verify()
    shard = out / "train-1-of-3.arrow"
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF  # same size, one pixel changed
    shard.write_bytes(bytes(raw))
    with pytest.raises(VerifyError, match=r"train-1-of-3\.arrow \(sha256") as err:
        open_shards(out).verify()
    assert "\n" not in str(err.value)
    (out / "test-0-of-1.arrow").unlink()
    with pytest.raises(VerifyError, match=r"2 of 4 shards.*test-0-of-1\.arrow \(missing\)"):
        open_shards(out).verify()


def test_truncated_shard_fails_to_open(tmp_path):
    out = tmp_path / "ds"
    build_raw(out)
    shard = out / "train-0-of-3.arrow"
    shard.write_bytes(shard.read_bytes()[:300])
    with pytest.raises(ShardError, match="train-0-of-3.arrow"):
        open_shards(out)["train"]


def test_edited_manifest_is_refused(tmp_path):
    out = tmp_path / "ds"
    build_raw(out)
    m = json.loads((out / MANIFEST_NAME).read_text())
    m["class_names"][0] = "zebra"
    (out / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(ShardError, match="fingerprint"):
        open_shards(out)


def test_directory_without_manifest_is_not_a_dataset(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train-0-of-1.arrow").write_bytes(b"x")
    with pytest.raises(ShardError, match="no manifest.json"):
        open_shards(tmp_path / "half")
    with pytest.raises(ShardError, match="no such shard directory"):
        open_shards(tmp_path / "absent")


def test_fingerprint_ignores_tool_version_and_source(tmp_path, monkeypatch):
    build_raw(tmp_path / "one")
    monkeypatch.setattr(fmt, "tool_version", lambda: "9.9.9")
    build_raw(tmp_path / "two")
    one, two = open_shards(tmp_path / "one"), open_shards(tmp_path / "two")
    assert one.manifest["tool"] != two.manifest["tool"]
    assert one.fingerprint == two.fingerprint
    build_raw(tmp_path / "three", seed=1)
    assert open_shards(tmp_path / "three").fingerprint != one.fingerprint


def test_label_out_of_range_is_refused_and_nothing_is_left(tmp_path):
    info = DatasetInfo("toy", CLASSES, (2, 2, 1), "raw", "unit test")
    with pytest.raises(PrepError, match=r"row-1: label 3 out of range"):
        with DatasetBuilder(tmp_path / "ds", info) as builder:
            builder.split("train").write([0, 3], np.zeros((2, 2, 2, 1), np.uint8), ["row-0", "row-1"])
    assert list(tmp_path.iterdir()) == []


def test_output_directory_rules(tmp_path):
    out = tmp_path / "ds"
    check_output_dir(out, overwrite=False)  # absent: fine
    out.mkdir()
    check_output_dir(out, overwrite=False)  # empty: fine
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PrepError, match="not empty"):
        check_output_dir(out, overwrite=False)
    with pytest.raises(PrepError, match="not a shard directory"):
        check_output_dir(out, overwrite=True)
    assert (out / "notes.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrepError, match="not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)


def test_overwrite_replaces_an_earlier_dataset(tmp_path):
    out = tmp_path / "ds"
    build_raw(out, seed=0)
    first = open_shards(out).fingerprint
    with pytest.raises(PrepError, match="not empty"):
        build_raw(out, seed=1)
    assert open_shards(out).fingerprint == first
    info = DatasetInfo("toy", CLASSES, (4, 5, 3), "raw", "unit test")
    with DatasetBuilder(out, info, overwrite=True, shard_rows=100) as builder:
        builder.split("train").write([0], np.ones((1, 4, 5, 3), np.uint8), ["x"])
        builder.commit()
    ds = open_shards(out)
    assert ds.splits == ("train",) and len(ds["train"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failed_build_keeps_the_old_dataset(tmp_path):
    out = tmp_path / "ds"
    build_raw(out)
    first = open_shards(out).fingerprint
    info = DatasetInfo("toy", CLASSES, (4, 5, 3), "raw", "unit test")
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetBuilder(out, info, overwrite=True) as builder:
            builder.split("train").write([0], np.ones((1, 4, 5, 3), np.uint8), ["x"])
            raise RuntimeError("boom")
    assert open_shards(out).fingerprint == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_pickles_by_path(tmp_path):
    import pickle

    out = tmp_path / "ds"
    images = build_raw(out)["train"][0]
    ds = open_shards(out)
    blob = pickle.dumps(ds["train"])
    assert len(blob) < 1000  # the path, not the pixels
    part = pickle.loads(blob)
    np.testing.assert_array_equal(part.images([4, 20]), images[[4, 20]])
    assert pickle.loads(pickle.dumps(ds)).fingerprint == ds.fingerprint
    labels = part.labels
    assert not labels.flags.writeable
