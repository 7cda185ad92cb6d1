"""The benchmarks at 96x96: `rmm-bench aug --size`, and the step's weak pad following the image side."""

from __future__ import annotations

import pytest

from datasets_helpers import run_main
from remixmatch.bench.cli import main as bench_main
from remixmatch.bench.images import ImageInputError
from remixmatch.bench.images import load_images
from remixmatch.bench.loaders import PipelineConfig, open_data, view_config
from remixmatch.datasets_prep.sources_stl10 import prep_stl10
from remixmatch.datasets_prep.synthetic import synthetic_stl10, write_stl10_folder


@pytest.fixture(scope="module")
def stl10_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stl10-bench")
    write_stl10_folder(root / "src", synthetic_stl10(train=70, test=2, unlabeled=3, fold_size=5))
    prep_stl10(str(root / "src"), root / "shards", progress=False)
    return root / "shards"


def test_size_sets_the_synthetic_side_and_checks_read_images(stl10_shards, monkeypatch):
    monkeypatch.delenv("REMIXMATCH_SHARDS", raising=False)
    assert load_images(4, size=96).pixels.shape == (4, 96, 96, 3)
    assert load_images(4).pixels.shape == (4, 32, 32, 3)
    assert load_images(64, shards=stl10_shards, size=96).pixels.shape == (64, 96, 96, 3)
    with pytest.raises(ImageInputError, match="images are 96x96, not the --size 32x32"):
        load_images(64, shards=stl10_shards, size=32)


def test_size_flag_error_is_one_line(stl10_shards, tmp_path, capsys):
    rc, _, err = run_main(bench_main, ["aug", "--shards", stl10_shards, "--size", 32, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "not the --size 32x32" in err


def test_pipeline_views_pad_by_the_image_side(stl10_shards, tmp_path):
    config = PipelineConfig(out=tmp_path, shards=str(stl10_shards), labels=10, valid=0)
    assert view_config(config, open_data(config.shards, 10, 0)).pad == 12


def test_projection_names_the_shards_paper_run(stl10_shards, tmp_path):
    from remixmatch.bench.all_sections import paper_run

    assert paper_run(stl10_shards) == "STL-10 (96x96)"
    assert paper_run(None) == "CIFAR-10" and paper_run(tmp_path) == "CIFAR-10"
