"""prep-svhn and the MAT-file reader, against files written by scipy.io.savemat (the test oracle)."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

pytest.importorskip("scipy", reason="scipy writes the synthetic .mat files")
import scipy.io  # noqa: E402

from datasets_helpers import assert_one_line_error, http_server, no_leftovers, run_main, svhn_arrays, write_svhn  # noqa: E402
from remixmatch.datasets_prep import PrepError, open_shards  # noqa: E402
from remixmatch.datasets_prep import matfile as matfile_module  # noqa: E402
from remixmatch.datasets_prep.cli import prep_svhn_main  # noqa: E402
from remixmatch.datasets_prep.matfile import MatFile  # noqa: E402

PROG = "prep-svhn"


@pytest.mark.parametrize("compress", [True, False])
def test_matfile_reads_what_scipy_writes(tmp_path, compress):
    rng = np.random.default_rng(0)
    arrays = {
        "X": rng.integers(0, 256, (32, 32, 3, 9), dtype=np.uint8),
        "y": rng.integers(1, 11, (9, 1)).astype(np.float64),
        "small": np.array([[7]], np.uint8),  # stored as a "small data element" in its tag
        "i16": rng.integers(-300, 300, (5, 4)).astype(np.int16),
        "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "text": "not numeric",
    }
    path = tmp_path / "t.mat"
    scipy.io.savemat(path, arrays, do_compression=compress)
    with MatFile(path) as mat:
        for name in ("X", "y", "small", "i16", "f32"):
            got = mat[name].read()
            assert got.dtype == arrays[name].dtype and got.shape == arrays[name].shape
            np.testing.assert_array_equal(got, arrays[name])
        blocks = list(mat["X"].iter_last_axis(4))
        assert [len(b) for b in blocks] == [4, 4, 1]
        np.testing.assert_array_equal(np.concatenate(blocks).transpose(0, 3, 2, 1), arrays["X"].transpose(3, 0, 1, 2))
        with pytest.raises(PrepError, match="text is MATLAB class 4"):
            mat["text"]
        with pytest.raises(PrepError, match="no variable 'Z'"):
            mat["Z"]


def test_compressed_data_is_inflated_in_bounded_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(matfile_module, "_READ_CHUNK", 1000)
    x = np.zeros((32, 32, 3, 50), np.uint8)  # zeros: a huge inflation ratio per compressed byte
    x[..., 7] = 9
    scipy.io.savemat(tmp_path / "z.mat", {"X": x}, do_compression=True)
    with MatFile(tmp_path / "z.mat") as mat:
        np.testing.assert_array_equal(mat["X"].read(), x)


def test_matfile_rejects_other_files(tmp_path):
    (tmp_path / "v73.mat").write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(128, b" "))
    with pytest.raises(PrepError, match="HDF5"):
        MatFile(tmp_path / "v73.mat")
    (tmp_path / "junk.mat").write_bytes(b"x" * 300)
    with pytest.raises(PrepError, match="not a level-5 MAT-file"):
        MatFile(tmp_path / "junk.mat")
    x, y = svhn_arrays(4)
    scipy.io.savemat(tmp_path / "ok.mat", {"X": x, "y": y})
    raw = (tmp_path / "ok.mat").read_bytes()
    (tmp_path / "cut.mat").write_bytes(raw[: len(raw) - 2000])
    with pytest.raises(PrepError, match="truncated"):
        MatFile(tmp_path / "cut.mat")


def test_prep_svhn_round_trip(tmp_path, capsys):
    arrays = write_svhn(tmp_path / "svhn", {"train": 23, "test": 11, "extra": 5})
    rc, out, err = run_main(
        prep_svhn_main, ["--source", tmp_path / "svhn", "--out", tmp_path / "ds", "--shard-rows", 10, "--extra"], capsys
    )
    assert rc == 0, err
    assert "train 23 rows in 3 shards" in out
    ds = open_shards(tmp_path / "ds")
    assert ds.dataset == "svhn" and ds.splits == ("train", "test", "extra")
    assert ds.class_names == tuple("0123456789")
    for split, (x, y) in arrays.items():
        part = ds[split]
        np.testing.assert_array_equal(part.images(slice(None)), x.transpose(3, 0, 1, 2))
        expected = y.reshape(-1).astype(np.int16) % 10  # label 10 is the digit 0
        np.testing.assert_array_equal(part.labels, expected)
        assert part.sources([1]) == [f"{split}_32x32.mat:1"]
    ds.verify()


def test_prep_svhn_without_extra_ignores_it(tmp_path, capsys):
    write_svhn(tmp_path / "svhn", {"train": 6, "test": 4}, compress=False)
    rc, _, err = run_main(prep_svhn_main, ["--source", tmp_path / "svhn", "--out", tmp_path / "ds"], capsys)
    assert rc == 0, err
    assert open_shards(tmp_path / "ds").splits == ("train", "test")
    rc, _, err = run_main(prep_svhn_main, ["--source", tmp_path / "svhn", "--out", tmp_path / "ds2", "--extra"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "no extra_32x32.mat")


def test_download_svhn(tmp_path, capsys):
    write_svhn(tmp_path / "www", {"train": 6, "test": 4})
    md5 = [
        f"{n}={hashlib.md5((tmp_path / 'www' / n).read_bytes()).hexdigest()}"
        for n in ("train_32x32.mat", "test_32x32.mat")
    ]
    with http_server(tmp_path / "www") as base:
        rc, _, err = run_main(
            prep_svhn_main, ["--source", base, "--out", tmp_path / "ds", "--md5", md5[0], "--md5", md5[1]], capsys
        )
        assert rc == 0, err
        assert len(open_shards(tmp_path / "ds")["test"]) == 4
        rc, _, err = run_main(prep_svhn_main, ["--source", base, "--out", tmp_path / "ds2"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "train_32x32.mat", "MD5", "e26dedcc434d2e4c54c9b2d4a06d8373")
    assert not (tmp_path / "ds2").exists() and no_leftovers(tmp_path, "ds2") == []


def test_label_out_of_range(tmp_path, capsys):
    x, y = svhn_arrays(8)
    y[5, 0] = 11
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "train_32x32.mat", {"X": x, "y": y})
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": np.ones_like(y)})
    rc, _, err = run_main(prep_svhn_main, ["--source", tmp_path / "svhn", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "train_32x32.mat", "label 11 out of range 1..10", "row 5")
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []


def test_wrong_shapes(tmp_path, capsys):
    (tmp_path / "svhn").mkdir()
    x, y = svhn_arrays(8)
    scipy.io.savemat(tmp_path / "svhn" / "train_32x32.mat", {"X": x, "y": y[:7]})
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x[:16], "y": y})
    rc, _, err = run_main(prep_svhn_main, ["--source", tmp_path / "svhn", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "train_32x32.mat", "7 labels for 8 images")


def test_truncated_and_missing_files(tmp_path, capsys):
    write_svhn(tmp_path / "svhn", {"train": 20, "test": 4})
    path = tmp_path / "svhn" / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:-500])
    rc, _, err = run_main(prep_svhn_main, ["--source", tmp_path / "svhn", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "train_32x32.mat", "truncated")
    rc, _, err = run_main(prep_svhn_main, ["--source", tmp_path / "absent", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "absent", "does not exist")


def test_corrupt_compressed_stream(tmp_path, capsys):
    write_svhn(tmp_path / "svhn", {"train": 20, "test": 4})
    path = tmp_path / "svhn" / "train_32x32.mat"
    raw = bytearray(path.read_bytes())
    # Damage the deflate data of the first (X) element well past its header.
    (nbytes,) = struct.unpack("<I", raw[132:136])
    for i in range(136 + nbytes // 2, 136 + nbytes // 2 + 64):
        raw[i] ^= 0xA5
    path.write_bytes(bytes(raw))
    rc, _, err = run_main(prep_svhn_main, ["--source", tmp_path / "svhn", "--out", tmp_path / "ds"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "train_32x32.mat")
    assert not (tmp_path / "ds").exists() and no_leftovers(tmp_path, "ds") == []
