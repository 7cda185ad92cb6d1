"""Each algorithm's step under bf16 autocast, on the CPU: what a default CUDA run does (bf16 is on by
default there), with the CPU's autocast standing in for the GPU's. Every tensor that leaves autocast as
bf16 and meets float32 weights outside it fails here as it would on the GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from remixmatch.pipeline import StepLoader
from remixmatch.trainer.build import build_policy_and_views, build_train_state
from remixmatch.trainer.algorithms import STEPS
from trainer_helpers import pipeline_shards, smoke_config  # noqa: F401  (a fixture)


@pytest.mark.parametrize("algorithm", sorted(STEPS))
def test_a_step_under_bf16_autocast_trains_with_finite_losses(pipeline_shards, algorithm):
    config = smoke_config(pipeline_shards.path, algorithm=algorithm)
    state = build_train_state(config, 10, np.full(10, 0.1), torch.device("cpu"),
                              mean=(0.5,) * 3, std=(0.25,) * 3)
    state.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    policy, views = build_policy_and_views(config)
    before = {name: p.detach().clone() for name, p in state.raw_model.named_parameters()}
    with StepLoader(pipeline_shards.data, policy, views, device="cpu", prefetch=False) as loader:
        result = STEPS[algorithm](state, next(loader), 0)
    assert torch.isfinite(result.losses).all()
    assert result.losses.dtype == torch.float32
    still = [name for name, p in state.raw_model.named_parameters() if torch.equal(before[name], p)]
    # Only the rotation loss trains the rotation head (weight decay alone moves its weight elsewhere);
    # where that loss is on, the head must train under autocast too.
    unused = set() if algorithm == "remixmatch" else {"rotation_head.weight", "rotation_head.bias"}
    assert set(still) <= unused, f"parameters that did not move: {still}"
