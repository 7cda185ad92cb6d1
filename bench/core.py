"""What every ``rmm-bench`` command shares: the timer, the CUDA probe, the PIL process pool, the
Numba thread pinning, and the command-line options with their checks, each written once.

This module imports nothing heavy at import time: ``--help`` costs no NumPy, Numba or torch import.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.common.paths import SHARDS_ENV, resolve_path

from .errors import BenchInputError
from .report import spread, usable_cpus

# ---- timing -------------------------------------------------------------------------------------------


def no_sync() -> None:
    """The ``sync`` of host work: nothing is queued on a device."""
    return None


@dataclass(frozen=True)
class Timing:
    """Repetitions of back-to-back calls: seconds per call, one entry per repetition."""

    per_call: list[float]
    calls_per_rep: int
    warmup_calls: int
    first_seconds: float  # the very first call (JIT loads, pipeline builds, lazy allocations)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.per_call)

    def rate_fields(self, per_call: float = 1.0, unit: str = "steps") -> dict:
        """The report fields of a rate of ``per_call`` ``unit`` per call (median, spread of the rate)."""
        rates = [per_call / seconds for seconds in self.per_call]
        return {f"{unit}_per_s": statistics.median(rates), "spread": spread(rates), "reps": len(self.per_call)}

    def fields(self) -> dict:
        """A step rate's report fields (``rmm-bench pipeline`` and ``train`` rows)."""
        rate = self.rate_fields()
        return {"steps_per_s": rate["steps_per_s"], "seconds_per_step": self.median_seconds,
                "spread": rate["spread"], "reps": rate["reps"], "steps_per_rep": self.calls_per_rep,
                "warmup_steps": self.warmup_calls}


def time_calls(call: Callable[[], object], reps: int, rep_seconds: float, *, min_calls: int = 1,
               max_calls: int = 10_000, warm_calls: int = 0, sync: Callable[[], None] = no_sync,
               after_rep: Callable[[int, int], None] | None = None) -> Timing:
    """One first call, ``warm_calls`` more (their median, else the first call's time, sizes the
    repetitions: at least ``min_calls`` calls and about ``rep_seconds``), then ``reps`` repetitions of
    back-to-back calls. ``sync`` waits for queued device work at the end of each timed block;
    ``after_rep(rep, calls)`` runs outside the timed region."""
    start = time.perf_counter()
    call()
    sync()
    first = time.perf_counter() - start
    warm = []
    for _ in range(warm_calls):
        start = time.perf_counter()
        call()
        sync()
        warm.append(time.perf_counter() - start)
    typical = statistics.median(warm) if warm else first
    calls = max(min_calls, min(max_calls, math.ceil(rep_seconds / max(typical, 1e-6))))
    per_call = []
    for rep in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        per_call.append((time.perf_counter() - start) / calls)
        if after_rep is not None:
            after_rep(rep, calls)
    return Timing(per_call, calls, warm_calls, first)


# ---- devices and threads ------------------------------------------------------------------------------

def cuda_unavailable_reason() -> str | None:
    """Why torch cannot run on a CUDA device here, or None when it can."""
    try:
        import torch
    except Exception as error:
        return f"torch is not importable ({type(error).__name__}: {error})"
    if not torch.cuda.is_available():
        return (f"no CUDA device (torch.cuda.is_available() is False; torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'})")
    return None


def gpu_count() -> int:
    """The CUDA devices torch sees (0 without torch or a device)."""
    return 0 if cuda_unavailable_reason() else __import__("torch").cuda.device_count()


def device_name(device: str) -> str:
    """``cpu``, or the name of the current CUDA device."""
    import torch

    return torch.cuda.get_device_name() if device != "cpu" else "cpu"


def measured(rows: list[dict]) -> list[dict]:
    """The rows that hold figures: not the skipped ones."""
    return [r for r in rows if "skipped" not in r]


