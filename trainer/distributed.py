"""Several processes, one run: the launcher, the worker entry point and the world they share.

    rmm-train --gpus 8 ...                 # 8 processes, one GPU each (cuda:local_rank), NCCL, DDP
    rmm-train --device cpu --procs 2 ...   # the same code on the CPU with gloo (how CI tests it)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id JOB --no-python rmm-train --data ... --out ...   # several machines: joins torchrun's group

``--batch`` (and the unlabeled batch) are global: each of the W ranks trains on its contiguous
1/W of every step's batch (the plans are global, pipeline.plan), with its own batch-norm batch
statistics; DDP all-reduces the gradients and broadcasts rank 0's BN running statistics at each
forward (and the run broadcasts them before each evaluation and checkpoint). Rank 0 alone writes
progress, metrics.jsonl, checkpoints and summary.json.

The launcher is torch's elastic agent (c10d rendezvous on a free local port, spawned workers): a
worker that dies brings the group down within a monitor interval; ``--max-restarts N`` restarts the
group, whose workers then resume from the last checkpoint. A worker that fails with a known error
(bad input: exit 2, diverged: exit 3) leaves its one-line message for the launcher, which prints it
prefixed with the rank and exits with the same code; such an error is not retried.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
import warnings
import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch

from remixmatch.common.atomic import atomic_write_text
from remixmatch.common.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED, RemixMatchError
from remixmatch.common.errors import EXIT_FAILED as EXIT_WORKER_FAILED

from .config import ConfigError, TrainConfig

MONITOR_INTERVAL_S = 0.2  # how often the agent looks at its workers
SHUTDOWN_TIMEOUT_S = 10  # SIGTERM, then SIGKILL after this long
PEER_GRACE_S = 3.0  # an unexpected error waits this long before it ends its process (see worker_entry)
_FATAL = "fatal.txt"  # a non-retryable error of an earlier attempt (message dir)


@dataclass(frozen=True)
class World:
    """How a run spreads over processes: ``launch`` spawns ``nprocs`` workers here; ``torchrun``
    joins the group torchrun started (this process is one of its workers)."""

    mode: str  # "launch" | "torchrun"
    nprocs: int  # processes on this machine
    cuda: bool  # one GPU per process (NCCL) or CPU processes (gloo)
    world_size: int
    max_restarts: int = 0


def torchrun_env() -> dict | None:
    """RANK / WORLD_SIZE / LOCAL_RANK (and LOCAL_WORLD_SIZE) when started by torchrun, else None."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(name in os.environ for name in names):
        return None
    try:
        env = {name.lower(): int(os.environ[name]) for name in names}
        env["local_world_size"] = int(os.environ.get("LOCAL_WORLD_SIZE", env["world_size"]))
    except ValueError:
        raise ConfigError(f"RANK, WORLD_SIZE, LOCAL_RANK must be integers, got "
                          f"{', '.join(os.environ[n] for n in names)}") from None
    return env


def uses_rotation_head(config: TrainConfig) -> bool:
    """Whether every step's backward reaches every parameter (the rotation head included): the step
    computes the rotation head outside the DDP forward, from strong view 1, whenever it computes
    the pre-mixup or rotation loss."""
    return config.algorithm == "remixmatch" and config.k >= 1 and (config.w_kl > 0 or config.w_rot > 0)


