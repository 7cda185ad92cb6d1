"""ReMixMatch's training step, in the order of the paper's Algorithm 1 (spec §1, items 3-12).

Forward passes, and how batch-norm statistics are gathered:
- the label guess runs on the weak views without gradients, in training mode (batch statistics,
  as the reference), with BN running statistics left untouched;
- everything that trains goes through one forward: the mixed batch (labeled + K + 1 unlabeled
  views), strong view 1 (pre-mixup loss) and its rotations (rotation loss). Its batch statistics
  are taken over that whole concatenation and it alone updates the running statistics. The
  reference instead runs the mixed batch in interleaved chunks of B (each normalised by its own
  statistics, running statistics from one chunk) and strong view 1 and the rotations in calls of
  their own; one concatenated call gives the GPU one large batch instead of K + 4 small ones.
  ``--bn-mode reference`` runs the reference's way instead (trainer/interleave.py).

On several ranks: MixUp draws its lambdas and partners for the global batch from a generator
without the rank in its seed, partners come from any rank (the uint8 views, the one-hot labels and
the guesses are all-gathered), and the rotation labels are those of the global unlabeled batch
(trainer/step.py says how ranks hold the global batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..interleave import training_forward
from ..losses import l2_loss, linear_ramp, rotate_quarters, rotation_labels, sharpen, soft_cross_entropy
from ..step import StepResult, TrainState, as_float_images, frozen_bn_statistics, mix_global_batch, optimise, probe_scores

LOSS_NAMES = ("total", "loss_x", "loss_u", "loss_kl", "loss_rot")


def remixmatch_step(state: TrainState, batch, step: int) -> StepResult:
    config, model = state.config, state.model
    state.begin_phase("forward")
    model.train()
    labels = batch.x_labels
    num_classes = state.raw_model.num_classes
    b, k = batch.x.shape[0], batch.k
    rank, world = state.rank, state.world_size
    x = as_float_images(batch.x)  # 1. labeled: weak + CTAugment (--labeled-aug weak: weak only; made by the pipeline)
    u_weak = as_float_images(batch.u_weak)  # 2. unlabeled: one weak view ...
    u_strong = as_float_images(batch.u_strong.flatten(0, 1))  # ... and K strong views, K-major
    bu = u_weak.shape[0]

    # 3. Label guess from the weak view.
    with torch.no_grad(), frozen_bn_statistics(state.raw_model), state.autocast():
        p_weak = torch.softmax(state.raw_model(u_weak).float(), dim=1)
    # p_model learns this step's (global) mean weak-view prediction, before alignment (pushed after
    # the step; --da-start first-batch also fills the buffer with the first step's before aligning).
    batch_mean = p_weak.mean(dim=0)
    if state.all_reduce_mean is not None:
        batch_mean = state.all_reduce_mean(batch_mean)
    state.distribution.start(batch_mean)
    # 4. Distribution alignment against the labeled class distribution.
    q = state.distribution.align(p_weak) if config.distribution_alignment else p_weak
    # 5. Sharpening; q is a constant target from here on.
    q = sharpen(q, config.temperature)

    # 6-7. Strong view 1 (pre-mixup loss) and its rotations, one rotation per quarter of the global
    # unlabeled batch (this rank's slice of those labels).
    use_strong1 = k >= 1 and (config.w_kl > 0 or config.w_rot > 0)
    extra = []
    if use_strong1:
        strong1 = u_strong[:bu]
        rot_labels = rotation_labels(bu * world)[rank * bu:(rank + 1) * bu]
        extra = [strong1, rotate_quarters(strong1, rot_labels)]

    # 8. MixUp over labeled + all K + 1 unlabeled views of the global batch, each example with a
    # shuffled partner from anywhere in it; this rank mixes its own rows only.
    onehot = F.one_hot(labels, num_classes).float()
    mixed, mixed_targets = mix_global_batch(state, batch, x, [u_weak, u_strong], onehot, q, step)
    n = mixed.shape[0]  # this rank's mixed rows

    # 9. One forward for everything that trains (--bn-mode reference: the reference's interleaved
    # chunks, trainer/interleave.py); losses on the mixed batch. The rotation head runs under the
    # same autocast: the embeddings leave it in bf16, the head's weights are fp32.
    with state.autocast():
        logits, embeds = training_forward(model, mixed, extra, b, k, config.bn_mode, rank, world)
        rot_logits = state.raw_model.rotation_logits(embeds[n + bu:]) if use_strong1 else None
    logits_x, logits_u = logits[:b], logits[b:n]
    loss_x = soft_cross_entropy(logits_x, mixed_targets[:b])
    if config.unlabeled_loss == "xe":
        loss_u = soft_cross_entropy(logits_u, mixed_targets[b:])
    else:
        loss_u = l2_loss(logits_u, mixed_targets[b:])
    zero = logits.new_zeros((), dtype=torch.float32)
    loss_kl = loss_rot = zero
    if use_strong1:
        loss_kl = soft_cross_entropy(logits[n:n + bu], q)
        loss_rot = F.cross_entropy(rot_logits.float(), rot_labels.to(rot_logits.device))

    # 10. Total loss with the ramped weights.
    ramp = linear_ramp(step, config.ramp_steps)
    total = loss_x + config.w_match * ramp * loss_u + config.w_kl * ramp * loss_kl + config.w_rot * loss_rot
    # 11. Adam, decoupled weight decay, EMA.
    optimise(state, total, step)
    state.distribution.push(batch_mean)
    # --p-data reference: the moving p_data learns this step's (global) labeled batch, after the step.
    state.distribution.observe_labels(onehot, state.all_reduce_mean)
    # 12. CTAugment probes, scored by the EMA model (the caller feeds them to the policy).
    scores = probe_scores(state, batch.x_probe, labels) if batch.x_probe is not None else None
    losses = torch.stack([total, loss_x, loss_u, loss_kl, loss_rot]).detach().float()
    return StepResult(losses, scores)
