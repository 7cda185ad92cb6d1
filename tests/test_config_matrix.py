"""The configuration space at smoke size: every valid configuration trains, evaluates, checkpoints and
resumes exactly; every invalid one is refused before its first step with one line naming the flag.

The matrix is every algorithm x every preset's network shape (and the smoke shape with the stage
count derived from the image size) x images of 32x32, 96x96 and an odd 40x40 x the loaders (torch;
DALI's CPU pipeline where it is installed) x --fidelity corrected|reference x --bn-mode
joint|reference. A run walks a fixed core plus a seeded random sample of the rest: the seed is
printed, and RMM_MATRIX_SEED=N replays one (RMM_MATRIX_SAMPLE=N sets the sample's size). Every
configuration runs rmm-train in this process: a process start with torch and Numba costs seconds.

Batches are smaller than the smoke preset's (--batch 2): the layouts and code paths are those of
any batch, and a sampled WRN-28-2 at 96x96 stays within seconds. WRN-28-8 (the cifar100-2500
preset) is left out: about a minute a configuration on 2 cores even at 32x32 (MAX_COST).

Then a property-based pass over the numeric flags: a value out of its range exits 2 with one line
naming the flag (never a traceback); a value in range trains to finite losses.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remixmatch.datasets_prep.format import DatasetBuilder, DatasetInfo
from remixmatch.trainer.config import ALGORITHMS, PRESETS, resolve
from remixmatch.trainer.model import stages_for_size
from trainer_helpers import assert_identical, cli, latest_state, metrics

CLASSES = 10
TRAIN_ROWS = 40  # 4 per class
TEST_ROWS = 6
SIZES = (32, 40, 96)
MATRIX_BATCH = 2


def _dali_installed() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


LOADERS = ("torch", "dali") if _dali_installed() else ("torch",)


def _network_shapes() -> dict[str, tuple[int, int, int]]:
    """(width, blocks per stage, stages) of every preset, one entry per distinct shape, and the
    smoke shape with the stages derived from the image size (0)."""
    shapes: dict[tuple[int, int, int], str] = {}
    for name in PRESETS:
        c = resolve(name, [], {"valid": 0, "fold": -1})
        shapes.setdefault((c.width, c.blocks_per_stage, c.stages), name)
    smoke = resolve("smoke", [], {})
    shapes.setdefault((smoke.width, smoke.blocks_per_stage, 0), "smoke-derived")
    return {name: shape for shape, name in shapes.items()}


SHAPES = _network_shapes()


def _cost(shape: tuple[int, int, int], size: int) -> float:
    """A step's convolution work relative to the smoke network at 32x32 (width^2 x blocks x pixels)."""
    width, blocks, _ = shape
    return width * width * blocks * size * size / (8 * 8 * 1 * 32 * 32)


# Sampled configurations stay within ~600x the smoke step (WRN-28-2 at 96x96: ~20 s for the three
# runs of a check on 2 cores). WRN-28-8 (cifar100-2500) is 1024x at 32x32 (about a minute a check):
# its code path is WRN-28-2's with wider convolutions, so it is left out of CI.
MAX_COST = 600

MATRIX = [(algorithm, shape, size, loader, fidelity, bn_mode)
          for algorithm, shape, size, loader, fidelity, bn_mode in itertools.product(
              ALGORITHMS, sorted(SHAPES), SIZES, LOADERS, ("corrected", "reference"), ("joint", "reference"))
          if _cost(SHAPES[shape], size) <= MAX_COST]

# Always walked: the 96x96 smoke network with its five derived stages (the oneDNN crash), each
# algorithm in its reference form and the refusal of the interleaved forward it does not have, the
# odd size, and DALI.
CORE = [
    ("remixmatch", "smoke-derived", 96, "torch", "corrected", "joint"),
    ("remixmatch", "smoke-derived", 40, "torch", "reference", "reference"),
    ("fixmatch", "smoke", 32, "torch", "reference", "joint"),
    ("fixmatch", "smoke", 32, "torch", "corrected", "reference"),  # refused: --bn-mode
    ("mixmatch", "smoke-derived", 40, "torch", "corrected", "joint"),
    ("supervised", "smoke", 96, "torch", "reference", "joint"),
]
if "dali" in LOADERS:
    CORE.append(("remixmatch", "smoke", 40, "dali", "corrected", "joint"))


