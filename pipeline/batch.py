"""One step's batch, the same structure from every loader, and the kernel call that makes it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remixmatch.kernels import apply_ops

from .plan import KernelCall, StepPlan, kernel_call


@dataclass
class StepBatch:
    """Every tensor a ReMixMatch step needs, uint8 NHWC on the training device.

    x: labeled training views (weak + CTAugment; weak only when the config's labeled_strong is off);
    x_labels: their class ids (int64); x_probe: the same labeled images under their probe policies
    (None without probes); u_weak: one weak view per unlabeled image; u_strong: (K, B_u, H, W, 3),
    u_strong[k] the k-th strong view of every unlabeled image; u_labels: the class ids of the
    unlabeled rows (-1 where the data has none), read only by diagnostics (FixMatch's pseudo-label
    accuracy), never by a loss. ``plan`` holds this rank's rows,
    weak parameters and policies: any view can be re-made from it with ``apply_ops``;
    ``global_plan`` is the whole step's plan over all ranks (the CTAugment update reads its probes).
    """

    step: int
    x: object
    x_labels: object
    x_probe: object | None
    u_weak: object
    u_strong: object
    plan: StepPlan
    global_plan: StepPlan
    views: object  # every view of the step in one (N, H, W, 3) tensor; the fields above are slices
    u_labels: object = None  # (B_u,) int64 on the device

    @property
    def k(self) -> int:
        return self.plan.k


def render_views(images, call: KernelCall, pad: int, stream=None):
    """Runs the step's one ``apply_ops`` call on ``images`` (labeled then unlabeled images, NumPy or
    a CUDA array) and returns the (N, H, W, 3) views on the same device."""
    return apply_ops(images, *call.policies.arrays(), sources=call.sources, flips=call.weak.flips,
                     offsets=call.weak.offsets, pad=pad, stream=stream, check_values=False,
                     semantics=call.semantics)


def split_views(views, plan: StepPlan, call: KernelCall, x_labels, global_plan: StepPlan | None = None,
                u_labels=None) -> StepBatch:
    """The StepBatch whose tensors are slices of ``views`` (a torch tensor), in the call's order."""
    parts, start = {}, 0
    for name, count in call.counts.items():
        parts[name] = views[start:start + count]
        start += count
    height, width = views.shape[1:3]
    u_strong = parts["u_strong"].reshape(plan.k, len(plan.u_rows), height, width, 3)
    return StepBatch(step=plan.step, x=parts["x"], x_labels=x_labels, x_probe=parts.get("probe"),
                     u_weak=parts["u_weak"], u_strong=u_strong, plan=plan,
                     global_plan=plan if global_plan is None else global_plan, views=views, u_labels=u_labels)


def make_views_host(images: np.ndarray, plan: StepPlan, pad: int) -> tuple[np.ndarray, KernelCall]:
    """CPU: the step's views from host images (the reference for every other path)."""
    call = kernel_call(plan)
    return render_views(np.ascontiguousarray(images), call, pad), call
