"""The CUDA paths of the torch loader and the trainer (marked ``gpu``: skipped without a device; no
DALI needed). The CPU twins of every check run in CI; these say the device paths compute the same."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_helpers import pipeline_shards  # noqa: F401  (a fixture)
from remixmatch.pipeline import CTAugment, StepLoader, ViewConfig
from remixmatch.trainer.build import build_policy_and_views, build_train_state
from remixmatch.trainer.algorithms import STEPS
from trainer_helpers import smoke_args, smoke_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def _batches(data, device: str, steps: int, prefetch: bool) -> list[dict]:
    """Several steps' tensors as host arrays, the policy updated after each step with fixed scores
    (the same on both devices), so later plans depend on the updates too."""
    policy = CTAugment()
    out = []
    config = ViewConfig(batch=16, unlabeled_batch=16, k=4, seed=3)
    with StepLoader(data, policy, config, device=device, prefetch=prefetch) as loader:
        for step in range(steps):
            batch = next(loader)
            if device == "cuda":
                torch.cuda.synchronize()
            out.append({name: getattr(batch, name).cpu().numpy().copy()
                        for name in ("x", "x_labels", "x_probe", "u_weak", "u_strong")})
            scores = np.linspace(0.0, 1.0, len(batch.plan.probe_policies), dtype=np.float32)
            policy.update(batch.plan.probe_policies, np.roll(scores, step))
    return out


@pytest.mark.parametrize("prefetch", [False, True])
def test_cuda_torch_loader_gives_the_cpu_loaders_views_bit_for_bit(pipeline_shards, prefetch):
    cpu = _batches(pipeline_shards.data, "cpu", 4, prefetch)
    cuda = _batches(pipeline_shards.data, "cuda", 4, prefetch)
    for step, (a, b) in enumerate(zip(cpu, cuda)):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"step {step} {name}")


@pytest.mark.parametrize("algorithm", ["remixmatch", "fixmatch", "mixmatch"])
def test_a_cuda_training_step_matches_the_cpu_step_in_float32(pipeline_shards, algorithm):
    """fp32 on both devices (no bf16, no TF32): the same batch gives the same losses and gradients to
    float tolerance (cuDNN's convolution algorithms add in another order than the CPU's). Gradients,
    not the weights after the step: Adam's first step moves each weight by about lr times the sign of
    its gradient, so a near-zero gradient that rounds to the other sign moves a weight by 2 lr."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {}
    for device in ("cpu", "cuda"):
        config = smoke_config(pipeline_shards.path, algorithm=algorithm, device=device, bf16=False,
                              channels_last=False)
        state = build_train_state(config, 10, np.full(10, 0.1), torch.device(device),
                                  mean=(0.5,) * 3, std=(0.25,) * 3)
        policy, views = build_policy_and_views(config)
        with StepLoader(pipeline_shards.data, policy, views, device=device, prefetch=False) as loader:
            batch = next(loader)
            result = STEPS[config.algorithm](state, batch, 0)
        # The step leaves each parameter's gradient in place after the optimiser has used it.
        grads = {name: p.grad.cpu() for name, p in state.raw_model.named_parameters() if p.grad is not None}
        results[device] = (result.losses.cpu(), grads)
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], atol=1e-4, rtol=1e-4)
    assert results["cuda"][1].keys() == results["cpu"][1].keys()
    for name, grad in results["cpu"][1].items():
        torch.testing.assert_close(results["cuda"][1][name], grad, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("algorithm", ["remixmatch", "fixmatch", "mixmatch"])
def test_rmm_train_on_cuda_with_bf16_trains_and_evaluates(pipeline_shards, tmp_path, algorithm):
    from remixmatch.trainer.cli import main

    out = tmp_path / "run"
    argv = [str(a) for a in smoke_args(pipeline_shards.path, out, "--algorithm", algorithm)]
    argv[argv.index("--device") + 1] = "cuda"
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["steps"] == 20
    assert 0.0 <= summary["accuracy"]["ema_last"] <= 1.0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert all(np.isfinite(v) for v in record.values() if isinstance(v, float))
