"""Ctrl-C: a real SIGINT to an rmm-train process between checkpoints writes a checkpoint of the step
it stopped after and exits 130; --resume then ends exactly where a run that never stopped ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from remixmatch.trainer.checkpoint import checkpoint_paths
from remixmatch.trainer.interrupt import Interrupted
from remixmatch.trainer.run import Run
from trainer_helpers import (  # noqa: F401  (pipeline_shards is a fixture)
    assert_identical, cli, latest_state, metrics, pipeline_shards, smoke_args, smoke_config, train,
)

RMM_TRAIN = str(Path(sys.executable).with_name("rmm-train"))
# Long enough that the signal lands mid-run; checkpoints only at the end, so the stop is between them.
# One torch thread in every process: the interrupted run (a subprocess) and the resumed and straight
# runs (this process, whose thread count earlier tests may have set) add in the same order.
EXTRA = ("--steps", "60", "--ckpt-every", "1000", "--eval-every", "20", "--log-every", "7", "--algorithm",
         "remixmatch", "--threads", "1")
TIMEOUT_S = 240


def _wait_for_progress(process, metrics_path, timeout=TIMEOUT_S):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= 1:
            return
        if process.poll() is not None:
            pytest.fail(f"rmm-train exited ({process.returncode}) before training: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("rmm-train logged nothing in time")


def test_sigint_writes_a_checkpoint_and_resume_continues_exactly(pipeline_shards, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [RMM_TRAIN, *map(str, smoke_args(pipeline_shards.path, out)), *EXTRA]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for_progress(process, out / "metrics.jsonl")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    kept = checkpoint_paths(out)
    assert len(kept) == 1, err
    step = latest_state(out)["step"]
    assert 0 < step < 60, step
    lines = [line for line in err.splitlines() if line.startswith("rmm-train: error:")]
    assert lines == [f"rmm-train: error: interrupted at step {step}: checkpoint {kept[0]} written; "
                     "continue with --resume"]
    assert not (out / "summary.json").exists()

    import torch

    threads = torch.get_num_threads()
    try:  # Run sets the process's torch threads
        rc, _, err = cli([*smoke_args(pipeline_shards.path, out), *EXTRA, "--resume"], capsys)
        assert rc == 0, err
        reference = tmp_path / "straight"
        train(smoke_config(pipeline_shards.path, steps=60, ckpt_every=1000, eval_every=20, log_every=7, threads=1),
              reference)
    finally:
        torch.set_num_threads(threads)
    a, b = latest_state(out), latest_state(reference)
    a.pop("elapsed"), b.pop("elapsed")
    for key in ("model", "ema", "optimizer", "policy", "distribution_alignment", "loader", "rng", "step"):
        assert_identical(a[key], b[key], key)
    assert_identical(a, b, "checkpoint")
    assert metrics(out) == metrics(reference)  # the same log lines, the interrupted window included


class _SignalAt:
    """The run's loader, sending this process a real SIGINT while handing out the batch of step ``at``."""

    def __init__(self, loader, at: int):
        self._loader, self._at, self._count = loader, at, 0

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __next__(self):
        self._count += 1
        if self._count == self._at:
            os.kill(os.getpid(), signal.SIGINT)
        return next(self._loader)


def test_sigint_mid_log_window_resumes_the_same_log_lines(pipeline_shards, tmp_path):
    # Step 13 is neither a log step (every 7) nor a checkpoint step (every 20): the checkpoint holds
    # the losses of steps 8-13, and the resumed run's step-14 line averages 8-14 as an unbroken run's.
    config = smoke_config(pipeline_shards.path, steps=30, ckpt_every=20, log_every=7, eval_every=10)
    out = tmp_path / "run"
    run = Run(config, out, quiet=True)
    run.loader = _SignalAt(run.loader, 13)
    # What SIGINT did before the run: Python's KeyboardInterrupt handler, or SIG_IGN where the suite was
    # started in the background of a non-interactive shell (which ignores SIGINT for what it starts).
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="interrupted at step 13"):
        run.train()
    assert [p.name for p in checkpoint_paths(out)] == ["ckpt-00000013.pt"]
    window = latest_state(out)["log_window"]
    assert window[0].shape == (6, 5) and window[1] == 7
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    train(config, out, resume=True)
    reference = tmp_path / "straight"
    train(config, reference)
    a, b = latest_state(out), latest_state(reference)
    a.pop("elapsed"), b.pop("elapsed")
    assert_identical(a, b, "checkpoint")
    assert metrics(out) == metrics(reference)
