"""The objects of a training run, built one way for ``Run`` (trainer/run.py) and ``rmm-bench train``.

- :func:`build_train_state`: the model (seeded with ``run_seed``: the same initialisation on every
  rank), optional synchronised batch norm, channels_last on CUDA, the EMA copy, the optimiser, the DDP wrap
  (``wrap_model``), torch.compile and distribution alignment, in a :class:`TrainState`;
- :func:`build_policy_and_views`: CTAugment (or None) and the loader's :class:`ViewConfig`.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch

from remixmatch.pipeline import CTAugment, ViewConfig
from remixmatch.pipeline.plan import weak_pad

from .config import ConfigError, TrainConfig, labeled_strong_from
from .losses import REFERENCE_P_DATA_DECAY, DistributionAlignment
from .model import WideResNet, decay_parameters, stages_for_size, sync_batch_norm
from .step import TrainState


def build_train_state(config: TrainConfig, num_classes: int, p_data, device: torch.device, *,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None, rank: int = 0,
                      world_size: int = 1, wrap_model: Callable | None = None,
                      all_reduce_mean: Callable | None = None, image_side: int | None = None) -> TrainState:
    """Model, EMA copy, optimiser and distribution alignment (``p_data``: the labeled class
    distribution) in a TrainState. ``mean`` / ``std``: the model's input normalisation (None: the
    model's defaults, which change nothing of the cost). Seeds torch with ``config.run_seed``."""
    torch.manual_seed(config.run_seed)
    norm = {} if mean is None else {"mean": mean}
    if std is not None:
        norm["std"] = std
    model = WideResNet(num_classes, config.width, config.blocks_per_stage, config.bn_momentum, **norm,
                       stages=model_stages(config, image_side)).to(device)
    if config.sync_bn and world_size > 1:
        model = sync_batch_norm(model)  # batch statistics over the global batch
    if device.type == "cuda" and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema_model = copy.deepcopy(model)
    for p in ema_model.parameters():
        p.requires_grad_(False)
    optimizer = build_optimizer(config, model.parameters())
    trained = wrap_model(model) if wrap_model is not None else model
    if config.compile:
        trained = torch.compile(trained)
    distribution = None
    if config.algorithm == "remixmatch":
        first_batch = config.da_start == "first-batch"
        if config.p_data == "reference":  # the reference's moving average, from uniform
            distribution = DistributionAlignment(np.full(num_classes, 1.0 / num_classes), size=config.da_size,
                                                 device=device, p_data_decay=REFERENCE_P_DATA_DECAY,
                                                 start_from_first_batch=first_batch)
        else:
            distribution = DistributionAlignment(p_data, size=config.da_size, device=device,
                                                 start_from_first_batch=first_batch)
    return TrainState(trained, model, ema_model, optimizer, decay_parameters(model), distribution,
                      config, device, rank, world_size, all_reduce_mean)


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam (ReMixMatch, MixMatch) or SGD with momentum (FixMatch: Nesterov). The learning rate is
    set at every step (step.optimise, its schedule); weight decay is never the optimiser's own."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.Adam(params, lr=config.lr)


# The views each algorithm reads, and nothing more: (labeled views strong, unlabeled extra views
# per image beyond the weak one). MixMatch's K views are all weak: the weak view and K - 1 others.
def _unlabeled_views(config: TrainConfig) -> int:
    return {"remixmatch": config.k, "fixmatch": config.k, "mixmatch": config.k - 1}.get(config.algorithm, 0)


def model_stages(config: TrainConfig, image_side: int | None) -> int:
    """``config.stages``, or with 0 the reference's count for the images' size."""
    if config.stages:
        return config.stages
    if image_side is None:
        raise ConfigError("--stages 0 derives the stage count from the image size, which is not known here")
    return stages_for_size(image_side)


def build_policy_and_views(config: TrainConfig, image_side: int = 32) -> tuple[CTAugment | None, ViewConfig]:
    """CTAugment (ReMixMatch and FixMatch with strong augmentation; else None) and the views each
    step draws: ReMixMatch's labeled views as --labeled-aug says (strong from the step
    ``labeled_strong_from`` gives, weak before), the others' weak; probes only where CTAugment
    learns; FixMatch's strong views end with Cutout; MixMatch's unlabeled views are all weak. The weak
    augmentation pads by ``weak_pad(image_side)`` (4 px at 32, 12 at 96)."""
    cta = config.uses_cta
    policy = CTAugment(config.cta_depth, config.cta_decay, config.cta_threshold, config.cta_rule,
                       semantics=config.cta_semantics, start=config.cta_start) if cta else None
    strong_from = labeled_strong_from(config)
    views = ViewConfig(batch=config.batch, unlabeled_batch=config.unlabeled_batch, k=_unlabeled_views(config),
                       seed=config.run_seed, pad=weak_pad(image_side), flip=config.flip, weak=config.weak_aug,
                       strong=config.strong_aug and config.algorithm != "mixmatch",
                       labeled_strong=strong_from is not None, labeled_strong_from=strong_from or 0, probes=cta,
                       cutout_level=config.cutout_level if config.cutout and cta else None)
    return policy, views


__all__ = ["build_optimizer", "build_policy_and_views", "build_train_state", "model_stages"]
