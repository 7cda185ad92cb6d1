"""``rmm-bench train``: training steps/s, the step fed by ready tensors (``synthetic``: the ceiling,
no shards needed) against the step fed by the real loader (``loader``, prefetch on and off; with
--shards), the step split into its phases, and what the paper's 2^20-step run would take.

Every row runs the run's own per-step body (:func:`remixmatch.trainer.loop.train_step`) on the
objects :mod:`remixmatch.trainer.build` makes from :class:`~remixmatch.trainer.config.TrainConfig`
(the algorithm's paper settings unless --batch/--k/--uratio/--width/--blocks-per-stage say
otherwise; the CPU model WRN-10-1, CUDA's the paper's WRN-28-2); no logging, evaluation or
checkpoints. With --scaling, short real ``rmm-train`` runs on 1..--procs-max processes, the global
batch fixed. Rows: :class:`~remixmatch.bench.rows.TrainRow` and
:class:`~remixmatch.bench.rows.ScalingRow` (their field comments are the schema).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.kernels.threads import wait_policy
from remixmatch.trainer.config import ALGORITHMS

from . import core
from .core import (
    CommandConfig, NumbaThreadsFetcher, checked_options, command_parser, cuda_unavailable_reason, device_flag,
    device_name, error_reason, flag, gpu_count, labels_flag, measured, no_sync, numba_threads_info, out_flag,
    reps_flag, shards_flag, threads_flag, time_calls, valid_flag, value,
)
from .errors import BenchInputError
from .loaders import open_data
from .render import frame, ratio_range, share_range, skipped_block, table
from .rows import ScalingRow, TrainRow, skipped
from .report import (
    format_hours, format_rate, format_share, machine_info, new_report, usable_cpus,
)
from .section_runner import run_bounded

PROG = "rmm-bench train"
MIN_REPS = 3
DEFAULT_REPS = 7
QUICK_REPS = 3
PAPER_STEPS = 1 << 20
# Per --quick: seconds of back-to-back steps per repetition (at least min_calls steps), after warm_calls steps.
REP_SIZES = {False: {"rep_seconds": 3.0, "min_calls": 2, "warm_calls": 2},
             True: {"rep_seconds": 0.3, "min_calls": 1, "warm_calls": 1}}
# Steps split into phases after the timed repetitions (synchronised at every phase boundary).
PHASE_STEPS = {False: 5, True: 2}
# Models per device unless --width / --blocks-per-stage: a small one for the CPU, the paper's on CUDA.
DEVICE_MODELS = {"cpu": (16, 1), "cuda": (32, 4)}
SYNTHETIC_CLASSES = 10  # the synthetic rows' classes when no shards are given (CIFAR-10's)
DEVICES = ("cpu", "cuda")
FEEDS = (("synthetic", True), ("loader", True), ("loader", False))
SUBSET_SEED = 1  # TrainConfig.seed's default: the labeled split the trainer draws
# Scaling runs: (steps, log_every) per (device, --quick); the first logged window is the warm-up.
SCALING_STEPS = {("cpu", True): (8, 2), ("cpu", False): (40, 5), ("cuda", True): (120, 20), ("cuda", False): (600, 50)}
DEFAULT_CPU_PROCS_MAX = 2
SCALING_TIMEOUT_S = 900  # one scaling run, start to finish
# A data-wait share below this (the loader-fed step faster than the ready-tensor one) gets a note.
FASTER_THAN_CEILING = -0.05


@dataclass(frozen=True)
class TrainBenchConfig(CommandConfig):
    """The options of ``rmm-bench train``: a :func:`~remixmatch.bench.core.flag` field is its own ``--name``."""

    out: Path = out_flag()
    shards: Path | None = shards_flag("; without one the loader rows are skipped")
    quick: bool = flag(False, f"{QUICK_REPS} short repetitions (under a minute on 2 cores at B = 64, K = 8; about "
                              "90 s with --scaling), and shorter scaling runs")
    reps: int = reps_flag(MIN_REPS, DEFAULT_REPS, QUICK_REPS)
    batch: int = flag(64, "labeled images per step (64); unlabeled: --uratio times as many", type=positive_int)
    k: int = flag(8, "views per unlabeled image beyond the weak one (default: the algorithm's: 8, FixMatch 1; "
                     "MixMatch's K = 2 counts the weak view)", parsed=None, type=positive_int)
    uratio: int = flag(1, "unlabeled images per labeled image (default: the algorithm's: 1, FixMatch 7)",
                       parsed=None, type=positive_int)
    device: str = device_flag("auto: CPU rows, plus CUDA rows where a device is present; cpu; cuda (an error "
                              "without one)")
    width: int | None = flag(None, "first stage's channels (default: 16 on the CPU, 32 on CUDA)", type=positive_int)
    blocks_per_stage: int | None = flag(None, "residual blocks per stage (default: 1 on the CPU, 4 on CUDA: WRN-28-2)",
                                        type=positive_int)
    threads: int = threads_flag("torch threads and the loader's Numba threads")
    algorithm: str = flag("remixmatch", choices=ALGORITHMS)
    bn_mode: str = flag("joint", "the training forward: one concatenated call (joint, default) or the reference "
                                 "code's K + 2 interleaved chunks (reference): what the concatenation buys",
                        choices=("joint", "reference"))
    labels: int = labels_flag()
    valid: int = valid_flag()
    seed: int = flag(0, "run seed: model init, views, MixUp", type=int)
    scaling: bool = flag(False, "also steps/s against the number of processes: short real rmm-train runs on "
                                "1..--procs-max processes (needs --shards)")
    procs_max: int | None = flag(None, f"with --scaling: the most processes (default: {DEFAULT_CPU_PROCS_MAX} on the "
                                       "CPU, every visible GPU on CUDA)", type=positive_int)
    compile: bool = flag(False, "torch.compile the trained model (as rmm-train --compile)")

    def model(self, device: str) -> tuple[int, int]:
        width, blocks = DEVICE_MODELS[device]
        return (self.width or width, self.blocks_per_stage or blocks)

    def train_config(self, device: str):
        """The TrainConfig a run with these settings would resolve (defaults: the algorithm's paper's)."""
        from remixmatch.trainer.config import resolve

        width, blocks = self.model(device)
        return resolve(None, [], dict(data="" if self.shards is None else str(self.shards), labels=self.labels,
                                      seed=SUBSET_SEED, valid=self.valid, algorithm=self.algorithm, batch=self.batch,
                                      k=self.k, uratio=self.uratio, width=width, blocks_per_stage=blocks,
                                      device=device, loader="torch", threads=self.threads, run_seed=self.seed,
                                      compile=self.compile, bn_mode=self.bn_mode))


# ---- the trainer's objects, built by the functions Run builds them with ---------------------------------------

def build_loader(config, train, policy, views, device: str, numba_threads: int | None):
    """The run's StepLoader: the torch host fetcher, ``prefetch=False`` (the run prefetches with
    ``prepare()``). On the CPU the fetcher pins the render thread's Numba threads."""
    from remixmatch.pipeline import StepLoader
    from remixmatch.pipeline.loader import make_fetcher

    fetch = make_fetcher("torch", train.split, device, max_batch=config.batch + config.unlabeled_batch)
    if device == "cpu" and numba_threads is not None:
        fetch = NumbaThreadsFetcher(fetch, numba_threads)
    return StepLoader(train, policy, views, device=device, prefetch=False, fetcher=fetch)


