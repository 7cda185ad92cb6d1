"""prep-folder: layouts, resizing, encoded bytes, the process pool, and bad trees."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from datasets_helpers import (
    assert_one_line_error,
    image_bytes,
    no_leftovers,
    random_image,
    run_main,
    tar_directory,
    write_tree,
)
from remixmatch.datasets_prep import open_shards
from remixmatch.datasets_prep.cli import prep_folder_main
from remixmatch.datasets_prep.sources_folder import prep_folder

PROG = "prep-folder"


def test_class_layout_is_one_train_split(tmp_path, capsys):
    written = write_tree(tmp_path / "pets", {"dog": 3, "cat": 2, "emu": 4}, size=(12, 10))
    rc, out, err = run_main(prep_folder_main, ["--source", tmp_path / "pets", "--out", tmp_path / "ds"], capsys)
    assert rc == 0, err
    ds = open_shards(tmp_path / "ds")
    assert ds.dataset == "pets" and ds.splits == ("train",)
    assert ds.class_names == ("cat", "dog", "emu")  # sorted folder names
    assert ds.image_shape == (10, 12, 3)
    part = ds["train"]
    assert list(np.bincount(part.labels)) == [2, 3, 4]
    for i, name in enumerate(part.sources(range(len(part)))):
        np.testing.assert_array_equal(part.images(i), written[name])
        assert ds.class_names[part.labels[i]] == name.split("/")[0]


@pytest.mark.parametrize("as_tar", [False, True])
def test_split_layout(tmp_path, capsys, as_tar):
    layout = {"train": {"a": 2, "b": 3}, "val": {"a": 1, "b": 1}, "test": {"a": 1, "b": 2}}
    write_tree(tmp_path / "data", layout, fmt="JPEG")
    source = tar_directory(tmp_path / "data", tmp_path / "data.tar") if as_tar else tmp_path / "data"
    rc, _, err = run_main(prep_folder_main, ["--source", source, "--out", tmp_path / "ds", "--name", "letters"], capsys)
    assert rc == 0, err
    ds = open_shards(tmp_path / "ds")
    assert ds.dataset == "letters" and ds.splits == ("train", "test", "val")
    assert [len(ds[s]) for s in ds.splits] == [5, 3, 2]
    # JPEG pixels are what PIL decodes from the same files.
    part = ds["train"]
    for i, name in enumerate(part.sources(range(len(part)))):
        rel = name.removeprefix("data/")
        decoded = np.asarray(Image.open(tmp_path / "data" / rel).convert("RGB"))
        np.testing.assert_array_equal(part.images(i), decoded)


def test_resize_with_named_filter(tmp_path, capsys):
    rng = np.random.default_rng(1)
    (tmp_path / "t" / "x").mkdir(parents=True)
    sizes = [(20, 30), (64, 48), (16, 16)]
    arrays = []
    for i, (w, h) in enumerate(sizes):
        arr = random_image(rng, h, w)
        arrays.append(arr)
        (tmp_path / "t" / "x" / f"{i}.png").write_bytes(image_bytes(arr))
    rc, _, err = run_main(
        prep_folder_main,
        ["--source", tmp_path / "t", "--out", tmp_path / "ds", "--size", 24, "--filter", "bilinear"],
        capsys,
    )
    assert rc == 0, err
    part = open_shards(tmp_path / "ds")["train"]
    assert part.image_shape == (24, 24, 3)
    for i, arr in enumerate(arrays):
        expected = np.asarray(Image.fromarray(arr).resize((24, 24), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(part.images(i), expected)


def test_grey_mode(tmp_path, capsys):
    written = write_tree(tmp_path / "t", {"a": 2, "b": 1}, size=(8, 8))
    rc, _, err = run_main(
        prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds", "--mode", "L"], capsys
    )
    assert rc == 0, err
    part = open_shards(tmp_path / "ds")["train"]
    assert part.image_shape == (8, 8, 1)
    expected = np.asarray(Image.fromarray(written["a/0000.png"]).convert("L"))
    np.testing.assert_array_equal(part.images(0)[:, :, 0], expected)


def test_encoded_keeps_file_bytes(tmp_path, capsys):
    rng = np.random.default_rng(2)
    blobs = {}
    for cls, (w, h) in (("big", (40, 30)), ("small", (9, 7))):
        (tmp_path / "t" / cls).mkdir(parents=True)
        blob = image_bytes(random_image(rng, h, w), "JPEG", quality=90)
        (tmp_path / "t" / cls / "0.jpg").write_bytes(blob)
        blobs[f"{cls}/0.jpg"] = blob
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds", "--encoded"], capsys)
    assert rc == 0, err
    ds = open_shards(tmp_path / "ds")
    part = ds["train"]
    assert ds.encoding == "jpeg" and ds.image_shape is None
    assert part.encoded([0, 1]) == [blobs[s] for s in part.sources([0, 1])]
    assert part.images(1).shape == (7, 9, 3)  # decodes one image on request
    with pytest.raises(Exception, match="different sizes"):
        part.images([0, 1])


def test_encoded_mixed_formats(tmp_path, capsys):
    write_tree(tmp_path / "t", {"a": 1}, fmt="PNG")
    write_tree(tmp_path / "t", {"b": 1}, fmt="JPEG")
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds", "--encoded"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "mixed encodings", "a/0000.png is PNG", "b/0000.jpg is JPEG")


def test_mixed_sizes_without_size(tmp_path, capsys):
    write_tree(tmp_path / "t", {"a": 2}, size=(32, 32))
    write_tree(tmp_path / "t", {"b": 1}, size=(30, 20), seed=3)
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "mixed image sizes", "a/0000.png is 32x32", "b/0000.png is 30x20", "--size")
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def test_non_image_file(tmp_path, capsys):
    write_tree(tmp_path / "t", {"a": 1, "b": 1})
    (tmp_path / "t" / "b" / "labels.csv").write_text("x,y\n")
    (tmp_path / "t" / "a" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "'b/labels.csv' is not an image file")


def test_image_extension_that_is_not_an_image(tmp_path, capsys):
    write_tree(tmp_path / "t", {"a": 2, "b": 1})
    (tmp_path / "t" / "a" / "fake.jpg").write_text("hello")
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "a/fake.jpg", "not a readable image")


def test_empty_class(tmp_path, capsys):
    write_tree(tmp_path / "t", {"a": 1})
    (tmp_path / "t" / "b").mkdir()
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "'b'", "empty class")


def test_class_missing_from_a_split(tmp_path, capsys):
    write_tree(tmp_path / "t", {"train": {"a": 1, "b": 1}, "test": {"a": 1}})
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "split 'test' has no folder for class 'b'")


def test_misplaced_files(tmp_path, capsys):
    write_tree(tmp_path / "t", {"a": 1, "b": 1})
    (tmp_path / "t" / "stray.png").write_bytes(image_bytes(np.zeros((32, 32, 3), np.uint8)))
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "unexpected file 'stray.png'")
    (tmp_path / "t" / "stray.png").unlink()
    write_tree(tmp_path / "t" / "a", {"deeper": 1})
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "unexpected nested folder 'a/deeper'")


def test_bad_options(tmp_path, capsys):
    write_tree(tmp_path / "t", {"a": 1})
    rc, _, err = run_main(
        prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds", "--encoded", "--size", 8], capsys
    )
    assert rc == 2
    assert_one_line_error(err, PROG, "--encoded", "--size")
    rc, _, err = run_main(
        prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds", "--filter", "magic"], capsys
    )
    assert rc == 2
    assert_one_line_error(err, PROG, "--filter", "magic")
    (tmp_path / "f.txt").write_text("x")
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "f.txt", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "f.txt", "not a directory or a tar archive")


def test_process_pool_gives_the_same_shards(tmp_path, monkeypatch):
    written = write_tree(tmp_path / "t", {"a": 40, "b": 30, "c": 30}, size=(8, 8))
    import remixmatch.datasets_prep.sources_folder as sources_folder

    monkeypatch.setattr(sources_folder, "CHUNK_IMAGES", 7)
    monkeypatch.setattr(sources_folder, "POOL_MIN_IMAGES", 0)
    pooled = prep_folder(str(tmp_path / "t"), tmp_path / "pooled", workers=2, shard_rows=16)
    inline = prep_folder(str(tmp_path / "t"), tmp_path / "inline", workers=1, shard_rows=16)
    assert pooled["fingerprint"] == inline["fingerprint"]
    part = open_shards(tmp_path / "pooled")["train"]
    for i, name in enumerate(part.sources(range(len(part)))):
        np.testing.assert_array_equal(part.images(i), written[name])


def test_process_pool_reports_bad_image(tmp_path, monkeypatch, capsys):
    write_tree(tmp_path / "t", {"a": 20, "b": 20}, size=(8, 8))
    (tmp_path / "t" / "b" / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    import remixmatch.datasets_prep.sources_folder as sources_folder

    monkeypatch.setattr(sources_folder, "CHUNK_IMAGES", 5)
    monkeypatch.setattr(sources_folder, "POOL_MIN_IMAGES", 0)
    rc, _, err = run_main(
        prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds", "--workers", 2], capsys
    )
    assert rc == 2
    assert_one_line_error(err, PROG, "b/zz-broken.png", "not a readable image")
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def test_palette_and_alpha_images_become_rgb(tmp_path, capsys):
    (tmp_path / "t" / "a").mkdir(parents=True)
    rgba = np.random.default_rng(0).integers(0, 256, (6, 6, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    (tmp_path / "t" / "a" / "alpha.png").write_bytes(buf.getvalue())
    buf = io.BytesIO()
    Image.fromarray(rgba[:, :, :3]).convert("P").save(buf, "PNG")
    (tmp_path / "t" / "a" / "palette.png").write_bytes(buf.getvalue())
    rc, _, err = run_main(prep_folder_main, ["--source", tmp_path / "t", "--out", tmp_path / "ds"], capsys)
    assert rc == 0, err
    part = open_shards(tmp_path / "ds")["train"]
    np.testing.assert_array_equal(part.images(0), rgba[:, :, :3])