def _sample() -> list[tuple]:
    seed = int(os.environ.get("RMM_MATRIX_SEED", random.SystemRandom().randrange(1 << 31)))
    size = int(os.environ.get("RMM_MATRIX_SAMPLE", 3))
    print(f"\nconfiguration matrix: {len(MATRIX)} configurations, sampling {size} with RMM_MATRIX_SEED={seed}")
    rest = [c for c in MATRIX if c not in CORE]
    return random.Random(seed).sample(rest, min(size, len(rest)))


SAMPLE = _sample()


def _write_shards(out: Path, size: int) -> Path:
    rng = np.random.default_rng(size)
    info = DatasetInfo("matrix", tuple(f"c{i}" for i in range(CLASSES)), (size, size, 3), "raw", "synthetic noise")
    with DatasetBuilder(out, info) as builder:
        for split, rows in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
            writer = builder.split(split)
            writer.write(np.arange(rows) % CLASSES, rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8),
                         [f"{split}:{i}" for i in range(rows)])
        builder.commit()
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("matrix_shards")
    return {size: _write_shards(root / str(size), size) for size in SIZES}


def _argv(data: Path, out: Path, config: tuple, steps: int, *extra) -> list:
    algorithm, shape, _, loader, fidelity, bn_mode = config
    width, blocks, stages = SHAPES[shape]
    return ["--data", data, "--out", out, "--preset", "smoke", "--algorithm", algorithm, "--labels", CLASSES,
            "--width", width, "--blocks-per-stage", blocks, "--stages", stages, "--batch", MATRIX_BATCH,
            "--fidelity", fidelity, "--bn-mode", bn_mode, "--loader", loader, "--device", "cpu", "--quiet",
            "--steps", steps, "--eval-every", 1, "--ckpt-every", 1, "--log-every", 1, *extra]


def _refusal(config: tuple) -> str | None:
    """The flag a configuration is refused for, or None where it must run."""
    algorithm, _, _, _, _, bn_mode = config
    if bn_mode == "reference" and algorithm != "remixmatch":
        return "--bn-mode"
    return None


def _check(config: tuple, shards: dict[int, Path], tmp_path: Path, capsys) -> None:
    data = shards[config[2]]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    rc, _, err = cli(_argv(data, straight, config, 2), capsys)
    flag = _refusal(config)
    if flag is not None:
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and flag in lines[0] and "Traceback" not in err, (config, err)
        assert not straight.exists(), "a refused run leaves nothing"
        return
    assert rc == 0, (config, err)
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["steps"] == 2
    expected_stages = SHAPES[config[1]][2] or stages_for_size(config[2])
    assert summary["model"]["stages"] == expected_stages
    records = metrics(straight)
    assert any("eval" in json.dumps(r) for r in records), "the run evaluated"
    for record in records:
        for value in record.values():
            assert not (isinstance(value, float) and not math.isfinite(value)), (config, record)
    # Stopped by its time limit after step 1 (--steps stays 2: FixMatch's cosine schedule spans it).
    rc, _, err = cli([*_argv(data, stopped, config, 2), "--time-limit", 1e-9], capsys)
    assert rc == 0, (config, err)
    assert latest_state(stopped)["step"] == 1, config
    rc, _, err = cli([*_argv(data, stopped, config, 2), "--resume"], capsys)
    assert rc == 0, (config, err)
    a, b = latest_state(stopped), latest_state(straight)
    a.pop("elapsed"), b.pop("elapsed")
    assert_identical(a, b, f"{config}: checkpoint")
    assert metrics(stopped) == records, config


@pytest.mark.parametrize("config", CORE, ids=lambda c: "-".join(map(str, c)))
def test_core_configuration(config, shards, tmp_path, capsys):
    _check(config, shards, tmp_path, capsys)


@pytest.mark.parametrize("config", SAMPLE, ids=lambda c: "-".join(map(str, c)))
def test_sampled_configuration(config, shards, tmp_path, capsys):
    _check(config, shards, tmp_path, capsys)


