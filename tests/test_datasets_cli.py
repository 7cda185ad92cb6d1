"""rmm-shards info / verify, and the console entry points' error discipline."""

from __future__ import annotations

import json

import numpy as np

from datasets_helpers import assert_one_line_error, cifar_archive, cli_subprocess, run_main
from remixmatch.datasets_prep.cli import prep_cifar10_main, shards_main
from remixmatch.datasets_prep.progress import progress_bars


def prepped(tmp_path, capsys):
    archive, _ = cifar_archive(tmp_path)
    rc, _, err = run_main(
        prep_cifar10_main, ["--source", archive, "--out", tmp_path / "ds", "--shard-rows", 40], capsys
    )
    assert rc == 0, err
    return tmp_path / "ds"


def test_info_table(tmp_path, capsys):
    out = prepped(tmp_path, capsys)
    rc, text, err = run_main(shards_main, ["info", out], capsys)
    assert rc == 0, err
    for fragment in ("cifar10", "32x32x3", "train", "test", "100", "automobile", "truck", "fingerprint"):
        assert fragment in text
    rc, text, _ = run_main(shards_main, ["info", out, "--json"], capsys)
    assert rc == 0 and json.loads(text)["splits"]["train"]["rows"] == 100


def test_verify_ok_and_changed_shard(tmp_path, capsys):
    out = prepped(tmp_path, capsys)
    rc, text, err = run_main(shards_main, ["verify", out], capsys)
    assert rc == 0 and "4 shards" in text and err == ""
    shard = out / "train-2-of-3.arrow"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 1
    shard.write_bytes(bytes(raw))
    rc, _, err = run_main(shards_main, ["verify", out], capsys)
    assert rc == 1
    assert_one_line_error(err, "rmm-shards verify", "train-2-of-3.arrow", "sha256")


def test_info_on_non_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run_main(shards_main, ["info", tmp_path / "empty"], capsys)
    assert rc == 2
    assert_one_line_error(err, "rmm-shards info", "no manifest.json")
    rc, _, err = run_main(shards_main, ["frobnicate"], capsys)
    assert rc == 2
    assert_one_line_error(err, "rmm-shards", "frobnicate")


def test_entry_point_in_a_fresh_process(tmp_path):
    """Bad input from a real process: one line on stderr, exit 2, no traceback, no progress noise."""
    proc = cli_subprocess("prep_cifar10_main", ["--source", tmp_path / "missing.tar.gz", "--out", tmp_path / "ds"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == b""
    assert_one_line_error(err.decode(), "prep-cifar10", "missing.tar.gz")


def test_progress_bars_only_when_asked(capsys):
    with progress_bars() as bars:  # stderr is captured, not a terminal: nothing drawn
        bars.task("rows", 10)(10)
    assert capsys.readouterr().err == ""
    with progress_bars(True) as bars:
        advance = bars.task("prep demo", 1000)
        advance(400)
        advance(600)
    err = capsys.readouterr().err
    assert "prep demo" in err and "1,000/1,000" in err and "rows/s" in err


def test_reader_gathers_what_prep_wrote(tmp_path, capsys):
    out = prepped(tmp_path, capsys)
    from remixmatch.datasets_prep import open_shards

    part = open_shards(out)["train"]
    idx = np.random.default_rng(0).integers(0, len(part), 64)
    everything = part.images(slice(None))
    np.testing.assert_array_equal(part.images(idx), everything[idx])
