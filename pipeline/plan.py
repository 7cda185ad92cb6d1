"""A step's plan: every random choice behind its views, drawn for the global batch.

The plan of step t holds the rows each view reads, the weak augmentation (flip, crop offset) of
every view and the CTAugment policies of the strong and probe views. It is drawn on every rank
from a generator seeded by (seed, step, component) and the same CTAugment weights, for the whole
global batch; each rank then keeps its slice (:meth:`StepPlan.local`). So the global batch of a
step is the same on any number of ranks, and any view can be re-made from its plan.

Unlabeled strong views are K-major: view k of unlabeled image b is entry ``k * B_u + b``.

Views no algorithm reads are not in the plan: the labeled views are weak only unless
``labeled_strong`` (ReMixMatch's paper views; from step ``labeled_strong_from`` on), there are probe views only where CTAugment learns, and an algorithm
without unlabeled strong views (MixMatch: weak views only) gets identity policies there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from remixmatch.kernels.ops import OP_ID

from .errors import PipelineError
from .policy import IDENTITY, OP_BINS, CTAugment, Policies
from .samplers import rank_slice

CUTOUT = OP_ID["cutout"]

# One generator per component, so that changing K or switching probes off leaves the other
# components' random numbers as they were.
_X_WEAK, _X_POLICY, _PROBE, _U_WEAK, _U_STRONG_WEAK, _U_POLICY = range(1, 7)


def weak_pad(side: int) -> int:
    """The weak augmentation's reflect pad for images of ``side`` px: 12.5% of it, as the reference
    pads (4 px at 32x32, 12 px at STL-10's 96x96)."""
    return max(1, side // 8)


@dataclass(frozen=True)
class ViewConfig:
    """What a training step's views are. Batches are global (split over ranks)."""

    batch: int = 64  # labeled images per step
    unlabeled_batch: int = 64  # unlabeled images per step (ReMixMatch: the same as batch)
    k: int = 8  # strong views per unlabeled image; 0 = no unlabeled strong views
    seed: int = 0
    pad: int = 4  # weak augmentation: reflect-pad by this many pixels, crop back at a random offset (weak_pad(side))
    flip: bool = True  # weak augmentation: random horizontal flip (off for SVHN)
    weak: bool = True  # off: no flip and no translation (the 'no weak augmentation' ablation)
    strong: bool = True  # off: CTAugment views are weak views (the 'no strong augmentation' ablation)
    labeled_strong: bool = True  # labeled views get CTAugment on top of the weak augmentation
    labeled_strong_from: int = 0  # ... from this step on (weak before: ReMixMatch's --labeled-aug weak-then-strong)
    probes: bool = True  # labeled probe views for the CTAugment update
    cutout_level: float | None = None  # a Cutout at this level after every unlabeled strong view's ops (FixMatch)

    def check(self) -> None:
        if self.batch < 1:
            raise PipelineError(f"batch must be at least 1, got {self.batch}")
        if self.unlabeled_batch < 0:
            raise PipelineError(f"unlabeled batch must be at least 0, got {self.unlabeled_batch}")
        if self.k < 0:
            raise PipelineError(f"K (strong views per unlabeled image) must be at least 0, got {self.k}")
        if self.pad < 0:
            raise PipelineError(f"pad must be at least 0, got {self.pad}")
        if self.cutout_level is not None and not 0.0 <= self.cutout_level <= 1.0:
            raise PipelineError(f"cutout level must be in [0, 1] or None, got {self.cutout_level}")


@dataclass(frozen=True)
class WeakParams:
    """Weak augmentation of each view: flip (0/1) and crop offset (y, x) in [0, 2 pad]."""

    flips: np.ndarray  # (N,) int32
    offsets: np.ndarray  # (N, 2) int32

    def __getitem__(self, rows) -> WeakParams:
        return WeakParams(self.flips[rows], self.offsets[rows])

    @staticmethod
    def sample(n: int, rng: np.random.Generator, config: ViewConfig) -> WeakParams:
        flips = rng.integers(0, 2, n, dtype=np.int32)
        offsets = rng.integers(0, 2 * config.pad + 1, (n, 2), dtype=np.int32)
        if not (config.flip and config.weak):
            flips[:] = 0
        if not config.weak:
            offsets[:] = config.pad  # the centre crop of the padded image is the image
        return WeakParams(flips, offsets)

    @staticmethod
    def concat(parts: list[WeakParams]) -> WeakParams:
        return WeakParams(np.concatenate([p.flips for p in parts]), np.concatenate([p.offsets for p in parts]))


def _k_major(array: np.ndarray, k: int, rows: slice) -> np.ndarray:
    """Rows ``rows`` of every one of the K blocks of a K-major array."""
    if k == 0:  # no blocks (and reshape(0, -1) is ambiguous)
        return np.ascontiguousarray(array[:0])
    blocks = array.reshape(k, len(array) // k, *array.shape[1:])[:, rows]
    return np.ascontiguousarray(blocks.reshape(-1, *array.shape[1:]))


@dataclass(frozen=True)
class StepPlan:
    step: int
    k: int
    x_rows: np.ndarray  # (B,) int64 labeled rows
    u_rows: np.ndarray  # (B_u,) int64 unlabeled rows
    x_weak: WeakParams  # (B,) shared by a labeled image's training and probe views
    x_policies: Policies  # (B,) labeled training views (identity ops when not strong)
    probe_policies: Policies | None  # (B,) or None without probes
    u_weak: WeakParams  # (B_u,) the unlabeled weak view
    u_strong_weak: WeakParams  # (K B_u,) each strong view's own weak augmentation, K-major
    u_policies: Policies  # (K B_u,) K-major
    cutout_level: float | None = None  # apply_ops's cutout_level for the unlabeled strong views
    semantics: str = "corrected"  # the policy's level mappings (kernels.ops.SEMANTICS)

    def local(self, rank: int, world_size: int) -> StepPlan:
        """This rank's share: a contiguous slice of the labeled and of the unlabeled images."""
        if world_size == 1:
            return self
        xs = rank_slice(len(self.x_rows), rank, world_size)
        us = rank_slice(len(self.u_rows), rank, world_size)

        def k_major(params):
            return type(params)(*(_k_major(a, self.k, us) for a in _arrays(params)))

        return StepPlan(
            step=self.step, k=self.k, x_rows=self.x_rows[xs], u_rows=self.u_rows[us],
            x_weak=self.x_weak[xs], x_policies=self.x_policies[xs],
            probe_policies=None if self.probe_policies is None else self.probe_policies[xs],
            u_weak=self.u_weak[us], u_strong_weak=k_major(self.u_strong_weak),
            u_policies=k_major(self.u_policies), cutout_level=self.cutout_level, semantics=self.semantics)

    def state_dict(self) -> dict:
        state = {}
        for f in fields(self):
            value = getattr(self, f.name)
            state[f.name] = value if value is None or isinstance(value, (int, float, str, np.ndarray)) else {
                g.name: getattr(value, g.name).copy() for g in fields(value)}
        return state

    @staticmethod
    def from_state_dict(state: dict) -> StepPlan:
        def part(cls, value):
            return None if value is None else cls(**{k: np.asarray(v) for k, v in value.items()})

        return StepPlan(
            step=int(state["step"]), k=int(state["k"]), x_rows=np.asarray(state["x_rows"]),
            u_rows=np.asarray(state["u_rows"]), x_weak=part(WeakParams, state["x_weak"]),
            x_policies=part(Policies, state["x_policies"]),
            probe_policies=part(Policies, state["probe_policies"]),
            u_weak=part(WeakParams, state["u_weak"]), u_strong_weak=part(WeakParams, state["u_strong_weak"]),
            u_policies=part(Policies, state["u_policies"]), cutout_level=state.get("cutout_level"),
            semantics=str(state.get("semantics", "corrected")))


def _arrays(params) -> tuple[np.ndarray, ...]:
    return tuple(getattr(params, f.name) for f in fields(params))


def step_rng(seed: int, step: int, component: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, component])


def draw_plan(step: int, x_rows: np.ndarray, u_rows: np.ndarray, policy: CTAugment | None,
              config: ViewConfig) -> StepPlan:
    """The plan of ``step`` for the global rows given, from the policy's current weights."""
    seed, depth = config.seed, policy.depth if policy is not None else 2
    b, bu, k = len(x_rows), len(u_rows), config.k

    def strong(n, component):
        if policy is None or not config.strong:
            return Policies.identity(n, depth)
        return policy.sample(n, step_rng(seed, step, component))

    labeled_strong = config.labeled_strong and step >= config.labeled_strong_from
    x_policies = strong(b, _X_POLICY) if labeled_strong else Policies.identity(b, depth)
    probes = None
    if config.probes:
        if policy is None:
            raise PipelineError("probe views need a CTAugment policy")
        probes = policy.sample_probes(b, step_rng(seed, step, _PROBE))
    return StepPlan(
        step=step, k=k, x_rows=np.asarray(x_rows, np.int64), u_rows=np.asarray(u_rows, np.int64),
        x_weak=WeakParams.sample(b, step_rng(seed, step, _X_WEAK), config),
        x_policies=x_policies, probe_policies=probes,
        u_weak=WeakParams.sample(bu, step_rng(seed, step, _U_WEAK), config),
        u_strong_weak=WeakParams.sample(k * bu, step_rng(seed, step, _U_STRONG_WEAK), config),
        u_policies=strong(k * bu, _U_POLICY), cutout_level=config.cutout_level,
        semantics=policy.semantics if policy is not None else "corrected")


@dataclass
class KernelCall:
    """One step's views as one ``apply_ops`` call over the concatenated labeled + unlabeled images:
    views in the order training (B), probe (B), unlabeled weak (B_u), unlabeled strong (K B_u).

    A plan's Cutout (FixMatch) is the strong views' last op, at the cutout level, reading the random
    numbers ``apply_ops``'s ``cutout_level`` reads (the row after the ops): the same pixels as
    rendering those views with ``cutout_level`` (tested; for a level a float32 holds exactly, as the
    paper's 1.0), while the step stays one call. Every other
    view gets an identity op there."""

    policies: Policies
    weak: WeakParams
    sources: np.ndarray  # (N,) int32 into concat(labeled images, unlabeled images)
    counts: dict = field(default_factory=dict)  # views of each part, in order
    semantics: str = "corrected"  # apply_ops's level mappings (the plan's)


def kernel_call(plan: StepPlan) -> KernelCall:
    b, bu, k = len(plan.x_rows), len(plan.u_rows), plan.k
    depth = plan.x_policies.depth
    x_src = np.arange(b, dtype=np.int32)
    u_src = np.arange(b, b + bu, dtype=np.int32)
    policies = [plan.x_policies]
    weak = [plan.x_weak]
    sources = [x_src]
    counts = {"x": b}
    if plan.probe_policies is not None:
        policies.append(plan.probe_policies)
        weak.append(plan.x_weak)
        sources.append(x_src)
        counts["probe"] = b
    policies += [Policies.identity(bu, depth), plan.u_policies]
    weak += [plan.u_weak, plan.u_strong_weak]
    sources += [u_src, np.tile(u_src, k)]
    counts["u_weak"] = bu
    counts["u_strong"] = k * bu
    if plan.cutout_level is not None:
        last = len(policies) - 1
        policies = [append_op(p, CUTOUT if i == last else IDENTITY, plan.cutout_level if i == last else 0.0)
                    for i, p in enumerate(policies)]
    return KernelCall(Policies.concat(policies), WeakParams.concat(weak),
                      np.ascontiguousarray(np.concatenate(sources)), counts, plan.semantics)


def append_op(policies: Policies, op: int, level: float) -> Policies:
    """``policies`` with one more op at ``level``, reading the random row after the ops (the row of
    ``apply_ops``'s appended cutout); its own appended-cutout row becomes zeros."""
    n, depth = len(policies), policies.depth
    op_ids = np.concatenate([policies.op_ids, np.full((n, 1), op, np.int32)], axis=1)
    levels = np.concatenate([policies.levels, np.zeros((n, 1, 2), np.float32)], axis=1)
    levels[:, depth, 0] = level if OP_BINS[op, 0] > 0 else 0.0
    rand = np.concatenate([policies.rand, np.zeros((n, 1, 2), np.float32)], axis=1)
    return Policies(op_ids, levels, rand)
