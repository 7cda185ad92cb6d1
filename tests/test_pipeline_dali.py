"""The DALI fetcher (loader="dali"): the same rows as the shards, any batch size, the same step
batches as the host fetcher, errors that surface instead of hanging, and make_fetcher."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from datasets_helpers import cifar_archive, write_tree
from remixmatch.datasets_prep import open_shards
from remixmatch.datasets_prep.cli import prep_folder_main
from remixmatch.datasets_prep.sources_cifar import prep_cifar10
from remixmatch.datasets_prep.subsets import labeled_subset
from remixmatch.pipeline import (CTAugment, EvalLoader, HostFetcher, PipelineError, StepLoader, TrainData,
                                 ViewConfig, make_fetcher, train_data)
from remixmatch.pipeline.dali import DALI_MISSING, DaliFetcher, DaliGraphFetcher

MAX_BATCH = 16
# Nothing here should take more than a few seconds: a call still running after this has hung.
HANG_S = 60


def _dali_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no nvidia namespace at all
        return False


# DALI is a dependency of the package, so the CPU tests below fail without it. A GPU machine may still
# lack it (its wheel is too large to carry to some): there the gpu tests skip and say why.
needs_dali = pytest.mark.skipif(not _dali_installed(), reason="nvidia-dali-cuda120 is not installed")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A synthetic CIFAR-10 shard set (60 train rows in shards of 16, so gathers cross shards)."""
    root = tmp_path_factory.mktemp("dali_cifar")
    archive, _ = cifar_archive(root, per_batch=12, seed=4)
    prep_cifar10(str(archive), root / "shards", overwrite=True, progress=False, shard_rows=16)
    return open_shards(root / "shards")


def _encoded_shards(root: Path, fmt: str, layout, sizes=((32, 32),)):
    for i, size in enumerate(sizes):
        write_tree(root / "tree", layout if i == 0 else {f"c{i}": 2}, size=size, fmt=fmt, seed=7 + i)
    rc = prep_folder_main(["--source", str(root / "tree"), "--out", str(root / "shards"), "--encoded",
                           "--workers", "1", "--shard-rows", "8", "--no-progress"])
    assert rc == 0
    return open_shards(root / "shards")


@pytest.fixture(scope="module", params=["PNG", "JPEG"])
def encoded(request, tmp_path_factory):
    """Shards that keep each file's PNG / JPEG bytes (25 rows of 32 x 32, shards of 8)."""
    return _encoded_shards(tmp_path_factory.mktemp(f"dali_{request.param.lower()}"), request.param,
                           {"a": 13, "b": 12})


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return _encoded_shards(tmp_path_factory.mktemp("dali_png_only"), "PNG", {"a": 13, "b": 12})


def _random_rows(n_rows: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_rows, n).astype(np.int64)


