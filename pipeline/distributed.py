"""Keeping the CTAugment weights identical on every rank.

Every rank scores the probes of its own slice of the global batch. The probe policies are already
known everywhere (each rank draws the whole global plan), so only the scores travel: one
all-gather of a float vector per step. Every rank then applies the same update to the same global
list of probes in global batch order, which is exactly the update a single process would make for
the same global batch.
"""

from __future__ import annotations

import numpy as np

from .plan import StepPlan
from .policy import CTAugment


def all_gather_rows(tensor, world_size: int) -> list:
    """Every rank's ``tensor`` (equal shapes), in rank order: a plain all_gather, no gradients;
    ``[tensor]`` on one rank."""
    if world_size == 1:
        return [tensor]
    import torch
    import torch.distributed as dist

    tensor = tensor.detach().contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor)
    return parts


def gather_scores(local_scores, world_size: int):
    """The scores of every rank's probes in rank order (one all-gather; no-op for one rank).
    ``local_scores`` is a 1-D float tensor on the collective's device; returns a host NumPy array."""
    import torch

    parts = all_gather_rows(local_scores.detach().float(), world_size)
    return torch.cat(parts).cpu().numpy()


def update_policy(policy: CTAugment, plan: StepPlan, local_scores, world_size: int = 1) -> np.ndarray:
    """Applies step ``plan.step``'s probe results to ``policy`` on every rank alike; ``plan`` is the
    global plan of the step. Returns the global scores."""
    scores = gather_scores(local_scores, world_size)
    policy.update(plan.probe_policies, scores)
    return scores
