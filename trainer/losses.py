"""The pieces of the training steps (ReMixMatch, spec section 1; FixMatch; MixMatch), as small torch
functions: each one has its home here, whichever algorithms use it.

Sampling that has to be reproducible independently of torch's global RNG (MixUp lambdas and
partners) happens on the host with a NumPy ``Generator``; the mixing itself runs on the device.
Nothing here reads a device value back to the host, so a training step can stay asynchronous.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``-sum_c targets_c * log_softmax(logits)_c`` (targets are distributions)."""
    # log_softmax in float32: bf16 logits lose the small log-probabilities the sum weighs.
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(targets.to(log_p.dtype) * log_p).sum(dim=1).mean()


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p ** (1 / T)`` renormalised over the last dimension."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    q = p.pow(1.0 / temperature)
    total = q.sum(dim=-1, keepdim=True)
    # A small T underflows p ** (1/T) to 0 in every class (then 0 / 0 = NaN): there the same
    # distribution comes from log space, softmax(log p / T). Elsewhere the result is unchanged.
    tiny = torch.finfo(q.dtype).tiny
    in_log_space = torch.softmax(p.clamp_min(tiny).log() / temperature, dim=-1)
    return torch.where(total >= tiny, q / total.clamp_min(tiny), in_log_space)


# The reference code's p_data when the labeled distribution is not given (layers.PData): a moving
# average of the labeled batches' one-hot labels with this decay, from uniform.
REFERENCE_P_DATA_DECAY = 0.999


