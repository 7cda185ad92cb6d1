"""MixMatch's training step (Berthelot et al., NeurIPS 2019, Algorithm 1), the baseline of ReMixMatch.

The views (rendered by the pipeline): labeled images weak; K weak views per unlabeled image (the
batch's weak view, then its K - 1 other views, all weak: no CTAugment, no probes).

Batch norm as ReMixMatch's step: the label guess runs in training mode with the running statistics
frozen; the one forward over the mixed batch alone updates them. On several ranks MixUp mixes over
the global batch (the views and targets all-gathered), with lambdas and partners the same on every
rank, as in ReMixMatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import l2_loss, linear_ramp, sharpen, soft_cross_entropy
from ..step import StepResult, TrainState, as_float_images, frozen_bn_statistics, mix_global_batch, optimise

LOSS_NAMES = ("total", "loss_x", "loss_u")


def guess_labels(model: torch.nn.Module, views: list[torch.Tensor], temperature: float, autocast) -> torch.Tensor:
    """The label guess: the mean of the model's predictions over an image's K views, sharpened at
    ``temperature``. A constant (no gradient); training-mode BN with the running statistics frozen."""
    with torch.no_grad(), frozen_bn_statistics(model), autocast():
        mean = torch.stack([torch.softmax(model(v).float(), dim=1) for v in views]).mean(dim=0)
    return sharpen(mean, temperature)


def mixmatch_step(state: TrainState, batch, step: int) -> StepResult:
    config, model = state.config, state.model
    state.begin_phase("forward")
    model.train()
    labels = batch.x_labels
    num_classes = state.raw_model.num_classes
    b = batch.x.shape[0]
    x = as_float_images(batch.x)  # labeled: one weak view
    u_views = [as_float_images(batch.u_weak)] + [as_float_images(v) for v in batch.u_strong]  # K weak views

    # Label guess: the mean prediction over the K views, sharpened.
    q = guess_labels(state.raw_model, u_views, config.temperature, state.autocast)

    # MixUp over the labeled and all K unlabeled views of the global batch, lambda' = max(lambda, 1 - lambda).
    onehot = F.one_hot(labels, num_classes).float()
    mixed, mixed_targets = mix_global_batch(state, batch, x, u_views, onehot, q, step)

    # One forward over the mixed batch: cross-entropy on its labeled part, L2 on its unlabeled part.
    with state.autocast():
        logits = model(mixed)
    loss_x = soft_cross_entropy(logits[:b], mixed_targets[:b])
    loss_u = l2_loss(logits[b:], mixed_targets[b:])

    # Total loss, lambda_u ramped; Adam, decoupled weight decay, EMA.
    total = loss_x + config.w_match * linear_ramp(step, config.ramp_steps) * loss_u
    optimise(state, total, step)
    losses = torch.stack([total, loss_x, loss_u]).detach().float()
    return StepResult(losses, None)
