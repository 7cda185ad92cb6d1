"""The real CIFAR-10 JPEG export (../shared/data/cifar10-jpg.tar.gz) through prep-cifar10, and a short
supervised run on the shards it makes (prepared once for both: the prep takes most of a minute)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from datasets_helpers import REAL_CIFAR_JPG
from trainer_helpers import train
from remixmatch.datasets_prep import open_shards
from remixmatch.datasets_prep.cli import prep_cifar10_main
from remixmatch.datasets_prep.sources_cifar import CIFAR10_CLASSES
from remixmatch.trainer.config import resolve

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_CIFAR_JPG.is_file(), reason=f"real data not present at {REAL_CIFAR_JPG}"),
]


@pytest.fixture(scope="module")
def real_cifar10(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "cifar10"
    assert prep_cifar10_main(["--source", str(REAL_CIFAR_JPG), "--out", str(out)]) == 0
    return out


def test_prep_real_cifar10_jpg(real_cifar10):
    ds = open_shards(real_cifar10)
    ds.verify()
    assert ds.class_names == CIFAR10_CLASSES and ds.image_shape == (32, 32, 3)
    expected_rows = {"train": 5000, "test": 1000}
    rows_by_source = {}
    for split, per_class in expected_rows.items():
        part = ds[split]
        assert len(part) == 10 * per_class
        assert np.bincount(part.labels, minlength=10).tolist() == [per_class] * 10
        assert ds.manifest["splits"][split]["class_counts"] == [per_class] * 10
        for i, source in enumerate(part.sources(slice(None))):
            rows_by_source[source] = (split, i)
    assert len(rows_by_source) == 60000

    # Every stored image equals the JPEG decoded by PIL, and sits under its folder's class.
    with tarfile.open(REAL_CIFAR_JPG, "r|gz") as tf:
        for member in tf:
            if not member.isfile():
                continue
            split, row = rows_by_source.pop(member.name)
            decoded = np.asarray(Image.open(io.BytesIO(tf.extractfile(member).read())).convert("RGB"))
            part = ds[split]
            np.testing.assert_array_equal(part.images(row), decoded, err_msg=member.name)
            assert CIFAR10_CLASSES[part.labels[row]] == member.name.split("/")[-2]
    assert not rows_by_source


def test_short_supervised_run_on_real_cifar10_evaluates_far_above_chance(real_cifar10, tmp_path):
    config = resolve("cpu", [], {"data": str(real_cifar10), "algorithm": "supervised", "labels": 4000,
                                 "device": "cpu", "loader": "torch", "steps": 300, "eval_every": 300,
                                 "ckpt_every": 300})
    summary = train(config, tmp_path / "run")
    assert summary["eval_rows"] == 10000
    # Chance is 10%; an evaluation that mixed up images, labels or normalisation would sit near it.
    assert summary["accuracy"]["ema_last"] > 0.25, summary["accuracy"]
    assert summary["accuracy"]["raw_median_last"] > 0.25, summary["accuracy"]