class DistributionAlignment:
    """Distribution alignment: ``q <- normalize(q * (eps + p_data) / (eps + p_model))``.

    ``p_model`` is the mean of a ring buffer holding the last ``size`` per-batch mean predictions,
    initialised uniform; ``p_data`` is the labeled class distribution, a constant. Both are
    renormalised to sum 1 when read, as the reference's ``PMovingAverage`` and ``PData`` do.

    Order within a step, as in ``remixmatch_no_cta.py``: ``align`` the weak-view predictions with the
    buffer as it stands (the previous steps' means), and only after the optimiser step ``push`` the
    mean of this step's weak-view predictions *before* alignment (the reference appends
    ``p_model.update(guess.p_model)`` - the raw softmax of the weak view - to the post-training ops).
    Pushing the raw predictions makes ``p_model`` estimate what the model itself predicts, which is
    what the ratio corrects; pushing the aligned ones would feed the correction back into itself.

    Buffer and ring position live on the device as tensors, so ``push`` never synchronises with the
    host.

    ``p_data_decay``: None keeps ``p_data`` constant; a decay makes it the reference's moving average
    (``observe_labels`` after each step, as the reference's post-training ops update it). It is part
    of the state either way, so a resumed run continues it exactly.

    ``start_from_first_batch``: the buffer starts from the first step's mean prediction instead of
    uniform (``start`` fills every slot with it before that step is aligned), as implementations
    that keep p_model as a moving average seeded by the first batch do. Early predictions are far
    from uniform, so a uniform start over-corrects the first ``size`` steps.
    """

    def __init__(self, p_data, size: int = 128, eps: float = 1e-6, device=None, p_data_decay: float | None = None,
                 start_from_first_batch: bool = False):
        p_data = torch.as_tensor(p_data, dtype=torch.float32, device=device)
        if p_data.dim() != 1 or p_data.numel() < 1:
            raise ValueError(f"p_data must be a non-empty vector, got shape {tuple(p_data.shape)}")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        num_classes = p_data.numel()
        self.eps = eps
        self.p_data_decay = p_data_decay
        self.p_data = p_data.clone()
        self.buffer = torch.full(
            (size, num_classes), 1.0 / num_classes, dtype=torch.float32, device=p_data.device
        )
        self.position = torch.zeros((), dtype=torch.int64, device=p_data.device)
        self.start_from_first_batch = start_from_first_batch
        self.started = torch.zeros((), dtype=torch.bool, device=p_data.device)

    @property
    def size(self) -> int:
        return self.buffer.shape[0]

    @property
    def num_classes(self) -> int:
        return self.buffer.shape[1]

    @property
    def device(self) -> torch.device:
        return self.buffer.device

    def p_model(self) -> torch.Tensor:
        mean = self.buffer.mean(dim=0)
        return mean / mean.sum()

    def p_data_normalized(self) -> torch.Tensor:
        return self.p_data / self.p_data.sum()

    def align(self, q: torch.Tensor) -> torch.Tensor:
        """Aligned copy of the (N, C) predictions ``q``; the buffer is not touched."""
        ratio = (self.eps + self.p_data_normalized()) / (self.eps + self.p_model())
        weighted = q * ratio
        return weighted / weighted.sum(dim=1, keepdim=True)

    def start(self, batch_mean: torch.Tensor) -> None:
        """With ``start_from_first_batch``: before the first step is aligned, every slot holds its
        mean prediction; later calls change nothing. Stays on the device (no host read)."""
        if not self.start_from_first_batch:
            return
        row = batch_mean.detach().to(device=self.device, dtype=self.buffer.dtype).view(1, -1)
        self.buffer.copy_(torch.where(self.started, self.buffer, row.expand_as(self.buffer)))
        self.started.fill_(True)

    def push(self, batch_mean: torch.Tensor) -> None:
        """Write one batch's mean prediction (a C-vector) at the next ring position."""
        if batch_mean.shape != (self.num_classes,):
            raise ValueError(
                f"expected a mean prediction of shape ({self.num_classes},), "
                f"got {tuple(batch_mean.shape)}"
            )
        row = batch_mean.detach().to(device=self.device, dtype=self.buffer.dtype).view(1, -1)
        self.buffer.index_copy_(0, self.position.view(1), row)
        self.position.add_(1).remainder_(self.size)

    def observe_labels(self, onehot: torch.Tensor, all_reduce_mean=None) -> None:
        """With a moving p_data: ``p_data <- decay p_data + (1 - decay) mean(onehot)`` over the
        (global: ``all_reduce_mean`` on several ranks) labeled batch; nothing with a constant one."""
        if self.p_data_decay is None:
            return
        label_mean = onehot.detach().float().mean(dim=0)
        if all_reduce_mean is not None:
            label_mean = all_reduce_mean(label_mean)
        self.p_data.mul_(self.p_data_decay).add_(label_mean.to(self.p_data.device), alpha=1.0 - self.p_data_decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "buffer": self.buffer.clone(),
            "position": self.position.clone(),
            "p_data": self.p_data.clone(),
            "started": self.started.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        buffer = torch.as_tensor(state["buffer"])
        p_data = torch.as_tensor(state["p_data"])
        position = torch.as_tensor(state["position"])
        if buffer.shape != self.buffer.shape or p_data.shape != self.p_data.shape:
            raise ValueError(
                f"state holds a buffer {tuple(buffer.shape)} and p_data {tuple(p_data.shape)}; "
                f"this alignment has {tuple(self.buffer.shape)} and {tuple(self.p_data.shape)}"
            )
        if position.dim() != 0:
            raise ValueError(f"position must be a scalar, got shape {tuple(position.shape)}")
        self.buffer.copy_(buffer)
        self.p_data.copy_(p_data)
        self.position.copy_(position)
        if "started" in state:  # states saved before the first-batch start have none (uniform start)
            self.started.copy_(torch.as_tensor(state["started"]))

    def to(self, device) -> "DistributionAlignment":
        self.started = self.started.to(device)
        self.buffer = self.buffer.to(device)
        self.position = self.position.to(device)
        self.p_data = self.p_data.to(device)
        return self


def mixup_lambdas(n: int, alpha: float, generator: np.random.Generator) -> np.ndarray:
    """Per-example MixUp weights: ``lam ~ Beta(alpha, alpha)``, ``lam = max(lam, 1 - lam)``.

    Folding onto [0.5, 1] keeps each mixed example closer to itself than to its partner, so its
    target (its own label or guess) stays the dominant one. float32, drawn from ``generator`` only.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    lam = generator.beta(alpha, alpha, size=n)
    return np.maximum(lam, 1.0 - lam).astype(np.float32)


def mixup_permutation(n: int, generator: np.random.Generator) -> np.ndarray:
    """The MixUp partner of each example (a shuffle of ``range(n)``), int64, from ``generator``."""
    return generator.permutation(n).astype(np.int64)


def mixup(
    x: torch.Tensor, targets: torch.Tensor, lambdas, permutation, rows=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam * x + (1 - lam) * x[perm]``, and the same for the (N, C) targets.

    ``lambdas`` (N,) and ``permutation`` (N,) may be NumPy arrays or tensors; tensors already on
    ``x``'s device (copied there ahead, non-blocking) are used as they are.

    ``rows`` (optional, int64 indices into the N examples): compute only those rows of the mixed
    batch, in that order - each with its own lambda and its partner from anywhere in ``x``. This is
    how one rank mixes its share of the global batch; ``mixup(..., rows)`` equals
    ``mixup(...)[rows]`` element for element.
    """
    n = x.shape[0]
    lam = torch.as_tensor(lambdas, device=x.device)
    perm = torch.as_tensor(permutation, device=x.device, dtype=torch.int64)
    if lam.shape != (n,) or perm.shape != (n,) or targets.shape[0] != n:
        raise ValueError(
            f"batch of {n}: got lambdas {tuple(lam.shape)}, permutation {tuple(perm.shape)}, "
            f"targets {tuple(targets.shape)}"
        )
    own_x, own_targets = x, targets
    if rows is not None:
        rows = torch.as_tensor(rows, device=x.device, dtype=torch.int64)
        lam, perm = lam[rows], perm[rows]
        own_x, own_targets, n = x[rows], targets[rows], rows.shape[0]
    # lerp(partner, self, lam) = partner + lam * (self - partner): the mixing rule in one kernel.
    lam_x = lam.to(x.dtype).view((n,) + (1,) * (x.dim() - 1))
    lam_t = lam.to(targets.dtype).view((n,) + (1,) * (targets.dim() - 1))
    mixed_x = torch.lerp(x[perm], own_x, lam_x)
    mixed_targets = torch.lerp(targets[perm], own_targets, lam_t)
    return mixed_x, mixed_targets


def rotation_labels(n: int, device=None) -> torch.Tensor:
    """Rotation class of each example: one class per quarter of the batch, in order 0, 1, 2, 3.

    Class k means k * 90 degrees counter-clockwise. Example i gets ``(4 i) // n``, so for n not
    divisible by 4 the quarter boundaries fall at ``ceil(k n / 4)`` (n = 6: 0 0 1 2 2 3).
    The reference (which requires n % 4 == 0) orders its quarters 0, 180, 90, 270 degrees; which
    angle bears which class id is immaterial to the classifier, so the ids here follow the angles.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    index = torch.arange(n, dtype=torch.int64, device=device)
    return torch.div(index * 4, max(n, 1), rounding_mode="floor")


def rotate_quarters(x: torch.Tensor, labels) -> torch.Tensor:
    """Rotate each image of an NCHW (or NHWC-strided) batch by ``labels[i] * 90`` degrees CCW.

    Works on runs of equal consecutive labels, one ``torch.rot90`` per run: the four quarters of
    ``rotation_labels`` are four batched rotations, and any other labels are still handled (one run
    per change of label). The runs are read on the host, so pass the CPU labels of
    ``rotation_labels`` (then move them to the device for the loss); labels on an accelerator work
    but cost a synchronisation.
    """
    if x.dim() != 4:
        raise ValueError(f"expected an NCHW batch, got shape {tuple(x.shape)}")
    n = x.shape[0]
    runs = torch.as_tensor(labels).to("cpu", torch.int64)
    if runs.shape != (n,):
        raise ValueError(f"expected {n} labels, got shape {tuple(runs.shape)}")
    if n == 0:
        return x.clone()
    values, counts = torch.unique_consecutive(runs, return_counts=True)
    values, counts = values.tolist(), counts.tolist()
    if any(v < 0 or v > 3 for v in values):
        raise ValueError(f"rotation labels must be in 0..3, got {sorted(set(values))}")
    if x.shape[2] != x.shape[3] and any(v % 2 for v in values):
        raise ValueError(f"90-degree rotations need square images, got {tuple(x.shape[2:])}")
    # empty_like keeps x's memory format (channels_last stays channels_last).
    out = torch.empty_like(x)
    start = 0
    for k, count in zip(values, counts):
        out[start:start + count].copy_(torch.rot90(x[start:start + count], k, dims=(2, 3)))
        start += count
    return out


def linear_ramp(step: float, ramp_steps: float) -> float:
    """``clip(step / ramp_steps, 0, 1)``; 1 when there is no ramp (``ramp_steps <= 0``)."""
    if ramp_steps <= 0:
        return 1.0
    return min(max(step / ramp_steps, 0.0), 1.0)


def cosine_learning_rate(lr: float, step: float, total_steps: float) -> float:
    """FixMatch's decay: ``lr cos(7 pi k / (16 K))`` at step k of K (from lr to lr cos(7 pi / 16),
    about 0.2 lr, at the end)."""
    return lr * math.cos(7.0 * math.pi * step / (16.0 * total_steps))


@torch.no_grad()
def weight_decay_gradient_(params, wd: float) -> None:
    """``grad += wd * w``: the gradient of the loss term ``wd / 2 * sum ||w||^2`` (the FixMatch
    reference adds ``wd * tf.nn.l2_loss`` of the conv/dense kernels to its loss), added after the
    backward. It then passes through the optimiser (momentum included): coupled, unlike
    :func:`decoupled_weight_decay_`. Adding the gradient rather than the term keeps the weights out
    of a second autograd path, which DDP would count as a second use of a parameter (the rotation
    head, unused by the forward, would be marked ready twice). A weight without a gradient gets
    ``wd * w`` alone."""
    for p in params:
        if p.grad is None:
            p.grad = wd * p.detach().clone()
        else:
            p.grad.add_(p.detach(), alpha=wd)


def confidence_mask(probabilities: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's pseudo-labels: the argmax of each row, and a float mask that is 1 where its
    probability reaches ``threshold`` (tau)."""
    confidence, pseudo_labels = probabilities.max(dim=1)
    return pseudo_labels, (confidence >= threshold).to(probabilities.dtype)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_i mask_i * CE(logits_i, labels_i)``: averaged over every row, masked ones included (as
    FixMatch's reference), so the loss shrinks while few pseudo-labels pass the threshold."""
    per_row = F.cross_entropy(logits.float(), labels, reduction="none")
    return (per_row * mask).mean()


def l2_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MixMatch's unlabeled loss: the mean over rows and classes of ``(softmax(logits) - targets)^2``."""
    return (torch.softmax(logits.float(), dim=1) - targets).square().mean()


@torch.no_grad()
def decoupled_weight_decay_(params, wd: float, lr: float) -> None:
    """``p <- p * (1 - wd * lr)`` in place: the reference's post-step decay (wd 0.02 at lr 0.002).

    Applied after the optimiser step to the conv/dense kernels only (see ``decay_parameters``).
    """
    params = list(params)
    if params:
        torch._foreach_mul_(params, 1.0 - wd * lr)


@torch.no_grad()
def ema_update_(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- ema + (1 - decay) * (p - ema)`` for every parameter; buffers copied from ``model``.

    This is the reference's EMA: ``tf.train.ExponentialMovingAverage`` applied to the trainable
    variables only, and an EMA getter that falls back to the raw variable where no average exists -
    so the EMA model normalises with the raw model's BN moving statistics. Copying the buffers here
    reproduces that fallback.
    """
    ema_params = list(ema_model.parameters())
    params = list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"models differ: {len(ema_params)} vs {len(params)} parameters")
    if ema_params:
        # One multi-tensor kernel instead of one lerp per tensor (about a hundred in WRN-28-2).
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    ema_buffers = list(ema_model.buffers())
    buffers = list(model.buffers())
    if len(ema_buffers) != len(buffers):
        raise ValueError(f"models differ: {len(ema_buffers)} vs {len(buffers)} buffers")
    for ema_buffer, buffer in zip(ema_buffers, buffers):
        ema_buffer.copy_(buffer)


def cta_probe_scores(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CTAugment probe score ``1 - 0.5 * sum_c |p_c - onehot_c|`` per example, float32 (spec 2.3).

    1 when the prediction is certain and right, 0 when certain and wrong.
    """
    p = probabilities.float()
    onehot = F.one_hot(labels.long(), p.shape[1]).to(p.dtype)
    return 1.0 - 0.5 * (p - onehot).abs().sum(dim=1)
