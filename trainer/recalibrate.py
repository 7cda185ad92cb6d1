"""Batch-norm statistics re-estimated on clean training images (``rmm-eval --recalibrate-bn N``,
``rmm-train --eval-recalibrate-bn N``).

A model that moves fast (a short run, early in a long one) is evaluated with running statistics
that average over the last 1 / momentum steps of training batches: augmented, mixed, and taken from
weights that have since moved (the EMA model borrows the raw model's). Recalibrating replaces them
with the plain average of the batch statistics of N clean (unaugmented) training images under the
weights evaluated, so the accuracy measures the weights rather than the lag of their statistics.

The images are the first N of a fixed shuffle (seeded by the run's ``run_seed``) of the training
rows the run trained on (its hold-out excluded), read in batches of the run's --eval-batch: the same
images, batches and statistics on every call, in rmm-eval and at rmm-train's evaluations alike
(:class:`Recalibration`, which both use).
"""

from __future__ import annotations

import hashlib

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


class Recalibration:
    """The clean training images a run's models are recalibrated on, and the recalibration itself.

    ``train_split``: the shards' train split; ``excluded``: the run's hold-out (labeled.json's
    ``valid``); ``batch``: images per forward (the run's --eval-batch). Read through the torch
    fetcher whatever loader the run trained with, so rmm-eval and rmm-train see the same pixels.
    Reading consumes no random numbers: a run that recalibrates trains exactly as one that does not.
    """

    def __init__(self, train_split, excluded: np.ndarray, images: int, batch: int, run_seed: int, device: str):
        from remixmatch.pipeline import EvalLoader
        from remixmatch.pipeline.loader import make_fetcher

        self.rows = recalibration_rows(len(train_split), excluded, images, run_seed)
        self.batch = batch
        self.loader = EvalLoader(train_split, self.rows, batch, device=device,
                                 fetcher=make_fetcher("torch", train_split, device, max_batch=batch))

    def __call__(self, model: torch.nn.Module) -> int:
        """Recalibrates ``model`` in place (eval mode after); the BN layers it holds."""
        from .step import as_float_images  # the training step's own input conversion

        return recalibrate_bn(model, self.loader, lambda m, item: m(as_float_images(item.images)))

    def describe(self) -> dict:
        """What was read, for the records."""
        return {"images": int(len(self.rows)), "batch": self.batch, "split": "train",
                "rows_sha256": hashlib.sha256(np.ascontiguousarray(self.rows).tobytes()).hexdigest()}


__all__ = ["Recalibration", "recalibrate_bn", "recalibration_rows"]
