"""Shared helpers for the pipeline tests: tiny shard sets built once per session, and the re-making
of a step's views from its plan with the public kernel entry points.

    from pipeline_helpers import pipeline_shards  # a session fixture: use it as a test argument
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from datasets_helpers import cifar_archive
from remixmatch.datasets_prep import ShardSet, open_shards
from remixmatch.datasets_prep.sources_cifar import prep_cifar10
from remixmatch.datasets_prep.subsets import LabeledSubset, labeled_subset
from remixmatch.kernels import apply_ops, weak_augment
from remixmatch.pipeline import TrainData, train_data

N_LABELED = 20
N_VALID = 20


@dataclass(frozen=True)
class Shards:
    """A synthetic CIFAR-10 shard set (200 train rows of random noise, 40 test rows), a labeled
    subset of it with a validation hold-out, and the TrainData they make."""

    path: Path
    shards: ShardSet
    subset: LabeledSubset
    data: TrainData


def build_shards(root: Path, seed: int = 0, per_batch: int = 40) -> Shards:
    root.mkdir(parents=True, exist_ok=True)
    archive, _ = cifar_archive(root, per_batch=per_batch, seed=seed)
    out = root / "shards"
    prep_cifar10(str(archive), out, overwrite=True, progress=False)
    shards = open_shards(out)
    subset = labeled_subset(shards, N_LABELED, seed=3, n_valid=N_VALID)
    return Shards(out, shards, subset, train_data(shards, subset))


@pytest.fixture(scope="session")
def pipeline_shards(tmp_path_factory) -> Shards:
    return build_shards(tmp_path_factory.mktemp("pipeline_shards"), seed=0)


@pytest.fixture(scope="session")
def other_shards(tmp_path_factory) -> Shards:
    """A second shard set of the same shape with other pixels and labels (another fingerprint)."""
    return build_shards(tmp_path_factory.mktemp("pipeline_other_shards"), seed=1)


def remake_views(split, plan, pad: int = 4) -> dict[str, np.ndarray | None]:
    """Every view of a (local) step plan, re-made from the shards with apply_ops / weak_augment
    directly (separate calls per part, images read per part; a plan's Cutout as apply_ops's
    cutout_level): the oracle the loaders must match."""
    x_images = split.images(np.asarray(plan.x_rows))
    b = len(plan.x_rows)
    views: dict[str, np.ndarray | None] = {}
    views["x"] = apply_ops(x_images, *plan.x_policies.arrays(), flips=plan.x_weak.flips,
                           offsets=plan.x_weak.offsets, pad=pad, check_values=True)
    views["x_probe"] = None
    if plan.probe_policies is not None:
        views["x_probe"] = apply_ops(x_images, *plan.probe_policies.arrays(), flips=plan.x_weak.flips,
                                     offsets=plan.x_weak.offsets, pad=pad, check_values=True)
    bu, k = len(plan.u_rows), plan.k
    if bu == 0:
        h, w = x_images.shape[1:3]
        views["u_weak"] = np.zeros((0, h, w, 3), np.uint8)
        views["u_strong"] = np.zeros((k, 0, h, w, 3), np.uint8)
        return views
    u_images = split.images(np.asarray(plan.u_rows))
    views["u_weak"] = weak_augment(u_images, plan.u_weak.flips, plan.u_weak.offsets, pad=pad, check_values=True)
    h, w = u_images.shape[1:3]
    if k == 0:
        views["u_strong"] = np.zeros((0, bu, h, w, 3), np.uint8)
    else:
        sources = np.tile(np.arange(bu, dtype=np.int32), k)
        strong = apply_ops(u_images, *plan.u_policies.arrays(), cutout_level=plan.cutout_level, sources=sources,
                           flips=plan.u_strong_weak.flips, offsets=plan.u_strong_weak.offsets, pad=pad,
                           check_values=True)
        views["u_strong"] = strong.reshape(k, bu, h, w, 3)
    assert b == len(plan.x_rows)
    return views


def batch_arrays(batch) -> dict[str, np.ndarray | None]:
    """A StepBatch's tensors as NumPy arrays (copies), for comparisons."""
    return {
        "x": batch.x.numpy().copy(),
        "x_labels": batch.x_labels.numpy().copy(),
        "x_probe": None if batch.x_probe is None else batch.x_probe.numpy().copy(),
        "u_weak": batch.u_weak.numpy().copy(),
        "u_strong": batch.u_strong.numpy().copy(),
        "x_rows": np.asarray(batch.plan.x_rows).copy(),
        "u_rows": np.asarray(batch.plan.u_rows).copy(),
    }


def assert_same_batch(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys()
    for name in a:
        if a[name] is None or b[name] is None:
            assert a[name] is None and b[name] is None, f"{where}{name}"
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{where}{name}")


def probe_scores(step: int, n: int, offset: int = 0) -> np.ndarray:
    """Fake probe scores in [0, 1] for global probe indices offset..offset+n of a step."""
    index = np.arange(offset, offset + n)
    return ((step * 7 + index * 3) % 11) / 10.0


def distributed_worker(rank: int, world_size: int, init_file: str, shard_path: str, out_dir: str,
                       steps: int, config_kw: dict) -> None:
    """One rank of the distributed test (run by torch.multiprocessing): a StepLoader for its rank,
    CTAugment updates through update_policy with scores derived from (step, global probe index);
    writes per-step rates and rows to out_dir/rank{rank}.npz."""
    import torch
    import torch.distributed as dist

    from remixmatch.pipeline import CTAugment, StepLoader, ViewConfig, update_policy

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        shards = open_shards(shard_path)
        subset = labeled_subset(shards, N_LABELED, seed=3, n_valid=N_VALID)
        data = train_data(shards, subset)
        policy = CTAugment()
        config = ViewConfig(**config_kw)
        record: dict[str, list] = {"rates": [], "x_rows": [], "u_rows": [], "x": [], "u_strong": [], "scores": []}
        with StepLoader(data, policy, config, rank=rank, world_size=world_size) as loader:
            for step in range(steps):
                batch = next(loader)
                local = len(batch.plan.x_rows)
                scores = torch.from_numpy(probe_scores(step, local, offset=rank * local)).float()
                gathered = update_policy(policy, batch.global_plan, scores, world_size=world_size)
                record["rates"].append(policy.rates.copy())
                record["x_rows"].append(np.asarray(batch.plan.x_rows).copy())
                record["u_rows"].append(np.asarray(batch.plan.u_rows).copy())
                record["x"].append(batch.x.numpy().copy())
                record["u_strong"].append(batch.u_strong.numpy().copy())
                record["scores"].append(np.asarray(gathered).copy())
        np.savez(Path(out_dir) / f"rank{rank}.npz", **{k: np.stack(v) for k, v in record.items()})
    finally:
        dist.destroy_process_group()


def spawn_ranks(worker, args: tuple, world: int, timeout_s: float) -> None:
    """Runs ``worker(rank, *args)`` in ``world`` spawned processes and waits for all of them; a rank
    that fails raises here with its traceback, and a hang fails the test after ``timeout_s``."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1):  # raises with the child's traceback when a rank fails
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} ranks did not finish within {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
