"""Checkpoint files: written whole under a temporary name then renamed, the last N kept, and on
resume the newest one that loads (an unreadable newest one is reported and skipped)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from remixmatch.common.atomic import atomic_target

from .errors import TrainerError

CHECKPOINT_FORMAT = "remixmatch-checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
REQUIRED = ("format", "version", "step", "config", "model", "ema", "optimizer", "loader", "rng")


class CheckpointError(TrainerError, RuntimeError):
    """No usable checkpoint; one line naming the files."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (temporary files of an interrupted write are not listed)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def save_checkpoint(run_dir: Path, state: dict, keep: int) -> Path:
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{state['step']:08d}.pt"
    # A reader sees the old set or the new file whole, never half of it; a failed write leaves the
    # checkpoints as they were and no stray file.
    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    for stale in folder.glob(".ckpt-*.pt.tmp-*"):
        stale.unlink(missing_ok=True)  # left by a write that was killed
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated or corrupt files fail in many different ways
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(error).__name__}: "
                              f"{' '.join(str(error).split())[:160]})") from None
    missing = [key for key in REQUIRED if not isinstance(state, dict) or key not in state]
    if missing or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a remixmatch checkpoint (missing {', '.join(missing) or 'format'})")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state['version']} is not supported")
    return state


def latest_checkpoint(run_dir: Path, warn) -> tuple[Path, dict] | None:
    """The newest loadable checkpoint of ``run_dir`` (None if it has none at all). Each unreadable
    newer one is reported through ``warn`` and skipped; if none loads, CheckpointError."""
    paths = checkpoint_paths(run_dir)
    if not paths:
        return None
    errors = []
    for path in reversed(paths):
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            errors.append(str(error))
            if path != paths[0]:
                warn(f"{error}; falling back to the previous checkpoint")
            continue
        return path, state
    raise CheckpointError(f"no loadable checkpoint in {checkpoint_dir(run_dir)}: {'; '.join(errors)}")