def plan_world(config: TrainConfig, gpus: int | None, procs: int | None, max_restarts: int | None,
               env: dict | None = None) -> tuple[World | None, TrainConfig]:
    """The world of a command line (None: one process, as before) and the config its workers run,
    refusing contradictions and batches that do not split, before anything starts."""
    env = torchrun_env() if env is None else env
    device = config.device
    if gpus is not None and procs is not None:
        raise ConfigError("--gpus and --procs contradict each other: --gpus N for N GPU processes, "
                          "--device cpu --procs N for N CPU processes")
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    if procs is not None and procs < 1:
        raise ConfigError(f"--procs must be at least 1, got {procs}")
    if max_restarts is not None and max_restarts < 0:
        raise ConfigError(f"--max-restarts must be at least 0, got {max_restarts}")
    if gpus is not None and device != "auto" and device != "cuda":
        raise ConfigError(f"--gpus {gpus} runs process r on cuda:r; it contradicts --device {device} "
                          f"(use --device cpu --procs {gpus} for CPU processes)")
    if procs is not None and device not in ("auto", "cpu"):
        raise ConfigError(f"--procs {procs} runs CPU processes; it contradicts --device {device} "
                          f"(use --gpus {procs} for GPU processes)")
    if env is not None:
        if max_restarts is not None:
            raise ConfigError("--max-restarts has no effect under torchrun: pass --max-restarts to torchrun")
        asked = gpus if gpus is not None else procs
        if asked is not None and asked != env["local_world_size"]:
            raise ConfigError(f"--{'gpus' if gpus is not None else 'procs'} {asked} contradicts torchrun's "
                              f"{env['local_world_size']} processes per node (LOCAL_WORLD_SIZE)")
        if gpus is not None or (device != "cpu" and device.startswith("cuda")):
            cuda = True
        elif procs is not None or device == "cpu":
            cuda = False
        else:
            cuda = torch.cuda.is_available()
        if cuda and torch.cuda.device_count() < env["local_world_size"]:
            raise ConfigError(f"torchrun starts {env['local_world_size']} processes per node but only "
                              f"{torch.cuda.device_count()} CUDA devices are visible here")
        world = World("torchrun", env["local_world_size"], cuda, env["world_size"])
    elif gpus is None and procs is None:
        if max_restarts is not None:
            raise ConfigError("--max-restarts needs --gpus N or --procs N (the launcher restarts its workers)")
        return None, config
    else:
        cuda = gpus is not None
        n = gpus if cuda else procs
        if cuda and torch.cuda.device_count() < n:
            raise ConfigError(f"--gpus {n}: only {torch.cuda.device_count()} CUDA devices are visible "
                              f"(torch.cuda.device_count(), CUDA build: {torch.version.cuda or 'none'})")
        world = World("launch", n, cuda, n, max_restarts or 0)
    check_divisible(config, world.world_size)
    return world, config.replace(device="cuda" if world.cuda else "cpu")


def check_divisible(config: TrainConfig, world_size: int) -> None:
    """The global batches split evenly over the ranks (the evaluation needs not: each rank takes its
    contiguous share of the rows, the last share possibly smaller)."""
    for flag, value in (("--batch", config.batch), ("the unlabeled batch (--batch x --uratio)", config.unlabeled_batch)):
        if value % world_size:
            raise ConfigError(f"{flag} {value} does not split over {world_size} processes: the batch is global "
                              f"and must be a multiple of the world size {world_size}")


# -- inside a worker ------------------------------------------------------------------------------------


def _attempt_store():
    """The store of MASTER_ADDR:MASTER_PORT under a prefix of this attempt, or None (plain env://).
    The elastic agent's store outlives a restart: without the prefix, a restarted rank can read the
    address its dead predecessor published and fail to connect ("Connection refused")."""
    import torch.distributed as dist

    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(addr, int(port), world_size, is_master=not agent_store and rank == 0,
                          timeout=timedelta(minutes=10), multi_tenant=True)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"rmm-train/attempt-{attempt}", store)


def init_group(cuda: bool, local_rank: int) -> torch.device:
    """The process group from the environment torchrun or the elastic agent set."""
    import torch.distributed as dist

    store = _attempt_store()
    group = {} if store is None else {"store": store, "rank": int(os.environ["RANK"]),
                                      "world_size": int(os.environ["WORLD_SIZE"])}
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, **group)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", **group)
    return device


