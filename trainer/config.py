"""Every training setting in one dataclass, with the paper's CIFAR-10 values as defaults.

Presets are plain overrides of these defaults; the command line overrides a preset. The resolved
config is saved in every checkpoint and in summary.json, and a resumed run must agree with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from .errors import TrainerError

ALGORITHMS = ("remixmatch", "supervised")
UNLABELED_LOSSES = ("xe", "l2")
CTA_SEMANTICS = ("corrected", "reference")  # kernels.ops.SEMANTICS
BN_MODES = ("joint", "reference")  # trainer/interleave.py
INPUT_SCALINGS = ("standardize", "reference")
P_DATA_MODES = ("labeled", "reference")


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: str = ""  # shard directory (prep-cifar10 --out)
    labels: int = 250  # labeled images, class-balanced
    seed: int = 1  # labeled split seed (the paper reports 5 splits)
    valid: int = 5000  # training images held out as validation (never trained on), as the reference
    eval_split: str = "test"  # what --eval-every measures: a shard split, or "valid" for the hold-out
    # algorithm
    algorithm: str = "remixmatch"  # or "supervised": the labeled subset alone, weak augmentation
    batch: int = 64  # labeled images per step (global)
    uratio: int = 1  # unlabeled images per labeled image in a step
    k: int = 8  # strong views per unlabeled image
    temperature: float = 0.5  # sharpening T
    mixup_alpha: float = 0.75  # Beta(alpha, alpha)
    w_match: float = 1.5  # weight of the mixed unlabeled loss (ramped)
    w_kl: float = 0.5  # weight of the pre-mixup loss on strong view 1 (ramped)
    w_rot: float = 0.5  # weight of the rotation loss (not ramped)
    warmup_kimg: float = 1024.0  # thousands (x1024) of labeled images over which w_match, w_kl ramp up
    distribution_alignment: bool = True
    da_size: int = 128  # batch means in p_model's ring buffer
    unlabeled_loss: str = "xe"  # "xe" (the paper's) or "l2" (the ablation)
    weak_aug: bool = True  # flip + reflect-pad crop
    strong_aug: bool = True  # CTAugment on top of the weak augmentation
    flip: bool = True  # horizontal flips in the weak augmentation (off for SVHN)
    # CTAugment
    cta_depth: int = 2  # ops per view
    cta_decay: float = 0.99
    cta_threshold: float = 0.8  # the ReMixMatch runs (the reference class default is 0.85)
    cta_rule: str = "segment"  # "segment" (ReMixMatch) or "bin" (FixMatch)
    # model
    width: int = 32  # first stage's channels: 32 = WRN-28-2
    blocks_per_stage: int = 4  # 4 = WRN-28
    bn_momentum: float = 0.001  # torch convention (TF decay 0.999)
    sync_bn: bool = False  # batch-norm statistics over the global batch (all ranks) instead of each rank's share: the same run on any number of processes, at one small all-reduce per BN layer (default off, the reference's per-GPU statistics)
    # optimisation
    steps: int = 1 << 20  # optimiser steps
    lr: float = 0.002  # Adam, constant
    weight_decay: float = 0.02  # decoupled: w <- w (1 - wd lr) on conv/dense weights
    ema: float = 0.999  # EMA decay of the weights
    run_seed: int = 0  # model init, views, MixUp
    # execution
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    loader: str = "auto"  # auto (dali where installed on cuda, else torch) | torch | dali
    prefetch: bool = True  # render step t + 1 while step t trains
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch CPU threads (0: torch's default)
    # reporting
    eval_every: int = 1024  # steps between evaluations (EMA and raw model)
    eval_batch: int = 500
    ckpt_every: int = 4096  # steps between checkpoints (and one at the end)
    keep_ckpts: int = 3
    log_every: int = 64  # steps between metric lines (losses read back only then)
    median_of: int = 20  # the reported figure: median of the last N evaluations
    # fidelity to the reference code (README, "Departures from the reference code")
    fidelity: str = "corrected"  # corrected | reference: sets the choices below and --valid to the reference code's (an explicit flag still wins)
    cta_semantics: str = "corrected"  # CTAugment level mappings: corrected | reference (translate and rescale in pixels, cutout 2 (side // 2) wide)
    input_scaling: str = "standardize"  # standardize (per-channel mean / std of the unlabeled images) | reference (x 2/255 - 1)
    bn_mode: str = "joint"  # joint (everything that trains in one forward) | reference (the mixed batch in K + 2 interleaved chunks of B, strong view 1 and the rotations in forwards of their own, running statistics from the last chunk)
    p_data: str = "labeled"  # distribution alignment's p_data: labeled (the labeled set's class distribution) | reference (0.999 moving average of the labeled batches' one-hot labels, from uniform)

    @property
    def unlabeled_batch(self) -> int:
        return 0 if self.algorithm == "supervised" else self.batch * self.uratio

    @property
    def ramp_steps(self) -> float:
        return self.warmup_kimg * 1024 / self.batch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Named overrides of the defaults (the defaults are the paper's CIFAR-10 250-label run).
PRESETS: dict[str, dict] = {
    "cifar10-250": {},
    "cifar10-40": {"labels": 40, "k": 1, "w_rot": 2.0, "warmup_kimg": 8192.0},
    "cifar10-4000": {"labels": 4000},
    "svhn-250": {"flip": False},
    # cifar10-250 as the reference code runs it (--fidelity reference): to reproduce the paper's numbers.
    "paper-reference": {"fidelity": "reference"},
    # A few minutes on 2 CPU cores. Short runs need a BN momentum and an EMA decay whose horizons
    # fit the run (0.001 and 0.999 average over ~1000 steps: a 300-step run would evaluate with
    # barely-moved running statistics and an EMA that is mostly its initialisation), and a ramp
    # that ends within it.
    "cpu": {"width": 16, "blocks_per_stage": 1, "batch": 32, "k": 2, "valid": 0, "steps": 400,
            "bn_momentum": 0.1, "ema": 0.99, "warmup_kimg": 4.0, "eval_every": 100, "ckpt_every": 200,
            "log_every": 20, "median_of": 3, "eval_batch": 1000},
    # Seconds: for tests and a first look.
    "smoke": {"width": 8, "blocks_per_stage": 1, "batch": 8, "k": 2, "valid": 0, "steps": 20,
              "bn_momentum": 0.1, "ema": 0.9, "warmup_kimg": 0.05, "eval_every": 10, "ckpt_every": 10,
              "log_every": 5, "median_of": 2, "eval_batch": 200},
}

# What --fidelity sets (before the ablations and the explicit flags). --valid: the published run
# scripts (runs/ssl/cifar10.sh, svhn.sh) train on `<dataset>.<seed>@<labels>-1`, one image held out.
FIDELITY: dict[str, dict] = {
    "corrected": {},
    "reference": {"cta_semantics": "reference", "bn_mode": "reference", "input_scaling": "reference",
                  "p_data": "reference", "valid": 1},
}
# The choices a run names wherever it reports its fidelity (config.json has every field).
FIDELITY_FIELDS = ("fidelity", "cta_semantics", "bn_mode", "input_scaling", "p_data", "valid")


def fidelity_choices(config: TrainConfig) -> dict:
    return {name: getattr(config, name) for name in FIDELITY_FIELDS}


# Ablations of the paper's table, as overrides.
ABLATIONS: dict[str, dict] = {
    "no-da": {"distribution_alignment": False},
    "no-rotation": {"w_rot": 0.0},
    "no-kl": {"w_kl": 0.0},
    "no-strong": {"strong_aug": False},
    "no-weak": {"weak_aug": False},
    "l2-unlabeled": {"unlabeled_loss": "l2"},
    "k1": {"k": 1},
}

# Fields that may differ between a checkpoint and a resumed run: they change how the run executes
# or reports, not what it computes. (prefetch is not one: it changes which weights the policies
# are drawn from.)
RESUMABLE_FIELDS = frozenset({
    "steps", "device", "loader", "compile", "threads", "eval_every", "eval_batch",
    "ckpt_every", "keep_ckpts", "log_every", "median_of"})


class ConfigError(TrainerError, ValueError):
    """A setting that cannot work; one line naming it."""


def validate(config: TrainConfig) -> None:
    def need(ok, message):
        if not ok:
            raise ConfigError(message)

    need(config.algorithm in ALGORITHMS, f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {config.algorithm!r}")
    need(config.unlabeled_loss in UNLABELED_LOSSES, f"--unlabeled-loss must be xe or l2, got {config.unlabeled_loss!r}")
    need(config.batch >= 1, f"--batch must be at least 1, got {config.batch}")
    need(config.uratio >= 1, f"--uratio must be at least 1, got {config.uratio}")
    need(config.k >= 0, f"--k must be at least 0, got {config.k}")
    need(config.algorithm == "supervised" or config.k >= 1 or (config.w_kl == 0 and config.w_rot == 0),
         "--k 0 leaves no strong view for the pre-mixup and rotation losses: set --w-kl 0 --w-rot 0")
    need(config.labels >= 1, f"--labels must be at least 1, got {config.labels}")
    need(config.valid >= 0, f"--valid must be at least 0, got {config.valid}")
    need(config.steps >= 1, f"--steps must be at least 1, got {config.steps}")
    need(config.temperature > 0, f"--temperature must be positive, got {config.temperature}")
    need(config.mixup_alpha > 0, f"--mixup-alpha must be positive, got {config.mixup_alpha}")
    need(0 <= config.ema < 1, f"--ema must be in [0, 1), got {config.ema}")
    need(0 <= config.bn_momentum <= 1, f"--bn-momentum must be in [0, 1], got {config.bn_momentum}")
    need(config.width >= 1 and config.blocks_per_stage >= 1, "--width and --blocks-per-stage must be at least 1")
    for name in ("eval_every", "ckpt_every", "log_every", "eval_batch", "keep_ckpts", "median_of", "da_size"):
        need(getattr(config, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    need(config.loader in ("auto", "torch", "dali"), f"--loader must be auto, torch or dali, got {config.loader!r}")
    need(config.eval_split != "valid" or config.valid > 0, "--eval-split valid needs --valid > 0")
    for flag, value, allowed in (("--fidelity", config.fidelity, tuple(FIDELITY)),
                                 ("--cta-semantics", config.cta_semantics, CTA_SEMANTICS),
                                 ("--bn-mode", config.bn_mode, BN_MODES),
                                 ("--input-scaling", config.input_scaling, INPUT_SCALINGS),
                                 ("--p-data", config.p_data, P_DATA_MODES)):
        need(value in allowed, f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    need(config.bn_mode != "reference" or config.uratio == 1,
         "--bn-mode reference interleaves blocks of equal size: it needs --uratio 1")


def resolve(preset: str | None, ablations: list[str], overrides: dict) -> TrainConfig:
    """Defaults, then the preset, then what --fidelity sets, then ablations, then explicit
    command-line values."""
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
        values.update(PRESETS[preset])
    fidelity = overrides.get("fidelity", values.get("fidelity", TrainConfig.fidelity))
    if fidelity not in FIDELITY:
        raise ConfigError(f"--fidelity must be one of {', '.join(FIDELITY)}, got {fidelity!r}")
    values.update(FIDELITY[fidelity])
    for name in ablations:
        if name not in ABLATIONS:
            raise ConfigError(f"unknown ablation {name!r} (ablations: {', '.join(ABLATIONS)})")
        values.update(ABLATIONS[name])
    values.update(overrides)
    config = TrainConfig(**values)
    validate(config)
    return config


def config_fields() -> list[dataclasses.Field]:
    return list(fields(TrainConfig))


def contradictions(saved: dict, config: TrainConfig) -> list[str]:
    """Fields whose value differs from a checkpoint's and that a resume may not change."""
    current = config.to_dict()
    return [name for name, value in saved.items()
            if name in current and name not in RESUMABLE_FIELDS and current[name] != value]


__all__ = ["ABLATIONS", "ALGORITHMS", "ConfigError", "FIDELITY", "FIDELITY_FIELDS", "PRESETS", "TrainConfig",
           "config_fields", "contradictions", "fidelity_choices", "resolve", "validate"]
