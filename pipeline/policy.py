"""CTAugment policy state (spec §2.2-2.3): per-op bin weights, vectorised sampling, probe updates.

The weights of every op argument live in one array ``rates[op, arg, bin]`` (bins beyond an
argument's count, and arguments an op does not have, are unused and stay 1). Everything about the
ops (names, bins per argument) is read from :mod:`remixmatch.kernels.ops`, so the policy and the
kernels cannot disagree on what op id 11 is.

Sampling returns :class:`Policies`, exactly the per-view arrays ``apply_ops`` takes. Randomness
always comes from a ``numpy.random.Generator`` the caller passes (seeded per step), never from
global state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remixmatch.common.atomic import atomic_target
from remixmatch.kernels.ops import LEVELS_PER_OP, NUM_OPS, OP_ID, OP_NAMES, OPS, SEMANTICS

from .errors import PipelineError

MAX_BINS = max(b for op in OPS for b in op.bins)
# bins per (op, argument); 0 where the op has no such argument.
OP_BINS = np.array([[op.bins[a] if a < len(op.bins) else 0 for a in range(LEVELS_PER_OP)] for op in OPS],
                   dtype=np.int64)
IDENTITY = OP_ID["identity"]
SAMPLING_RULES = ("segment", "bin")
STARTS = ("uniform", "gentle")
# The gentle start's harsh settings, as level ranges [low, high) of an op's first argument: invert
# past alpha 0.25 (a half-inverted image is flat grey, a full one a negative), solarize below
# threshold 128 (most pixels inverted) and posterize to 1 or 2 bits. A uniform start samples them
# as often as any other setting while the model is still near chance; a gentle one starts their
# bins at 0, below the threshold, so they are drawn only once their probe scores come within the
# threshold of the best bins'. The probes, uniform as always, score them from the first step.
HARSH_START_LEVELS = {"invert": (0.25, 1.0), "solarize": (0.0, 0.5), "posterize": (0.0, 0.25)}


def initial_rates(start: str = "uniform") -> np.ndarray:
    """CTAugment's weights before any probe: 1 everywhere (uniform), or 0 on the harsh settings
    of ``HARSH_START_LEVELS`` (gentle). A bin [i / bins, (i + 1) / bins) is harsh when its centre
    lies in the range."""
    if start not in STARTS:
        raise PipelineError(f"CTAugment start must be one of {', '.join(STARTS)}, got {start!r}")
    rates = np.ones((NUM_OPS, LEVELS_PER_OP, MAX_BINS), np.float64)
    if start == "gentle":
        for name, (low, high) in HARSH_START_LEVELS.items():
            op, bins = OP_ID[name], OP_BINS[OP_ID[name], 0]
            centres = (np.arange(bins) + 0.5) / bins
            rates[op, 0, :bins][(centres >= low) & (centres < high)] = 0.0
    return rates


@dataclass(frozen=True)
class Policies:
    """Per-view CTAugment arguments of ``apply_ops``: view n applies ``op_ids[n]`` in order."""

    op_ids: np.ndarray  # (N, depth) int32 op ids
    levels: np.ndarray  # (N, depth, 2) float32 in [0, 1]; unused arguments are 0
    rand: np.ndarray  # (N, depth + 1, 2) float32 in [0, 1): cutout centres

    def __len__(self) -> int:
        return len(self.op_ids)

    @property
    def depth(self) -> int:
        return self.op_ids.shape[1]

    def __getitem__(self, rows) -> Policies:
        return Policies(self.op_ids[rows], self.levels[rows], self.rand[rows])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.op_ids, self.levels, self.rand

    @staticmethod
    def concat(parts: list[Policies]) -> Policies:
        return Policies(*(np.ascontiguousarray(np.concatenate(a)) for a in zip(*(p.arrays() for p in parts))))

    @staticmethod
    def identity(n: int, depth: int) -> Policies:
        """Views that apply no op (the weak view, or the 'no strong augmentation' ablation)."""
        return Policies(np.full((n, depth), IDENTITY, np.int32), np.zeros((n, depth, 2), np.float32),
                        np.zeros((n, depth + 1, 2), np.float32))

    def describe(self, n: int) -> str:
        """View n's ops and levels, e.g. 'rotate(0.81) rescale(0.13, 0.50)'."""
        return " ".join(self.describe_ops(n))

    def describe_ops(self, n: int) -> list[str]:
        """View n's ops with their levels, one entry per op: ['rotate(0.81)', 'rescale(0.13, 0.50)']."""
        words = []
        for d in range(self.depth):
            op = int(self.op_ids[n, d])
            args = ", ".join(f"{self.levels[n, d, a]:.2f}" for a in range(len(OPS[op].bins)))
            words.append(f"{OP_NAMES[op]}({args})")
        return words

    def state_dict(self) -> dict:
        return {"op_ids": self.op_ids.copy(), "levels": self.levels.copy(), "rand": self.rand.copy()}

    @staticmethod
    def from_state_dict(state: dict) -> Policies:
        return Policies(np.asarray(state["op_ids"], np.int32), np.asarray(state["levels"], np.float32),
                        np.asarray(state["rand"], np.float32))


