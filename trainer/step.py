"""What every algorithm's training step shares (the steps themselves: trainer/algorithms/).

A step reads only a StepBatch's tensors (uint8 NHWC, on the device), so it does not know whether
they came from the torch loader, DALI or a synthetic benchmark. It never reads a value back to the
host: the losses and the probe scores stay on the device for the caller to collect.

Here: the state a step reads and changes, the optimiser step (learning-rate schedule, weight decay
in either form, EMA), the CTAugment probe scores, batch-norm statistics left frozen for a label
guess, the MixUp generator, and the layout of the global batch on several ranks.

On several ranks (issue 8: one run, any world size) each rank holds a contiguous slice of every
block of the global batch, and a step computes this rank's share of what one process would compute
for the whole batch. The losses are means over the rank's rows, and DDP averages the gradients over
equal-size ranks: the global mean. Batch-norm statistics are the one per-rank part left, unless the
model's BN layers are synchronised (TrainConfig.sync_bn, model.sync_batch_norm).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from remixmatch.pipeline.distributed import all_gather_rows

from .losses import (
    cosine_learning_rate, cta_probe_scores, decoupled_weight_decay_, ema_update_, mixup, mixup_lambdas,
    mixup_permutation, weight_decay_gradient_,
)

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
    losses: torch.Tensor  # float32 on the device: the algorithm's METRICS (losses, then diagnostics), in order
    probe_scores: torch.Tensor | None  # (B,) float32 on the device: this rank's CTAugment probes


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]. On the GPU the permuted view of NHWC memory stays
    channels_last, the layout the convolutions keep there (build.py converts the model to match).
    Elsewhere the result is contiguous NCHW, the CPU model's layout: torch 2.13's oneDNN convolution
    backward corrupts the heap on channels-last inputs to an NCHW model at 96x96 (a segfault or bus
    error in loss.backward), and plain NCHW is also the faster CPU path."""
    nchw = images.permute(0, 3, 1, 2)
    if images.device.type == "cuda":
        return nchw.float().div_(255.0)
    return nchw.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


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


def mix_global_batch(state: TrainState, batch, x: torch.Tensor, unlabeled: list, onehot: torch.Tensor,
                     q: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp (ReMixMatch, MixMatch) over the labeled rows ``x`` (targets ``onehot``) and every
    unlabeled view (``unlabeled``: the weak view, then the others, K-major; each with target ``q``)
    of the global batch. The lambdas and partners are drawn for the global batch by the step's
    generator, partners from any rank; this rank mixes its own rows only."""
    config, rank, world = state.config, state.rank, state.world_size
    b, bu = x.shape[0], unlabeled[0].shape[0]
    views = sum(u.shape[0] for u in unlabeled) // bu
    if world == 1:
        inputs, rows = torch.cat([x, *unlabeled]), None
        targets = torch.cat([onehot, q.repeat(views, 1)])
    else:
        blocks = row_blocks(b, bu, views - 1)
        local_u8 = torch.cat([batch.x, batch.u_weak, batch.u_strong.flatten(0, 1)])
        inputs = as_float_images(gather_global(local_u8, blocks, world))
        guesses = gather_global(torch.cat([onehot, q]), [b, bu], world)
        targets = torch.cat([guesses[:b * world], guesses[b * world:].repeat(views, 1)])
        rows = global_rows(blocks, rank, world, device=inputs.device)
    rng = step_generator(config, step)
    n_global = inputs.shape[0]
    # --mixup-lambda batch: one draw shared by every example (the MixMatch paper's code).
    lambdas = mixup_lambdas(1 if config.mixup_lambda == "batch" else n_global, config.mixup_alpha, rng)
    lambdas = np.broadcast_to(lambdas, (n_global,)).copy()
    permutation = mixup_permutation(n_global, rng)
    return mixup(inputs, targets, lambdas, permutation, rows)


def learning_rate(config, step: int) -> float:
    """The learning rate of ``step``: constant, or FixMatch's cosine decay over ``config.steps``."""
    if config.lr_schedule == "cosine":
        return cosine_learning_rate(config.lr, step, config.steps)
    return config.lr


def optimise(state: TrainState, total: torch.Tensor, step: int) -> None:
    """The optimiser step at this step's learning rate, the weight decay in the config's form
    (``loss``: the gradient of wd/2 sum w^2 joins the loss's before the optimiser, as the FixMatch
    reference; ``decoupled``: w <- w (1 - wd lr) after the step, as the ReMixMatch and MixMatch
    references), then the EMA of the weights."""
    config = state.config
    lr = learning_rate(config, step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.zero_grad(set_to_none=True)
    state.begin_phase("backward")
    total.backward()
    state.begin_phase("optimiser")
    if config.weight_decay_mode == "loss":
        weight_decay_gradient_(state.decay_params, config.weight_decay)
    state.optimizer.step()
    if config.weight_decay_mode == "decoupled":
        decoupled_weight_decay_(state.decay_params, config.weight_decay, lr)
    ema_update_(state.ema_model, state.raw_model, config.ema)


@torch.no_grad()
def probe_scores(state: TrainState, probe: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CTAugment's update: the EMA model, in eval mode, scores the probe views."""
    state.begin_phase("cta_update")
    state.ema_model.eval()
    with state.autocast():
        logits = state.ema_model(as_float_images(probe))
    return cta_probe_scores(torch.softmax(logits.float(), dim=1), labels)
