"""WRN-28-2 as the ReMixMatch reference code builds it (``libml/models.py``, class ResNet).

The reference network, restated (spec section 1):

- input normalised per channel, ``(x - mean) / std``, then a 3x3 conv to 16 channels;
- 3 stages of ``blocks_per_stage`` pre-activation residual blocks of widths ``width``, ``2 width``,
  ``4 width`` (32/64/128 for WRN-28-2); stride 2 in the first block of stages 2 and 3;
- each block: BN, leaky ReLU(0.1), 3x3 conv, BN, leaky ReLU(0.1), 3x3 conv, plus a shortcut that is
  the identity, or a strided 1x1 conv where the width changes;
- the network's very first block "activates before the residual" (see ``ResidualBlock``);
- BN, leaky ReLU, global average pool -> the "embeds", then a dense layer to the classes;
- conv kernels ~ N(0, 2 / (k * k * out_channels)), dense kernels Glorot-normal, biases zero.

ReMixMatch adds a 4-way dense rotation head that reads the embeds (``classify_rot`` in
``remixmatch_no_cta.py``).

Where PyTorch and the TF1 reference differ, and what this module does:

- BatchNorm: TF ``momentum=0.999`` is the decay of the running statistics, i.e. PyTorch
  ``momentum=0.001``; ``eps=1e-3`` is TF's ``tf.layers.batch_normalization`` default (PyTorch's own
  default, 1e-5, would change the normalisation of low-variance channels).
- The reference's ``tf.layers.conv2d`` keeps its default zero-initialised bias. Every conv output
  here reaches a BatchNorm (directly or through a residual sum) before anything else reads it, so
  such a bias is absorbed by the BN shift; the convs here have none (nor does the parameter count).
- TF ``padding='same'`` pads a stride-2 3x3 conv on an even-sized input asymmetrically (0 before,
  1 after), which offsets the residual branch by one pixel from the 1x1 strided shortcut. Here every
  3x3 conv pads 1 on each side, so both paths sample the same pixel grid.
- TF's ``glorot_normal_initializer`` draws from a truncated normal rescaled to the Glorot variance;
  ``xavier_normal_`` draws an untruncated normal of that variance: the same scale, only the tails
  differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# TF's tf.layers.batch_normalization default; the reference never overrides it.
BN_EPS = 1e-3


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    # He initialisation on fan-out, as the reference's rsqrt(0.5 * k * k * filters).
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))
    return conv


def _dense(in_features: int, out_features: int) -> nn.Linear:
    dense = nn.Linear(in_features, out_features)
    nn.init.xavier_normal_(dense.weight)
    nn.init.zeros_(dense.bias)
    return dense


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=momentum)


class ResidualBlock(nn.Module):
    """One pre-activation block: BN, leaky ReLU, 3x3 conv, BN, leaky ReLU, 3x3 conv, plus a shortcut.

    ``activate_before_residual`` follows the reference's ``residual(..., activate_before_residual)``:
    the block always computes ``a = leaky_relu(bn1(x))`` for its first conv; with the flag set, the
    shortcut also reads ``a`` instead of the raw input ``x``. The reference sets it only for the first
    block of the first stage (``scale == 0``), whose 1x1 shortcut conv (16 -> width channels) thus sees
    the normalised, activated stem output. Every other block's shortcut - the identity, or the strided
    1x1 conv of the first block of stages 2 and 3 - reads the raw, un-normalised block input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        activate_before_residual: bool,
        bn_momentum: float,
        leaky_slope: float,
    ):
        super().__init__()
        self.activate_before_residual = activate_before_residual
        self.leaky_slope = leaky_slope
        self.bn1 = _bn(in_channels, bn_momentum)
        self.conv1 = _conv(in_channels, out_channels, 3, stride)
        self.bn2 = _bn(out_channels, bn_momentum)
        self.conv2 = _conv(out_channels, out_channels, 3)
        # The reference only tests the width (its strides never change without the width changing);
        # checking the stride too keeps other configurations shape-correct.
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = _conv(in_channels, out_channels, 1, stride) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place is safe: BN's backward reads its input and saved statistics, not its output, and
        # leaky ReLU's backward can be taken from its output for a positive slope.
        a = F.leaky_relu(self.bn1(x), self.leaky_slope, inplace=True)
        residual_input = a if self.activate_before_residual else x
        y = self.conv1(a)
        y = F.leaky_relu(self.bn2(y), self.leaky_slope, inplace=True)
        y = self.conv2(y)
        shortcut = residual_input if self.shortcut is None else self.shortcut(residual_input)
        return shortcut + y