class SyntheticBatches:
    """An endless source of one ready StepBatch: random uint8 views on the device, sliced by a real
    plan's kernel call (the same shapes, dtypes and probe policies as a loader's batch)."""

    def __init__(self, policy, views, num_classes: int, device, seed: int = 0, image_shape=(32, 32, 3)):
        import numpy as np
        import torch

        from remixmatch.pipeline import draw_plan, kernel_call
        from remixmatch.pipeline.batch import split_views

        rng = np.random.default_rng(seed)
        x_rows = np.arange(views.batch, dtype=np.int64)
        u_rows = np.arange(views.unlabeled_batch, dtype=np.int64)
        plan = draw_plan(0, x_rows, u_rows, policy, views)
        call = kernel_call(plan)
        pixels = rng.integers(0, 256, (len(call.sources), *image_shape), dtype=np.uint8)
        labels = rng.integers(0, num_classes, views.batch, dtype=np.int64)
        self.batch = split_views(torch.from_numpy(pixels).to(device), plan, call,
                                 torch.from_numpy(labels).to(device), plan)

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch

    def prepare(self) -> None:
        """The loader interface the step loop calls; the batch is ready from the start."""

    def close(self) -> None:
        """The loader interface; the batch holds no thread or pipeline to release."""


class TrainLoop:
    """One call = one iteration of ``Run._loop``'s body (:func:`remixmatch.trainer.loop.train_step`),
    less the logging, evaluation and checkpoints; records the seconds spent in ``next(source)``."""

    def __init__(self, state, step_fn, source, policy, prefetch: bool):
        self.state, self.step_fn, self.source, self.policy, self.prefetch = state, step_fn, source, policy, prefetch
        self.step, self.pending, self.waits, self.last_losses = 0, None, [], None

    def __call__(self) -> None:
        from remixmatch.trainer.loop import train_step

        outcome = train_step(self.state, self.step_fn, self.source, self.policy, self.step, self.pending,
                             prefetch=self.prefetch)
        self.pending, self.step, self.last_losses = outcome.pending, self.step + 1, outcome.result.losses
        self.waits.append(outcome.wait)


