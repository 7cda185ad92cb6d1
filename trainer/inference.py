"""A finished (or stopped) run read back for use: its config, its classes, and the EMA or raw model of
one of its checkpoints, for ``rmm-eval``, ``rmm-predict`` and ``rmm-export``.

- :func:`load_trained` builds the model exactly as training does (``build.build_train_state`` from
  the run's config.json) and loads a checkpoint into it; a checkpoint whose tensors do not fit that
  model is refused, naming the first tensor that differs;
- :class:`ImageClassifier` is the model behind the uint8 interface: a (N, H, W, 3) uint8 batch in,
  logits out. Its input conversion is the training step's own (``model_input``) and the per-channel
  normalisation lives in the model, so the evaluation, the predictions and every export read images
  the way training did, whatever that is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, checkpoint_paths, load_checkpoint
from .config import TrainConfig, validate
from .errors import TrainerError
from .step import as_float_images

MODELS = ("ema", "raw")
_STATE_KEY = {"ema": "ema", "raw": "model"}


class UseError(TrainerError, ValueError):
    """A run, checkpoint, shard directory or output that a command using a trained model refuses."""


def model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> what the model's forward takes: the one conversion the training step uses."""
    return as_float_images(images)


class ImageClassifier(torch.nn.Module):
    """uint8 (N, H, W, 3) images -> (N, classes) float32 logits; normalisation inside."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(model_input(images)).float()


@dataclass
class TrainedModel:
    run_dir: Path
    checkpoint: Path
    step: int
    which: str  # "ema" or "raw"
    config: TrainConfig
    model: torch.nn.Module  # in eval mode, on ``device``
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C) the model was trained on
    dataset: dict  # name, path, fingerprint of the run's shards
    device: torch.device
    checkpoint_state: dict  # the loaded checkpoint (its labeled subset, evaluations)

    def classifier(self) -> ImageClassifier:
        return ImageClassifier(self.model).eval()

    def identity(self) -> dict:
        """What names this model anywhere it travels (export metadata, eval and prediction files)."""
        return {"run_dir": str(self.run_dir.resolve()), "run": self.run_dir.resolve().name,
                "checkpoint": self.checkpoint.name, "checkpoint_sha256": file_sha256(self.checkpoint),
                "step": self.step, "model": self.which, "algorithm": self.config.algorithm,
                "dataset": self.dataset.get("name"), "dataset_fingerprint": self.dataset.get("fingerprint"),
                "labels": self.config.labels, "seed": self.config.seed, "run_seed": self.config.run_seed}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise UseError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise UseError(f"{run_dir}: not a run directory (no config.json)")
    try:
        values = json.loads(path.read_text())
        config = TrainConfig(**values)
        validate(config)
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise UseError(f"{path}: unreadable run config ({error})") from None
    return config


def find_checkpoint(run_dir: Path, checkpoint: Path | None) -> Path:
    """``checkpoint`` if given (it must exist), else the run's newest."""
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise UseError(f"--checkpoint {checkpoint}: no such file")
        return Path(checkpoint)
    kept = checkpoint_paths(run_dir)
    if not kept:
        raise UseError(f"{run_dir}: the run holds no checkpoint (checkpoints/ is empty or missing); "
                       "train it first (rmm-train ... --out RUN_DIR) or name one with --checkpoint")
    return kept[-1]


def run_classes(run_dir: Path, config: TrainConfig) -> tuple[tuple[str, ...], tuple[int, int, int], dict]:
    """Class names, image shape and identity of the run's own shards; summary.json's record of them
    when the shards are no longer where the run read them."""
    from remixmatch.datasets_prep import PrepError, open_shards
    from remixmatch.pipeline.loader import split_image_shape

    try:
        shards = open_shards(config.data)
        shape = split_image_shape(shards["train"])
        return shards.class_names, tuple(shape), {"name": shards.dataset, "path": str(shards.path),
                                                   "fingerprint": shards.fingerprint}
    except PrepError as error:
        recorded = _summary_dataset(run_dir)
        if recorded is None or not recorded.get("class_names") or not recorded.get("image_shape"):
            raise UseError(f"{run_dir}: the run's shards cannot be read ({error}) and summary.json does not "
                           "record its classes; pass --data DIR with the same classes") from None
        return (tuple(recorded["class_names"]), tuple(recorded["image_shape"]),
                {k: recorded.get(k) for k in ("name", "path", "fingerprint")})


def _summary_dataset(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("dataset")
    except json.JSONDecodeError:
        return None


def _shape(t) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ")"


def check_same_model(expected: dict, found: dict, where: Path, built_from: str) -> None:
    """Refuses weights that do not fit the model: the first missing, extra or differently shaped tensor."""
    for name, tensor in expected.items():
        if name not in found:
            raise UseError(f"{where}: a checkpoint of another model: it has no tensor {name} "
                           f"(the model of {built_from} has)")
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise UseError(f"{where}: a checkpoint of another model: {name} is {_shape(found[name])} in it, "
                           f"{_shape(tensor)} in the model of {built_from}")
    extra = [name for name in found if name not in expected]
    if extra:
        raise UseError(f"{where}: a checkpoint of another model: it has a tensor {extra[0]} that the model of "
                       f"{built_from} has not")


def build_model(config: TrainConfig, num_classes: int, device: torch.device, image_side: int) -> torch.nn.Module:
    """The bare model as training builds it (its state is then loaded over it); ``image_side``: the
    training images' side, from which ``--stages 0`` derives the stage count."""
    from .build import build_train_state

    config = config.replace(compile=False, sync_bn=False)
    uniform = np.full(num_classes, 1.0 / num_classes)
    return build_train_state(config, num_classes, uniform, device, image_side=image_side).raw_model


def load_trained(run_dir: Path, *, checkpoint: Path | None = None, which: str = "ema",
                 device: str = "cpu") -> TrainedModel:
    from .run import resolve_device

    if which not in MODELS:
        raise UseError(f"--model must be ema or raw, got {which!r}")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        raise UseError(str(error)) from None
    class_names, image_shape, dataset = run_classes(run_dir, config)
    torch_device = resolve_device(device)
    model = build_model(config, len(class_names), torch_device, int(image_shape[0]))
    weights = state[_STATE_KEY[which]]
    check_same_model(model.state_dict(), weights, path, f"{run_dir / 'config.json'}")
    model.load_state_dict(weights)
    model.eval()
    return TrainedModel(run_dir, path, int(state["step"]), which, config, model, tuple(class_names),
                        tuple(int(n) for n in image_shape), dataset, torch_device, state)


__all__ = ["ImageClassifier", "MODELS", "TrainedModel", "UseError", "build_model", "check_same_model",
           "file_sha256", "find_checkpoint", "load_trained", "model_input", "read_run_config", "run_classes"]
