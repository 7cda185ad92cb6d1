"""The training step of each algorithm, one module each, chosen by TrainConfig.algorithm.

A step is ``step(state, batch, step) -> StepResult``; its ``losses`` vector holds the values named by
the algorithm's ``METRICS`` (the losses, then any diagnostics), which the run logs under those names.
"""

from __future__ import annotations

from . import fixmatch, mixmatch, remixmatch, supervised

STEPS = {"remixmatch": remixmatch.remixmatch_step, "fixmatch": fixmatch.fixmatch_step,
         "mixmatch": mixmatch.mixmatch_step, "supervised": supervised.supervised_step}
METRICS = {"remixmatch": remixmatch.LOSS_NAMES, "fixmatch": fixmatch.LOSS_NAMES,
           "mixmatch": mixmatch.LOSS_NAMES, "supervised": supervised.LOSS_NAMES}

__all__ = ["METRICS", "STEPS"]
