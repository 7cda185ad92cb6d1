"""One training step, in the order of the paper's Algorithm 1 (spec §1, items 3-12).

The step reads only a StepBatch's tensors (uint8 NHWC, on the device), so it does not know whether
they came from the torch loader, DALI or a synthetic benchmark. It never reads a value back to the
host: the losses and the probe scores stay on the device for the caller to collect.

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

On several ranks (issue 8: one run, any world size) each rank holds a contiguous slice of every
block of the global batch, and the step computes this rank's share of what one process would
compute for the whole batch: MixUp draws its lambdas and partners for the global batch from a
generator without the rank in its seed, partners come from any rank (the uint8 views, the one-hot
labels and the guesses are all-gathered), and the rotation labels are those of the global unlabeled
batch. The losses are means over the rank's rows, and DDP averages the gradients over equal-size
ranks: the global mean. Batch-norm statistics are the one per-rank part left, unless the model's BN
layers are synchronised (TrainConfig.sync_bn, model.sync_batch_norm).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from remixmatch.pipeline.distributed import all_gather_rows

from .interleave import training_forward
from .losses import (
    cta_probe_scores, decoupled_weight_decay_, ema_update_, linear_ramp, mixup, mixup_lambdas,
    mixup_permutation, rotate_quarters, rotation_labels, sharpen, soft_cross_entropy,
)

LOSS_NAMES = ("total", "loss_x", "loss_u", "loss_kl", "loss_rot")
_MIXUP_STREAM = 7  # keeps the MixUp generator apart from the pipeline's (seed, step) streams


@dataclass
class TrainState:
    """Everything a step reads and changes. Each piece has one owner with a state_dict."""

    model: torch.nn.Module  # the module that trains (DDP-wrapped on several ranks)
    raw_model: torch.nn.Module  # the bare model (model.module under DDP)
    ema_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    decay_params: list
    distribution: object | None  # losses.DistributionAlignment (None: supervised)
    config: object  # TrainConfig
    device: torch.device
    rank: int = 0
    world_size: int = 1
    all_reduce_mean: object = None  # callable(tensor) -> the mean over ranks; None on one rank
    phases: object = None  # phases.StepPhases while a benchmark splits the step's time; None in a run

    def begin_phase(self, name: str) -> None:
        if self.phases is not None:
            self.phases.begin(name)

    def end_phase(self) -> None:
        if self.phases is not None:
            self.phases.end()

    def autocast(self):
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class StepResult:
    losses: torch.Tensor  # (5,) float32 on the device, in LOSS_NAMES order
    probe_scores: torch.Tensor | None  # (B,) float32 on the device: this rank's CTAugment probes


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]. The permuted view of NHWC memory is channels_last, which
    the convolutions keep on the GPU."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


@contextlib.contextmanager
def frozen_bn_statistics(model: torch.nn.Module):
    """Training-mode forward (batch statistics) that leaves the running statistics as they are."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) running + 0 batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


def step_generator(config, step: int) -> np.random.Generator:
    """The step's MixUp draws: the same on every rank (no rank in the seed), for the global batch."""
    return np.random.default_rng([config.run_seed, step, _MIXUP_STREAM])


# -- the global batch on several ranks ---------------------------------------------------------------
# Each rank holds a contiguous slice of every block of the global batch (labeled views, weak views,
# each strong view). Its rows, concatenated, form its local batch; a single process holding the whole
# batch concatenates the same blocks in the same order. These helpers are the one home of that order,
# and the identity on one rank.


def row_blocks(b: int, bu: int, k: int) -> list[int]:
    """Lengths of the consecutive blocks of a local mixed batch: labeled, weak, strong view 1..K."""
    return [b, bu] + [bu] * k


def gather_global(local: torch.Tensor, blocks: list[int], world_size: int) -> torch.Tensor:
    """The global batch in a single process's order, from each rank's ``local`` rows (laid out in
    ``blocks``): block by block, each block's ranks in rank order."""
    if world_size == 1:
        return local
    parts = all_gather_rows(local, world_size)
    pieces, start = [], 0
    for length in blocks:
        pieces.extend(part[start:start + length] for part in parts)
        start += length
    return torch.cat(pieces)


def global_rows(blocks: list[int], rank: int, world_size: int, device=None) -> torch.Tensor:
    """Where this rank's local rows (laid out in ``blocks``) sit in ``gather_global``'s order."""
    pieces, start = [], 0
    for length in blocks:
        first = world_size * start + rank * length
        pieces.append(torch.arange(first, first + length, dtype=torch.int64, device=device))
        start += length
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64, device=device)


def _optimise(state: TrainState, total: torch.Tensor) -> None:
    """Items 10-11: Adam, then the decoupled weight decay and the EMA of the weights."""
    config = state.config
    state.optimizer.zero_grad(set_to_none=True)
    state.begin_phase("backward")
    total.backward()
    state.begin_phase("optimiser")
    state.optimizer.step()
    decoupled_weight_decay_(state.decay_params, config.weight_decay, config.lr)
    ema_update_(state.ema_model, state.raw_model, config.ema)


