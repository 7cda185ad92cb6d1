"""Every training setting in one dataclass, with the paper's CIFAR-10 values as defaults.

Presets are plain overrides of these defaults; the command line overrides a preset. The resolved
config is saved in every checkpoint and in summary.json, and a resumed run must agree with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from .errors import TrainerError
from .schedules import SCHEDULES, run_length_values

ALGORITHMS = ("remixmatch", "fixmatch", "mixmatch", "supervised")
UNLABELED_LOSSES = ("xe", "l2")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
WEIGHT_DECAY_MODES = ("decoupled", "loss")
CTA_SEMANTICS = ("corrected", "reference")  # kernels.ops.SEMANTICS
BN_MODES = ("joint", "reference")  # trainer/interleave.py
INPUT_SCALINGS = ("standardize", "reference")
P_DATA_MODES = ("labeled", "reference")
LABELED_AUGS = ("strong", "weak", "weak-then-strong")
CTA_STARTS = ("uniform", "gentle")  # pipeline/policy.py
MIXUP_LAMBDAS = ("example", "batch")
DA_STARTS = ("uniform", "first-batch")


@dataclass(frozen=True)
class TrainConfig:
    # data
    data: str = ""  # shard directory (prep-cifar10 --out)
    labels: int = 250  # labeled images, class-balanced
    seed: int = 1  # labeled split seed (the paper reports 5 splits)
    fold: int = -1  # the dataset's official fold as the labeled set, exactly (STL-10: 0..9), with every train and unlabeled image as unlabeled data; -1: --labels chosen by --seed
    valid: int = 5000  # training images held out as validation (never trained on), as the reference
    eval_split: str = "test"  # what --eval-every measures: a shard split, or "valid" for the hold-out
    # algorithm
    algorithm: str = "remixmatch"  # remixmatch | fixmatch | mixmatch | supervised (the labeled subset alone, weak augmentation); each brings its paper's settings (ALGORITHM_DEFAULTS)
    batch: int = 64  # labeled images per step (global)
    uratio: int = 1  # unlabeled images per labeled image in a step (FixMatch's mu)
    k: int = 8  # strong views per unlabeled image (MixMatch: weak views, each one a label guess)
    temperature: float = 0.5  # sharpening T
    mixup_alpha: float = 0.75  # Beta(alpha, alpha)
    w_match: float = 1.5  # weight of the unlabeled loss, lambda_u (ramped, except in FixMatch)
    confidence: float = 0.95  # FixMatch: a pseudo-label trains only where the weak view's max probability >= this (tau)
    w_kl: float = 0.5  # weight of the pre-mixup loss on strong view 1 (ramped)
    w_rot: float = 0.5  # weight of the rotation loss (not ramped)
    warmup_kimg: float = 1024.0  # thousands (x1024) of labeled images over which w_match, w_kl ramp up
    distribution_alignment: bool = True
    da_size: int = 128  # batch means in p_model's ring buffer
    da_start: str = "uniform"  # p_model's buffer at step 0: uniform (the reference's) | first-batch (filled with the first step's mean prediction before it is aligned)
    unlabeled_loss: str = "xe"  # "xe" (the paper's) or "l2" (the ablation)
    weak_aug: bool = True  # flip + reflect-pad crop
    strong_aug: bool = True  # CTAugment on top of the weak augmentation
    labeled_aug: str = "strong"  # ReMixMatch's labeled views: strong (weak + CTAugment: the paper's Algorithm 1 and the reference's) | weak (flip + crop; +10 points at 2000 steps of the cpu preset) | weak-then-strong (weak until --labeled-aug-switch of the run, then strong)
    labeled_aug_switch: float = 0.5  # with --labeled-aug weak-then-strong: the share of --steps after which the labeled views are strong
    mixup_lambda: str = "example"  # MixUp's lambda: one per example (this project's) | one per batch (the MixMatch paper's code)
    flip: bool = True  # horizontal flips in the weak augmentation (off for SVHN)
    # CTAugment
    cta_depth: int = 2  # ops per view
    cta_decay: float = 0.99
    cta_threshold: float = 0.8  # the ReMixMatch runs (the reference class default is 0.85)
    cta_rule: str = "segment"  # "segment" (ReMixMatch) or "bin" (FixMatch)
    cta_start: str = "uniform"  # the weights CTAugment starts from: uniform (the paper's) | gentle (invert above alpha 0.25, solarize below t 128 and posterize at 1-2 bits start below the threshold, sampled once the probes earn them weight)
    cutout: bool = False  # a Cutout appended to every strong view (FixMatch)
    cutout_level: float = 1.0  # its level: side 1 + int(level * 0.499 * size) px (1.0: 16 px at 32x32)
    # model
    width: int = 32  # first stage's channels: 32 = WRN-28-2
    blocks_per_stage: int = 4  # 4 = WRN-28
    stages: int = 3  # residual stages, the first at stride 1, each later one halving the map (4: the STL-10 net); 0: ceil(log2(image side)) - 2, the reference's rule
    bn_momentum: float = 0.001  # torch convention (TF decay 0.999)
    sync_bn: bool = False  # batch-norm statistics over the global batch (all ranks) instead of each rank's share: the same run on any number of processes, at one small all-reduce per BN layer (default off, the reference's per-GPU statistics)
    # optimisation
    steps: int = 1 << 20  # optimiser steps
    schedules: str = "fixed"  # fixed (warmup-kimg, ema, bn-momentum, cta-decay as given) | run-length (derived from --steps by the short-run rule, trainer/schedules.py; an explicit flag still wins)
    optimizer: str = "adam"  # adam (ReMixMatch, MixMatch) | sgd (FixMatch: momentum, Nesterov)
    lr: float = 0.002  # learning rate (the schedule's peak)
    lr_schedule: str = "constant"  # constant | cosine: lr cos(7 pi k / (16 K)) at step k of K = --steps
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # SGD: Nesterov momentum
    weight_decay: float = 0.02  # on conv/dense weights; its form is --weight-decay-mode
    weight_decay_mode: str = "decoupled"  # decoupled: w <- w (1 - wd lr) after the step | loss: the gradient of wd/2 sum w^2 added to the loss's (FixMatch)
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
    time_limit: float = 0.0  # seconds this invocation may train before it evaluates, checkpoints and ends (0: no limit; --resume continues)
    # reporting
    eval_every: int = 1024  # steps between evaluations (EMA and raw model)
    eval_batch: int = 500
    eval_recalibrate_bn: int = 0  # N > 0: each evaluation measures copies of the EMA and raw models whose BN statistics are re-estimated on N clean training images (rmm-eval --recalibrate-bn's), and logs the trained statistics' accuracies beside them; training is untouched. 0: the trained statistics, as the reference reports (a short run's lag behind its moving weights: +5 points at step 200 of a 2000-step cpu run, docs/training.md)
    ckpt_every: int = 4096  # steps between checkpoints (and one at the end)
    keep_ckpts: int = 3
    log_every: int = 64  # steps between metric lines (losses read back only then)
    median_of: int = 20  # the reported figure: median of the last N evaluations
    tensorboard: bool = False  # also write metrics.jsonl's records and the CTA heatmap as TensorBoard event files in the run directory (the tensorboard extra)
    # fidelity to the reference code (docs/training.md, "Reference fidelity")
    fidelity: str = "corrected"  # corrected | reference: sets the choices below and --valid to the reference code's (an explicit flag still wins)
    cta_semantics: str = "corrected"  # CTAugment level mappings: corrected | reference (translate and rescale in pixels, cutout 2 (side // 2) wide)
    input_scaling: str = "standardize"  # standardize (per-channel mean / std of the unlabeled images) | reference (x 2/255 - 1)
    bn_mode: str = "joint"  # joint (everything that trains in one forward) | reference (the mixed batch in K + 2 interleaved chunks of B, strong view 1 and the rotations in forwards of their own, running statistics from the last chunk)
    p_data: str = "labeled"  # distribution alignment's p_data: labeled (the labeled set's class distribution) | reference (0.999 moving average of the labeled batches' one-hot labels, from uniform)

    @property
    def uses_cta(self) -> bool:
        """Whether the run learns CTAugment (and renders probe views for it)."""
        return self.algorithm in ("remixmatch", "fixmatch") and self.strong_aug

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


# Each algorithm's paper settings, as overrides of the defaults (ReMixMatch's): `--algorithm X`
# alone trains X as its paper does. Applied before any preset.
ALGORITHM_DEFAULTS: dict[str, dict] = {
    "remixmatch": {},
    "supervised": {"labeled_aug": "weak"},
    # Sohn et al. 2020, the CTAugment variant: weak-only labeled views, mu = 7 unlabeled per labeled,
    # one strong view (CTAugment with the bin rule, then Cutout), tau = 0.95, lambda_u = 1 (no ramp),
    # SGD Nesterov 0.9 at 0.03 with a cosine decay, weight decay 5e-4 in the loss, EMA 0.999.
    "fixmatch": {"uratio": 7, "k": 1, "w_match": 1.0, "confidence": 0.95, "cta_rule": "bin", "cutout": True,
                 "cutout_level": 1.0, "optimizer": "sgd", "lr": 0.03, "lr_schedule": "cosine", "momentum": 0.9,
                 "nesterov": True, "weight_decay": 5e-4, "weight_decay_mode": "loss", "labeled_aug": "weak"},
    # Berthelot et al. 2019: K = 2 weak views, guess = their mean prediction sharpened at T = 0.5, MixUp
    # with alpha 0.75, L2 unlabeled loss with lambda_u = 75 ramped over 16k steps, Adam 0.002,
    # decoupled weight decay 0.02, EMA 0.999.
    "mixmatch": {"k": 2, "w_match": 75.0, "unlabeled_loss": "l2", "labeled_aug": "weak"},
}

# Named overrides of the defaults (the defaults are the paper's CIFAR-10 250-label run). A preset
# naming an algorithm is applied on top of that algorithm's defaults.
PRESETS: dict[str, dict] = {
    "cifar10-250": {},
    "cifar10-40": {"labels": 40, "k": 1, "w_rot": 2.0, "warmup_kimg": 8192.0},
    "cifar10-4000": {"labels": 4000},
    "svhn-250": {"flip": False},
    "svhn-1000": {"flip": False, "labels": 1000},
    "cifar10-1000": {"labels": 1000},
    # The paper's STL-10 run (Table 3: 6.18 +- 1.24% error): official fold 0 as the 1,000 labels, the
    # train and unlabeled splits as unlabeled data, the reference's four-stage network, no hold-out.
    "stl10-1000": {"fold": 0, "labels": 1000, "valid": 0, "stages": 4},
    # WRN-28-8 (FixMatch's and USB's CIFAR-100 network).
    "cifar100-2500": {"labels": 2500, "width": 128},
    # cifar10-250 as the reference code runs it (--fidelity reference): to reproduce the paper's numbers.
    "paper-reference": {"fidelity": "reference"},
    # A few minutes on 2 CPU cores. Short runs need a ramp, an EMA decay, a BN momentum and a
    # CTAugment decay whose horizons fit the run (the paper's average over ~1000 steps: a 300-step
    # run would evaluate with barely-moved running statistics, an EMA that is mostly its
    # initialisation and a policy still uniform): the short-run rule derives all four from --steps,
    # the same way for every method (trainer/schedules.py). FixMatch's cosine decay runs over
    # --steps, so it fits any length by itself. Weak labeled views: at 2000 steps on real CIFAR-10
    # with 250 labels, ReMixMatch gained 10.7 and 9.5 points on two seeds over the paper's strong
    # ones, which a short run cannot afford (docs/training.md). It reports the trained BN statistics
    # (--eval-recalibrate-bn 0): at its 400 steps re-estimated ones moved the EMA figure by 0.21 points
    # (the rule's short BN horizon keeps them current), at 2.1 times the evaluation cost.
    "cpu": {"width": 16, "blocks_per_stage": 1, "batch": 32, "k": 2, "valid": 0, "steps": 400,
            "schedules": "run-length", "labeled_aug": "weak", "eval_every": 100, "ckpt_every": 200,
            "log_every": 20, "median_of": 3, "eval_batch": 1000},
    # Seconds: for tests and a first look.
    "smoke": {"width": 8, "blocks_per_stage": 1, "batch": 8, "k": 2, "valid": 0, "steps": 20,
              "bn_momentum": 0.1, "ema": 0.9, "warmup_kimg": 0.05, "eval_every": 10, "ckpt_every": 10,
              "log_every": 5, "median_of": 2, "eval_batch": 200},
    "fixmatch-cifar10-40": {"algorithm": "fixmatch", "labels": 40},
    "fixmatch-cifar10-250": {"algorithm": "fixmatch", "labels": 250},
    "fixmatch-cifar10-4000": {"algorithm": "fixmatch", "labels": 4000},
    "fixmatch-svhn-250": {"algorithm": "fixmatch", "labels": 250, "flip": False},
    "mixmatch-cifar10-250": {"algorithm": "mixmatch", "labels": 250},
}

# What the short CPU presets change for one algorithm beyond the above (k 2 there: ReMixMatch's 2
# strong views instead of 8, MixMatch's paper value). FixMatch keeps its one strong view, and its
# mu = 7 would make its step 16 views per labeled image (probes included) where ReMixMatch's renders
# 5 at K = 2, so the short runs use mu = 3 (8 views).
# MixMatch's lambda_u = 75 on the L2 loss pulls a model still near chance towards its own flat
# guesses: with the 4-kimg ramp (full weight at step 128) a 1000-step CIFAR-10 run fell to chance by
# step 200 and ended at 15%; ramped over the whole run it stayed above the supervised baseline. So its
# ramp spans the whole run, as the short-run rule now makes every method's.
PRESET_ALGORITHM_OVERRIDES: dict[tuple[str, str], dict] = {
    ("cpu", "fixmatch"): {"k": 1, "uratio": 3},
    ("smoke", "fixmatch"): {"k": 1, "uratio": 2},
}

# What --fidelity sets (before the ablations and the explicit flags). --valid: the published run
# scripts (runs/ssl/cifar10.sh, svhn.sh) train on `<dataset>.<seed>@<labels>-1`, one image held out.
FIDELITY: dict[str, dict] = {
    "corrected": {},
    "reference": {"cta_semantics": "reference", "bn_mode": "reference", "input_scaling": "reference",
                  "p_data": "reference", "valid": 1, "labeled_aug": "strong"},
}
# The choices a run names wherever it reports its fidelity (config.json has every field).
FIDELITY_FIELDS = ("fidelity", "cta_semantics", "bn_mode", "input_scaling", "p_data", "valid", "labeled_aug")


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
    # The short-run choices and the early-gap candidates, each alone (docs/training.md).
    "labeled-strong": {"labeled_aug": "strong"},
    "labeled-weak": {"labeled_aug": "weak"},
    "labeled-weak-then-strong": {"labeled_aug": "weak-then-strong"},
    "fixed-schedules": {"schedules": "fixed"},
    "cta-gentle": {"cta_start": "gentle"},
    "mixup-per-batch": {"mixup_lambda": "batch"},
    "da-first-batch": {"da_start": "first-batch"},
    "bn-chunks": {"bn_mode": "reference"},
}

# Fields that may differ between a checkpoint and a resumed run: they change how the run executes
# or reports, not what it computes. (prefetch is not one: it changes which weights the policies
# are drawn from. Nor is eval_recalibrate_bn: the figure is a median over evaluations, which must all
# be of one kind; rmm-eval --recalibrate-bn measures an existing run's checkpoints instead.)
RESUMABLE_FIELDS = frozenset({
    "steps", "device", "loader", "compile", "threads", "time_limit", "eval_every", "eval_batch",
    "ckpt_every", "keep_ckpts", "log_every", "median_of", "tensorboard"})


class ConfigError(TrainerError, ValueError):
    """A setting that cannot work; one line naming it."""


def validate(config: TrainConfig) -> None:
    def need(ok, message):
        if not ok:
            raise ConfigError(message)

    _validate_views_and_schedules(config)
    need(config.algorithm in ALGORITHMS, f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {config.algorithm!r}")
    need(config.optimizer in OPTIMIZERS, f"--optimizer must be adam or sgd, got {config.optimizer!r}")
    need(config.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be constant or cosine, got {config.lr_schedule!r}")
    need(config.weight_decay_mode in WEIGHT_DECAY_MODES,
         f"--weight-decay-mode must be decoupled or loss, got {config.weight_decay_mode!r}")
    need(0 < config.confidence <= 1, f"--confidence must be in (0, 1], got {config.confidence}")
    need(0 <= config.cutout_level <= 1, f"--cutout-level must be in [0, 1], got {config.cutout_level}")
    need(config.algorithm not in ("fixmatch", "mixmatch") or config.k >= 1,
         f"--k must be at least 1 for {config.algorithm} (its views per unlabeled image), got {config.k}")
    need(config.unlabeled_loss in UNLABELED_LOSSES, f"--unlabeled-loss must be xe or l2, got {config.unlabeled_loss!r}")
    need(config.batch >= 1, f"--batch must be at least 1, got {config.batch}")
    need(config.uratio >= 1, f"--uratio must be at least 1, got {config.uratio}")
    need(config.k >= 0, f"--k must be at least 0, got {config.k}")
    need(config.algorithm == "supervised" or config.k >= 1 or (config.w_kl == 0 and config.w_rot == 0),
         "--k 0 leaves no strong view for the pre-mixup and rotation losses: set --w-kl 0 --w-rot 0")
    need(config.labels >= 1, f"--labels must be at least 1, got {config.labels}")
    need(config.valid >= 0, f"--valid must be at least 0, got {config.valid}")
    need(config.steps >= 1, f"--steps must be at least 1, got {config.steps}")
    need(config.time_limit >= 0, f"--time-limit must be at least 0 seconds, got {config.time_limit}")
    need(config.temperature > 0, f"--temperature must be positive, got {config.temperature}")
    need(config.mixup_alpha > 0, f"--mixup-alpha must be positive, got {config.mixup_alpha}")
    need(0 <= config.ema < 1, f"--ema must be in [0, 1), got {config.ema}")
    need(0 <= config.bn_momentum <= 1, f"--bn-momentum must be in [0, 1], got {config.bn_momentum}")
    need(config.width >= 1 and config.blocks_per_stage >= 1, "--width and --blocks-per-stage must be at least 1")
    for name in ("eval_every", "ckpt_every", "log_every", "eval_batch", "keep_ckpts", "median_of", "da_size"):
        need(getattr(config, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    need(config.loader in ("auto", "torch", "dali"), f"--loader must be auto, torch or dali, got {config.loader!r}")
    need(config.eval_split != "valid" or config.valid > 0, "--eval-split valid needs --valid > 0")
    need(config.stages >= 0, f"--stages must be at least 0 (0: from the image size), got {config.stages}")
    need(config.fold >= -1, f"--fold must be a fold number (0, 1, ...) or -1 for none, got {config.fold}")
    need(config.fold < 0 or config.valid == 0, "--fold takes the official fold as it is: set --valid 0")
    for flag, value, allowed in (("--fidelity", config.fidelity, tuple(FIDELITY)),
                                 ("--cta-semantics", config.cta_semantics, CTA_SEMANTICS),
                                 ("--bn-mode", config.bn_mode, BN_MODES),
                                 ("--input-scaling", config.input_scaling, INPUT_SCALINGS),
                                 ("--p-data", config.p_data, P_DATA_MODES)):
        need(value in allowed, f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    # Ranges the losses, the optimiser and CTAugment need. A NaN fails every comparison, so these
    # refuse it too (rmm-train refuses an infinite value first: run.check_finite_config).
    for flag, value in (("--w-match", config.w_match), ("--w-kl", config.w_kl), ("--w-rot", config.w_rot),
                        ("--warmup-kimg", config.warmup_kimg), ("--weight-decay", config.weight_decay)):
        need(value >= 0, f"{flag} must be at least 0, got {value}")
    need(config.lr > 0, f"--lr must be positive, got {config.lr}")
    need(0 <= config.momentum < 1, f"--momentum must be in [0, 1), got {config.momentum}")
    need(config.eval_recalibrate_bn >= 0,
         f"--eval-recalibrate-bn must be at least 0 (0: the trained statistics), got {config.eval_recalibrate_bn}")
    need(config.threads >= 0, f"--threads must be at least 0 (0: torch's default), got {config.threads}")
    need(1 <= config.cta_depth <= 4, f"--cta-depth must be in 1..4, got {config.cta_depth}")
    need(0 < config.cta_decay < 1, f"--cta-decay must be in (0, 1), got {config.cta_decay}")
    need(0 <= config.cta_threshold <= 1, f"--cta-threshold must be in [0, 1], got {config.cta_threshold}")
    need(config.cta_rule in ("segment", "bin"), f"--cta-rule must be segment or bin, got {config.cta_rule!r}")
    need(config.bn_mode != "reference" or config.uratio == 1,
         "--bn-mode reference interleaves blocks of equal size: it needs --uratio 1")
    need(config.bn_mode != "reference" or config.algorithm == "remixmatch",
         f"--bn-mode reference (also set by --fidelity reference) is the ReMixMatch reference's interleaved "
         f"forward; {config.algorithm} trains in one forward: add --bn-mode joint")


def _validate_views_and_schedules(config: TrainConfig) -> None:
    """The labeled views, the short-run rule and the early-training choices."""
    for flag, value, allowed in (("--labeled-aug", config.labeled_aug, LABELED_AUGS),
                                 ("--schedules", config.schedules, SCHEDULES),
                                 ("--cta-start", config.cta_start, CTA_STARTS),
                                 ("--mixup-lambda", config.mixup_lambda, MIXUP_LAMBDAS),
                                 ("--da-start", config.da_start, DA_STARTS)):
        if value not in allowed:
            raise ConfigError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}")
    if config.labeled_aug != "weak" and config.algorithm != "remixmatch":
        raise ConfigError(f"--labeled-aug {config.labeled_aug}: {config.algorithm}'s labeled views are weak "
                          f"(only ReMixMatch's take CTAugment): drop the flag")
    if not 0 < config.labeled_aug_switch < 1:
        raise ConfigError(f"--labeled-aug-switch must be in (0, 1) (a share of --steps), got {config.labeled_aug_switch}")


def labeled_strong_from(config: TrainConfig) -> int | None:
    """The first step whose labeled views are strong (None: never)."""
    if config.labeled_aug == "weak" or config.algorithm != "remixmatch":
        return None
    if config.labeled_aug == "weak-then-strong":
        return round(config.labeled_aug_switch * config.steps)
    return 0


def preset_values(preset: str | None, algorithm: str | None = None) -> dict:
    """The overrides of a preset for an algorithm (None: the preset's own, else ReMixMatch): the
    algorithm's defaults, the preset, the preset's changes for that algorithm."""
    named = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})")
        named = PRESETS[preset]
    chosen = algorithm or named.get("algorithm", "remixmatch")
    if "algorithm" in named and named["algorithm"] != chosen:
        raise ConfigError(f"--algorithm {chosen} contradicts --preset {preset}, a {named['algorithm']} preset")
    if chosen not in ALGORITHM_DEFAULTS:
        raise ConfigError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got {chosen!r}")
    return {**ALGORITHM_DEFAULTS[chosen], "algorithm": chosen, **named,
            **PRESET_ALGORITHM_OVERRIDES.get((preset, chosen), {})}


def resolve(preset: str | None, ablations: list[str], overrides: dict) -> TrainConfig:
    """The algorithm's defaults, then the preset, then what --fidelity sets, then ablations, then
    explicit command-line values."""
    values = preset_values(preset, overrides.get("algorithm"))
    if ablations and values["algorithm"] != "remixmatch":
        raise ConfigError(f"--ablation {ablations[0]}: the ablations are ReMixMatch's, not {values['algorithm']}'s")
    fidelity = overrides.get("fidelity", values.get("fidelity", TrainConfig.fidelity))
    if fidelity not in FIDELITY:
        raise ConfigError(f"--fidelity must be one of {', '.join(FIDELITY)}, got {fidelity!r}")
    # The reference's strong labeled views are ReMixMatch's; the other methods' stay weak.
    values.update({name: value for name, value in FIDELITY[fidelity].items()
                   if name != "labeled_aug" or values["algorithm"] == "remixmatch"})
    for name in ablations:
        if name not in ABLATIONS:
            raise ConfigError(f"unknown ablation {name!r} (ablations: {', '.join(ABLATIONS)})")
        values.update(ABLATIONS[name])
    sized = TrainConfig(**{**values, **overrides})
    if sized.schedules == "run-length":  # the short-run rule, below the explicit flags
        values.update(run_length_values(sized.steps, sized.batch, sized.cta_depth))
    values.update(overrides)
    config = TrainConfig(**values)
    validate(config)
    return config


def config_fields() -> list[dataclasses.Field]:
    return list(fields(TrainConfig))


def contradictions(saved: dict, config: TrainConfig) -> list[str]:
    """Fields whose value differs from a checkpoint's and that a resume may not change."""
    current = config.to_dict()
    # A cosine schedule, the short-run rule and a switch of the labeled views span --steps: another
    # length is another schedule.
    spans_run = (config.lr_schedule == "cosine" or config.schedules == "run-length"
                 or config.labeled_aug == "weak-then-strong")
    resumable = RESUMABLE_FIELDS - ({"steps"} if spans_run else set())
    clash = [name for name, value in saved.items()
             if name in current and name not in resumable and current[name] != value]
    # Another algorithm differs in many fields; name the one that explains the others.
    return sorted(clash, key=lambda name: (name != "algorithm", name != "steps"))


__all__ = ["ABLATIONS", "ALGORITHMS", "ALGORITHM_DEFAULTS", "ConfigError", "FIDELITY", "FIDELITY_FIELDS", "PRESETS",
           "PRESET_ALGORITHM_OVERRIDES", "TrainConfig", "config_fields", "contradictions", "fidelity_choices",
           "labeled_strong_from", "preset_values", "resolve", "validate"]
