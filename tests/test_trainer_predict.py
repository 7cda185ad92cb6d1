"""rmm-predict: image files, folder trees and shard directories labeled by a run or its export;
other sizes resized with the stated filter or refused; unreadable images listed as errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch
from PIL import Image

from datasets_helpers import assert_one_line_error, run_main
from remixmatch.trainer.export import main as export_main
from remixmatch.trainer.inference import load_trained
from remixmatch.trainer.predict import main
from use_helpers import pipeline_shards, smoke_run  # noqa: F401  (session fixtures)

PROG = "rmm-predict"


def _tree(root, shards):
    """4 test images as PNG under two folders, one 40x48 image, one corrupt file, one text file."""
    test = shards["test"]
    pixels = test.images(np.arange(4))
    (root / "a").mkdir(parents=True)
    (root / "b" / "deep").mkdir(parents=True)
    for i, image in enumerate(pixels):
        folder = root / ("a" if i < 2 else "b/deep")
        Image.fromarray(image).save(folder / f"img{i}.png")
    big = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(big).save(root / "b" / "large.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    return pixels, big


def _probabilities(run, images):
    trained = load_trained(run)
    with torch.no_grad():
        logits = trained.classifier()(torch.from_numpy(np.ascontiguousarray(images))).double()
    return torch.softmax(logits, dim=1).numpy(), trained.class_names


def test_folder_tree_with_resize_and_errors(smoke_run, pipeline_shards, tmp_path, capsys):
    pixels, big = _tree(tmp_path / "tree", pipeline_shards.shards)
    out = tmp_path / "preds.jsonl"
    rc, _, err = run_main(main, [smoke_run, tmp_path / "tree", "--out", out, "--top-k", "3", "--batch", "2"], capsys)
    assert rc == 0, err
    assert "5 of 6 images labeled" in err and "1 listed as errors" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    paths = [r["path"].split("tree/")[1] for r in records]
    assert paths == ["a/img0.png", "a/img1.png", "b/broken.png", "b/deep/img2.png", "b/deep/img3.png", "b/large.png"]
    by_name = dict(zip(paths, records))
    assert by_name["b/broken.png"]["error"].startswith("unreadable image") and by_name["b/broken.png"]["class"] is None
    assert by_name["b/large.png"]["resized_from"] == "40x48 bicubic"
    resized = np.asarray(Image.fromarray(big).resize((32, 32), Image.Resampling.BICUBIC))
    expected, names = _probabilities(smoke_run, np.concatenate([pixels, resized[None]]))
    for i, key in enumerate(["a/img0.png", "a/img1.png", "b/deep/img2.png", "b/deep/img3.png", "b/large.png"]):
        record = by_name[key]
        assert record["error"] is None
        assert record["class"] == names[int(expected[i].argmax())]
        assert abs(record["confidence"] - expected[i].max()) < 1e-6
        top = record["top_k"]
        assert len(top) == 3 and top[0][0] == record["class"]
        assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_no_resize_lists_other_sizes_as_errors(smoke_run, pipeline_shards, tmp_path, capsys):
    _tree(tmp_path / "tree", pipeline_shards.shards)
    out = tmp_path / "preds.csv"
    rc, _, err = run_main(main, [smoke_run, tmp_path / "tree" / "b", "--no-resize", "--out", out], capsys)
    assert rc == 0, err
    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["broken.png", "img2.png", "img3.png", "large.png"]
    large = rows[-1]
    assert large["class"] == "" and "40x48" in large["error"] and "--no-resize" in large["error"]
    assert rows[1]["class"] and rows[1]["error"] == "" and len(rows[1]["top_k"].split(";")) == 3


def test_shard_directory_predictions_give_the_recorded_accuracy(smoke_run, pipeline_shards, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    rc, _, err = run_main(main, [smoke_run, pipeline_shards.path, "--split", "test", "--out", out], capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    test = pipeline_shards.shards["test"]
    assert len(records) == len(test)
    names = pipeline_shards.shards.class_names
    correct = sum(r["class"] == names[label] for r, label in zip(records, test.labels))
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert correct / len(test) == summary["accuracy"]["ema_last"]
    assert records[0]["source"] == test.sources([0])[0]


def test_torchscript_export_predicts_like_the_run(smoke_run, pipeline_shards, tmp_path, capsys):
    _tree(tmp_path / "tree", pipeline_shards.shards)
    export = tmp_path / "model.pt"
    assert run_main(export_main, [smoke_run, "--format", "torchscript", "--out", export], capsys)[0] == 0
    rc, from_export, err = run_main(main, [export, tmp_path / "tree" / "a"], capsys)
    assert rc == 0, err
    rc, from_run, err = run_main(main, [smoke_run, tmp_path / "tree" / "a"], capsys)
    assert rc == 0, err
    a, b = list(csv.DictReader(from_export.splitlines())), list(csv.DictReader(from_run.splitlines()))
    assert [r["class"] for r in a] == [r["class"] for r in b] and len(a) == 2
    for x, y in zip(a, b):
        assert abs(float(x["confidence"]) - float(y["confidence"])) < 1e-5


def test_bad_inputs_are_one_line_and_exit_2(smoke_run, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    rc, _, err = run_main(main, [smoke_run, image, "--out", tmp_path / "preds.txt"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, ".csv or .jsonl")
    rc, _, err = run_main(main, [tmp_path / "nothing", image], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "no such run directory or export file")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    rc, _, err = run_main(main, [junk, image], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "not a TorchScript export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "x.png"]
