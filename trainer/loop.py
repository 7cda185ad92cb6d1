"""One iteration of the training loop's body, shared by ``Run._loop`` (trainer/run.py) and
``rmm-bench train``: ``next(loader)`` (timed: the data wait), the step, then the CTAugment
feedback and ``loader.prepare()`` in the order that decides which weights each plan's policies
come from."""

from __future__ import annotations

import time
from typing import NamedTuple

from remixmatch.pipeline import update_policy


class StepOutcome(NamedTuple):
    result: object  # the step function's StepResult (losses, probe scores)
    pending: tuple | None  # (probe plan, this rank's scores) awaiting the CTAugment update
    wait: float  # seconds spent in next(loader)


def apply_pending(policy, pending, world_size: int) -> None:
    """Feeds held probe scores to the policy (every rank the same global update)."""
    if pending is not None:
        plan, scores = pending
        update_policy(policy, plan, scores, world_size)


def train_step(state, step_fn, loader, policy, step: int, pending, *, prefetch: bool,
               world_size: int = 1) -> StepOutcome:
    """Step ``step`` on the loader's next batch. With prefetch the held scores of step t - 1 update
    the policy (ready by now on a GPU: no stall), this step's scores are held, and the next plan is
    drawn (its policies come from the weights after step t - 1); without prefetch this step's
    scores update the policy at once and nothing is held."""
    state.begin_phase("data_wait")
    before = time.perf_counter()
    batch = next(loader)
    wait = time.perf_counter() - before
    result = step_fn(state, batch, step)
    state.begin_phase("cta_update")
    if policy is not None:
        if prefetch:
            apply_pending(policy, pending, world_size)
            pending = (batch.global_plan, result.probe_scores)
            loader.prepare()
        else:
            apply_pending(policy, (batch.global_plan, result.probe_scores), world_size)
            pending = None
    elif prefetch:
        loader.prepare()
    state.end_phase()
    return StepOutcome(result, pending, wait)


__all__ = ["StepOutcome", "apply_pending", "train_step"]