def teardown_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (a new tensor; every rank gets the same one)."""
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def ddp_wrapper(config: TrainConfig, device: torch.device):
    """Run's ``wrap_model``. The rotation head runs outside the DDP forward (state.raw_model): its
    gradients still reach DDP's hooks when the loss uses it, and find_unused_parameters must then
    be False (it would mark the head unused at forward time, then see its gradient arrive). When
    no loss uses the head (supervised, k = 0, w_kl = w_rot = 0) its parameters get no gradient and
    find_unused_parameters must be True."""

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=not uses_rotation_head(config))

    return wrap


def train_run(run) -> None:
    """What a worker does with its ``Run`` unless told otherwise: train it."""
    run.train()


def run_worker(config: TrainConfig, out: str, resume: bool, quiet: bool, cuda: bool,
               work: Callable = train_run) -> tuple[int, str, str]:
    """One rank's run: (exit code, one-line message, traceback or ""). The group is set up from the
    environment and torn down after a clean finish; ``work(run)`` is what the rank does with its
    ``Run`` (train it; a caller may wrap that, to record what the rank saw, say)."""
    from .run import Run

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    # A restarted group continues the run it restarts (from its last checkpoint, if any).
    resume = resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    try:
        device = init_group(cuda, local_rank)
        if cuda:
            config = config.replace(device=str(device))
        else:
            if not config.threads:
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            # CPU models are not channels_last, their NHWC inputs make 1x1-conv gradients so: harmless.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        run = Run(config, Path(out), resume=resume, rank=rank, world_size=world_size,
                  all_reduce_mean=all_reduce_mean if world_size > 1 else None,
                  wrap_model=ddp_wrapper(config, device) if world_size > 1 else None, quiet=quiet)
        work(run)
    except RemixMatchError as error:  # bad input from any layer, or a diverged run (exit 3)
        return error.exit_code, str(error), ""
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED, "interrupted; continue with --resume (from the last checkpoint)", ""
    except Exception as error:
        message = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        return EXIT_WORKER_FAILED, message, traceback.format_exc()
    teardown_group()
    return 0, "", ""


def _write_message(path: Path, code: int, message: str, trace: str) -> None:
    atomic_write_text(path, f"{code}\n{' '.join(message.split())}\n{trace}")  # the message stays one line


def _read_message(path: Path) -> tuple[int, str, str] | None:
    try:
        code, message, trace = path.read_text().split("\n", 2)
        return int(code), message, trace
    except (OSError, ValueError):
        return None


def worker_entry(config: TrainConfig, out: str, resume: bool, quiet: bool, cuda: bool, messages: str,
                 work: Callable = train_run) -> None:
    """The launcher's worker (a spawned process). A failure leaves ``messages/rank<R>-<pid>.txt``
    (exit code, message, traceback) and ends the process with that code at once: no teardown that
    could wait on a dead peer."""
    rank = int(os.environ["RANK"])
    folder = Path(messages)
    fatal = _read_message(folder / _FATAL)
    if fatal is not None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        code, message, trace = fatal  # bad input or divergence: a restart would fail the same way
    else:
        code, message, trace = run_worker(config, out, resume, quiet, cuda, work)
    if code == 0:
        return
    if code == EXIT_WORKER_FAILED and int(os.environ["WORLD_SIZE"]) > 1:
        # Most often a collective that lost a peer: the peer that died first is the one to report.
        # The agent notices it within a monitor interval and stops this process meanwhile; a
        # failure of this rank's own stays the one reported after the grace period.
        time.sleep(PEER_GRACE_S)
    _write_message(folder / f"rank{rank}-{os.getpid()}.txt", code, message, trace)
    if code in (EXIT_BAD_INPUT, EXIT_DIVERGED) and fatal is None:
        _write_message(folder / _FATAL, code, message, "")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def root_cause(failures: dict, messages: Path) -> tuple[int, int, str, str]:
    """(rank, exit code, message, traceback) of the failure to report, from ChildFailedError's
    failures (global rank -> ProcessFailure): a known error first (the lowest rank), then a rank
    that died of a signal, then any other."""
    known, killed, other = [], [], []
    for rank in sorted(failures):
        failure = failures[rank]
        note = _read_message(messages / f"rank{rank}-{failure.pid}.txt")
        if note is not None and note[0] in (EXIT_BAD_INPUT, EXIT_DIVERGED):
            known.append((rank, *note))
        elif failure.exitcode < 0:
            try:
                name = signal.Signals(-failure.exitcode).name
            except ValueError:
                name = f"signal {-failure.exitcode}"
            killed.append((rank, EXIT_WORKER_FAILED,
                           f"worker process {failure.pid} died of {name}; the whole group was stopped", ""))
        elif note is not None:
            other.append((rank, EXIT_WORKER_FAILED if note[0] == 0 else note[0], *note[1:]))
        else:
            other.append((rank, EXIT_WORKER_FAILED,
                          f"worker process {failure.pid} exited with code {failure.exitcode}", ""))
    return (known or killed or other)[0]


def make_launch_config(launch_config_class, world: World):
    """The elastic agent's settings for one machine. ``shutdown_timeout`` is set only where this torch
    has it (2.13 does, 2.11 does not): elsewhere the agent's own grace before SIGKILL applies.
    Everything is on this machine, so the workers meet at 127.0.0.1: by default they would connect
    to ``socket.getfqdn()``, which need not resolve in a VM (``local_addr``: torch 2.11 and 2.13 have
    it; where a torch lacks it, the rendezvous endpoint alone says 127.0.0.1)."""
    settings = dict(
        min_nodes=1, max_nodes=1, nproc_per_node=world.nprocs, run_id=f"rmm-train-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint=f"{LOCAL_ADDR}:0", max_restarts=world.max_restarts,
        monitor_interval=MONITOR_INTERVAL_S, start_method="spawn")
    fields = {f.name for f in dataclasses.fields(launch_config_class)}
    if "shutdown_timeout" in fields:
        settings["shutdown_timeout"] = SHUTDOWN_TIMEOUT_S
    if "local_addr" in fields:
        settings["local_addr"] = LOCAL_ADDR
    return launch_config_class(**settings)


LOCAL_ADDR = "127.0.0.1"


def single_node_network_env(environ=os.environ) -> None:
    """NCCL's bootstrap on the loopback interface unless the user named one: one machine needs no
    other, and a VM's first interface may not route to itself."""
    environ.setdefault("NCCL_SOCKET_IFNAME", "lo")


