"""Shared pytest set-up: `gpu`-marked tests run only where a CUDA device answers; a user's
REMIXMATCH_SHARDS never stands in for a shard directory a test leaves out."""

from __future__ import annotations

import functools
import os
import random

import pytest

# Removed from the process environment (not per test): the subprocesses tests start inherit it.
os.environ.pop("REMIXMATCH_SHARDS", None)


@functools.cache
def cuda_device_reason() -> str | None:
    """None when a real CUDA device is usable, else why not."""
    try:
        from numba import config, cuda
    except ImportError as exc:  # pragma: no cover - numba is a hard dependency
        return f"numba.cuda unavailable: {exc}"
    if config.ENABLE_CUDASIM:
        return "the CUDA simulator is enabled in this process"
    try:
        if not cuda.is_available():
            return "no CUDA device or driver"
    except Exception as exc:  # a driver that fails to initialise says so here
        return f"CUDA unavailable: {exc}"
    return None


def pytest_configure(config):
    # The configuration matrix draws its sample at collection: every pytest-xdist worker inherits this
    # process's environment, so all of them collect the same sample.
    os.environ.setdefault("RMM_MATRIX_SEED", str(random.SystemRandom().randrange(1 << 31)))


def pytest_report_header(config):
    return f"configuration matrix: RMM_MATRIX_SEED={os.environ['RMM_MATRIX_SEED']} (set it to replay a sample)"


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or cuda_device_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
