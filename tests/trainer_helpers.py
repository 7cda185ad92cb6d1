"""Shared helpers for the trainer tests: seconds-long runs (the `smoke` preset) on the synthetic
shard set of pipeline_helpers, and exact comparisons of what runs leave behind.

    from trainer_helpers import pipeline_shards, smoke_args, train  # pipeline_shards is a fixture
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from datasets_helpers import run_main
from pipeline_helpers import pipeline_shards  # noqa: F401  (a session fixture, re-exported)
from remixmatch.trainer.checkpoint import checkpoint_paths, load_checkpoint
from remixmatch.trainer.cli import main as train_main
from remixmatch.trainer.config import TrainConfig, resolve
from remixmatch.trainer.run import Run

PROG = "rmm-train"
# The synthetic train split has 20 images per class: 2 labels per class leaves most unlabeled.
LABELS = 20
# Fields of metrics.jsonl that measure the machine, not the run.
WALL_CLOCK = ("kimg_per_s", "data_wait", "step_seconds")


def smoke_config(data: Path, **overrides) -> TrainConfig:
    """The smoke preset on the CPU with the torch loader (what the CLI makes of smoke_args)."""
    return resolve("smoke", [], {"data": str(data), "labels": LABELS, "device": "cpu", "loader": "torch",
                                 **overrides})


def smoke_args(data: Path, out: Path, *extra, quiet: bool = True) -> list[str]:
    return ["--data", data, "--out", out, "--preset", "smoke", "--labels", LABELS, "--device", "cpu",
            "--loader", "torch", *(["--quiet"] if quiet else []), *extra]


def train(config: TrainConfig, out: Path, resume: bool = False) -> dict:
    return Run(config, out, resume=resume, quiet=True).train()


def cli(argv, capsys) -> tuple[int, str, str]:
    """rmm-train in-process: (exit status, stdout, stderr)."""
    return run_main(train_main, argv, capsys)


def latest_state(out: Path) -> dict:
    return load_checkpoint(checkpoint_paths(out)[-1])


def metrics(out: Path) -> list[dict]:
    """metrics.jsonl, each line parsed, without the wall-clock fields."""
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in lines]


def assert_identical(a, b, where: str = "") -> None:
    """Nested dicts / lists of tensors, arrays and plain values, equal bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file under a run directory, by relative path: to prove a refused command changed nothing."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}
