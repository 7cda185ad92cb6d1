"""The real CIFAR-10 JPEG export (../shared/data/cifar10-jpg.tar.gz) through prep-cifar10."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from datasets_helpers import REAL_CIFAR_JPG, run_main
from remixmatch.datasets_prep import open_shards
from remixmatch.datasets_prep.cli import prep_cifar10_main
from remixmatch.datasets_prep.sources_cifar import CIFAR10_CLASSES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_CIFAR_JPG.is_file(), reason=f"real data not present at {REAL_CIFAR_JPG}"),
]


def test_prep_real_cifar10_jpg(tmp_path, capsys):
    out = tmp_path / "cifar10"
    rc, _, err = run_main(prep_cifar10_main, ["--source", REAL_CIFAR_JPG, "--out", out], capsys)
    assert rc == 0, err
    ds = open_shards(out)
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
