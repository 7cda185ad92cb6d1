"""WRN-28-2 of the ReMixMatch reference (remixmatch.trainer.model)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from remixmatch.trainer.model import BN_EPS, WideResNet, count_parameters, decay_parameters


def small_model(**kwargs) -> WideResNet:
    torch.manual_seed(0)
    return WideResNet(width=8, blocks_per_stage=1, **kwargs)


def images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_small_config_shapes():
    model = small_model(num_classes=7)
    logits, embeds = model(images(2), with_embeds=True)
    assert logits.shape == (2, 7)
    assert embeds.shape == (2, 32)  # 4 * width
    assert model(images(2)).shape == (2, 7)
    assert model.rotation_logits(embeds).shape == (2, 4)


def test_default_wrn_28_2_shapes_and_rotation_head():
    model = WideResNet()
    logits, embeds = model(images(2, size=32), with_embeds=True)
    assert logits.shape == (2, 10) and embeds.shape == (2, 128)
    assert model.rotation_head.weight.shape == (4, 128)
    assert model.rotation_logits(embeds).shape == (2, 4)
    # 28 layers: the stem, 3 stages x 4 blocks x 2 convs, and the classifier (+ 3 shortcut convs).
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 3 * 4 * 2 + 3
    assert [b.conv1.stride for b in model.blocks][::4] == [(1, 1), (2, 2), (2, 2)]
    assert [b.activate_before_residual for b in model.blocks] == [True] + [False] * 11


def test_wrn_28_2_parameter_count():
    n = count_parameters(WideResNet())
    assert 1_400_000 <= n <= 1_520_000, f"WRN-28-2 has {n} parameters"
    assert n == 1_468_126, f"WRN-28-2 has {n} parameters"


def test_batchnorm_settings():
    model = small_model()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.momentum == 0.001 and bn.eps == BN_EPS == 1e-3 for bn in bns)


def test_init_scales():
    torch.manual_seed(1)
    model = WideResNet()
    conv = model.blocks[-1].conv2  # 128 -> 128, 3x3: 147,456 samples
    expected = math.sqrt(2.0 / (9 * 128))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert conv.bias is None
    assert model.blocks[4].shortcut.weight.std().item() == pytest.approx(math.sqrt(2.0 / 64), rel=0.05)
    dense = model.classifier
    assert torch.count_nonzero(dense.bias) == 0
    assert dense.weight.std().item() == pytest.approx(math.sqrt(2.0 / (128 + 10)), rel=0.15)


def test_first_block_shortcut_reads_the_activated_input():
    model = small_model().eval()
    block = model.blocks[0]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        a = F.leaky_relu(block.bn1(x), 0.1)
        branch = block.conv2(F.leaky_relu(block.bn2(block.conv1(a)), 0.1))
        assert torch.allclose(block(x), block.shortcut(a) + branch, atol=1e-6)
        later = model.blocks[1]  # stage 2's first block: strided 1x1 shortcut on the raw input
        y = torch.randn(2, 8, 8, 8)
        a = F.leaky_relu(later.bn1(y), 0.1)
        branch = later.conv2(F.leaky_relu(later.bn2(later.conv1(a)), 0.1))
        assert torch.allclose(later(y), later.shortcut(y) + branch, atol=1e-6)


def test_input_normalisation_uses_buffers_and_rejects_uint8():
    model = small_model(mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5)).eval()
    assert model.mean.shape == model.std.shape == (1, 3, 1, 1)
    assert "mean" in model.state_dict() and "std" in model.state_dict()
    x = images(2)
    shifted = small_model(mean=(0.0, 0.0, 0.0), std=(0.5, 0.5, 0.5)).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), shifted(x - model.mean), atol=1e-5)
    with pytest.raises(TypeError):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_channels_last_matches_contiguous():
    model = small_model()
    x = images(4)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for train in (True, False):
        model.train(train)
        last.train(train)
        with torch.no_grad():
            a = model(x)
            b = last(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(a, b, atol=1e-5), (train, (a - b).abs().max())


def test_autocast_bf16_forward_and_backward():
    model = small_model()
    x = images(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, embeds = model(x, with_embeds=True)
        rot = model.rotation_logits(embeds)
    assert logits.dtype == torch.bfloat16 and rot.dtype == torch.bfloat16
    loss = logits.float().logsumexp(1).mean() + rot.float().logsumexp(1).mean()
    loss.backward()
    assert torch.isfinite(logits.float()).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_one_adam_step_lowers_the_loss():
    model = small_model()
    x = images(8, seed=5)
    y = torch.arange(8) % 10
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    # Train mode both times: BN normalises with the batch's statistics, so only the weights changed.
    with torch.no_grad():
        after = F.cross_entropy(model(x), y)
    assert after.item() < loss.item()


def test_decay_parameters_are_exactly_the_conv_and_dense_weights():
    model = small_model()
    decayed = decay_parameters(model)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed_names = sorted(names[id(p)] for p in decayed)
    expected = sorted(
        name
        for name, p in model.named_parameters()
        if name.endswith("weight") and p.dim() in (2, 4)
    )
    assert decayed_names == expected
    assert "classifier.weight" in decayed_names and "rotation_head.weight" in decayed_names
    assert not any("bn" in name or name.endswith("bias") for name in decayed_names)
    assert len(decay_parameters(WideResNet())) == 28 + 2  # 28 convs, 2 dense layers