def stages_for_size(side: int) -> int:
    """The reference's number of stages (``scales``) for images of ``side`` px when none is given:
    ceil(log2(side)) - 2, so the last stage works on a 4-8 px map (3 at 32 px, 5 at 96 px). Its
    STL-10 network is set explicitly instead: 4 stages (the ``stl10-1000`` preset)."""
    if side < 8:
        raise ValueError(f"images of {side} px are too small for a stage count (at least 8 px)")
    return max(1, math.ceil(math.log2(side)) - 2)


class WideResNet(nn.Module):
    """WRN-28-2 of the ReMixMatch reference (defaults), with its rotation head.

    ``stages`` (the reference's ``scales``): stage s has ``width << s`` channels, stride 1 in the
    first stage and 2 at the first block of every later one. 3 is WRN-28-2; 4, with 4 blocks a
    stage and width 32, the reference's STL-10 network (WRN-37-2 in the papers).

    ``forward`` takes float NCHW images with values in [0, 1] and normalises them itself with the
    ``mean`` / ``std`` buffers, so callers only convert uint8 to float. The defaults hold 1,467,610
    classifier parameters plus 516 in the rotation head: 1,468,126 in all (``count_parameters``).
    """

    STEM_CHANNELS = 16

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 32,
        blocks_per_stage: int = 4,
        bn_momentum: float = 0.001,
        leaky_slope: float = 0.1,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        stages: int = 3,
    ):
        super().__init__()
        if num_classes < 1 or width < 1 or blocks_per_stage < 1 or stages < 1:
            raise ValueError(
                f"num_classes, width, blocks_per_stage and stages must be positive, got "
                f"{num_classes}, {width}, {blocks_per_stage}, {stages}"
            )
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 channels, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.num_classes = num_classes
        self.leaky_slope = leaky_slope
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        self.stem = _conv(3, self.STEM_CHANNELS, 3)
        blocks = []
        in_channels = self.STEM_CHANNELS
        self.stages = stages
        for stage in range(stages):
            out_channels = width << stage
            for index in range(blocks_per_stage):
                first = index == 0
                blocks.append(
                    ResidualBlock(
                        in_channels,
                        out_channels,
                        stride=2 if first and stage > 0 else 1,
                        activate_before_residual=first and stage == 0,
                        bn_momentum=bn_momentum,
                        leaky_slope=leaky_slope,
                    )
                )
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.bn = _bn(in_channels, bn_momentum)
        self.embed_dim = in_channels
        self.classifier = _dense(in_channels, num_classes)
        self.rotation_head = _dense(in_channels, 4)

    def forward(self, x: torch.Tensor, with_embeds: bool = False, chunks=None, update_chunk: int = -1):
        """Logits of float images in [0, 1]; ``(logits, embeds)`` when ``with_embeds``. ``chunks``:
        row counts that split ``x`` into forwards of their own, each normalised by its own batch
        statistics, only chunk ``update_chunk`` updating the running ones (``--bn-mode reference``,
        trainer/interleave.py); one call, so that DDP sees one forward."""
        if chunks is not None:
            from .interleave import forward_chunks

            return forward_chunks(self, x, chunks, update_chunk, with_embeds)
        if not x.is_floating_point():
            # uint8 would broadcast against the float buffers silently, on a 0..255 scale.
            raise TypeError(f"expected float images in [0, 1], got {x.dtype}")
        x = (x - self.mean) / self.std
        y = self.blocks(self.stem(x))
        y = F.leaky_relu(self.bn(y), self.leaky_slope, inplace=True)
        embeds = y.mean(dim=(2, 3))
        logits = self.classifier(embeds)
        return (logits, embeds) if with_embeds else logits

    def rotation_logits(self, embeds: torch.Tensor) -> torch.Tensor:
        """The 4-way rotation prediction (0/90/180/270 degrees) from pooled features."""
        return self.rotation_head(embeds)


