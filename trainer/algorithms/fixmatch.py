"""FixMatch's training step (Sohn et al., NeurIPS 2020, Algorithm 1, the CTAugment variant).

The views (rendered by the pipeline): labeled images weak only (flip, reflect-pad translate);
unlabeled images one weak view and K = 1 strong view (weak, then CTAugment with the bin rule, then
the appended Cutout), mu = --uratio unlabeled images per labeled image.

Batch norm: one training-mode forward over the labeled, weak and strong rows together, as the
reference's single interleaved call over all of them (one GPU): the batch statistics are those of
the whole concatenation, and that forward alone updates the running statistics, once per step
(momentum --bn-momentum) from the statistics of all B + 2 mu B rows. On several ranks each rank
normalises its own share, unless --sync-bn.

The weak view's pseudo-labels come from the same forward, detached: a constant target, as the
reference's stop_gradient. Nothing is gathered across ranks: every term is a mean over this rank's
rows, and DDP's average of equal-size ranks makes it the global mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import confidence_mask, masked_cross_entropy
from ..step import StepResult, TrainState, as_float_images, optimise, probe_scores

# The losses, then two diagnostics: the share of unlabeled rows whose pseudo-label passes tau, and the
# share of pseudo-labels that are right (the unlabeled rows are training rows whose labels we hold).
LOSS_NAMES = ("total", "loss_x", "loss_u", "mask_rate", "pseudo_acc")


def pseudo_label_accuracy(pseudo_labels: torch.Tensor, true_labels: torch.Tensor | None) -> torch.Tensor:
    """The share of rows whose pseudo-label is their class, over rows with a known class (-1: none);
    0 when no row has one (or no labels are given)."""
    if true_labels is None:
        return pseudo_labels.new_zeros((), dtype=torch.float32)
    known = true_labels >= 0
    right = (pseudo_labels == true_labels) & known
    return right.sum().float() / known.sum().clamp(min=1).float()


def fixmatch_step(state: TrainState, batch, step: int) -> StepResult:
    config, model = state.config, state.model
    state.begin_phase("forward")
    model.train()
    labels = batch.x_labels
    b = batch.x.shape[0]
    x = as_float_images(batch.x)  # labeled: weak
    u_weak = as_float_images(batch.u_weak)  # unlabeled: weak ...
    u_strong = as_float_images(batch.u_strong.flatten(0, 1))  # ... and strong (+ Cutout), K-major
    bu = u_weak.shape[0]

    # One forward over labeled, weak and strong rows.
    with state.autocast():
        logits = model(torch.cat([x, u_weak, u_strong]))
    logits_x, logits_weak, logits_strong = logits[:b], logits[b:b + bu], logits[b + bu:]

    # Supervised loss on the labeled weak views.
    loss_x = F.cross_entropy(logits_x.float(), labels)
    # Pseudo-label: argmax of the weak view's prediction, a constant target; kept where max p >= tau.
    p_weak = torch.softmax(logits_weak.detach().float(), dim=1)
    pseudo_labels, mask = confidence_mask(p_weak, config.confidence)
    # Unlabeled loss: each strong view against its image's pseudo-label, averaged over all rows.
    k = batch.k
    loss_u = masked_cross_entropy(logits_strong, pseudo_labels.repeat(k), mask.repeat(k))

    # Total loss (lambda_u = --w-match, no ramp); optimise adds the weight decay term's gradient
    # (--weight-decay-mode loss) and steps SGD at the cosine-decayed learning rate, then the EMA.
    total = loss_x + config.w_match * loss_u
    optimise(state, total, step)
    # CTAugment probes, scored by the EMA model (the caller feeds them to the policy).
    scores = probe_scores(state, batch.x_probe, labels) if batch.x_probe is not None else None
    diagnostics = [mask.mean(), pseudo_label_accuracy(pseudo_labels, batch.u_labels)]
    losses = torch.stack([total, loss_x, loss_u, *diagnostics]).detach().float()
    return StepResult(losses, scores)