def find(rows: list[dict], **match) -> dict | None:
    """The first measured row whose fields hold the ``match`` values."""
    return next((r for r in measured(rows) if all(r.get(k) == v for k, v in match.items())), None)


def value(row: dict | None, key: str):
    """A summary's figure: the row's field, None where the row was not measured."""
    return row[key] if row else None


def ratio(a: dict | None, b: dict | None, key: str = "steps_per_s") -> float | None:
    """A summary's ratio of two rows' figures, None where either was not measured."""
    return a[key] / b[key] if a and b else None


def error_reason(error: BaseException) -> str:
    """An exception as the one-line reason a skipped row gives."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}" if not isinstance(error, ValueError) else text


class NumbaThreadsFetcher:
    """A fetcher that sets the Numba thread count of the thread it runs in, then fetches.

    ``numba.set_num_threads`` is thread-local: a count set in the caller's thread does not reach the
    StepLoader's render thread, which would run the kernel on every core (NUMBA_NUM_THREADS). The
    fetcher runs in that thread right before the kernel, so setting it here pins the render."""

    def __init__(self, inner, threads: int):
        self.inner, self.threads = inner, threads

    def __call__(self, rows):
        import numba

        if numba.get_num_threads() != self.threads:
            numba.set_num_threads(self.threads)
        return self.inner(rows)

    def close(self) -> None:
        self.inner.close()


def numba_threads_info() -> dict:
    """The threading layer Numba used in this process (None: no parallel kernel ran) and the one asked for."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    return {"numba_threading_layer": layer, "numba_threading_layer_config": numba.config.THREADING_LAYER}


# ---- the PIL process pool -----------------------------------------------------------------------------

def _worker_pid(_: int) -> int:
    time.sleep(0.01)  # keeps one ready worker from taking every probe while the others start
    return os.getpid()


def _pil_worker_init() -> None:
    # Imports PIL and the reference in each worker at start-up, outside the timed region.
    import PIL.Image  # noqa: F401

    import remixmatch.kernels.pil_reference  # noqa: F401


@contextmanager
def process_pool(processes: int):
    """A started pool of ``processes`` PIL workers (PIL and the reference imported) and its start-up seconds."""
    # spawn, not fork: the parent runs Numba, DALI and torch threads, which fork does not copy.
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    pool = context.Pool(processes, initializer=_pil_worker_init)
    try:
        seen: set[int] = set()
        while len(seen) < processes:
            seen.update(pool.map(_worker_pid, range(processes), chunksize=1))
        yield pool, time.perf_counter() - start
    finally:
        pool.terminate()
        pool.join()


# ---- command-line options and their checks -------------------------------------------------------------

def flag(default=None, help: str | None = None, *, parsed: object = ..., option: str | None = None, **argparse):
    """A config field that is also its command's ``--name`` option (:func:`add_flags`; ``option``: another
    name): ``parsed``, when given, is the option's default where a later check resolves it (None: "the
    algorithm's", or a check's default)."""
    return field(default=default, metadata={"flag": {"default": default if parsed is ... else parsed,
                                                     "help": help, **argparse}, "option": option})


# The options most commands share, as flag fields; checked_options checks them.
def out_flag(what: str = "report.json and report.md"):
    return flag(None, f"directory for {what}", type=Path, required=True)


def device_flag(help: str):
    return flag("auto", help, choices=("auto", "cpu", "cuda"))


def reps_flag(minimum: int, default: int, quick: int, what: str = "row"):
    return flag(default, f"timed repetitions per {what}, at least {minimum} (default {default}; {quick} with --quick)",
                parsed=None, type=int)


def threads_flag(what: str, default: int | None = 1):
    return flag(default, f"{what} (default: all usable cores)", parsed=None, type=positive_int)


def shards_flag(without: str = ""):
    return flag(None, f"a shard directory (prep-cifar10 --out; default: ${SHARDS_ENV}){without}", type=Path)


