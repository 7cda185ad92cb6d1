"""Shared helpers for the tests of the commands that use a trained run (rmm-eval, rmm-predict,
rmm-export): one smoke run trained once per test session on the synthetic shards.

    from use_helpers import pipeline_shards, smoke_run  # session fixtures: use them as test arguments
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_helpers import pipeline_shards, smoke_config, train  # noqa: F401  (a session fixture, re-exported)


@pytest.fixture(scope="session")
def smoke_run(pipeline_shards, tmp_path_factory) -> Path:
    """A finished 20-step smoke run (checkpoints at steps 10 and 20, summary.json)."""
    out = tmp_path_factory.mktemp("use") / "run"
    train(smoke_config(pipeline_shards.path), out)
    return out