# ---- rows -------------------------------------------------------------------------------------------

def skipped_row(device: str, feed: str, prefetch: bool, batch: int, reason: str) -> dict:
    return skipped(TrainRow, reason, device=device, feed=feed, prefetch=prefetch, batch=batch)


def run_row(config: TrainBenchConfig, device: str, feed: str, prefetch: bool, data, log) -> dict:
    """One measured row (``data``: the BenchData of --shards, or None for a synthetic row)."""
    import torch

    from remixmatch.trainer.build import build_policy_and_views, build_train_state
    from remixmatch.trainer.model import count_parameters, model_name
    from remixmatch.trainer.algorithms import STEPS

    tc = config.train_config(device)
    torch_device = torch.device(device)
    num_classes = data.train.num_classes if data is not None else SYNTHETIC_CLASSES
    p_data = data.train.class_distribution() if data is not None else [1.0 / num_classes] * num_classes
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    side = data.train.image_shape[0] if data is not None else 32
    # One rank; model mean / std: defaults; the stage count and weak pad follow the image side.
    state = build_train_state(tc, num_classes, p_data, torch_device, image_side=side)
    policy, views = build_policy_and_views(tc, side)
    numba_threads = config.threads if feed == "loader" and device == "cpu" else None
    if feed == "synthetic":
        shape = tuple(data.train.image_shape) if data is not None else (32, 32, 3)
        source = SyntheticBatches(policy, views, num_classes, torch_device, config.seed, shape)
    else:
        source = build_loader(tc, data.train, policy, views, device, numba_threads)
    sync = torch.cuda.synchronize if device == "cuda" else no_sync
    loop = TrainLoop(state, STEPS[tc.algorithm], source, policy, prefetch)
    try:
        first_start = time.perf_counter()
        timing = time_calls(loop, config.reps, **REP_SIZES[config.quick], sync=sync)
        startup = (first_start - start) + timing.first_seconds
        finite = bool(torch.isfinite(loop.last_losses).all())
        phases = split_phases(loop, PHASE_STEPS[config.quick], sync)
    finally:
        source.close()
    # Per repetition: the calls after the first step and the warm-up, steps_per_rep at a time.
    timed = loop.waits[1 + timing.warmup_calls:]
    n = timing.calls_per_rep
    waits = [sum(timed[i * n:(i + 1) * n]) for i in range(len(timing.per_call))]
    fields = timing.fields()
    rate = fields["steps_per_s"]
    images = views.batch + views.unlabeled_batch
    n_views = _views_per_step(views)
    autocast = device == "cuda" and tc.bf16
    row = asdict(TrainRow(
        device=device, device_name=device_name(device), feed=feed, prefetch=prefetch, algorithm=tc.algorithm,
        model=model_name(tc.width, tc.blocks_per_stage, state.raw_model.stages), width=tc.width,
        blocks_per_stage=tc.blocks_per_stage, parameters=count_parameters(state.raw_model),
        batch=views.batch, unlabeled_batch=views.unlabeled_batch, k=0 if tc.algorithm == "supervised" else tc.k,
        images_per_step=images, views_per_step=n_views,
        train_views_per_labeled_image=(n_views - (views.batch if views.probes else 0)) / views.batch, **fields,
        images_per_s=rate * images, views_per_s=rate * n_views, kimg_per_s=rate * views.batch / 1024,
        wait_seconds_per_step=statistics.median(w / n for w in waits),
        wait_share_measured=statistics.median(w / (n * s) for w, s in zip(waits, timing.per_call)),
        projected_hours=fields["seconds_per_step"] * PAPER_STEPS / 3600,
        threads=torch.get_num_threads(), numba_threads=numba_threads, bf16=autocast,
        channels_last=device == "cuda" and tc.channels_last, losses_finite=finite, startup_seconds=startup,
        compile=tc.compile, peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        **phases))
    log(row)
    return row