def labels_flag():
    return flag(250, "labeled images of the subset (250)", type=positive_int)


def valid_flag():
    return flag(5000, "training rows held out as validation (5000)", type=int)


def add_flags(parser: OneLineParser, config_class) -> None:
    """The ``--name`` options of ``config_class``'s :func:`flag` fields, in field order; a bool field's
    option is a switch."""
    for f in fields(config_class):
        if "flag" in f.metadata:
            switch = {"action": "store_true"} if f.type in ("bool", bool) else {}
            parser.add_argument("--" + (f.metadata["option"] or f.name.replace("_", "-")), dest=f.name, **switch,
                                **f.metadata["flag"])


def command_parser(prog: str, description: str, config_class) -> OneLineParser:
    """A command's parser: the options of its config's flag fields."""
    parser = OneLineParser(prog=prog, description=description)
    add_flags(parser, config_class)
    return parser


@dataclass(frozen=True)
class CommandConfig:
    """A command's checked options; :meth:`as_dict` is its report's ``config`` (paths as text)."""

    def as_dict(self) -> dict:
        return {name: str(value) if isinstance(value, Path) else value for name, value in asdict(self).items()}

    @classmethod
    def from_args(cls, args, **checked):
        """The parsed options the config holds, the ``checked`` values in place of the parsed ones."""
        return cls(**{f.name: checked[f.name] if f.name in checked else getattr(args, f.name) for f in fields(cls)})


def checked_options(args, *, reps: tuple[int, int, int] | None = None, shards: bool | None = None,
                    threads: int | None = None, device_hint: str = "",
                    cuda_reason: Callable[[], str | None] = cuda_unavailable_reason) -> dict:
    """The shared options a command's parser has (the ``add_*`` above), checked in one place:
    --reps (``reps``: its minimum, default and --quick default), --valid, --threads (default
    ``threads``, else every usable core; at most NUMBA_NUM_THREADS), --out, --shards (``shards``:
    required or not), --device cuda (``cuda_reason``: the probe of the library the command runs on).
    Returns the resolved --reps, --threads and --shards."""
    checked = {}
    if reps is not None:
        minimum, default, quick_default = reps
        checked["reps"] = args.reps if args.reps is not None else (quick_default if args.quick else default)
        if checked["reps"] < minimum:
            raise BenchInputError(f"--reps must be at least {minimum} (every figure is a median of >= {minimum} "
                                  f"repetitions), got {checked['reps']}")
    if hasattr(args, "valid"):
        check_valid(args.valid)
    if hasattr(args, "threads"):
        import numba

        checked["threads"] = args.threads or threads or usable_cpus()
        if not 1 <= checked["threads"] <= numba.config.NUMBA_NUM_THREADS:
            raise BenchInputError(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS), "
                                  f"got {checked['threads']}")
    check_out(args.out)
    if shards is not None:
        checked["shards"] = shard_directory(args.shards, required=shards)
    if hasattr(args, "device") and args.device == "cuda" and (reason := cuda_reason()):
        raise BenchInputError(f"--device cuda: {reason}{device_hint}")
    return checked


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BenchInputError(f"--out {out} exists and is not a directory")


def check_valid(valid: int) -> None:
    if valid < 0:
        raise BenchInputError(f"--valid must be at least 0, got {valid}")


def shard_directory(value: Path | None, required: bool) -> Path | None:
    """The benchmark's shard directory: --shards, else $REMIXMATCH_SHARDS; checked to be one."""
    source = resolve_path(value, "--shards", SHARDS_ENV)
    if source is None:
        if required:
            raise BenchInputError(f"no shard directory: pass --shards DIR (prep-cifar10 --out) or set {SHARDS_ENV}")
        return None
    if not source.path.is_dir():
        raise BenchInputError(f"{source}: no such directory")
    if not (source.path / "manifest.json").is_file():
        raise BenchInputError(f"{source}: not a shard directory (no manifest.json)")
    return source.path
