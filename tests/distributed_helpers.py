"""Recording runs for the multi-process tests: each rank keeps the batches it trained on and, at the
end, writes its final state, so that ranks can be compared with each other and with one process.

The launcher's workers unpickle ``train_and_dump`` by module name, so this module is importable by
them: ``launch_recorded`` runs in a process whose ``PYTHONPATH`` holds this folder.

    python -c 'from distributed_helpers import main; main()' DATA OUT PROCS STEPS DUMP
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import torch

from remixmatch.trainer.distributed import launch, plan_world
from trainer_helpers import smoke_config


class Recorder:
    """The loader as the run sees it, keeping each batch's rows and views."""

    def __init__(self, loader):
        self._loader = loader
        self.batches: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._loader)
        self.batches.append({"x_rows": np.asarray(batch.plan.x_rows).copy(), "u_rows": np.asarray(batch.plan.u_rows).copy(),
                             "x": batch.x.cpu().numpy().copy(), "u_weak": batch.u_weak.cpu().numpy().copy(),
                             "u_strong": batch.u_strong.cpu().numpy().copy()})
        return batch


def train_and_dump(folder: str, run) -> None:
    """A worker's work: train with the loader recorded, then write ``folder/rank<R>.pt``."""
    recorder = run.loader = Recorder(run.loader)
    run.train()
    state = {"model": run.state.raw_model.state_dict(), "ema": run.state.ema_model.state_dict(),
             "rates": None if run.policy is None else run.policy.rates.copy(),
             "batches": recorder.batches, "world_size": run.world_size, "step": run.step}
    Path(folder).mkdir(parents=True, exist_ok=True)
    torch.save(state, Path(folder) / f"rank{run.rank}.pt")


def launch_recorded(data: Path, out: Path, procs: int, steps: int, dump: Path) -> int:
    """A smoke run (what ``rmm-train`` makes of ``smoke_args``) on ``procs`` CPU processes through the
    launcher, each rank recording: the launcher's exit code."""
    world, config = plan_world(smoke_config(data, steps=steps), None, procs, None)
    return launch(config, out, world, resume=False, quiet=False, work=functools.partial(train_and_dump, str(dump)))


def main() -> None:
    data, out, procs, steps, dump = sys.argv[1:]
    sys.exit(launch_recorded(Path(data), Path(out), int(procs), int(steps), Path(dump)))
