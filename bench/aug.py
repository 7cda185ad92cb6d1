"""``rmm-bench aug``: strong-view throughput of the fused Numba kernels against the PIL reference.

K = 8 depth-2 views (the library's probe sampler) of 64 images (:mod:`remixmatch.bench.images`),
the same for every backend: ``pil`` (one process), ``pil-pool`` (a worker pool, pickling timed),
``numba-cpu`` (also K = 1..16 and one row per op) and ``numba-cuda`` (512 to 65,536 views, the
per-view arrays on the device and on the host, per-op rows at the largest size). The JIT compile is
a separate row. Rows: :class:`~remixmatch.bench.rows.ViewsRow`, :class:`~remixmatch.bench.rows.CompileRow`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from remixmatch.pipeline.policy import Policies, uniform_policies

from .cli import AugConfig
from .core import (
    Timing, checked_options, find, numba_threads_info, process_pool, time_calls,
)
from .errors import BenchError
from .images import ImageSet, load_images
from .render import frame, skipped_block, table
from .report import format_rate, format_ratio, machine_info, new_report
from .rows import CompileRow, ViewsRow, skipped as rows_skipped

BATCH = 64  # images per batch: the reference code's unlabeled batch
HEADLINE_K = 8  # strong views per image (ReMixMatch's default K)
DEPTH = 2  # ops per strong view
K_SWEEP = (1, 2, 4, 8, 16)
CUDA_SIZES = (512, 8192, 65536)
MIN_REPS = 5
DEFAULT_REPS = 7
# Calls shorter than this are repeated back to back within one repetition, so that timer resolution
# and per-call jitter do not dominate; quick runs accept a noisier figure to stay under two minutes.
REP_SECONDS = {False: 0.2, True: 0.05}
MAX_CALLS = 1000  # per repetition


class AugInputError(BenchError):
    """A command-line value the benchmark cannot run with; the message is shown as one line."""


def config_from_args(args) -> AugConfig:
    """Rejects what would fail late (after minutes of compiling) before any work starts."""
    if args.busy < 0:
        raise AugInputError(f"--busy must be at least 0 (busy processes), got {args.busy}")
    if args.images is not None and args.shards is not None:
        raise AugInputError("--images and --shards name two sources of images; give one")
    import numba

    # Every usable core by default: Numba's own default, NUMBA_NUM_THREADS, already counts only those.
    return AugConfig.from_args(args, **checked_options(args, reps=(MIN_REPS, DEFAULT_REPS, MIN_REPS),
                                                       threads=numba.config.NUMBA_NUM_THREADS,
                                                       cuda_reason=cuda_unavailable_reason))


def row(backend: str, k: int, batch: int, view_set: ViewSet, op: str | None, timing: Timing,
        threads: int, device: str, inputs: str = "host", **extra) -> dict:
    return asdict(ViewsRow(backend=backend, k=k, batch=batch, views=view_set.views, depth=view_set.depth, op=op,
                           inputs=inputs, **timing.rate_fields(view_set.views, "views"), seconds=timing.median_seconds,
                           calls_per_rep=timing.calls_per_rep, threads=threads, device=device, **extra))


def skipped(backend: str, reason: str) -> dict:
    return rows_skipped(ViewsRow, reason, backend=backend)


def _import_error_reason(module: str, error: BaseException) -> str:
    return f"{module} is not importable here ({type(error).__name__}: {error})"


# ---- the workload -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewSet:
    """K views of each of a batch of images: the library's policies, and the image each view reads
    (image-major: the K views of one image are adjacent, so a chunk of images is a slice of views)."""

    policies: Policies
    sources: np.ndarray  # (N,) int32

    @property
    def views(self) -> int:
        return len(self.policies)

    @property
    def depth(self) -> int:
        return self.policies.depth

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (*self.policies.arrays(), self.sources)

    def image_range(self, start: int, stop: int, k: int) -> ViewSet:
        """The views of images [start, stop) with sources renumbered from 0 (a worker's chunk)."""
        views = slice(start * k, stop * k)
        return ViewSet(self.policies[views], self.sources[views] - np.int32(start))


def sample_views(images: int, k: int, depth: int, rng: np.random.Generator, ops: list[int] | None = None) -> ViewSet:
    """K views per image, ops and levels uniform (CTAugment's probe sampler)."""
    sources = np.repeat(np.arange(images, dtype=np.int32), k)
    return ViewSet(uniform_policies(images * k, depth, rng, ops), sources)


@dataclass(frozen=True)
class Workload:
    images: ImageSet
    seed: int

    def mixed(self, k: int = HEADLINE_K, batch: int = BATCH) -> ViewSet:
        """Depth-2 views, ops uniform over all ops: seeded per (seed, batch, K)."""
        return sample_views(batch, k, DEPTH, np.random.default_rng([self.seed, batch, k, DEPTH]))

    def single_op(self, op_id: int, k: int = HEADLINE_K, batch: int = BATCH) -> ViewSet:
        """Depth-1 views that all apply ``op_id``: that op's cost."""
        rng = np.random.default_rng([self.seed, batch, k, 1, 1000 + op_id])
        return sample_views(batch, k, 1, rng, ops=[op_id])


def op_table() -> list[tuple[int, str]]:
    from remixmatch.kernels.ops import OP_NAMES

    return list(enumerate(OP_NAMES))


# ---- PIL ----------------------------------------------------------------------------------------------

def _pil_apply():
    from remixmatch.kernels.pil_reference import apply_ops_batch

    return apply_ops_batch


def _pil_chunk(task: tuple) -> np.ndarray:
    """Pool worker: one chunk of images with their views (module level so that spawn can pickle it)."""
    images, op_ids, levels, rand, sources = task
    return _pil_apply()(images, op_ids, levels, rand, sources=sources)


def run_pil(work: Workload, config: AugConfig, log) -> list[dict]:
    try:
        apply_ops_batch = _pil_apply()
    except Exception as error:  # a missing or broken reference must not cost the other backends
        return [skipped("pil", _import_error_reason("remixmatch.kernels.pil_reference", error))]
    rows = []
    rep_seconds = REP_SECONDS[config.quick]
    pixels = work.images.pixels
    cases = [(None, work.mixed())]
    if not config.quick:
        cases += [(name, work.single_op(op_id)) for op_id, name in op_table()]
    for op, view_set in cases:
        timing = time_calls(lambda p=view_set: apply_ops_batch(pixels, *p.policies.arrays(), sources=p.sources),
                            config.reps, rep_seconds, max_calls=MAX_CALLS)
        rows.append(row("pil", HEADLINE_K, BATCH, view_set, op, timing, threads=1, device="cpu"))
        log(rows[-1])
    return rows


def _pool_call(pool, pixels: np.ndarray, view_set: ViewSet, k: int, processes: int):
    # One chunk of whole images per process, like the reference code's one-batch-per-task workers.
    bounds = np.linspace(0, len(pixels), processes + 1).astype(int)
    tasks = [(pixels[a:b], *view_set.image_range(a, b, k).arrays()) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def call():
        return np.concatenate(pool.map(_pil_chunk, tasks, chunksize=1))

    return call


def run_pil_pool(work: Workload, config: AugConfig, log) -> list[dict]:
    try:
        _pil_apply()
    except Exception as error:
        return [skipped("pil-pool", _import_error_reason("remixmatch.kernels.pil_reference", error))]
    processes = config.threads
    with process_pool(processes) as (pool, startup):
        view_set = work.mixed()
        timing = time_calls(_pool_call(pool, work.images.pixels, view_set, HEADLINE_K, processes),
                            config.reps, REP_SECONDS[config.quick], max_calls=MAX_CALLS)
    result = row("pil-pool", HEADLINE_K, BATCH, view_set, None, timing, threads=processes, device="cpu",
                 startup_seconds=startup)
    log(result)
    return [result]


# ---- Numba CPU ----------------------------------------------------------------------------------------

def numba_cache_outcome(module_name: str) -> str:
    """Whether the module's Numba dispatchers were loaded from the on-disk cache or compiled."""
    from remixmatch.kernels.numba_internals import cache_counts

    module = sys.modules.get(module_name)
    hits = misses = 0
    for value in vars(module).values() if module else ():
        counts = cache_counts(value)
        if counts is not None:
            hits, misses = hits + counts[0], misses + counts[1]
    if hits and misses:
        return "partial"
    return "hit" if hits else "miss" if misses else "unknown"


def compile_entry(backend: str, compile_all_seconds: float | None, first: float, steady: float, cache: str) -> dict:
    return asdict(CompileRow(backend=backend, seconds=(compile_all_seconds or 0.0) + max(0.0, first - steady),
                             method="compile_all + first call" if compile_all_seconds is not None else "first call",
                             compile_all_seconds=compile_all_seconds, first_call_seconds=first,
                             steady_call_seconds=steady, cache=cache))


def run_numba_cpu(work: Workload, config: AugConfig, log) -> tuple[list[dict], dict]:
    """The numba-cpu rows and the threads it ran with."""
    try:
        import numba

        from remixmatch import kernels
    except Exception as error:
        return [skipped("numba-cpu", _import_error_reason("remixmatch.kernels", error))], {}
    numba.set_num_threads(config.threads)
    apply_ops = kernels.apply_ops
    pixels = work.images.pixels
    rep_seconds = REP_SECONDS[config.quick]

    def bound(view_set: ViewSet):
        out = np.empty((view_set.views, *pixels.shape[1:]), np.uint8)
        return lambda: apply_ops(pixels, *view_set.policies.arrays(), sources=view_set.sources, out=out)

    log("numba-cpu: compiling (tens of seconds unless Numba's cache has the kernels)")
    compile_all = getattr(kernels, "compile_all", None)
    compile_seconds = None
    if compile_all is not None:
        start = time.perf_counter()
        compile_all()
        compile_seconds = time.perf_counter() - start
    headline = work.mixed()
    headline_call = bound(headline)
    first = time_calls(headline_call, 0, 0.0).first_seconds
    cache = numba_cache_outcome("remixmatch.kernels.cpu")

    rows = []
    for k in K_SWEEP:
        view_set = headline if k == HEADLINE_K else work.mixed(k)
        timing = time_calls(headline_call if k == HEADLINE_K else bound(view_set), config.reps, rep_seconds,
                            max_calls=MAX_CALLS)
        rows.append(row("numba-cpu", k, BATCH, view_set, None, timing, config.threads, "cpu"))
        log(rows[-1])
    steady = next(r["seconds"] for r in rows if r["k"] == HEADLINE_K)
    rows.insert(0, compile_entry("numba-cpu", compile_seconds, first, steady, cache))
    log(rows[0])
    for op_id, name in op_table():
        view_set = work.single_op(op_id)
        rows.append(row("numba-cpu", HEADLINE_K, BATCH, view_set, name,
                        time_calls(bound(view_set), config.reps, rep_seconds, max_calls=MAX_CALLS), config.threads,
                        "cpu"))
        log(rows[-1])
    return rows, {"numba": numba.get_num_threads(), **numba_threads_info()}


# ---- Numba CUDA ---------------------------------------------------------------------------------------

def cuda_unavailable_reason() -> str | None:
    try:
        from numba import cuda
    except Exception as error:
        return _import_error_reason("numba.cuda", error)
    if not cuda.is_available():
        return "no CUDA device (numba.cuda.is_available() is False)"
    return None


def cuda_device_name() -> str:
    from numba import cuda

    # The simulator's device (NUMBA_ENABLE_CUDASIM=1) has no name.
    name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
    return name.decode() if isinstance(name, bytes) else str(name)


def run_numba_cuda(work: Workload, config: AugConfig, log) -> list[dict]:
    try:
        from numba import cuda

        from remixmatch.kernels import apply_ops
    except Exception as error:
        return [skipped("numba-cuda", _import_error_reason("remixmatch.kernels (CUDA)", error))]
    device = cuda_device_name()
    stream = cuda.stream()
    rep_seconds = REP_SECONDS[config.quick]

    def bound(images, view_set: ViewSet, on_device: bool):
        arrays = [cuda.to_device(a, stream=stream) for a in view_set.arrays()] if on_device else view_set.arrays()
        op_ids, levels, rand, sources = arrays
        out = cuda.device_array((view_set.views, *images.shape[1:]), np.uint8, stream=stream)
        # Device-resident per-view arrays come from the benchmark's own sampler: their value checks
        # (a device-to-host copy and a wait) are skipped so the rows time the kernel alone.
        return lambda: apply_ops(images, op_ids, levels, rand, sources=sources, out=out, stream=stream,
                                 check_values=not on_device)

    rows = []
    log("numba-cuda: compiling (on the first call)")
    for n in CUDA_SIZES:
        batch = n // HEADLINE_K
        images = cuda.to_device(work.images.tiled(batch), stream=stream)
        view_set = work.mixed(HEADLINE_K, batch)
        for on_device in (True, False):
            # The very first call compiles: one more call sizes the repetitions.
            timing = time_calls(bound(images, view_set, on_device), config.reps, rep_seconds, max_calls=MAX_CALLS,
                                warm_calls=0 if rows else 1, sync=stream.synchronize)
            rows.append(row("numba-cuda", HEADLINE_K, batch, view_set, None, timing, 1, device,
                            inputs="device" if on_device else "host"))
            log(rows[-1])
            if len(rows) == 1:  # the kernel's first call compiled it
                compiled = compile_entry("numba-cuda", None, timing.first_seconds, timing.median_seconds,
                                         numba_cache_outcome("remixmatch.kernels.cuda"))
                log(compiled)
    # Per-op rows at the largest N, whose images the last size left on the device.
    for op_id, name in op_table():
        view_set = work.single_op(op_id, HEADLINE_K, batch)
        rows.append(row("numba-cuda", HEADLINE_K, batch, view_set, name,
                        time_calls(bound(images, view_set, True), config.reps, rep_seconds, max_calls=MAX_CALLS,
                                   sync=stream.synchronize),
                        1, device, inputs="device"))
        log(rows[-1])
    return [compiled] + rows


# ---- assembling the report ---------------------------------------------------------------------------

def measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["bench"] == "aug" and "skipped" not in r]


def add_ratios(rows: list[dict]) -> None:
    """ratio_vs_pil against the pil row of the same op (the mixed pil row for mixed policies)."""
    pil = {r["op"]: r["views_per_s"] for r in measured(rows) if r["backend"] == "pil"}
    for r in measured(rows):
        if r["op"] in pil:
            r["ratio_vs_pil"] = r["views_per_s"] / pil[r["op"]]


def summarize(rows: list[dict]) -> dict:
    headline = dict(k=HEADLINE_K, batch=BATCH, op=None)
    cpu, pil, pool = (find(measured(rows), backend=b, **headline) for b in ("numba-cpu", "pil", "pil-pool"))
    cuda_rates = [r["views_per_s"] for r in measured(rows) if r["backend"] == "numba-cuda" and r["op"] is None]
    return {
        "numba_cpu_vs_pil": cpu["views_per_s"] / pil["views_per_s"] if cpu and pil else None,
        "numba_cpu_vs_pil_pool": cpu["views_per_s"] / pool["views_per_s"] if cpu and pool else None,
        "numba_cuda_best_views_per_s": max(cuda_rates) if cuda_rates else None,
    }


COLUMNS = (
    ("backend", lambda r: r["backend"]), ("K", lambda r: str(r["k"])), ("images", lambda r: str(r["batch"])),
    ("views", lambda r: str(r["views"])), ("inputs", lambda r: r["inputs"]), ("threads", lambda r: str(r["threads"])),
    ("views/s", lambda r: format_rate(r["views_per_s"])),
    ("spread", lambda r: f"{format_rate(r['spread']['min'])}-{format_rate(r['spread']['max'])}"),
    ("vs pil", lambda r: format_ratio(r["ratio_vs_pil"])), ("device", lambda r: r["device"]),
)
COMPILE_COLUMNS = (("backend", lambda r: r["backend"]), ("seconds", lambda r: f"{r['seconds']:.1f}"),
                   ("method", lambda r: r["method"]), ("Numba cache", lambda r: r["cache"]))


def body(report: dict, h: str = "##") -> list[str]:
    rows, summary, inputs = report["results"], report["summary"], report["inputs"]
    lines = [
        f"Inputs: {inputs['count']} {inputs['images']} images ({inputs['source']}), "
        f"{inputs['height']}x{inputs['width']}; {inputs['policy']}; seed {inputs['seed']}. "
        f"Each figure: median of {report['config']['reps']} repetitions after warm-up (spread: min-max).",
        "",
        f"{h} Headline: K = 8 strong views of 64 images (512 views)",
        "",
        f"- numba-cpu vs pil (one process): **{format_ratio(summary['numba_cpu_vs_pil'])}** (goal >= 10x)",
        f"- numba-cpu vs pil-pool: **{format_ratio(summary['numba_cpu_vs_pil_pool'])}**",
    ]
    if summary["numba_cuda_best_views_per_s"] is not None:
        lines.append(f"- numba-cuda best: **{format_rate(summary['numba_cuda_best_views_per_s'])} views/s** "
                     "(goal >= 20M at 32x32 on one H100)")
    lines += ["", table(COLUMNS, [r for r in measured(rows) if r["op"] is None])]
    if compiles := [r for r in rows if r["bench"] == "aug-compile"]:
        lines += ["", f"{h} JIT compile", "", table(COMPILE_COLUMNS, compiles)]
    lines += _per_op_section(rows, h)
    if "oversubscription" in report:
        from .busy import render_oversubscription

        lines += render_oversubscription(report["oversubscription"], h)
    return lines + skipped_block([f"- {r['backend']}: {r['skipped']}" for r in rows if "skipped" in r], h)


def progress_line(result: dict) -> str:
    if "skipped" in result:
        return f"{result['backend']}: skipped ({result['skipped']})"
    if result["bench"] == "aug-compile":
        return f"{result['backend']}: JIT compile {result['seconds']:.1f} s (Numba cache: {result['cache']})"
    what = result["op"] or f"K={result['k']} x {result['batch']} images"
    return (f"{result['backend']} {what} [{result['inputs']}]: {format_rate(result['views_per_s'])} views/s "
            f"(median of {result['reps']}, {format_rate(result['spread']['min'])}-{format_rate(result['spread']['max'])})")


def render_markdown(report: dict) -> str:
    return frame(report, "rmm-bench aug", body(report))


def _per_op_section(rows: list[dict], h: str = "##") -> list[str]:
    per_op = [r for r in measured(rows) if r["op"] is not None]
    if not per_op:
        return []
    backends = [b for b in ("pil", "numba-cpu", "numba-cuda") if any(r["backend"] == b for r in per_op)]

    def cell(backend: str, value):
        return lambda op: value(r) if (r := find(per_op, backend=backend, op=op)) else "-"

    columns = [("op", str), *((f"{b} views/s", cell(b, lambda r: format_rate(r["views_per_s"]))) for b in backends)]
    if "pil" in backends and "numba-cpu" in backends:
        columns.append(("numba-cpu vs pil", cell("numba-cpu", lambda r: format_ratio(r["ratio_vs_pil"]))))
    sizes = ", ".join(f"{b}: {next(r['views'] for r in per_op if r['backend'] == b)} views" for b in backends)
    return ["", f"{h} Per op (every view applies one op, depth 1, levels uniform)", "", f"Batch: {sizes}.", "",
            table(columns, list(dict.fromkeys(r["op"] for r in per_op)))]


def run(config: AugConfig, log: Callable[[object], None]) -> dict:
    """Runs every backend this machine has; returns the report (not yet written)."""
    report = new_report("aug", config.as_dict())
    images = load_images(BATCH, images=config.images, shards=config.shards, seed=config.seed, size=config.size)
    work = Workload(images, config.seed)
    policy = (f"depth {DEPTH}, op ids uniform over all {len(op_table())} ops, levels and rand uniform [0, 1) "
              "(arguments an op lacks: 0)")
    report["inputs"] = {**images.describe(), "policy": policy, "seed": config.seed}
    log(f"images: {images.kind} ({images.source}), {len(images.pixels)} x {images.pixels.shape[1:]}")

    gpu, cuda_rows = None, []
    cuda_reason = "not requested (--device cpu)" if config.device == "cpu" else cuda_unavailable_reason()
    if cuda_reason:
        cuda_rows.append(skipped("numba-cuda", cuda_reason))
    elif config.device == "cuda":  # the point of the run: its rows first, before the PIL pool's
        gpu = cuda_device_name()
        cuda_rows += run_numba_cuda(work, config, log)
    rows = run_pil(work, config, log)
    rows += run_pil_pool(work, config, log)
    threads = {"numba": None, "numba_threading_layer": None, "numba_threading_layer_config": None,
               "pil": 1, "pil_pool_processes": config.threads}
    if config.device == "cuda":
        rows.append(skipped("numba-cpu", "not requested (--device cuda)"))
    else:
        cpu_rows, numba_threads = run_numba_cpu(work, config, log)
        rows += cpu_rows
        threads.update(numba_threads)
        if config.busy:
            from .busy import measure_oversubscription

            report["oversubscription"] = measure_oversubscription(work, config.threads, config.busy, log,
                                                                  batch=BATCH, k=HEADLINE_K, depth=DEPTH)
    if not cuda_reason and config.device != "cuda":
        gpu = cuda_device_name()
        cuda_rows += run_numba_cuda(work, config, log)
    rows = cuda_rows + rows if config.device == "cuda" else rows + cuda_rows

    add_ratios(rows)
    report.update(machine=machine_info(gpu), threads=threads, results=rows, summary=summarize(rows))
    return report
