"""The short-run rule: the settings whose natural horizon is the run's length, derived from --steps.

The paper's values suit runs of 2^20 steps: the unlabeled loss ramps up over 16k steps, the EMA of
the weights and the BN running statistics average over about 1000 steps, and each CTAugment bin
remembers about 100 probe scores (at 64 probes a step, some 200 steps). In a run of a few thousand
steps the same numbers mean a policy near uniform for a quarter of the run and an EMA that is
mostly its initialisation. ``--schedules run-length`` (the ``cpu`` preset's) sizes them to the run
instead, by one rule, the same for every method:

- the ramp of the unlabeled-loss weights (w_match, w_kl) spans the whole run:
  ``warmup_kimg = steps * batch / 1024``;
- every moving average remembers one twentieth of the run, ``H = max(steps / 20, 10)`` steps:
  EMA decay ``1 - 1 / H``, BN momentum ``1 / H``, and CTAugment's decay ``1 - 1 / (H h)``, where
  ``h = batch * depth / (ops * 17)`` is the probe hits one bin of a 17-bin argument gets a step
  (its memory, counted in hits, spans H steps);
- none is ever slower than the paper's value (ramp <= 1024 kimg, EMA <= 0.999, BN momentum >=
  0.001, CTAugment decay <= 0.99), so a long run gets the paper's numbers.

An explicit flag still wins over the rule (``--ema 0.999`` keeps 0.999). The values are written
into the resolved TrainConfig, so config.json and summary.json show what the run used.
"""

from __future__ import annotations

from remixmatch.kernels.ops import NUM_OPS

SCHEDULES = ("fixed", "run-length")
# What the rule sets (the efficacy report and summary.json show these per run).
SCHEDULE_FIELDS = ("warmup_kimg", "ema", "bn_momentum", "cta_decay")
AVERAGE_FRACTION = 1 / 20  # a moving average's memory, as a share of the run
MIN_AVERAGE_STEPS = 10.0  # the shortest memory: a 20-step smoke run still averages over 10
TYPICAL_BINS = 17  # the bins of every CTAugment argument but posterize's and rescale's filter
# The paper's values, the rule's slowest.
PAPER = {"warmup_kimg": 1024.0, "ema": 0.999, "bn_momentum": 0.001, "cta_decay": 0.99}


def average_steps(steps: int) -> float:
    """H: the steps a moving average remembers in a run of ``steps``."""
    return max(steps * AVERAGE_FRACTION, MIN_AVERAGE_STEPS)


def probe_hits_per_step(batch: int, depth: int) -> float:
    """The probe scores one bin of a 17-bin argument receives per step: ``batch`` probes of
    ``depth`` ops each, every op uniform over all ops, every level uniform over the bins."""
    return batch * depth / (NUM_OPS * TYPICAL_BINS)


def run_length_values(steps: int, batch: int, cta_depth: int) -> dict:
    """The rule's values for a run of ``steps`` steps of ``batch`` labeled images."""
    horizon = average_steps(steps)
    hits = horizon * probe_hits_per_step(batch, cta_depth)
    return {
        "warmup_kimg": min(steps * batch / 1024, PAPER["warmup_kimg"]),
        "ema": min(1.0 - 1.0 / horizon, PAPER["ema"]),
        "bn_momentum": max(1.0 / horizon, PAPER["bn_momentum"]),
        # A bin's memory in hits; at least 2 hits keeps the decay in (0, 1).
        "cta_decay": min(1.0 - 1.0 / max(hits, 2.0), PAPER["cta_decay"]),
    }


def schedule_choices(config) -> dict:
    """What a run's schedules are, for summary.json and the reports: the rule's name, the values it
    governs, the ramp in steps, and the labeled views."""
    return {"schedules": config.schedules, **{name: getattr(config, name) for name in SCHEDULE_FIELDS},
            "ramp_steps": config.ramp_steps, "labeled_aug": config.labeled_aug,
            "labeled_aug_switch": config.labeled_aug_switch}


__all__ = ["AVERAGE_FRACTION", "PAPER", "SCHEDULES", "SCHEDULE_FIELDS", "average_steps", "probe_hits_per_step",
           "run_length_values", "schedule_choices"]