# -- numeric flags, property-based ------------------------------------------------------------------
# flag -> (values in range, values out of range). In-range values stay within what a 2-step smoke run
# can show (a batch of 4, not 4,096); the ranges themselves are validate()'s.
def _floats(low, high, **kw):
    return st.floats(low, high, allow_nan=False, allow_infinity=False, **kw)


NOT_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NUMERIC_FLAGS = {
    "--batch": (st.integers(1, 4), st.integers(-5, 0)),
    "--k": (st.integers(1, 3), st.integers(-5, -1)),
    "--uratio": (st.integers(1, 3), st.integers(-5, 0)),
    "--confidence": (_floats(1e-6, 1.0), _floats(1.0, 1e6, exclude_min=True) | _floats(-1e6, 0.0) | NOT_FINITE),
    "--cta-threshold": (_floats(0.0, 1.0), _floats(1.0, 1e6, exclude_min=True) | _floats(-1e6, 0.0, exclude_max=True)
                        | NOT_FINITE),
    "--temperature": (_floats(1e-3, 10.0), _floats(-1e6, 0.0) | NOT_FINITE),
    "--w-match": (_floats(0.0, 100.0), _floats(-1e6, 0.0, exclude_max=True) | NOT_FINITE),
    "--w-kl": (_floats(0.0, 10.0), _floats(-1e6, 0.0, exclude_max=True) | NOT_FINITE),
    "--w-rot": (_floats(0.0, 10.0), _floats(-1e6, 0.0, exclude_max=True) | NOT_FINITE),
    "--warmup-kimg": (_floats(0.0, 10.0), _floats(-1e6, 0.0, exclude_max=True) | NOT_FINITE),
    "--ema": (_floats(0.0, 0.999), _floats(1.0, 1e6) | _floats(-1e6, 0.0, exclude_max=True) | NOT_FINITE),
    "--bn-momentum": (_floats(0.0, 1.0), _floats(1.0, 1e6, exclude_min=True) | _floats(-1e6, 0.0, exclude_max=True)
                      | NOT_FINITE),
    "--cta-decay": (_floats(0.01, 0.999), _floats(1.0, 1e6) | _floats(-1e6, 0.0) | NOT_FINITE),
    "--weight-decay": (_floats(0.0, 0.1), _floats(-1e6, 0.0, exclude_max=True) | NOT_FINITE),
    "--eval-recalibrate-bn": (st.integers(0, 16), st.integers(-5, -1)),
}


def _flag_value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_out_of_range_numeric_flags_are_refused_in_one_line(data, shards, tmp_path_factory, capsys):
    flag = data.draw(st.sampled_from(sorted(NUMERIC_FLAGS)), label="flag")
    value = data.draw(NUMERIC_FLAGS[flag][1], label="value")
    out = tmp_path_factory.mktemp("refused") / "run"
    rc, _, err = cli(["--data", shards[32], "--out", out, "--preset", "smoke", "--labels", CLASSES, "--device", "cpu",
                      "--loader", "torch", "--quiet", f"{flag}={_flag_value(value)}"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and flag in lines[0] and "Traceback" not in err, (flag, value, err)
    assert not out.exists(), "a refused run leaves nothing"


@settings(max_examples=5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_in_range_numeric_flags_train_to_finite_losses(data, shards, tmp_path_factory, capsys):
    algorithm = data.draw(st.sampled_from(ALGORITHMS), label="algorithm")
    values = {flag: data.draw(strategies[0], label=flag) for flag, strategies in sorted(NUMERIC_FLAGS.items())}
    out = tmp_path_factory.mktemp("in_range") / "run"
    argv = ["--data", shards[32], "--out", out, "--preset", "smoke", "--algorithm", algorithm, "--labels", CLASSES,
            "--device", "cpu", "--loader", "torch", "--quiet", "--steps", 2, "--log-every", 1, "--eval-every", 2,
            *[f"{flag}={_flag_value(value)}" for flag, value in values.items()]]
    rc, _, err = cli(argv, capsys)
    assert rc == 0, (algorithm, values, err)
    for record in metrics(out):
        for name, value in record.items():
            assert not (isinstance(value, float) and not math.isfinite(value)), (algorithm, values, name, record)