def launch(config: TrainConfig, out: Path, world: World, *, resume: bool, quiet: bool,
           prog: str = "rmm-train", work: Callable = train_run) -> int:
    """Spawns the workers under torch's elastic agent and waits for them: the exit code of the run.
    ``work(run)`` is what each worker does with its ``Run`` (``run_worker``); the spawned processes
    unpickle it, so it must be a module-level callable (or a ``functools.partial`` of one) that they
    can import."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent's own log lines (and its multi-line failure report) would bury the one-line message.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    messages = Path(tempfile.mkdtemp(prefix="rmm-train-"))
    single_node_network_env()
    launch_config = make_launch_config(LaunchConfig, world)
    try:
        elastic_launch(launch_config, worker_entry)(config, str(out), resume, quiet, world.cuda, str(messages), work)
    except ChildFailedError as error:
        rank, code, message, trace = root_cause(error.failures, messages)
        if trace:
            print(trace.rstrip(), file=sys.stderr)
        print(f"{prog}: error: rank {rank}: {message}", file=sys.stderr, flush=True)
        return code
    except SignalException as stop:  # the agent has stopped the workers
        print(f"{prog}: {signal.Signals(stop.sigval).name}: stopped; continue with --resume (from the last "
              "checkpoint)", file=sys.stderr, flush=True)
        return 128 + int(stop.sigval)
    finally:
        shutil.rmtree(messages, ignore_errors=True)
    return 0


def join(config: TrainConfig, out: Path, world: World, *, resume: bool, quiet: bool, prog: str = "rmm-train",
         work: Callable = train_run) -> int:
    """Under torchrun: this process is one rank of torchrun's group."""
    code, message, trace = run_worker(config, str(out), resume, quiet, world.cuda, work)
    if code:
        if trace:
            print(trace.rstrip(), file=sys.stderr)
        print(f"{prog}: error: rank {os.environ['RANK']}: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)  # no teardown that could wait on a dead peer; torchrun stops the others
    return 0


__all__ = ["World", "all_reduce_mean", "check_divisible", "ddp_wrapper", "join", "launch", "make_launch_config", "plan_world",
           "root_cause", "run_worker", "torchrun_env", "train_run", "uses_rotation_head", "worker_entry"]

