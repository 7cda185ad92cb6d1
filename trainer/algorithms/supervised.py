"""The supervised baseline: the labeled views alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..step import StepResult, TrainState, as_float_images, optimise, probe_scores

LOSS_NAMES = ("total", "loss_x")


def supervised_step(state: TrainState, batch, step: int) -> StepResult:
    """The baseline: cross-entropy on the labeled views alone, same optimiser, decay and EMA."""
    state.begin_phase("forward")
    state.model.train()
    with state.autocast():
        logits = state.model(as_float_images(batch.x))
    loss = F.cross_entropy(logits.float(), batch.x_labels)
    optimise(state, loss, step)
    scores = probe_scores(state, batch.x_probe, batch.x_labels) if batch.x_probe is not None else None
    return StepResult(torch.stack([loss, loss]).detach().float(), scores)
