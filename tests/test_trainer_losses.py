"""ReMixMatch step pieces (remixmatch.trainer.losses) against values worked out by hand."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from remixmatch.trainer.losses import (
    DistributionAlignment,
    cta_probe_scores,
    decoupled_weight_decay_,
    ema_update_,
    linear_ramp,
    mixup,
    mixup_lambdas,
    mixup_permutation,
    rotate_quarters,
    rotation_labels,
    sharpen,
    soft_cross_entropy,
)


# --- soft cross-entropy and sharpening -------------------------------------------------------------


def test_soft_cross_entropy_hand_values():
    # Row 0: softmax(0, 0) = (1/2, 1/2), target one-hot -> ln 2.
    # Row 1: softmax(ln 3, 0) = (3/4, 1/4), target (1/2, 1/2) -> -(ln 0.75 + ln 0.25) / 2.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    row1 = -(math.log(0.75) + math.log(0.25)) / 2
    expected = (math.log(2.0) + row1) / 2
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_soft_cross_entropy_is_float32_for_bf16_logits_and_has_gradients():
    logits = torch.zeros(3, 4, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.full((3, 4), 0.25)
    loss = soft_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(math.log(4.0), rel=1e-6)
    loss.backward()
    # d/dlogits of CE with uniform target at uniform softmax is 0.
    assert torch.count_nonzero(logits.grad) == 0


def test_sharpen_hand_values():
    p = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    # T = 0.5 squares: (0.36, 0.16) / 0.52.
    expected = torch.tensor([[0.36 / 0.52, 0.16 / 0.52], [0.5, 0.5]])
    assert torch.allclose(sharpen(p, 0.5), expected, atol=1e-7)
    assert torch.allclose(sharpen(p, 1.0), p, atol=1e-7)
    with pytest.raises(ValueError):
        sharpen(p, 0.0)


# --- distribution alignment ------------------------------------------------------------------------


def test_alignment_with_uniform_buffer_hand_values():
    da = DistributionAlignment([0.2, 0.3, 0.5])
    assert torch.allclose(da.p_model(), torch.full((3,), 1 / 3))
    q = torch.tensor([[0.5, 0.3, 0.2]])
    # q * p_data / p_model with p_model uniform is proportional to (0.1, 0.09, 0.1); sum 0.29.
    expected = torch.tensor([[0.1 / 0.29, 0.09 / 0.29, 0.1 / 0.29]])
    assert torch.allclose(da.align(q), expected, atol=1e-5)
    # align reads the buffer without writing it.
    assert torch.equal(da.buffer, torch.full((128, 3), 1 / 3))
    assert da.position.item() == 0


def test_alignment_after_one_push_hand_values():
    da = DistributionAlignment([1.0, 1.0, 2.0])  # renormalised to (0.25, 0.25, 0.5)
    da.push(torch.tensor([0.6, 0.3, 0.1]))
    # 127 uniform rows and one (0.6, 0.3, 0.1).
    p_model = torch.tensor([(127 / 3 + 0.6) / 128, (127 / 3 + 0.3) / 128, (127 / 3 + 0.1) / 128])
    assert torch.allclose(da.p_model(), p_model, atol=1e-7)
    assert da.position.item() == 1
    q = torch.tensor([[1 / 3, 1 / 3, 1 / 3]])
    ratio = (1e-6 + torch.tensor([0.25, 0.25, 0.5])) / (1e-6 + p_model)
    assert torch.allclose(da.align(q), ratio[None] / ratio.sum(), atol=1e-6)


def test_ring_buffer_wraps_after_more_than_size_pushes():
    da = DistributionAlignment([1 / 3] * 3)
    eye = torch.eye(3)
    for k in range(130):
        da.push(eye[k % 3])
    # Pushes 2..129 remain: classes k % 3 over that range occur 43, 42, 43 times.
    assert torch.allclose(da.p_model(), torch.tensor([43.0, 42.0, 43.0]) / 128, atol=1e-7)
    assert da.position.item() == 130 % 128
    assert torch.equal(da.buffer[0], eye[128 % 3])
    assert torch.equal(da.buffer[1], eye[129 % 3])
    assert torch.equal(da.buffer[2], eye[2 % 3])


def test_small_ring_buffer_overwrites_oldest_first():
    da = DistributionAlignment([0.5, 0.5], size=2)
    da.push(torch.tensor([1.0, 0.0]))
    da.push(torch.tensor([0.0, 1.0]))
    da.push(torch.tensor([0.8, 0.2]))  # replaces (1, 0)
    assert torch.allclose(da.buffer, torch.tensor([[0.8, 0.2], [0.0, 1.0]]))
    assert torch.allclose(da.p_model(), torch.tensor([0.4, 0.6]))
    assert da.position.dtype == torch.int64 and da.position.dim() == 0


def test_push_detaches_and_checks_shape():
    da = DistributionAlignment([0.5, 0.5])
    mean = torch.tensor([0.7, 0.3], requires_grad=True)
    da.push(mean * 1.0)
    assert not da.buffer.requires_grad
    with pytest.raises(ValueError):
        da.push(torch.ones(4, 2))


def test_alignment_state_dict_round_trip():
    da = DistributionAlignment([0.1, 0.2, 0.7], size=4)
    for row in ([0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]):
        da.push(torch.tensor(row))
    state = da.state_dict()
    da.push(torch.tensor([1.0, 0.0, 0.0]))  # the saved state is a copy, not a view
    assert state["position"].item() == 3

    other = DistributionAlignment([1 / 3] * 3, size=4)
    other.load_state_dict(state)
    assert torch.equal(other.p_data, torch.tensor([0.1, 0.2, 0.7]))
    assert other.position.item() == 3
    other.push(torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(other.buffer, da.buffer)
    assert torch.equal(other.position, da.position)
    q = torch.tensor([[0.2, 0.5, 0.3]])
    assert torch.equal(other.align(q), da.align(q))

    with pytest.raises(ValueError):
        DistributionAlignment([0.5, 0.5], size=4).load_state_dict(state)


def test_alignment_started_from_the_first_batch_hand_values():
    first, second = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.6])
    da = DistributionAlignment([1 / 3] * 3, size=4, start_from_first_batch=True)
    da.start(first)  # every slot holds the first batch's mean before it is aligned
    assert torch.equal(da.buffer, first.expand(4, 3)) and bool(da.started)
    q = torch.tensor([[0.5, 0.3, 0.2]])
    expected = torch.tensor([1 / 3, 1 / 3, 1 / 3])  # (q / p_model) p_data, renormalised: uniform here
    torch.testing.assert_close(da.align(q)[0], expected, atol=1e-5, rtol=0)
    da.push(first)
    da.start(second)  # later steps leave the buffer to push
    assert torch.equal(da.buffer, first.expand(4, 3))
    # the uniform start aligns the same prediction to itself
    uniform = DistributionAlignment([1 / 3] * 3, size=4)
    uniform.start(first)
    torch.testing.assert_close(uniform.align(q), q)
    assert not bool(uniform.started)
    # 'started' is part of the state: a resumed run does not refill its buffer
    other = DistributionAlignment([1 / 3] * 3, size=4, start_from_first_batch=True)
    other.load_state_dict(da.state_dict())
    other.start(second)
    assert torch.equal(other.buffer, da.buffer)


def test_mixup_lambda_per_batch_is_one_draw_shared_by_every_example():
    from types import SimpleNamespace

    from remixmatch.trainer.step import mix_global_batch

    n = 12
    x, eye = torch.rand(n // 2, 3, 4, 4), torch.eye(n)
    u = torch.rand(n // 2, 3, 4, 4)
    lams = {}
    for mode in ("example", "batch"):
        config = SimpleNamespace(run_seed=1, mixup_alpha=0.75, mixup_lambda=mode)
        state = SimpleNamespace(config=config, rank=0, world_size=1)
        _, targets = mix_global_batch(state, None, x, [u], eye[:n // 2], eye[n // 2:], step=3)
        # each row mixes its own one-hot with a partner's: its largest entry is its lambda (>= 0.5),
        # 1 where the partner is itself
        top = targets.max(dim=1).values
        lams[mode] = top[top < 1]
    assert len(lams["batch"]) >= 2 and torch.allclose(lams["batch"], lams["batch"][0].expand_as(lams["batch"]))
    assert len(set(lams["example"].tolist())) > 1


def test_alignment_to_device_moves_everything():
    da = DistributionAlignment([0.5, 0.5], size=3).to("cpu")
    assert da.buffer.device.type == da.position.device.type == da.p_data.device.type == "cpu"


# --- MixUp -----------------------------------------------------------------------------------------


def test_mixup_lambdas_are_folded_and_float32():
    lam = mixup_lambdas(5000, 0.75, np.random.default_rng(0))
    assert lam.dtype == np.float32 and lam.shape == (5000,)
    assert lam.min() >= 0.5 and lam.max() <= 1.0


def test_mixup_lambdas_match_the_beta_distribution():
    n = 20000
    # Folding keeps (lam - 1/2)^2, so its mean is Var Beta(a, a) = 1 / (4 (2a + 1)): 0.1 at a = 0.75.
    lam = mixup_lambdas(n, 0.75, np.random.default_rng(1)).astype(np.float64)
    assert np.mean((lam - 0.5) ** 2) == pytest.approx(0.1, abs=0.004)
    # Beta(1, 1) is uniform, folded uniform on [0.5, 1]: mean 0.75.
    lam = mixup_lambdas(n, 1.0, np.random.default_rng(2)).astype(np.float64)
    assert lam.mean() == pytest.approx(0.75, abs=0.004)


def test_mixup_sampling_is_deterministic_and_leaves_torch_rng_alone():
    torch_state = torch.get_rng_state()
    a = mixup_lambdas(16, 0.75, np.random.default_rng(7))
    b = mixup_lambdas(16, 0.75, np.random.default_rng(7))
    c = mixup_lambdas(16, 0.75, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    pa = mixup_permutation(16, np.random.default_rng(7))
    assert np.array_equal(pa, mixup_permutation(16, np.random.default_rng(7)))
    assert pa.dtype == np.int64 and sorted(pa.tolist()) == list(range(16))
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_mixup_formula_on_three_examples():
    x = torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    lambdas = np.array([0.5, 0.75, 1.0], dtype=np.float32)
    permutation = np.array([2, 0, 1])
    mixed_x, mixed_t = mixup(x, targets, lambdas, permutation)
    # 0: 0.5 * 1 + 0.5 * 4 = 2.5;  1: 0.75 * 2 + 0.25 * 1 = 1.75;  2: 1.0 * 4 = 4.
    assert torch.allclose(mixed_x, torch.tensor([2.5, 1.75, 4.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2))
    expected_t = torch.tensor([[0.75, 0.25], [0.25, 0.75], [0.5, 0.5]])
    assert torch.allclose(mixed_t, expected_t)
    # Tensors (as the trainer passes them, already on the device) give the same result.
    again = mixup(x, targets, torch.from_numpy(lambdas), torch.from_numpy(permutation))
    assert torch.equal(again[0], mixed_x) and torch.equal(again[1], mixed_t)


def test_mixup_rejects_mismatched_sizes():
    with pytest.raises(ValueError):
        mixup(torch.zeros(3, 1, 2, 2), torch.zeros(3, 2), np.ones(2, np.float32), np.arange(3))


# --- rotation --------------------------------------------------------------------------------------


def test_rotation_labels_one_class_per_quarter():
    assert rotation_labels(8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert rotation_labels(6).tolist() == [0, 0, 1, 2, 2, 3]
    assert rotation_labels(64).bincount().tolist() == [16, 16, 16, 16]
    assert rotation_labels(64).dtype == torch.int64
    assert rotation_labels(0).tolist() == []


def test_rotate_quarters_hand_example():
    image = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8).view(1, 1, 2, 2).repeat(4, 1, 1, 1)
    out = rotate_quarters(image, rotation_labels(4))
    assert out[0, 0].tolist() == [[1, 2], [3, 4]]
    assert out[1, 0].tolist() == [[2, 4], [1, 3]]  # 90 degrees counter-clockwise
    assert out[2, 0].tolist() == [[4, 3], [2, 1]]
    assert out[3, 0].tolist() == [[3, 1], [4, 2]]


@pytest.mark.parametrize("n", [8, 6, 5])
def test_rotate_quarters_matches_per_image_rot90(n):
    x = torch.randn(n, 3, 5, 5, generator=torch.Generator().manual_seed(n))
    labels = rotation_labels(n)
    expected = torch.stack([torch.rot90(x[i], int(labels[i]), dims=(1, 2)) for i in range(n)])
    assert torch.equal(rotate_quarters(x, labels), expected)


def test_rotate_quarters_other_labels_and_channels_last():
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([3, 1, 1, 0, 2])
    expected = torch.stack([torch.rot90(x[i], int(labels[i]), dims=(1, 2)) for i in range(5)])
    assert torch.equal(rotate_quarters(x, labels), expected)
    out = rotate_quarters(x.contiguous(memory_format=torch.channels_last), labels)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)
    with pytest.raises(ValueError):
        rotate_quarters(torch.zeros(2, 3, 4, 6), torch.tensor([0, 1]))


# --- schedules, decay, EMA, probes -----------------------------------------------------------------


def test_linear_ramp():
    assert linear_ramp(0, 10) == 0.0
    assert linear_ramp(5, 10) == 0.5
    assert linear_ramp(15, 10) == 1.0
    assert linear_ramp(3, 0) == 1.0


def test_decoupled_weight_decay_exact():
    w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    factor = 1.0 - 0.02 * 0.002  # 0.99996
    decoupled_weight_decay_([w], wd=0.02, lr=0.002)
    assert torch.equal(w.detach(), torch.tensor([factor, -2.0 * factor], dtype=torch.float64))
    assert w.grad is None
    decoupled_weight_decay_([], wd=0.02, lr=0.002)  # nothing to decay is fine


def test_ema_update_lerps_parameters_and_copies_buffers():
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(0.0)
        for p in model.parameters():
            p.fill_(1.0)
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(3.0)
        model[1].num_batches_tracked.fill_(7)
    ema_update_(ema, model, decay=0.9)
    for p in ema.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.1))  # 0 + 0.1 * (1 - 0)
    ema_update_(ema, model, decay=0.9)
    for p in ema.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.19))  # 0.1 + 0.1 * (1 - 0.1)
    assert ema[1].running_mean.item() == 5.0
    assert ema[1].running_var.item() == 3.0
    assert ema[1].num_batches_tracked.item() == 7
    assert all(p.item() == 1.0 for p in model.parameters())  # the raw model is untouched


def test_cta_probe_scores():
    certain = torch.zeros(2, 10)
    certain[:, 3] = 1.0
    uniform = torch.full((1, 10), 0.1)
    scores = cta_probe_scores(torch.cat([certain, uniform]), torch.tensor([3, 4, 0]))
    assert scores.dtype == torch.float32
    # right and certain: 1; certain and wrong: 0; uniform: 1 - 0.5 (0.9 + 9 * 0.1) = 0.1.
    assert torch.allclose(scores, torch.tensor([1.0, 0.0, 1 - 0.5 * (0.9 + 9 * 0.1)]), atol=1e-6)