def split_phases(loop: TrainLoop, steps: int, sync) -> dict:
    """Where a step's time goes: ``steps`` more steps with a phase timer attached (see
    :mod:`remixmatch.trainer.phases`); ``other`` is the rest of each step's wall time."""
    from remixmatch.trainer.phases import StepPhases

    loop.state.phases = phases = StepPhases(sync)
    try:
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            loop()
        sync()
        wall = (time.perf_counter() - start) / steps
    finally:
        loop.state.phases = None
    seconds = phases.per_step(steps)
    seconds["other"] = max(0.0, wall - sum(seconds.values()))
    return {"phase_steps": steps, "phase_seconds_per_step": seconds,
            "phase_shares": {name: value / wall for name, value in seconds.items()}}


def _views_per_step(views) -> int:
    probes = views.batch if views.probes else 0
    return views.batch + probes + views.unlabeled_batch + views.k * views.unlabeled_batch


def device_reason(config: TrainBenchConfig, device: str) -> str | None:
    """Why ``device`` has no rows (not requested, or no CUDA device), or None."""
    if config.device not in ("auto", device):
        return f"not requested (--device {config.device})"
    return cuda_unavailable_reason() if device == "cuda" else None


def device_rows(config: TrainBenchConfig, device: str, data, log) -> list[dict]:
    """The three rows of one device, or skipped rows saying why."""
    reason = device_reason(config, device)
    rows = []
    for feed, prefetch in FEEDS:
        why = reason or ("no --shards given: the loader rows need a shard directory (prep-cifar10 --out)"
                         if feed == "loader" and data is None else None)
        try:
            row = skipped_row(device, feed, prefetch, config.batch, why) if why else run_row(
                config, device, feed, prefetch, data, log)
        except Exception as error:
            if device != "cuda":
                raise
            # a CUDA failure (driver, memory, numba-cuda) must not cost the other rows
            row = skipped_row(device, feed, prefetch, config.batch, f"failed: {error_reason(error)}")
        if "skipped" in row:
            log(row)
        rows.append(row)
    return rows


def find(rows: list[dict], device: str, feed: str, prefetch: bool) -> dict | None:
    return core.find(rows, device=device, feed=feed, prefetch=prefetch)


def add_wait_shares(rows: list[dict]) -> None:
    for r in measured(rows):
        ceiling = find(rows, r["device"], "synthetic", True)
        if r["feed"] == "loader" and ceiling is not None:
            r["data_wait_share"] = 1.0 - r["steps_per_s"] / ceiling["steps_per_s"]


def summarize(rows: list[dict]) -> dict:
    summary: dict = {"paper_steps": PAPER_STEPS}
    for device in DEVICES:
        synthetic, on, off = (find(rows, device, "synthetic", True), find(rows, device, "loader", True),
                              find(rows, device, "loader", False))
        summary[device] = None if not (synthetic or on or off) else {
            "model": value(synthetic or on or off, "model"),
            "synthetic_steps_per_s": value(synthetic, "steps_per_s"), "loader_steps_per_s": value(on, "steps_per_s"),
            "loader_no_prefetch_steps_per_s": value(off, "steps_per_s"),
            "synthetic_images_per_s": value(synthetic, "images_per_s"), "loader_images_per_s": value(on, "images_per_s"),
            **{key + suffix: value(row, key) for key in ("data_wait_share", "wait_share_measured")
               for suffix, row in (("", on), ("_no_prefetch", off))},
            "projected_hours_synthetic": value(synthetic, "projected_hours"),
            "projected_hours_loader": value(on, "projected_hours"),
        }
    return summary


def describe_inputs(config: TrainBenchConfig, data) -> dict:
    tc = config.train_config("cpu")
    policy = (f"CTAugment(depth {tc.cta_depth}, decay {tc.cta_decay}, threshold {tc.cta_threshold}, rule "
              f"'{tc.cta_rule}'){', then Cutout' if tc.cutout else ''}, updated every step with the probe scores"
              if tc.uses_cta else f"none ({tc.algorithm}: weak views only)")
    if data is None:
        return {"shards": None, "synthetic_classes": SYNTHETIC_CLASSES, "policy": policy, "view_seed": config.seed}
    inputs = {**data.describe(config), "policy": policy}
    del inputs["split"]  # the train split always: the trainer's
    return inputs