def uniform_policies(n: int, depth: int, rng: np.random.Generator, ops: list[int] | None = None) -> Policies:
    """Ops uniform over all ops (identity included), every level uniform in [0, 1): CTAugment's probe
    policy, and what a policy with flat weights samples from. ``ops`` restricts the draw to those
    op ids (one id: every view applies that op, as a per-op benchmark needs)."""
    if ops is None:
        op_ids = rng.integers(0, NUM_OPS, (n, depth), dtype=np.int32)
    else:
        op_ids = np.asarray(ops, np.int32)[rng.integers(0, len(ops), (n, depth))]
    levels = rng.random((n, depth, LEVELS_PER_OP), dtype=np.float32)
    levels *= (OP_BINS[op_ids] > 0)  # arguments an op does not have read as 0
    rand = rng.random((n, depth + 1, 2), dtype=np.float32)
    return Policies(op_ids, levels, rand)


class CTAugment:
    """The learnt part of CTAugment: one weight vector per op argument, sampled and updated.

    depth: ops per view (2). decay: the weights' moving-average rate (0.99). threshold: bins whose
    normalised probability falls below it are never sampled (0.8 in the ReMixMatch runs; the
    reference class default is 0.85). rule: "segment" (the ReMixMatch code: pick a segment between
    two adjacent bins with probability proportional to their summed weights, then a uniform point in
    it) or "bin" (the FixMatch code: pick a bin in proportion to its weight, a uniform point in it).
    semantics: how the kernels map the sampled levels of translate, rescale and cutout ("corrected",
    or "reference": the published code's mappings, kernels.ops.OpSpec.reference_args). The weights
    learnt under one mean something else under the other, so a state of the other is refused.
    start: the weights before any probe ("uniform", the paper's; "gentle": the harsh settings of
    ``HARSH_START_LEVELS`` start below the threshold). Only the start differs: the update is the same.
    """

    def __init__(self, depth: int = 2, decay: float = 0.99, threshold: float = 0.8, rule: str = "segment",
                 semantics: str = "corrected", start: str = "uniform"):
        if semantics not in SEMANTICS:
            raise PipelineError(f"CTAugment semantics must be one of {', '.join(SEMANTICS)}, got {semantics!r}")
        if rule not in SAMPLING_RULES:
            raise PipelineError(f"CTAugment rule must be one of {', '.join(SAMPLING_RULES)}, got {rule!r}")
        if not 1 <= depth <= 4:
            raise PipelineError(f"CTAugment depth must be 1..4, got {depth}")
        if not 0.0 < decay < 1.0:
            raise PipelineError(f"CTAugment decay must be in (0, 1), got {decay}")
        if not 0.0 <= threshold <= 1.0:
            raise PipelineError(f"CTAugment threshold must be in [0, 1], got {threshold}")
        self.depth = depth
        self.decay = float(decay)
        self.threshold = float(threshold)
        self.rule = rule
        self.semantics = semantics
        # Replaced (never written in place) by update(), so a sampler that took a reference keeps
        # a consistent snapshot.
        self.start = start
        self.rates = initial_rates(start)
        # (a copy of the weights it was computed from, the CDF): compared by value, so that weights
        # written in place are seen too.
        self._cdf_cache: tuple[np.ndarray, np.ndarray] | None = None

    # -- the weights as probabilities ---------------------------------------------------------------

    def probabilities(self, rates: np.ndarray | None = None) -> np.ndarray:
        """rate_to_p of every argument: p = r + (1 - decay), p /= max(p), p[p < threshold] = 0.
        (NUM_OPS, 2, MAX_BINS) float64; unused bins are 0."""
        rates = self.rates if rates is None else rates
        valid = np.arange(MAX_BINS)[None, None, :] < OP_BINS[:, :, None]
        p = np.where(valid, rates + (1.0 - self.decay), 0.0)
        peak = p.max(axis=2, keepdims=True)
        p = np.divide(p, peak, out=np.zeros_like(p), where=peak > 0)
        p[p < self.threshold] = 0.0
        return p

    def _cdf(self) -> np.ndarray:
        """Per argument, the cumulative distribution over its choices (segments or bins), padded
        with 2.0 past the last choice so that a uniform draw never selects a padding slot."""
        rates = self.rates
        if self._cdf_cache is not None and np.array_equal(self._cdf_cache[0], rates):
            return self._cdf_cache[1]
        p = self.probabilities(rates)
        if self.rule == "segment":
            weights = p[:, :, 1:] + p[:, :, :-1]
            choices = np.maximum(OP_BINS - 1, 0)
        else:
            weights = p
            choices = OP_BINS
        valid = np.arange(weights.shape[2])[None, None, :] < choices[:, :, None]
        weights = np.where(valid, weights, 0.0)
        total = weights.sum(axis=2, keepdims=True)
        cdf = np.cumsum(np.divide(weights, total, out=np.zeros_like(weights), where=total > 0), axis=2)
        cdf = np.where(valid, cdf, 2.0)
        # The last choice of positive weight closes at exactly 1 whatever the rounding of the sums,
        # and so do the zero-weight choices after it: a draw just below 1 never lands past it.
        last = weights.shape[2] - 1 - np.argmax(weights[:, :, ::-1] > 0, axis=2)
        closed = valid & (np.arange(weights.shape[2])[None, None, :] >= last[:, :, None])
        cdf = np.where(closed, 1.0, cdf)
        self._cdf_cache = (np.array(rates, copy=True), cdf)
        return cdf

    # -- sampling -----------------------------------------------------------------------------------

    def sample(self, n: int, rng: np.random.Generator) -> Policies:
        """n training policies: ops uniform over all ops, levels drawn from the weights."""
        cdf = self._cdf()
        depth = self.depth
        op_ids = rng.integers(0, NUM_OPS, (n, depth), dtype=np.int32)
        pick = rng.random((n, depth, LEVELS_PER_OP))
        within = rng.random((n, depth, LEVELS_PER_OP))
        rand = rng.random((n, depth + 1, 2), dtype=np.float32)
        rows = cdf[op_ids]  # (n, depth, 2, choices)
        choice = (rows <= pick[..., None]).sum(axis=-1)
        bins = OP_BINS[op_ids]
        count = np.maximum(bins - 1, 1) if self.rule == "segment" else np.maximum(bins, 1)
        levels = np.where(bins > 0, (choice + within) / count, 0.0)
        # float64 -> float32 may round 0.99999999 up to 1.0, which every op accepts.
        return Policies(op_ids, levels.astype(np.float32), rand)

    def sample_probes(self, n: int, rng: np.random.Generator) -> Policies:
        """n probe policies (spec §2.3): ops and levels uniform, no weighting."""
        return uniform_policies(n, self.depth, rng)

    # -- learning -----------------------------------------------------------------------------------

    def update(self, probes: Policies, scores: np.ndarray) -> None:
        """Moves the weights of every (op, argument, bin) a probe used towards its score.

        For each probe n in order, each of its ops and each level v of the op:
        ``bin = int(v * bins * 0.999)``, ``r[bin] = decay * r[bin] + (1 - decay) * score[n]``.
        Done in closed form: a bin hit m times in this call by scores w_1..w_m (in order) becomes
        decay^m r + (1 - decay) sum_j decay^(m - j) w_j, the sequential result.
        """
        op_ids = np.asarray(probes.op_ids)
        levels = np.asarray(probes.levels, np.float64)
        scores = np.asarray(scores, np.float64).reshape(-1)
        if scores.shape[0] != op_ids.shape[0]:
            raise PipelineError(f"CTAugment.update: {op_ids.shape[0]} probes but {scores.shape[0]} scores")
        if not np.all(np.isfinite(scores)):
            raise PipelineError("CTAugment.update: a probe score is NaN or infinite")
        n, depth = op_ids.shape
        args = np.broadcast_to(np.arange(LEVELS_PER_OP), (n, depth, LEVELS_PER_OP))
        ops = np.broadcast_to(op_ids[:, :, None], args.shape)
        bins = OP_BINS[ops, args]
        used = bins > 0
        # The 0.999 keeps v = 1.0 in the last bin.
        hit = np.minimum((levels * bins * 0.999).astype(np.int64), np.maximum(bins - 1, 0))
        key = ((ops * LEVELS_PER_OP + args) * MAX_BINS + hit)[used]  # probe-major order, as the loop
        weight = np.broadcast_to(scores[:, None, None], args.shape)[used]
        if key.size == 0:
            return
        order = np.argsort(key, kind="stable")
        key, weight = key[order], weight[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        counts = np.diff(np.r_[starts, key.size])
        rank = np.arange(key.size) - np.repeat(starts, counts)
        after = np.repeat(counts, counts) - 1 - rank  # later hits of the same bin
        contribution = (1.0 - self.decay) * weight * self.decay ** after
        summed = np.add.reduceat(contribution, starts)
        rates = self.rates.copy()
        flat = rates.reshape(-1)
        flat[key[starts]] = flat[key[starts]] * self.decay ** counts + summed
        self.rates = rates

    # -- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"rates": self.rates.copy(), "op_names": list(OP_NAMES), "depth": self.depth,
                "decay": self.decay, "threshold": self.threshold, "rule": self.rule, "semantics": self.semantics,
                "start": self.start}

    def load_state_dict(self, state: dict) -> None:
        if list(state["op_names"]) != list(OP_NAMES):
            raise PipelineError("CTAugment state was saved with a different op registry "
                                f"({len(state['op_names'])} ops: {', '.join(state['op_names'][:4])}, ...)")
        # States saved before the semantics existed were all corrected.
        state = {"semantics": "corrected", "start": "uniform", **state}
        for field in ("depth", "decay", "threshold", "rule", "semantics", "start"):
            if state[field] != getattr(self, field):
                raise PipelineError(f"CTAugment state has {field}={state[field]!r}, this policy {getattr(self, field)!r}")
        rates = np.asarray(state["rates"], np.float64)
        if rates.shape != self.rates.shape:
            raise PipelineError(f"CTAugment state rates have shape {rates.shape}, expected {self.rates.shape}")
        self.rates = rates.copy()

    # -- reading the weights ------------------------------------------------------------------------

    def table(self) -> str:
        """A text table of every argument's sampling probabilities (rate_to_p), one row each."""
        p = self.probabilities()
        lines = [f"CTAugment weights as probabilities (decay {self.decay}, threshold {self.threshold}; "
                 "'.' = below threshold, never sampled)"]
        for op_id, op in enumerate(OPS):
            if not op.bins:
                lines.append(f"{op.name:<13} (no levels)")
            for a, bins in enumerate(op.bins):
                label = op.name if a == 0 else f"{'':<9}arg{a}"
                cells = " ".join(f"{x:4.2f}" if x > 0 else "  . " for x in p[op_id, a, :bins])
                lines.append(f"{label:<13} {cells}")
        return "\n".join(lines)

    def heatmap(self, path: str | Path) -> Path:
        """Every argument's probabilities as one PNG (rows = op arguments, columns = bins); needs
        matplotlib (the ``plots`` extra). Written to a temporary name, then renamed."""
        try:
            import matplotlib
        except ImportError:
            raise PipelineError("the CTAugment heatmap needs matplotlib: pip install 'remixmatch[plots]'") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        p = self.probabilities()
        rows, labels = [], []
        for op_id, op in enumerate(OPS):
            for a, bins in enumerate(op.bins):
                row = np.full(MAX_BINS, np.nan)
                row[:bins] = p[op_id, a, :bins]
                rows.append(row)
                labels.append(op.name if a == 0 else f"{op.name} (filter)")
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
        image = ax.imshow(np.array(rows), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xticks(range(MAX_BINS), [str(b) for b in range(MAX_BINS)], fontsize=7)
        ax.set_xlabel("bin (level v in [bin / bins, (bin + 1) / bins))")
        ax.set_title(f"CTAugment sampling probabilities (threshold {self.threshold})", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.04)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_target(path) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
        finally:
            plt.close(fig)
        return path
