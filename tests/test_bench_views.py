"""rmm-bench views: a contact sheet of weak and strong views of images read from shards."""

from __future__ import annotations

import numpy as np
from PIL import Image

from remixmatch.bench import views
from remixmatch.bench.cli import main as bench_main
from remixmatch.common.paths import SHARDS_ENV
from remixmatch.kernels.ops import OP_NAMES
from remixmatch.datasets_prep.cli import prep_folder_main


def make_shards(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("cats", "dogs"):
        folder = tmp_path / "tree" / name
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "shards"
    assert prep_folder_main(["--source", str(tmp_path / "tree"), "--out", str(out), "--no-progress"]) == 0
    return out


def test_views_sheet_holds_original_weak_and_k_strong_views(tmp_path):
    shards = make_shards(tmp_path)
    png = tmp_path / "out" / "views.png"
    assert bench_main(["views", "--shards", str(shards), "--out", str(png), "--images", "3", "--k", "4"]) == 0
    sheet = Image.open(png)
    cell_w = 32 * views.SCALE + views.GAP
    cell_h = 32 * views.SCALE + views.CAPTION_HEIGHT + views.GAP
    assert sheet.size == ((4 + 2) * cell_w, 3 * cell_h)
    # The first cell of each row is the original image, scaled up with nearest sampling; the
    # second its weak view, which differs from it.
    images = views._load_images(shards, 3, "train", 0)
    pixels = np.asarray(sheet.convert("RGB"))
    for row, image in enumerate(images):
        top = row * cell_h
        original = pixels[top: top + 32 * views.SCALE: views.SCALE, : 32 * views.SCALE: views.SCALE]
        weak = pixels[top: top + 32 * views.SCALE: views.SCALE,
                      cell_w: cell_w + 32 * views.SCALE: views.SCALE]
        assert np.array_equal(original, image)
        assert not np.array_equal(weak, image)


def test_views_same_seed_same_sheet(tmp_path):
    shards = make_shards(tmp_path)
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    for png in (first, second):
        assert bench_main(["views", "--shards", str(shards), "--out", str(png), "--seed", "5"]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_views_reads_the_shards_named_by_the_variable(tmp_path, monkeypatch, capsys):
    shards = make_shards(tmp_path)
    monkeypatch.setenv(SHARDS_ENV, str(shards))
    png = tmp_path / "env.png"
    assert bench_main(["views", "--out", str(png), "--images", "2", "--k", "1"]) == 0
    cell_w, cell_h = 32 * views.SCALE + views.GAP, 32 * views.SCALE + views.CAPTION_HEIGHT + views.GAP
    assert Image.open(png).size == (3 * cell_w, 2 * cell_h)
    monkeypatch.delenv(SHARDS_ENV)
    assert bench_main(["views", "--out", str(png)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"rmm-bench views: error: no images: pass --shards DIR (a prep-cifar10 --out directory) "
                   f"or set {SHARDS_ENV}")


def test_views_captions_name_the_library_policy_of_each_view():
    weak, policies = views.sample_views(2, 3, seed=4)
    assert len(policies) == len(weak.flips) == 6 and policies.depth == views.DEPTH
    for v in range(6):
        lines = policies.describe_ops(v)
        assert [line.split("(")[0] for line in lines] == [OP_NAMES[op] for op in policies.op_ids[v]]


def test_views_bad_input_is_one_line(tmp_path, capsys):
    assert bench_main(["views", "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rmm-bench views: error:") and "\n" not in err
    assert bench_main(["views", "--shards", str(tmp_path), "--out", "x.png", "--k", "0"]) == 2
    assert not (tmp_path / "x.png").exists()