def model_name(width: int, blocks_per_stage: int, stages: int) -> str:
    """WRN-depth-k: two 3x3 convs a block, plus 4 (6 n + 4 for the usual three stages)."""
    depth = 2 * stages * blocks_per_stage + 4
    return f"WRN-{depth}-{width // 16}" if width % 16 == 0 else f"WRN-{depth} width {width}"


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (BN running statistics excluded).

    ``WideResNet()`` (WRN-28-2, 10 classes): 1,468,126 = 1,467,610 for the classifier (the spec's
    "about 1.47M") + 516 for the rotation head.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def decay_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The conv and dense *weights*: what the decoupled weight decay shrinks.

    The reference decays every variable named ``kernel`` under the ``classify`` scope prefix, which
    includes ``classify_rot`` (the rotation head); biases and BN scales/shifts are left alone.
    """
    return [
        module.weight
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


# -- synchronised batch norm (TrainConfig.sync_bn) ----------------------------------------------------


def _world_size(group) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with a gradient: each rank's input receives the sum of every rank's output
    gradient. What ``torch.distributed.nn.functional.all_reduce`` does for SUM; that function warns
    of its deprecation in torch 2.13, and its suggested replacement is a private module."""

    @staticmethod
    def forward(ctx, tensor, group):
        import torch.distributed as dist

        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group), None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics are those of the global batch (all ranks).

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one works wherever its collective does (gloo
    on the CPU, NCCL on CUDA). In training mode on several ranks each forward all-reduces one vector
    per layer - per-channel sum, sum of squares and the element count - with an autograd-aware
    all-reduce (``_AllReduceSum``: its backward all-reduces the gradient, so each rank's inputs
    receive the gradient of every rank's loss through the shared statistics), then
    normalises with the global mean and biased variance, and updates the running statistics with the
    global unbiased variance exactly as ``nn.BatchNorm2d`` does (momentum, ``momentum=None``'s
    cumulative average, ``num_batches_tracked``; ``momentum=0`` leaves them untouched, which
    ``step.frozen_bn_statistics`` relies on). On one process, or in eval mode, it is ``nn.BatchNorm2d``
    itself (``super().forward``), bit for bit.

    Statistics are accumulated in float32 as ``E[x^2] - E[x]^2`` (one collective instead of two);
    the input's dtype (bf16 under autocast) is kept for the output. Every rank must call each layer
    the same number of times (the collectives pair up), which the training step does.
    """

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size(self.process_group) <= 1:
            return super().forward(x)
        return self.global_forward(x, self._all_reduce)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(tensor, self.process_group)

    def global_forward(self, x: torch.Tensor, all_reduce_sum) -> torch.Tensor:
        """The training-mode forward with the per-channel sums summed by ``all_reduce_sum`` (the
        identity gives the single-process formula; the tests use that)."""
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        channels = x.shape[1]
        xf = x.float()
        dims = [0] + list(range(2, x.dim()))
        count = xf.new_full((1,), float(x.numel() // max(channels, 1)))
        stats = all_reduce_sum(torch.cat([xf.sum(dim=dims), xf.square().sum(dim=dims), count]))
        total = stats[2 * channels]
        mean = stats[:channels] / total
        var = (stats[channels:2 * channels] / total - mean.square()).clamp_min(0.0)
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var * (total / (total - 1.0).clamp_min(1.0))
                self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            shift = self.bias.float() - mean * scale * self.weight.float()
            scale = scale * self.weight.float()
        else:
            shift = -mean * scale
        return (xf * scale.view(shape) + shift.view(shape)).to(x.dtype)


def sync_batch_norm(module: nn.Module, process_group=None) -> nn.Module:
    """``module`` with every ``nn.BatchNorm2d`` replaced by a ``GlobalBatchNorm2d`` (TrainConfig.sync_bn).

    The replacements share the originals' parameters and buffers (same tensors, same state_dict
    keys), so an optimiser built before the call, an EMA copy and checkpoints all stay valid.
    Call it on the bare model before DDP wraps it. Returns the module (replaced if it is a BN itself).
    """
    converted = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        converted = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats, process_group=process_group)
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, sync_batch_norm(child, process_group))
    return converted