def _call(fn, *args, timeout=HANG_S):
    """fn(*args) in a thread: a hang fails the test instead of stalling the suite."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result(timeout=timeout)


# -- rows ---------------------------------------------------------------------------------------------


def test_raw_rows_are_the_shards_rows(cifar):
    split = cifar["train"]
    with DaliFetcher(split, max_batch=MAX_BATCH, num_threads=2) as fetch:
        for seed in range(3):
            rows = _random_rows(len(split), 13, seed)  # repeats, unsorted, across shards
            images = fetch(rows)
            assert isinstance(images, np.ndarray) and images.dtype == np.uint8
            assert images.shape == (13, 32, 32, 3) and images.flags.c_contiguous
            np.testing.assert_array_equal(images, split.images(rows))


def test_encoded_rows_decode_to_the_shards_rows(encoded):
    split = encoded["train"]
    assert split.encoding in ("png", "jpeg")
    with DaliFetcher(split, max_batch=MAX_BATCH) as fetch:
        rows = _random_rows(len(split), 11, 1)
        images = fetch(rows)
        assert images.shape == (11, 32, 32, 3) and images.dtype == np.uint8 and images.flags.c_contiguous
        # PIL's decode of the stored bytes (what split.images gives) is the oracle, JPEG included.
        np.testing.assert_array_equal(images, split.images(rows))


@pytest.mark.parametrize("which", ["raw", "png"])
def test_any_batch_size(cifar, png, which):
    split = cifar["train"] if which == "raw" else png["train"]
    with DaliFetcher(split, max_batch=MAX_BATCH) as fetch:
        for i, n in enumerate([1, 7, MAX_BATCH, 3, 2 * MAX_BATCH + 5, 1]):
            rows = _random_rows(len(split), n, 10 + i)
            images = fetch(rows)
            assert images.shape == (n, 32, 32, 3), n
            np.testing.assert_array_equal(images, split.images(rows), err_msg=f"{n} rows")
        empty = fetch(np.zeros(0, np.int64))
        assert empty.shape[0] == 0 and empty.shape[-1] == 3


def test_outputs_stay_valid_after_later_calls(cifar):
    # Each call's array is a view of DALI's output: no later run may write into it.
    split = cifar["train"]
    with DaliFetcher(split, max_batch=MAX_BATCH) as fetch:
        kept = [(rows, fetch(rows)) for rows in (_random_rows(len(split), 1 + s % MAX_BATCH, s) for s in range(40))]
    for rows, images in kept:
        np.testing.assert_array_equal(images, split.images(rows))


# -- loaders ------------------------------------------------------------------------------------------


def _arrays(batch) -> dict:
    return {"x": batch.x, "x_labels": batch.x_labels, "x_probe": batch.x_probe, "u_weak": batch.u_weak,
            "u_strong": batch.u_strong, "views": batch.views, "x_rows": batch.plan.x_rows,
            "u_rows": batch.plan.u_rows}


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for step, (first, second) in enumerate(zip(a, b)):
        for name in first:
            np.testing.assert_array_equal(np.asarray(first[name]), np.asarray(second[name]),
                                          err_msg=f"step {step} {name}")


def _numpy(value):
    if value is None or isinstance(value, np.ndarray):
        return value
    return value.cpu().numpy().copy()


def _step_batches(data, fetcher, steps: int, device: str = "cpu"):
    config = ViewConfig(batch=8, unlabeled_batch=8, k=2, seed=5)
    batches = []
    with StepLoader(data, CTAugment(), config, device=device, fetcher=fetcher) as loader:
        for _ in range(steps):
            batch = next(loader)
            batches.append({name: _numpy(value) for name, value in _arrays(batch).items()})
    return batches


def test_step_loader_batches_match_the_host_fetcher(cifar):
    data = train_data(cifar, labeled_subset(cifar, 20, seed=1))
    host = _step_batches(data, None, steps=3)
    dali = _step_batches(data, DaliFetcher(data.split, max_batch=64), steps=3)
    _assert_same_batches(host, dali)
    assert host[0]["x_probe"] is not None and host[0]["u_strong"].shape == (2, 8, 32, 32, 3)


def _updated_step_batches(data, fetcher, steps: int):
    """Step batches with a CTAugment update (fixed scores) after each step, so later plans use new weights."""
    config = ViewConfig(batch=8, unlabeled_batch=8, k=2, seed=5)
    policy = CTAugment()
    batches = []
    with StepLoader(data, policy, config, fetcher=fetcher) as loader:
        for step in range(steps):
            batch = next(loader)
            batches.append({name: _numpy(value) for name, value in _arrays(batch).items()})
            scores = np.random.default_rng(100 + step).random(len(batch.plan.x_rows))
            policy.update(batch.plan.probe_policies, scores)
    return batches


@pytest.mark.parametrize("kernel", ["python", "numba"])
def test_graph_kernel_batches_match_the_host_fetcher(cifar, kernel):
    # The kernel inside the DALI graph (python_function -> apply_ops, or numba_function -> our njit
    # kernel) gives the host loader's views bit for bit, with policy updates between steps.
    data = train_data(cifar, labeled_subset(cifar, 20, seed=1))
    steps = 4 if kernel == "python" else 2
    host = _updated_step_batches(data, None, steps)
    fetch = DaliGraphFetcher(data.split, kernel=kernel)
    graph = _call(_updated_step_batches, data, fetch, steps, timeout=600)
    _assert_same_batches(host, graph)
    assert host[0]["u_strong"].shape == (2, 8, 32, 32, 3)
    assert any(not np.array_equal(host[0]["views"], b["views"]) for b in host[1:])
    if kernel == "numba":
        # The callback calls the one specialisation `make test` compiles and caches beforehand
        # (kernels.compile_all()), not one of its own.
        import numba

        from remixmatch.kernels import serial_warm_up_arguments
        from remixmatch.kernels.cpu import apply_ops_cpu_serial

        assert apply_ops_cpu_serial.signatures == [tuple(numba.typeof(a) for a in serial_warm_up_arguments())]


def test_graph_fetcher_render_and_fetch(cifar):
    from remixmatch.pipeline import draw_plan, kernel_call
    from remixmatch.pipeline.batch import render_views

    split = cifar["train"]
    config = ViewConfig(batch=4, unlabeled_batch=4, k=3, seed=2)
    with DaliGraphFetcher(split, numba_threads=1) as fetch:
        for step in range(3):
            rows = _random_rows(len(split), 8, step)
            plan = draw_plan(step, rows[:4], rows[4:], CTAugment(), config)
            call = kernel_call(plan)
            views = fetch.render(rows, call, config.pad)
            assert views.dtype == np.uint8 and views.shape == (4 + 4 + 4 + 3 * 4, 32, 32, 3)
            np.testing.assert_array_equal(views, render_views(split.images(rows), call, config.pad))
        np.testing.assert_array_equal(fetch(np.array([5, 0, 5])), split.images([5, 0, 5]))  # plain rows too
        with pytest.raises(IndexError, match=f"index {len(split)} out of range"):
            _call(fetch.render, np.array([0, len(split)]), call, config.pad)
        with pytest.raises(PipelineError, match="1-D integer"):
            fetch.render(np.zeros((2, 2), np.int64), call, config.pad)
        np.testing.assert_array_equal(fetch.render(rows, call, config.pad), views)  # still usable
    with pytest.raises(PipelineError, match="after close"):
        fetch.render(rows, call, config.pad)


def test_graph_fetcher_refuses_what_it_cannot_run(cifar, png):
    cases = [(dict(split=cifar["train"], kernel="bogus"), "kernel must be one of 'python', 'numba'"),
             (dict(split=cifar["train"], device="cuda"), "CPU only"),
             (dict(split=png["train"]), "raw shards"),
             (dict(split=cifar["train"], numba_threads=0), "numba_threads")]
    for kwargs, fragment in cases:
        with pytest.raises(PipelineError) as err:
            DaliGraphFetcher(**kwargs)
        assert fragment in str(err.value) and "\n" not in str(err.value)
    fetch = make_fetcher("dali-graph", cifar["train"])
    assert isinstance(fetch, DaliGraphFetcher) and fetch.kernel == "python"
    fetch.close()


def test_eval_pass_keeps_the_last_partial_batch(cifar):
    split = cifar["train"]
    rows = np.random.default_rng(2).permutation(len(split))[:23].astype(np.int64)
    loader = EvalLoader(split, rows, batch=10, fetcher=DaliFetcher(split, max_batch=10))
    batches = list(loader)
    assert len(loader) == 3 and [len(b.rows) for b in batches] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([b.rows for b in batches]), rows)  # each row once, in order
    for b in batches:
        np.testing.assert_array_equal(b.images.numpy(), split.images(b.rows))
        np.testing.assert_array_equal(b.labels.numpy(), np.asarray(split.labels, np.int64)[b.rows])
    loader.fetch.close()


# -- make_fetcher -------------------------------------------------------------------------------------


def test_make_fetcher_kinds(cifar):
    split = cifar["train"]
    assert isinstance(make_fetcher("torch", split), HostFetcher)
    fetch = make_fetcher("dali", split, max_batch=32)
    assert isinstance(fetch, DaliFetcher) and fetch.max_batch == 32 and fetch.device == "cpu"
    np.testing.assert_array_equal(fetch(np.array([5, 0, 5])), split.images([5, 0, 5]))
    fetch.close()


def test_make_fetcher_without_dali(cifar, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # what a missing package looks like to import
    with pytest.raises(PipelineError) as err:
        make_fetcher("dali", cifar["train"])
    message = str(err.value)
    assert message == DALI_MISSING and "\n" not in message
    assert "nvidia-dali-cuda120" in message and "loader='torch'" in message
    assert isinstance(make_fetcher("torch", cifar["train"]), HostFetcher)  # the alternative still works


def test_make_fetcher_unknown_kind(cifar):
    with pytest.raises(PipelineError, match=r"unknown loader 'bogus'.*'torch'.*'dali'"):
        make_fetcher("bogus", cifar["train"])


def test_package_imports_without_dali():
    code = ("import sys; sys.modules['nvidia.dali'] = None; import remixmatch.pipeline as p; "
            "assert 'make_fetcher' in p.__all__; import remixmatch.pipeline.dali")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["raw", "png"])
def test_out_of_range_row_raises(cifar, png, which):
    split = cifar["train"] if which == "raw" else png["train"]
    fetch = DaliFetcher(split, max_batch=MAX_BATCH)
    with pytest.raises(IndexError, match=f"index {len(split)} out of range"):
        _call(fetch, np.array([0, len(split)], np.int64))
    np.testing.assert_array_equal(_call(fetch, np.array([1, 2])), split.images([1, 2]))  # still usable
    fetch.close()


class _CorruptSplit:
    """An encoded split whose rows in ``bad`` hold bytes no decoder accepts. It declares its image
    size, which the loaders require (prep-folder --encoded records none)."""

    image_shape = (32, 32, 3)

    def __init__(self, split, bad):
        self._split, self.bad = split, set(bad)

    def __getattr__(self, name):
        return getattr(self._split, name)

    def __len__(self):
        return len(self._split)

    def encoded(self, rows):
        blobs = self._split.encoded(rows)
        return [b"\x89PNG\r\n\x1a\n" + bytes(40) if int(r) in self.bad else blob for r, blob in zip(rows, blobs)]


def test_dali_error_is_one_line_and_the_fetcher_recovers(png):
    split = _CorruptSplit(png["train"], bad=[3])
    fetch = DaliFetcher(split, max_batch=MAX_BATCH)
    with pytest.raises(PipelineError) as err:
        _call(fetch, np.array([1, 3, 4]))
    message = str(err.value)
    assert "\n" not in message and "decoders.image" in message and "row 3 does not decode" in message
    assert f"split train of {png.path}" in message
    assert err.value.__cause__ is not None  # DALI's own error, chained
    # DALI invalidates a pipeline after an error; the next call runs on a new one.
    np.testing.assert_array_equal(_call(fetch, np.array([1, 4])), png["train"].images([1, 4]))
    fetch.close()


def test_dali_error_surfaces_from_the_eval_loader(png):
    split = _CorruptSplit(png["train"], bad=[12])
    loader = EvalLoader(split, np.arange(20), batch=8, fetcher=DaliFetcher(split, max_batch=8))
    with pytest.raises(PipelineError, match="decoders.image"):
        _call(lambda: [b.rows for b in loader])


def test_dali_error_surfaces_from_the_step_loader(png):
    # The StepLoader fetches in its worker thread: the error must come out of next(), not hang it.
    split = _CorruptSplit(png["train"], bad=range(len(png["train"])))
    labels = np.asarray(split.labels, np.int64)
    rows = np.arange(len(split), dtype=np.int64)
    data = TrainData(split, labels, rows[:10], rows, png.num_classes)
    config = ViewConfig(batch=4, unlabeled_batch=4, k=1, seed=0)
    with StepLoader(data, CTAugment(), config, fetcher=DaliFetcher(split, max_batch=8)) as loader:
        with pytest.raises(PipelineError, match="does not decode"):
            _call(next, loader)


def test_mixed_sizes_are_refused(tmp_path):
    shards = _encoded_shards(tmp_path, "PNG", {"a": 3}, sizes=((32, 32), (20, 24)))
    split = shards["train"]
    assert split.image_shape is None
    sizes = {split.images(i).shape for i in range(len(split))}
    assert sizes == {(32, 32, 3), (24, 20, 3)}
    with DaliFetcher(split, max_batch=4) as fetch:
        first = fetch(np.arange(3))  # one size within a call is fine
        assert first.shape[0] == 3
        with pytest.raises(PipelineError, match="different sizes"):
            _call(fetch, np.arange(len(split)))


def test_bad_arguments(cifar):
    split = cifar["train"]
    with pytest.raises(PipelineError, match="max_batch"):
        DaliFetcher(split, max_batch=0)
    for device in ("tpu", "cuda:x", "cuda0"):
        with pytest.raises(PipelineError, match="device"):
            DaliFetcher(split, device=device)
    fetch = DaliFetcher(split, max_batch=4)
    with pytest.raises(PipelineError, match="1-D integer"):
        fetch(np.zeros((2, 2), np.int64))
    with pytest.raises(PipelineError, match="1-D integer"):
        fetch(np.array([0.5]))
    fetch.close()
    fetch.close()
    with pytest.raises(PipelineError, match="after close"):
        fetch(np.array([0]))


# -- CUDA ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_dali
@pytest.mark.parametrize("which", ["raw", "png"])
def test_cuda_rows_are_torch_cuda_tensors(cifar, png, which):
    import torch

    split = cifar["train"] if which == "raw" else png["train"]
    with DaliFetcher(split, device="cuda", max_batch=MAX_BATCH) as fetch:
        for i, n in enumerate([1, 7, MAX_BATCH, 2 * MAX_BATCH + 1]):
            rows = _random_rows(len(split), n, 20 + i)
            images = fetch(rows)
            assert isinstance(images, torch.Tensor) and images.is_cuda and images.dtype == torch.uint8
            assert images.shape == (n, 32, 32, 3) and images.is_contiguous()
            np.testing.assert_array_equal(images.cpu().numpy(), split.images(rows))


@pytest.mark.gpu
@needs_dali
def test_cuda_step_loader_matches_the_host_fetcher(cifar):
    data = train_data(cifar, labeled_subset(cifar, 20, seed=1))
    host = _step_batches(data, None, steps=2, device="cuda")
    dali = _step_batches(data, DaliFetcher(data.split, device="cuda", max_batch=64), steps=2, device="cuda")
    _assert_same_batches(host, dali)


@pytest.mark.gpu
@needs_dali
def test_cuda_eval_pass_keeps_the_last_partial_batch(cifar):
    split = cifar["train"]
    rows = np.arange(23, dtype=np.int64)
    loader = EvalLoader(split, rows, batch=10, device="cuda", fetcher=DaliFetcher(split, device="cuda", max_batch=10))
    batches = list(loader)
    assert [len(b.rows) for b in batches] == [10, 10, 3]
    for b in batches:
        assert b.images.is_cuda
        np.testing.assert_array_equal(b.images.cpu().numpy(), split.images(b.rows))
