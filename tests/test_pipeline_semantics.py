"""The CTAugment semantics from the policy to the kernel call: recorded in the policy's state, a state
of the other semantics refused, carried by the step plan (and its saved state) into apply_ops; and
``rmm-bench semantics``, which counts the views the reference translate and rescale change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from remixmatch.bench import reference_changes as bench_semantics
from remixmatch.kernels import apply_ops
from remixmatch.kernels.ops import OP_ID
from remixmatch.pipeline import CTAugment, PipelineError
from remixmatch.pipeline.batch import make_views_host
from remixmatch.pipeline.plan import StepPlan, ViewConfig, draw_plan, kernel_call


def test_policy_records_its_semantics_and_refuses_the_other():
    reference = CTAugment(semantics="reference")
    state = reference.state_dict()
    assert state["semantics"] == "reference"
    CTAugment(semantics="reference").load_state_dict(state)
    with pytest.raises(PipelineError, match="semantics='reference'"):
        CTAugment().load_state_dict(state)
    with pytest.raises(PipelineError, match="semantics='corrected'"):
        CTAugment(semantics="reference").load_state_dict(CTAugment().state_dict())
    # A state saved before the semantics were recorded is a corrected one.
    old = {k: v for k, v in CTAugment().state_dict().items() if k != "semantics"}
    CTAugment().load_state_dict(old)
    with pytest.raises(PipelineError, match="semantics"):
        CTAugment(semantics="reference").load_state_dict(old)
    with pytest.raises(PipelineError, match="semantics must be one of corrected, reference"):
        CTAugment(semantics="paper")


def test_plan_carries_the_semantics_into_the_kernel_call():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    config = ViewConfig(batch=4, unlabeled_batch=4, k=2, seed=3)
    policy = CTAugment(semantics="reference")
    # Weights that make every strong op a cutout at a high level: the semantics then show in the views.
    policy.rates[:] = 0.0
    plan = draw_plan(5, np.arange(4), np.arange(4, 8), policy, config)
    plan.u_policies.op_ids[:] = OP_ID["cutout"]
    assert plan.semantics == "reference"
    assert plan.local(1, 2).semantics == "reference"
    assert StepPlan.from_state_dict(plan.state_dict()).semantics == "reference"
    call = kernel_call(plan)
    assert call.semantics == "reference"
    views, _ = make_views_host(images, plan, config.pad)
    args = dict(sources=call.sources, flips=call.weak.flips, offsets=call.weak.offsets, pad=config.pad)
    want = apply_ops(images, *call.policies.arrays(), semantics="reference", **args)
    np.testing.assert_array_equal(views, want)
    assert not np.array_equal(views, apply_ops(images, *call.policies.arrays(), **args))


def test_bench_counts_the_views_each_semantics_changes(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    levels = bench_semantics.sweep_levels(2, 0)
    rows = {(r["op"], r["semantics"]): r for r in bench_semantics.count_changed_views(images, levels)}
    assert rows[("translate_x", "corrected")]["views"] == 3 * len(levels)
    assert rows[("rescale", "reference")]["views"] == 3 * len(levels) * 6
    for op in bench_semantics.OPS_MEASURED:
        assert rows[(op, "reference")]["changed"] == 0
        # Every corrected view changes except those at the levels that map to no shift or crop.
        assert rows[(op, "corrected")]["changed"] >= rows[(op, "corrected")]["views"] * 0.8
    out = tmp_path / "counts.json"
    assert bench_semantics.main(["--count", "2", "--levels", "0", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["images"]["count"] == 2 and len(saved["rows"]) == 6
