"""Batch-norm statistics re-estimated on clean training images (``rmm-eval --recalibrate-bn N``).

A model that moves fast (a short run, early in a long one) is evaluated with running statistics
that average over the last 1 / momentum steps of training batches: augmented, mixed, and taken from
weights that have since moved (the EMA model borrows the raw model's). Recalibrating replaces them
with the plain average of the batch statistics of N clean (unaugmented) training images under the
weights evaluated, so the accuracy measures the weights rather than the lag of their statistics.

The images are the first N of a fixed shuffle (seeded by the run's ``run_seed``) of the training
rows the run trained on (its hold-out excluded), read in batches of the run's --eval-batch: the same
images, batches and statistics on every call.
"""

from __future__ import annotations

import numpy as np
import torch

_ROWS_STREAM = 11  # keeps the choice of images apart from the run's other seeded streams


def recalibration_rows(n_rows: int, excluded: np.ndarray, images: int, run_seed: int) -> np.ndarray:
    """The ``images`` training rows recalibration reads: a seeded shuffle of the rows not in
    ``excluded``, its first ``images`` (all of them when fewer)."""
    candidates = np.setdiff1d(np.arange(n_rows, dtype=np.int64), np.asarray(excluded, np.int64))
    order = np.random.default_rng([run_seed, _ROWS_STREAM]).permutation(len(candidates))
    return candidates[order[:images]]


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, batches, forward) -> int:
    """Resets every BN layer's running statistics and re-estimates them as the plain mean over
    ``batches`` (training-mode forwards through ``forward(model, batch)``, no gradients); returns
    the layers recalibrated. The model is left in eval mode, its momenta as they were."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: each batch counts alike
    model.train()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return len(norms)


__all__ = ["recalibrate_bn", "recalibration_rows"]
