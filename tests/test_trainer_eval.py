"""rmm-eval: the accuracy a run recorded, reproduced exactly; per-class figures, the confusion matrix,
calibration; and the bad inputs it refuses with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from datasets_helpers import assert_one_line_error, run_main
from pipeline_helpers import other_shards  # noqa: F401  (a session fixture)
from remixmatch.datasets_prep.format import dataset_fingerprint
from remixmatch.trainer.checkpoint import checkpoint_paths
from remixmatch.trainer.evaluate import expected_calibration_error, main, summarise
from trainer_helpers import smoke_config, train
from use_helpers import pipeline_shards, smoke_run  # noqa: F401  (session fixtures)

PROG = "rmm-eval"


def test_eval_of_the_final_checkpoint_reproduces_summary_accuracy_exactly(smoke_run, tmp_path, capsys):
    summary = json.loads((smoke_run / "summary.json").read_text())
    rc, out, err = run_main(main, [smoke_run, "--out", tmp_path / "ema"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "ema" / "eval.json").read_text())
    assert report["identity"]["step"] == summary["steps"] == 20
    assert report["accuracy"] == summary["accuracy"]["ema_last"]  # exactly, not approximately
    assert report["images"] == summary["eval_rows"]
    assert (tmp_path / "ema" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in out and "eval.json" in out
    # The raw model: the run's last evaluation recorded its accuracy too.
    rc, _, err = run_main(main, [smoke_run, "--model", "raw", "--out", tmp_path / "raw"], capsys)
    assert rc == 0, err
    raw = json.loads((tmp_path / "raw" / "eval.json").read_text())
    state = torch.load(checkpoint_paths(smoke_run)[-1], weights_only=False)
    assert raw["accuracy"] == state["evaluations"][-1]["acc_raw"]


def test_eval_report_is_consistent(smoke_run, tmp_path, capsys):
    rc, _, err = run_main(main, [smoke_run, "--out", tmp_path], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == report["images"]
    assert np.trace(confusion) == report["correct"]
    assert [c["class"] for c in report["per_class"]] == report["class_names"]
    assert report["class_names"][:2] == ["airplane", "automobile"]
    for c, row in enumerate(report["per_class"]):
        assert row["images"] == confusion[c].sum()
        if row["images"]:
            assert row["accuracy"] == confusion[c, c] / confusion[c].sum()
    counts = [t["count"] for t in report["top_confusions"]]
    assert counts == sorted(counts, reverse=True)
    off_diagonal = confusion - np.diag(np.diag(confusion))
    assert counts[0] == off_diagonal.max()
    assert 0.0 <= report["ece"] <= 1.0
    assert sum(b["count"] for b in report["calibration"]) == report["images"]


def test_recalibrated_bn_statistics_change_and_the_evaluation_is_deterministic(smoke_run, tmp_path, capsys):
    from remixmatch.trainer.evaluate import recalibrate
    from remixmatch.trainer.inference import load_trained

    summary = json.loads((smoke_run / "summary.json").read_text())
    reports = []
    for name in ("a", "b"):
        rc, out, err = run_main(main, [smoke_run, "--recalibrate-bn", "64", "--out", tmp_path / name], capsys)
        assert rc == 0, err
        reports.append(json.loads((tmp_path / name / "eval.json").read_text()))
    assert "BN statistics re-estimated on 64 training images" in out
    first, second = reports
    assert first["bn_recalibration"] == second["bn_recalibration"] and first["confusion"] == second["confusion"]
    recalibration = first["bn_recalibration"]
    assert (recalibration["images"], recalibration["batch"], recalibration["split"]) == (64, 200, "train")
    # the accuracy with the trained statistics is the run's own; the recalibrated one is computed
    assert recalibration["accuracy_trained_statistics"] == summary["accuracy"]["ema_last"]
    assert first["correct"] == np.trace(np.array(first["confusion"])) and first["images"] == summary["eval_rows"]
    # the statistics move, and the same images give the same statistics
    trained = load_trained(smoke_run, which="raw")
    before = {k: v.clone() for k, v in trained.model.state_dict().items() if "running" in k}
    layers = recalibrate(trained, 64, 200)["layers"]
    after = {k: v.clone() for k, v in trained.model.state_dict().items() if "running" in k}
    assert layers > 0 and all(not torch.equal(before[k], after[k]) for k in before)
    recalibrate(trained, 64, 200)
    assert all(torch.equal(after[k], v) for k, v in trained.model.state_dict().items() if "running" in k)
    assert not trained.model.training and all(m.momentum == 0.1 for m in trained.model.modules()
                                              if isinstance(m, torch.nn.BatchNorm2d))


def test_summarise_on_known_logits():
    # 4 images, 3 classes: two right (confidence ~1), one wrong at ~1, one wrong at 1/3.
    logits = np.array([[20.0, 0, 0], [0, 20.0, 0], [0, 20.0, 0], [0, 0, 0.0]], np.float32)
    labels = np.array([0, 1, 0, 2])
    report = summarise(logits, labels, ("a", "b", "c"))
    assert report["accuracy"] == 0.5
    assert report["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert report["top_confusions"][0] == {"true": "a", "predicted": "b", "count": 1, "share_of_true_class": 0.5}
    # ECE by hand: bin (14/15, 1] holds 3 images at conf ~1 with accuracy 2/3; bin (1/3.., 0.4] one
    # at 1/3 with accuracy 0.
    ece, _ = expected_calibration_error(np.array([1.0, 1.0, 1.0, 1 / 3]), np.array([1, 1, 0, 0], bool))
    assert ece == pytest.approx(0.75 * (1 - 2 / 3) + 0.25 * (1 / 3))


def test_other_shards_with_the_same_classes_are_evaluated(smoke_run, other_shards, tmp_path, capsys):
    rc, _, err = run_main(main, [smoke_run, "--data", other_shards.path, "--split", "train", "--out", tmp_path], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["shards_fingerprint"] == other_shards.shards.fingerprint
    assert report["images"] == len(other_shards.shards["train"])


def _renamed_class_shards(source, tmp_path):
    target = tmp_path / "renamed"
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["class_names"][3] = "kitten"
    manifest["fingerprint"] = dataset_fingerprint(manifest)  # a consistent shard set of other classes
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_bad_inputs_are_one_line_and_exit_2(smoke_run, pipeline_shards, tmp_path, capsys):
    # A run directory without a checkpoint.
    empty = tmp_path / "no-ckpt"
    empty.mkdir()
    shutil.copy(smoke_run / "config.json", empty / "config.json")
    rc, _, err = run_main(main, [empty], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "holds no checkpoint")
    # Not a run directory at all.
    rc, _, err = run_main(main, [tmp_path / "nothing"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "no such run directory")
    # A checkpoint of another model (wider network).
    other = tmp_path / "wide"
    train(smoke_config(pipeline_shards.path, width=16, steps=2, eval_every=2, ckpt_every=2), other)
    rc, _, err = run_main(main, [smoke_run, "--checkpoint", checkpoint_paths(other)[-1]], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "a checkpoint of another model", "blocks.0.conv1.weight is (16, 16, 3, 3) in it, (8, 16, 3, 3)")
    # A file that is no checkpoint.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    rc, _, err = run_main(main, [smoke_run, "--checkpoint", junk], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "junk.pt")
    # A shard directory with other classes: the first mismatch is named.
    renamed = _renamed_class_shards(pipeline_shards.path, tmp_path)
    rc, _, err = run_main(main, [smoke_run, "--data", renamed], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "class 3 is 'kitten' there, 'cat' in the run")
    # A split the shards do not have.
    rc, _, err = run_main(main, [smoke_run, "--split", "extra"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "no such split")


def test_eval_of_a_run_evaluated_on_its_hold_out_reproduces_it(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    train(smoke_config(pipeline_shards.path, valid=20, eval_split="valid", steps=10), out)
    summary = json.loads((out / "summary.json").read_text())
    rc, _, err = run_main(main, [out, "--out", tmp_path / "eval"], capsys)
    assert rc == 0, err
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["split"] == "valid" and report["images"] == summary["eval_rows"] == 20
    assert report["accuracy"] == summary["accuracy"]["ema_last"]