def run(config: TrainBenchConfig, log: Callable[[object], None]) -> dict:
    """Every row this machine can run; returns the report (not yet written)."""
    import torch

    report = new_report("train", config.as_dict())
    data = None
    if config.shards is not None:
        data = open_data(config.shards, config.labels, config.valid)
    report["inputs"] = describe_inputs(config, data)
    if data is not None:
        log(f"shards: {report['inputs']['shards']} ({report['inputs']['rows']} train rows); B = {config.batch}, "
            f"K = {config.k}, {config.algorithm}")
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        rows = []
        for device in DEVICES:
            rows += device_rows(config, device, data, log)
    finally:
        torch.set_num_threads(saved_threads)
    add_wait_shares(rows)
    scaling = scaling_rows(config, data, log) if config.scaling else None
    gpu = next((r["device_name"] for r in measured(rows + (scaling or [])) if r["device"] == "cuda"), None)
    numba_threads = next((r["numba_threads"] for r in measured(rows) if r["numba_threads"] is not None), None)
    summary = summarize(rows)
    summary["scaling"] = None if scaling is None else summarize_scaling(scaling)
    report.update(machine=machine_info(gpu), results=rows, summary=summary, scaling=scaling,
                  threads={"torch": config.threads, "torch_interop": torch.get_num_interop_threads(),
                           "numba": numba_threads, **numba_threads_info(),
                           "omp_wait_policy": wait_policy()})
    return report


# ---- scaling: steps/s against the number of processes -----------------------------------------------

def scaling_procs_max(config: TrainBenchConfig, device: str) -> int:
    if config.procs_max is not None:
        return config.procs_max
    return max(1, gpu_count()) if device == "cuda" else DEFAULT_CPU_PROCS_MAX


def scaling_skipped_row(device: str, ranks: int, batch: int, reason: str) -> dict:
    return skipped(ScalingRow, reason, device=device, ranks=ranks, batch=batch)