@torch.no_grad()
def _probe_scores(state: TrainState, probe: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Item 12: the EMA model, in eval mode, scores the probe views."""
    state.begin_phase("cta_update")
    state.ema_model.eval()
    with state.autocast():
        logits = state.ema_model(as_float_images(probe))
    return cta_probe_scores(torch.softmax(logits.float(), dim=1), labels)


def remixmatch_step(state: TrainState, batch, step: int) -> StepResult:
    config, model = state.config, state.model
    state.begin_phase("forward")
    model.train()
    labels = batch.x_labels
    num_classes = state.raw_model.num_classes
    b, k = batch.x.shape[0], batch.k
    rank, world = state.rank, state.world_size
    x = as_float_images(batch.x)  # 1. labeled: weak + CTAugment (made by the pipeline)
    u_weak = as_float_images(batch.u_weak)  # 2. unlabeled: one weak view ...
    u_strong = as_float_images(batch.u_strong.flatten(0, 1))  # ... and K strong views, K-major
    bu = u_weak.shape[0]

    # 3. Label guess from the weak view.
    with torch.no_grad(), frozen_bn_statistics(state.raw_model), state.autocast():
        p_weak = torch.softmax(state.raw_model(u_weak).float(), dim=1)
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
    if world == 1:
        inputs, rows = torch.cat([x, u_weak, u_strong]), None
        targets = torch.cat([onehot, q.repeat(k + 1, 1)])
    else:
        blocks = row_blocks(b, bu, k)
        local_u8 = torch.cat([batch.x, batch.u_weak, batch.u_strong.flatten(0, 1)])
        inputs = as_float_images(gather_global(local_u8, blocks, world))
        guesses = gather_global(torch.cat([onehot, q]), [b, bu], world)
        targets = torch.cat([guesses[:b * world], guesses[b * world:].repeat(k + 1, 1)])
        rows = global_rows(blocks, rank, world, device=inputs.device)
    rng = step_generator(config, step)
    n_global = inputs.shape[0]
    lambdas = mixup_lambdas(n_global, config.mixup_alpha, rng)
    permutation = mixup_permutation(n_global, rng)
    mixed, mixed_targets = mixup(inputs, targets, lambdas, permutation, rows)
    n = mixed.shape[0]  # this rank's mixed rows

    # 9. One forward for everything that trains (--bn-mode reference: the reference's interleaved
    # chunks, trainer/interleave.py); losses on the mixed batch.
    with state.autocast():
        logits, embeds = training_forward(model, mixed, extra, b, k, config.bn_mode, rank, world)
    logits_x, logits_u = logits[:b], logits[b:n]
    loss_x = soft_cross_entropy(logits_x, mixed_targets[:b])
    if config.unlabeled_loss == "xe":
        loss_u = soft_cross_entropy(logits_u, mixed_targets[b:])
    else:
        loss_u = (torch.softmax(logits_u.float(), dim=1) - mixed_targets[b:]).square().mean()
    zero = logits.new_zeros((), dtype=torch.float32)
    loss_kl = loss_rot = zero
    if use_strong1:
        loss_kl = soft_cross_entropy(logits[n:n + bu], q)
        rot_logits = state.raw_model.rotation_logits(embeds[n + bu:])
        loss_rot = F.cross_entropy(rot_logits.float(), rot_labels.to(rot_logits.device))

    # 10. Total loss with the ramped weights.
    ramp = linear_ramp(step, config.ramp_steps)
    total = loss_x + config.w_match * ramp * loss_u + config.w_kl * ramp * loss_kl + config.w_rot * loss_rot
    # 11. Adam, decoupled weight decay, EMA.
    _optimise(state, total)
    # p_model learns this step's (global) mean weak-view prediction, before alignment.
    batch_mean = p_weak.mean(dim=0)
    if state.all_reduce_mean is not None:
        batch_mean = state.all_reduce_mean(batch_mean)
    state.distribution.push(batch_mean)
    # --p-data reference: the moving p_data learns this step's (global) labeled batch, after the step.
    state.distribution.observe_labels(onehot, state.all_reduce_mean)
    # 12. CTAugment probes, scored by the EMA model (the caller feeds them to the policy).
    scores = _probe_scores(state, batch.x_probe, labels) if batch.x_probe is not None else None
    losses = torch.stack([total, loss_x, loss_u, loss_kl, loss_rot]).detach().float()
    return StepResult(losses, scores)


def supervised_step(state: TrainState, batch, step: int) -> StepResult:
    """The baseline: cross-entropy on the labeled views alone, same optimiser, decay and EMA."""
    del step
    state.begin_phase("forward")
    state.model.train()
    with state.autocast():
        logits = state.model(as_float_images(batch.x))
    loss = F.cross_entropy(logits.float(), batch.x_labels)
    _optimise(state, loss)
    zero = loss.new_zeros(())
    scores = _probe_scores(state, batch.x_probe, batch.x_labels) if batch.x_probe is not None else None
    return StepResult(torch.stack([loss, loss, zero, zero, zero]).detach().float(), scores)


STEPS = {"remixmatch": remixmatch_step, "supervised": supervised_step}
