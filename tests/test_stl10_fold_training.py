"""STL-10's official folds end to end: the joined train + unlabeled pool, `--fold` for the subset
tools and rmm-train, the four-stage network, the 96x96 weak pad, and a smoke run that resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datasets_helpers import assert_cli_error, run_main
from remixmatch.datasets_prep import PrepError, ShardError, open_shards
from remixmatch.datasets_prep.cli import shards_main
from remixmatch.datasets_prep.sources_stl10 import prep_stl10
from remixmatch.datasets_prep.subsets import fold_subset, labeled_subset, load_subset, save_subset
from remixmatch.datasets_prep.synthetic import synthetic_stl10, write_stl10_folder
from remixmatch.pipeline.plan import weak_pad
from remixmatch.trainer.config import resolve
from remixmatch.trainer.model import WideResNet, stages_for_size
from remixmatch.trainer.run import Run
from trainer_helpers import assert_identical, cli, latest_state, metrics, pipeline_shards  # noqa: F401

TRAIN, TEST, UNLABELED, FOLD = 20, 10, 12, 10


@pytest.fixture(scope="module")
def stl10(tmp_path_factory):
    """(shard directory, the synthetic data) of a tiny STL-10 in the official layout, prepped."""
    root = tmp_path_factory.mktemp("stl10")
    data = synthetic_stl10(TRAIN, TEST, UNLABELED, FOLD, seed=3)
    write_stl10_folder(root / "src", data)
    prep_stl10(str(root / "src"), root / "shards", progress=False)
    return root / "shards", data


def test_joined_split_reads_train_then_unlabeled(stl10):
    path, data = stl10
    ds = open_shards(path)
    pool = ds["train+unlabeled"]
    assert len(pool) == TRAIN + UNLABELED and pool.image_shape == (96, 96, 3)
    np.testing.assert_array_equal(pool.labels, np.concatenate([data["train"][1], np.full(UNLABELED, -1)]))
    rows = np.array([TRAIN + 3, 1, TRAIN, 0, TRAIN + UNLABELED - 1])
    everything = np.concatenate([data["train"][0], data["unlabeled"][0]])
    np.testing.assert_array_equal(pool.images(rows), everything[rows])
    np.testing.assert_array_equal(pool.images(TRAIN + 1), everything[TRAIN + 1])
    out = np.empty((2, 96, 96, 3), np.uint8)
    assert pool.images(rows[:2], out=out) is out
    assert pool.sources([TRAIN, 0]) == ["unlabeled:unlabeled_X.bin:0", "train:train_X.bin:0"]
    with pytest.raises(IndexError):
        pool.images([TRAIN + UNLABELED])
    with pytest.raises(ShardError, match="no split 'nope'"):
        ds["train+nope"]


def test_fold_subset_is_the_official_fold_exactly(stl10, tmp_path):
    path, data = stl10
    ds = open_shards(path)
    for fold in (0, 9):
        s = fold_subset(ds, fold)
        assert s.labeled.tolist() == sorted(data["folds"][fold]) and s.fold == fold
        assert s.split == "train+unlabeled" and s.num_rows == TRAIN + UNLABELED and len(s.valid) == 0
        np.testing.assert_array_equal(s.unlabeled(), np.arange(TRAIN + UNLABELED))
    save_subset(s, tmp_path / "f.json", labels=ds[s.split].labels)
    back = load_subset(tmp_path / "f.json", expect_fingerprint=ds.fingerprint)
    assert (back.fold, back.split, back.num_rows, back.labeled.tolist()) == (9, s.split, s.num_rows, s.labeled.tolist())
    with pytest.raises(PrepError, match="fold 10 out of range 0..9"):
        fold_subset(ds, 10)


def test_subset_cli_fold(stl10, tmp_path, capsys):
    path, data = stl10
    rc, out, err = run_main(shards_main, ["subset", path, "--fold", 2, "--out", tmp_path / "f2.json"], capsys)
    assert rc == 0, err
    assert f"{FOLD} labeled, 0 validation of {TRAIN + UNLABELED} train+unlabeled rows" in out
    doc = json.loads((tmp_path / "f2.json").read_text())
    assert doc["fold"] == 2 and doc["labeled"] == sorted(data["folds"][2]) and "official fold 2" in doc["method"]
    prog = "rmm-shards subset"
    assert_cli_error(shards_main, prog, capsys, ["subset", path, "--fold", 11], "fold 11 out of range 0..9")
    assert_cli_error(shards_main, prog, capsys, ["subset", path, "--fold", 1, "--labels", 40, "--seed", 1],
                     "--fold takes the official fold exactly")
    assert_cli_error(shards_main, prog, capsys, ["subset", path], "--labels N --seed S, or --fold F")


def test_fold_on_a_dataset_without_folds(pipeline_shards, capsys):
    assert_cli_error(shards_main, "rmm-shards subset", capsys, ["subset", pipeline_shards.path, "--fold", 0],
                     "has no official folds")


def test_stages_and_weak_pad_follow_the_image_size():
    assert (stages_for_size(32), stages_for_size(96)) == (3, 5)
    assert (weak_pad(32), weak_pad(96)) == (4, 12)
    net = WideResNet(10, width=8, blocks_per_stage=1, stages=4)
    widths = [b.conv2.out_channels for b in net.blocks]
    strides = [b.conv1.stride[0] for b in net.blocks]
    assert widths == [8, 16, 32, 64] and strides == [1, 2, 2, 2] and net.embed_dim == 64
    maps = []
    hook = net.blocks[-1].register_forward_hook(lambda m, i, o: maps.append(o.shape))
    logits = net(torch.rand(2, 3, 96, 96))
    hook.remove()
    assert logits.shape == (2, 10) and maps[0][2:] == (12, 12)  # 96 -> 96, 48, 24, 12


def test_presets():
    stl = resolve("stl10-1000", [], {})
    assert (stl.fold, stl.stages, stl.valid, stl.width, stl.blocks_per_stage) == (0, 4, 0, 32, 4)
    assert resolve("cifar100-2500", [], {}).width == 128 and resolve("cifar100-2500", [], {}).labels == 2500
    assert resolve("svhn-1000", [], {}).flip is False and resolve("cifar10-1000", [], {}).labels == 1000


# The smoke preset as it is (width 8), with the stage count derived from the 96 px images (5).
def smoke_96(path, out, *extra):
    return ["--data", path, "--out", out, "--preset", "smoke", "--fold", 0, "--stages", 0, "--device", "cpu",
            "--loader", "torch", "--quiet", "--ckpt-every", 2, "--eval-every", 2, *extra]


def test_smoke_run_at_96_resumes_exactly(stl10, tmp_path, capsys):
    path, data = stl10
    straight = tmp_path / "straight"
    config = resolve("smoke", [], {"data": str(path), "fold": 0, "stages": 0, "device": "cpu", "loader": "torch",
                                   "ckpt_every": 2, "eval_every": 2, "steps": 4})
    assert config.width == 8
    run = Run(config, straight, resume=False, quiet=True)
    summary = run.train()
    assert run.loader.config.pad == 12 and run.state.model.stages == 5
    assert summary["steps"] == 4 and summary["config"]["fold"] == 0 and summary["labeled"]["fold"] == 0
    assert summary["model"]["stages"] == 5 and summary["model"]["name"] == "WRN-14 width 8"
    labeled = json.loads((straight / "labeled.json").read_text())
    assert labeled["fold"] == 0 and labeled["labeled"] == sorted(data["folds"][0])
    assert labeled["split"] == "train+unlabeled"

    stopped = tmp_path / "stopped"
    rc, _, err = cli(smoke_96(path, stopped, "--steps", 2), capsys)
    assert rc == 0, err
    rc, _, err = cli([*smoke_96(path, stopped, "--steps", 4), "--resume"], capsys)
    assert rc == 0, err
    a, b = latest_state(stopped), latest_state(straight)
    a.pop("elapsed"), b.pop("elapsed")
    assert_identical(a, b, "checkpoint")
    assert metrics(stopped) == metrics(straight)