def scaling_threads(ranks: int) -> int:
    """Torch (and Numba) threads of each of ``ranks`` CPU processes: the usable cores shared out."""
    return max(1, usable_cpus() // ranks)


def scaling_command(config: TrainBenchConfig, device: str, ranks: int, out: Path) -> tuple[list[str], dict]:
    """The rmm-train command line (and environment) of one scaling run."""
    tc = config.train_config(device)
    steps, log_every = SCALING_STEPS[(device, config.quick)]
    argv = [sys.executable, "-c", "import sys; from remixmatch.trainer.cli import main; sys.exit(main())",
            "--data", str(config.shards), "--out", str(out), "--quiet", "--device", device, "--loader", "torch",
            "--labels", str(tc.labels), "--seed", str(tc.seed), "--valid", str(tc.valid),
            "--algorithm", tc.algorithm, "--bn-mode", tc.bn_mode, "--batch", str(tc.batch), "--k", str(tc.k),
            "--uratio", str(tc.uratio),
            "--width", str(tc.width),
            "--blocks-per-stage", str(tc.blocks_per_stage), "--run-seed", str(tc.run_seed),
            "--threads", str(scaling_threads(ranks)), "--steps", str(steps), "--log-every", str(log_every),
            "--eval-every", str(steps), "--ckpt-every", str(steps), "--keep-ckpts", "1"]
    if ranks > 1:
        argv += ["--gpus" if device == "cuda" else "--procs", str(ranks)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    if device == "cpu":
        env["NUMBA_NUM_THREADS"] = str(scaling_threads(ranks))  # each process's loader render
    return argv, env


def steady_step_seconds(metrics_path: Path) -> tuple[float, list[float]]:
    """The median step time of metrics.jsonl's logged windows after the first (warm-up: the first
    step's Numba cache load, allocations, the DDP set-up), and every window's step time."""
    windows = []
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if not record.get("eval") and "step_seconds" in record:
            windows.append(float(record["step_seconds"]))
    if len(windows) < 2:
        raise RuntimeError(f"{metrics_path.name} holds {len(windows)} logged windows; the steady state needs 2 or more")
    return statistics.median(windows[1:]), windows


def run_scaling_row(config: TrainBenchConfig, device: str, ranks: int, side: int) -> dict:
    """One short real run of ``ranks`` processes (rmm-train in a subprocess, into a temporary
    directory removed after) and its steady-state rates; ``side``: the shards' image side."""
    from remixmatch.trainer.build import model_stages
    from remixmatch.trainer.model import model_name

    tc = config.train_config(device)
    steps, log_every = SCALING_STEPS[(device, config.quick)]
    with tempfile.TemporaryDirectory(prefix="rmm-bench-scaling-") as tmp:
        out = Path(tmp) / "run"
        argv, env = scaling_command(config, device, ranks, out)
        started = time.perf_counter()
        # Its own process group: a run over time goes down with its workers.
        outcome = run_bounded(argv, timeout_s=SCALING_TIMEOUT_S, env=env, merge_stdout=False)
        wall = time.perf_counter() - started
        if outcome.timed_out:
            return scaling_skipped_row(device, ranks, tc.batch, f"failed: rmm-train ran over {SCALING_TIMEOUT_S} s")
        if outcome.code != 0:
            return scaling_skipped_row(device, ranks, tc.batch,
                                       f"failed: rmm-train exited {outcome.code}: {outcome.last_line()}")
        seconds, windows = steady_step_seconds(out / "metrics.jsonl")
    images = tc.batch + tc.unlabeled_batch
    rate = 1.0 / seconds
    threads = scaling_threads(ranks)
    return asdict(ScalingRow(
        device=device, device_name=device_name(device), ranks=ranks,
        launch="one process" if ranks == 1 else f"--{'gpus' if device == 'cuda' else 'procs'} {ranks}",
        backend=None if ranks == 1 else ("nccl" if device == "cuda" else "gloo"), algorithm=tc.algorithm,
        model=model_name(tc.width, tc.blocks_per_stage, model_stages(tc, side)), width=tc.width,
        blocks_per_stage=tc.blocks_per_stage, batch=tc.batch, unlabeled_batch=tc.unlabeled_batch,
        k=0 if tc.algorithm == "supervised" else tc.k, batch_per_rank=tc.batch // ranks, images_per_step=images,
        steps=steps, log_every=log_every, window_step_seconds=windows, timed_windows=len(windows) - 1,
        seconds_per_step=seconds, steps_per_s=rate, images_per_s=rate * images, kimg_per_s=rate * tc.batch / 1024,
        threads=threads, numba_threads=threads if device == "cpu" else None, wall_seconds=wall))


def scaling_run_reason(config: TrainBenchConfig, device: str, ranks: int, data) -> str | None:
    """Why the run of ``ranks`` processes on ``device`` cannot be made here, or None."""
    if data is None:
        return "no --shards given: the scaling runs train on a shard directory (prep-cifar10 --out)"
    if device == "cpu" and ranks > usable_cpus():
        return (f"{ranks} processes on {usable_cpus()} usable cores: under one core each "
                "(raise --procs-max only where more cores exist)")
    if device == "cuda" and ranks > (gpus := gpu_count()):
        return f"{ranks} processes need {ranks} GPUs; {gpus} CUDA devices are visible"
    if config.batch % ranks:
        return f"--batch {config.batch} does not split over {ranks} processes (the batch is global)"
    return None


def scaling_rows(config: TrainBenchConfig, data, log) -> list[dict]:
    """Per device, one row per process count 1..--procs-max: measured, or skipped with the reason."""
    rows = []
    for device in DEVICES:
        if (reason := device_reason(config, device)) is not None:  # the whole device: one row says why
            rows.append(scaling_skipped_row(device, 1, config.batch, reason))
            log(scaling_row_line(rows[-1]))
            continue
        for ranks in range(1, scaling_procs_max(config, device) + 1):
            if (reason := scaling_run_reason(config, device, ranks, data)) is not None:
                row = scaling_skipped_row(device, ranks, config.batch, reason)
            else:
                try:
                    row = run_scaling_row(config, device, ranks, data.train.image_shape[0])
                except Exception as error:  # one failed run must not cost the other rows
                    row = scaling_skipped_row(device, ranks, config.batch, f"failed: {error_reason(error)}")
            log(scaling_row_line(row))
            rows.append(row)
    add_speedups(rows)
    return rows


def add_speedups(rows: list[dict]) -> None:
    """Speed-up against the same device's one-process row, and efficiency = speed-up / processes."""
    for r in rows:
        if "skipped" in r:
            continue
        one = next((o for o in rows if "skipped" not in o and o["device"] == r["device"] and o["ranks"] == 1), None)
        if one is not None:
            r["speedup"] = r["steps_per_s"] / one["steps_per_s"]
            r["efficiency"] = r["speedup"] / r["ranks"]


def summarize_scaling(rows: list[dict]) -> dict:
    summary = {}
    for device in DEVICES:
        done = [r for r in rows if r["device"] == device and "skipped" not in r]
        if not done:
            summary[device] = None
            continue
        top = max(done, key=lambda r: r["ranks"])
        summary[device] = {"model": top["model"], "max_ranks": top["ranks"], "steps_per_s": top["steps_per_s"],
                           "speedup": top["speedup"], "efficiency": top["efficiency"],
                           "one_rank_steps_per_s": next((r["steps_per_s"] for r in done if r["ranks"] == 1), None)}
    return summary


def scaling_row_line(r: dict) -> str:
    if "skipped" in r:
        return f"scaling {r['device']} x{r['ranks']}: skipped ({r['skipped']})"
    extra = "" if r["speedup"] is None else f"; speed-up {r['speedup']:.2f}, efficiency {100 * r['efficiency']:.0f}%"
    return (f"scaling {r['device']} {r['model']} x{r['ranks']} ({r['threads']} thread{'s' if r['threads'] > 1 else ''} each): "
            f"{r['steps_per_s']:.2f} steps/s ({format_rate(r['images_per_s'])} images/s{extra}; "
            f"median of {r['timed_windows']} windows of {r['log_every']} steps, run {r['wall_seconds']:.0f} s)")


# ---- markdown -------------------------------------------------------------------------------------

def _row_name(r: dict) -> str:
    if r["feed"] == "synthetic":
        return "synthetic (ready tensors)"
    return "loader, prefetch" if r["prefetch"] else "loader, no prefetch"


def _threads(r: dict) -> str:
    return str(r["threads"]) + ("" if r["numba_threads"] is None else f" + {r['numba_threads']} numba")


def _phase(name: str):
    return (f"{name} ms", lambda r: f"{1000 * r['phase_seconds_per_step'][name]:.1f} ({format_share(r['phase_shares'][name])})")


COLUMNS = (
    ("device", lambda r: r["device"]), ("model", lambda r: r["model"]), ("feed", _row_name),
    ("steps/s", lambda r: f"{r['steps_per_s']:.2f}"),
    ("spread", lambda r: f"{r['spread']['min']:.2f}-{r['spread']['max']:.2f}"),
    ("images/s", lambda r: format_rate(r["images_per_s"])), ("views/s", lambda r: format_rate(r["views_per_s"])),
    ("wait ms/step", lambda r: f"{1000 * r['wait_seconds_per_step']:.1f}"),
    ("measured wait", lambda r: format_share(r["wait_share_measured"])),
    ("data-wait share", lambda r: format_share(r["data_wait_share"])),
    ("2^20 steps", lambda r: format_hours(r["projected_hours"])), ("threads", _threads),
    ("start-up s", lambda r: f"{r['startup_seconds']:.1f}"),
)
SCALING_COLUMNS = (
    ("device", lambda r: r["device"]), ("model", lambda r: r["model"]), ("processes", lambda r: str(r["ranks"])),
    ("launch", lambda r: r["launch"]), ("threads/process", _threads), ("batch/process", lambda r: str(r["batch_per_rank"])),
    ("steps/s", lambda r: f"{r['steps_per_s']:.2f}"), ("images/s", lambda r: format_rate(r["images_per_s"])),
    ("speed-up", lambda r: "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"),
    ("efficiency", lambda r: format_share(r["efficiency"])),
    ("steps (windows)", lambda r: f"{r['steps']} ({r['timed_windows']} x {r['log_every']})"),
    ("run s", lambda r: f"{r['wall_seconds']:.0f}"),
)


def wait_share_text(rows: list[dict], device: str, prefetch: bool) -> str:
    """A loader row's data-wait share, with its range where the two rows' spreads make it noise."""
    loader, ceiling = find(rows, device, "loader", prefetch), find(rows, device, "synthetic", True)
    if loader is None or ceiling is None or loader.get("data_wait_share") is None:
        return format_share(None if loader is None else loader.get("data_wait_share"))
    return share_range(loader["data_wait_share"], *ratio_range(loader, ceiling))


def body(report: dict, h: str = "##") -> list[str]:
    from remixmatch.trainer.phases import PHASES

    rows, summary, inputs, config = report["results"], report["summary"], report["inputs"], report["config"]
    done, scaling = measured(rows), report.get("scaling")
    b, k = config["batch"], config["k"]
    data = ("no shards (synthetic rows only)" if inputs["shards"] is None else
            f"shards `{inputs['shards']}` ({inputs['dataset']}, {inputs['rows']} train rows, {inputs['encoding']}); "
            f"{inputs['labeled_subset']}")
    lines = [f"Inputs: {data}. {config['algorithm']}, B = {b}, mu = {config.get('uratio', 1)}, K = {k}, BN mode "
             f"{config.get('bn_mode', 'joint')}; policy: {inputs['policy']}. Each figure: median of {config['reps']} "
             "repetitions of back-to-back steps after warm-up (spread: min-max steps/s). Data-wait share = 1 - loader "
             "steps/s / synthetic steps/s; measured wait = time in next(loader) / time.", "",
             f"{h} Headline: B = {b}, K = {k}", ""]
    lines += [f"- {device} ({s['model']}): data-wait share **{wait_share_text(rows, device, True)}** with prefetch "
              f"({wait_share_text(rows, device, False)} without); the paper's 2^20 steps: "
              f"**{format_hours(s['projected_hours_loader'])}** loader-fed, "
              f"{format_hours(s['projected_hours_synthetic'])} at the synthetic ceiling"
              for device in DEVICES if (s := summary.get(device)) is not None]
    lines += ["", table(COLUMNS, done), "",
              "images/s: B + B_u images per second; views/s: every view a step reads. On the CPU the loader's render "
              "and the step share the cores: the data-wait share holds that competition too, the measured wait only "
              "the time the step stood idle."]
    faster = [r for r in done if r["data_wait_share"] is not None and r["data_wait_share"] < FASTER_THAN_CEILING]
    if faster:
        lines += ["", "**Loader-fed rows ran faster than the synthetic ceiling** ("
                  + ", ".join(f"{r['device']} {_row_name(r)} {format_share(r['data_wait_share'])}" for r in faster)
                  + "): noise or contention, not a faster step (on a shared 2-core machine torch's OpenMP threads "
                  "spin less while the loader's run; OMP_WAIT_POLICY=PASSIVE closed most of the gap). Rerun on an "
                  "idle machine, or with --threads 1."]
    lines += ["", f"{h} Where a step's time goes", "",
              table((("device", lambda r: r["device"]), ("feed", _row_name), *map(_phase, [*PHASES, "other"])), done),
              "", f"Per step, over {done[0]['phase_steps'] if done else 0} further steps, the device synchronised at "
              "every phase boundary (remixmatch.trainer.phases): forward = label guess, MixUp, the training forward "
              "and the losses; optimiser = the update, weight decay, EMA, distribution-alignment history; "
              "cta_update = scoring the probes, the policy update, drawing the next plan."]
    if scaling is not None:
        lines += ["", f"{h} Scaling: steps/s against processes", ""]
        steady = measured(scaling)
        lines += [f"Short real `rmm-train` runs ({steady[0]['algorithm']}, global B = {steady[0]['batch']} fixed: each "
                  f"of N processes trains B/N, K = {steady[0]['k']}). Step time: the median of metrics.jsonl's "
                  "step_seconds over the windows after the first. On the CPU each process gets cores / N torch "
                  "threads and as many Numba threads. Speed-up: over the one-process run; efficiency: speed-up / N.",
                  "", table(SCALING_COLUMNS, steady)] if steady else ["No scaling run was measured (see Skipped)."]
    skips = [f"- {r['device']} {_row_name(r)}: {r['skipped']}" for r in rows if "skipped" in r]
    skips += [f"- scaling {r['device']}, {r['ranks']} process{'es' if r['ranks'] > 1 else ''}: {r['skipped']}"
              for r in scaling or [] if "skipped" in r]
    return lines + skipped_block(skips, h)


def render_markdown(report: dict) -> str:
    return frame(report, PROG, body(report))


# ---- command line ---------------------------------------------------------------------------------

def build_parser() -> OneLineParser:
    return command_parser(PROG, "Training steps/s: the step fed by ready synthetic tensors against the step fed by "
                                "the real loader, and the paper's 2^20-step run projected.", TrainBenchConfig)


def config_from_args(args) -> TrainBenchConfig:
    from remixmatch.trainer.config import ConfigError, TrainConfig, preset_values

    if args.procs_max is not None and not args.scaling:
        raise BenchInputError("--procs-max goes with --scaling")
    checked = checked_options(args, reps=(MIN_REPS, DEFAULT_REPS, QUICK_REPS), shards=False,
                              device_hint="; use --device cpu or auto")
    paper = {**TrainConfig().to_dict(), **preset_values(None, args.algorithm)}  # the algorithm's K and mu
    config = TrainBenchConfig.from_args(args, **checked, k=paper["k"] if args.k is None else args.k,
                                        uratio=paper["uratio"] if args.uratio is None else args.uratio)
    try:
        for device in DEVICES:
            config.train_config(device)
    except ConfigError as error:
        raise BenchInputError(str(error)) from None
    return config


def progress_line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['device']} {_row_name(r)}: skipped ({r['skipped']})"
    s = r["spread"]
    return (f"{r['device']} {r['model']} {_row_name(r)}: {r['steps_per_s']:.2f} steps/s "
            f"({format_rate(r['images_per_s'])} images/s; wait {1000 * r['wait_seconds_per_step']:.1f} ms/step; "
            f"median of {r['reps']} x {r['steps_per_rep']} steps, {s['min']:.2f}-{s['max']:.2f}; "
            f"2^20 steps: {format_hours(r['projected_hours'])})")
