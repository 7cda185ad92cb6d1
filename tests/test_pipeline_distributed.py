"""Two CPU processes (gloo): each rank's StepLoader reads its share of the global batch, and
update_policy keeps the CTAugment weights bit-identical on both ranks and equal to one process
updated with the whole step's scores."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from pipeline_helpers import distributed_worker, pipeline_shards, probe_scores, spawn_ranks  # noqa: F401
from remixmatch.pipeline import CTAugment, StepLoader, ViewConfig, gather_scores, update_policy

WORLD = 2
STEPS = 4
CONFIG_KW = dict(batch=8, unlabeled_batch=8, k=2, seed=11)
TIMEOUT_S = 120


def run_ranks(tmp_path, shard_path) -> list[dict]:
    out = tmp_path / "out"
    out.mkdir()
    spawn_ranks(distributed_worker, (WORLD, str(tmp_path / "store"), str(shard_path), str(out), STEPS, CONFIG_KW),
                WORLD, TIMEOUT_S)
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(WORLD)]


def test_two_gloo_ranks_keep_identical_weights(pipeline_shards, tmp_path):
    ranks = run_ranks(tmp_path, pipeline_shards.path)
    # the reference: one process, the whole global batch, the concatenated scores
    policy = CTAugment()
    with StepLoader(pipeline_shards.data, policy, ViewConfig(**CONFIG_KW)) as loader:
        for step in range(STEPS):
            batch = next(loader)
            scores = probe_scores(step, len(batch.global_plan.x_rows))
            update_policy(policy, batch.global_plan, torch.from_numpy(scores).float())
            for r, record in enumerate(ranks):
                np.testing.assert_array_equal(record["scores"][step], scores.astype(np.float32),
                                              err_msg=f"rank {r} step {step} gathered scores")
                np.testing.assert_array_equal(record["rates"][step], policy.rates,
                                              err_msg=f"rank {r} step {step} weights")
                half = slice(4 * r, 4 * r + 4)
                np.testing.assert_array_equal(record["x_rows"][step], batch.plan.x_rows[half])
                np.testing.assert_array_equal(record["u_rows"][step], batch.plan.u_rows[half])
                np.testing.assert_array_equal(record["x"][step], batch.x[half].numpy())
                np.testing.assert_array_equal(record["u_strong"][step], batch.u_strong[:, half].numpy())
            assert not set(ranks[0]["u_rows"][step].tolist()) & set(ranks[1]["u_rows"][step].tolist())
            first, last = 8 * step, 8 * step + 7  # labeled stream positions of the step (20 rows an epoch)
            if first // 20 == last // 20:  # within one epoch no row repeats, so the ranks' rows are disjoint
                assert not set(ranks[0]["x_rows"][step].tolist()) & set(ranks[1]["x_rows"][step].tolist())
            assert not np.all(policy.rates == 1.0)
    # the two ranks are bit-identical at every step
    np.testing.assert_array_equal(ranks[0]["rates"], ranks[1]["rates"])


def test_single_process_gather_is_the_local_scores():
    scores = torch.tensor([0.25, 1.0, 0.0], dtype=torch.float64)
    got = gather_scores(scores, world_size=1)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, [0.25, 1.0, 0.0])
    assert not dist.is_initialized()
