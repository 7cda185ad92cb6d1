"""``rmm-bench pipeline``: complete ReMixMatch step batches per second, loader against loader.

Every backend draws the same steps (one shard split, one CTAugment policy at its initial weights, the
same plans) and ``next(loader)`` is timed back to back; an untimed check renders one step with the
loader and both PIL styles and counts the views that differ (``equivalence``). The backends and the
figures: :class:`~remixmatch.bench.rows.LoaderRow`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from remixmatch.common.cli import OneLineParser, positive_int

from . import core
from .core import (
    CommandConfig, NumbaThreadsFetcher, Timing, checked_options, command_parser, cuda_unavailable_reason, device_flag,
    device_name, error_reason, flag, labels_flag, measured, no_sync, numba_threads_info, out_flag, process_pool,
    ratio, reps_flag, shards_flag, threads_flag, time_calls, valid_flag, value,
)
from .render import skipped_block, table
from .rows import LoaderRow, skipped
from .report import PACKAGES, format_rate, format_ratio, machine_info, new_report, package_versions

PROG = "rmm-bench pipeline"
MIN_REPS = 5
DEFAULT_REPS = 7
# Per --quick: seconds of back-to-back steps per repetition (at least min_calls steps), after warm_calls steps.
REP_SIZES = {False: {"rep_seconds": 2.0, "min_calls": 3, "warm_calls": 5},
             True: {"rep_seconds": 0.3, "min_calls": 2, "warm_calls": 2}}
CUDA_BIG_BATCH = 256
GOAL_VS_REFERENCE = 10.0
SUBSET_SEED = 1  # the trainer's default labeled-split seed
VERSION_PACKAGES = PACKAGES + ("nvidia-dali-cuda120",)
# Loader rows whose CTAugment kernel runs inside the DALI graph, and the in-graph operator of each.
GRAPH_KERNELS = {"dali-graph": "python", "dali-numba": "numba"}
# The summary's CPU rows at --batch, by the name its figures carry: (backend, prefetch; None: the pool).
SUMMARY_CPU_ROWS = {"torch_cpu": ("torch", True), "torch_cpu_no_prefetch": ("torch", False),
                    "dali_cpu": ("dali", True), "dali_cpu_no_prefetch": ("dali", False),
                    "dali_graph_cpu": ("dali-graph", True), "dali_graph_cpu_no_prefetch": ("dali-graph", False),
                    "dali_numba_cpu": ("dali-numba", True), "reference": ("pil-pool-float", None),
                    "pil_pool": ("pil-pool", None)}
# The summary's steps/s ratios: figure -> (row, the row it is divided by).
SUMMARY_RATIOS = {"torch_vs_reference": ("torch_cpu", "reference"),
                  "torch_no_prefetch_vs_reference": ("torch_cpu_no_prefetch", "reference"),
                  "torch_vs_pil_pool": ("torch_cpu", "pil_pool"), "dali_vs_reference": ("dali_cpu", "reference"),
                  "dali_vs_pil_pool": ("dali_cpu", "pil_pool"), "dali_graph_vs_reference": ("dali_graph_cpu", "reference"),
                  "dali_graph_vs_dali": ("dali_graph_cpu", "dali_cpu"), "dali_numba_vs_dali": ("dali_numba_cpu", "dali_cpu")}
GRAPH_NAMES = {"dali-graph": "dali cpu, kernel in graph (python_function)",
               "dali-numba": "dali cpu, kernel in graph (numba_function, 1 thread)"}


@dataclass(frozen=True)
class PipelineConfig(CommandConfig):
    shards: Path = shards_flag()
    out: Path = out_flag()
    quick: bool = flag(False, "5 short repetitions per row (about a minute on 2 cores)")
    reps: int = reps_flag(MIN_REPS, DEFAULT_REPS, MIN_REPS)
    batch: int = flag(64, "labeled = unlabeled images per step (64)", type=positive_int)
    k: int = flag(8, "strong views per unlabeled image (8)", type=positive_int)
    threads: int = threads_flag("Numba threads of the loaders and PIL pool processes")
    labels: int = labels_flag()
    valid: int = valid_flag()
    seed: int = flag(0, "seed of the views (ViewConfig.seed)", type=int)
    device: str = device_flag("auto: the CPU rows, plus the CUDA rows where a device answers; cpu: the CPU rows; "
                              "cuda: the CUDA rows alone (an error without a device)")

    @property
    def views_per_step(self) -> int:
        return 3 * self.batch + self.k * self.batch


# ---- the data and the plans -------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchData:
    shards: object  # ShardSet
    train: object  # TrainData

    def describe(self, config: PipelineConfig) -> dict:
        split = self.train.split
        return {
            "shards": Path(str(self.shards.path)).name,  # the directory's name only: reports are shared
            "dataset": self.shards.dataset, "split": "train", "encoding": split.encoding,
            "rows": len(split), "image_shape": list(self.train.image_shape),  # encoded shards: the first image's
            "labeled": int(len(self.train.labeled)), "unlabeled": int(len(self.train.unlabeled)),
            "labeled_subset": f"{config.labels} labels, seed {SUBSET_SEED}, {config.valid} held out",
            "policy": "CTAugment(depth 2, decay 0.99, threshold 0.8, rule 'segment') at its initial weights "
                      "(no updates during the bench)",
            "view_seed": config.seed,
        }


def open_data(shards_dir: Path, labels: int, valid: int) -> BenchData:
    """The shard set and its TrainData (a class-balanced labeled subset, as a training run makes)."""
    from remixmatch.datasets_prep import open_shards
    from remixmatch.datasets_prep.subsets import labeled_subset
    from remixmatch.pipeline import train_data

    shards = open_shards(shards_dir)
    subset = labeled_subset(shards, labels, SUBSET_SEED, n_valid=valid)
    return BenchData(shards, train_data(shards, subset))


def view_config(config: PipelineConfig, data: BenchData, batch: int | None = None):
    """The step's views; the weak pad follows the images' side as in training (4 px at 32, 12 at 96)."""
    from remixmatch.pipeline import ViewConfig
    from remixmatch.pipeline.plan import weak_pad

    b = config.batch if batch is None else batch
    return ViewConfig(batch=b, unlabeled_batch=b, k=config.k, seed=config.seed,
                      pad=weak_pad(data.train.image_shape[0]))


# ---- the reference design: PIL in a process pool ----------------------------------------------------

def to_reference_float(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] as the reference's input pipeline decodes (x * 2 / 255 - 1)."""
    return images.astype(np.float32) * np.float32(2.0 / 255) - np.float32(1.0)


def from_reference_float(images: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> uint8, the reference's conversion before PIL: round(127.5 (1 + x))."""
    return np.round(127.5 * (1 + images)).clip(0, 255).astype(np.uint8)


def weak_numpy(image: np.ndarray, flip: int, offset_y: int, offset_x: int, pad: int) -> np.ndarray:
    """Flip, reflect-pad, crop at (offset_y, offset_x) of the padded image: any dtype."""
    height, width = image.shape[:2]
    if flip:
        image = image[:, ::-1]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return padded[offset_y:offset_y + height, offset_x:offset_x + width]


def render_views_pil(images: np.ndarray, sources: np.ndarray, flips: np.ndarray, offsets: np.ndarray,
                     op_ids: np.ndarray, levels: np.ndarray, rand: np.ndarray, pad: int) -> np.ndarray:
    """Views n = 0..N-1 of ``images`` (uint8, or float32 in [-1, 1] for the reference's style), one
    at a time: weak augmentation with NumPy, then the view's ops as PIL calls. Returns the views in
    the input dtype."""
    from PIL import Image

    from remixmatch.kernels.ops import OP_ID
    from remixmatch.kernels.pil_reference import PIL_OPS

    identity = OP_ID["identity"]
    as_float = images.dtype == np.float32
    out = np.empty((len(sources), *images.shape[1:]), images.dtype)
    src, fl, off = sources.tolist(), flips.tolist(), offsets.tolist()
    ops_l, levels_l, rand_l = op_ids.tolist(), levels.tolist(), rand.tolist()
    for n in range(len(src)):
        view = weak_numpy(images[src[n]], fl[n], off[n][0], off[n][1], pad)
        ops = ops_l[n]
        if all(op == identity for op in ops):
            out[n] = view  # the weak view: no PIL round trip, as the reference's pool passes it on
            continue
        x = Image.fromarray(from_reference_float(view) if as_float else np.ascontiguousarray(view))
        for op, (v0, v1), (u0, u1) in zip(ops, levels_l[n], rand_l[n]):
            x = PIL_OPS[op](x, v0, v1, u0, u1)
        out[n] = np.asarray(x).astype(np.float32) / 127.5 - 1 if as_float else np.asarray(x)
    return out


def _pil_task(task: tuple) -> np.ndarray:
    """Pool worker: one chunk of a step's views (module level so that spawn can pickle it)."""
    return render_views_pil(*task)


def pil_step(pool, split, plan, pad: int, processes: int, style: str) -> np.ndarray:
    """One step's views by the reference design: gather the plan's rows, split the views into one
    contiguous chunk per process, render in the pool. ``style`` "uint8" or "float"."""
    from remixmatch.pipeline import kernel_call

    call = kernel_call(plan)
    rows = np.concatenate([plan.x_rows, plan.u_rows])
    images = split.images(rows, out=np.empty((len(rows), *split.image_shape), np.uint8))
    if style == "float":
        images = to_reference_float(images)
    op_ids, levels, rand = call.policies.arrays()
    n = len(call.sources)
    bounds = np.linspace(0, n, processes + 1).astype(int)
    tasks = [(images, call.sources[a:b], call.weak.flips[a:b], call.weak.offsets[a:b], op_ids[a:b], levels[a:b],
              rand[a:b], pad) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if processes == 1 and pool is None:
        return np.concatenate([_pil_task(t) for t in tasks])
    return np.concatenate(pool.map(_pil_task, tasks, chunksize=1))


POOL_BACKENDS = {"pil-pool": ("uint8", "uint8 NumPy"), "pil-pool-float": ("float", "float32 [-1, 1] NumPy")}


# ---- rows -------------------------------------------------------------------------------------------

def measured_row(config: PipelineConfig, backend: str, device: str, device_name: str, prefetch, batch: int,
                 output: str, timing: Timing, threads: int, startup: float, **extra) -> dict:
    views = 3 * batch + config.k * batch
    strong = config.k * batch
    fields = timing.fields()
    rate = fields["steps_per_s"]
    return asdict(LoaderRow(backend=backend, device=device, device_name=device_name, prefetch=prefetch, batch=batch,
                            unlabeled_batch=batch, k=config.k, views_per_step=views, strong_views_per_step=strong,
                            output=output, **fields, strong_views_per_s=rate * strong, views_per_s=rate * views,
                            threads=threads, startup_seconds=startup, **extra))


def skipped_row(backend: str, device: str, batch: int, reason: str, prefetch=None) -> dict:
    return skipped(LoaderRow, reason, backend=backend, device=device, prefetch=prefetch, batch=batch)


def run_loader(config: PipelineConfig, data: BenchData, backend: str, device: str, prefetch: bool, log,
               batch: int | None = None) -> dict:
    """One StepLoader row: ``backend`` "torch" (HostFetcher), "dali", "dali-graph" or "dali-numba"."""
    import torch

    from remixmatch.pipeline import CTAugment, HostFetcher, StepLoader
    from remixmatch.pipeline.loader import make_fetcher

    batch = config.batch if batch is None else batch
    views = view_config(config, data, batch)
    start = time.perf_counter()
    try:
        if backend == "dali":
            fetch = make_fetcher("dali", data.train.split, device, max_batch=views.batch + views.unlabeled_batch)
        elif backend in GRAPH_KERNELS:
            from remixmatch.pipeline.dali import DaliGraphFetcher

            # The kernel runs in DALI's worker thread: the graph sets its Numba threads there.
            fetch = DaliGraphFetcher(data.train.split, device, kernel=GRAPH_KERNELS[backend],
                                     numba_threads=config.threads)
        else:
            fetch = HostFetcher(data.train.split, device)
    except Exception as error:  # DALI missing or failing to build must not cost the other rows
        return skipped_row(backend, device, batch, error_reason(error), prefetch)
    if device == "cpu" and backend not in GRAPH_KERNELS:
        fetch = NumbaThreadsFetcher(fetch, config.threads)
    sync = torch.cuda.synchronize if device != "cpu" else no_sync
    loader = StepLoader(data.train, CTAugment(), views, device=device, prefetch=prefetch, fetcher=fetch)
    try:
        first_start = time.perf_counter()
        timing = time_calls(lambda: next(loader), config.reps, **REP_SIZES[config.quick], sync=sync)
        startup = (first_start - start) + timing.first_seconds
    finally:
        loader.close()
    output = "uint8 NHWC torch tensor" + (" (CUDA)" if device != "cpu" else "")
    extra = ({"dali_threads": getattr(getattr(fetch, "inner", fetch), "num_threads", None)}
             if backend.startswith("dali") else {})
    threads = 1 if backend == "dali-numba" or device != "cpu" else config.threads  # dali-numba: serial kernel
    row = measured_row(config, backend, device, device_name(device), prefetch, batch, output, timing, threads, startup,
                       **extra)
    log(row)
    return row


def run_pool_rows(config: PipelineConfig, data: BenchData, log) -> tuple[list[dict], dict]:
    """The pil-pool and pil-pool-float rows (one pool for both) and the untimed equivalence check."""
    from remixmatch.pipeline import CTAugment, PlanStream

    processes = config.threads
    views = view_config(config, data)
    rows: list[dict] = []
    with process_pool(processes) as (pool, startup):
        log(f"PIL pool: {processes} processes started in {startup:.1f} s")
        equivalence = check_equivalence(config, data, pool, processes)
        log(f"equivalence: {equivalence['summary']}")
        for backend, (style, output) in POOL_BACKENDS.items():
            plans = PlanStream(data.train, CTAugment(), views)
            timing = time_calls(lambda: pil_step(pool, data.train.split, plans.next(), views.pad, processes, style),
                                config.reps, **REP_SIZES[config.quick])
            rows.append(measured_row(config, backend, "cpu", "cpu", None, config.batch, output, timing, processes,
                                     startup))
            log(rows[-1])
    return rows, equivalence


def check_equivalence(config: PipelineConfig, data: BenchData, pool, processes: int) -> dict:
    """Untimed: step 0 of the torch loader against the same plan rendered by both PIL styles."""
    from remixmatch.pipeline import CTAugment, HostFetcher, PlanStream, StepLoader

    views = view_config(config, data)
    loader = StepLoader(data.train, CTAugment(), views, device="cpu", prefetch=False,
                        fetcher=NumbaThreadsFetcher(HostFetcher(data.train.split, "cpu"), config.threads))
    try:
        batch = next(loader)
    finally:
        loader.close()
    plan = batch.global_plan
    stream_plan = PlanStream(data.train, CTAugment(), views).next()
    same_plan = _plans_equal(plan, stream_plan)
    torch_views = batch.views.numpy()
    uint8_views = pil_step(pool, data.train.split, stream_plan, views.pad, processes, "uint8")
    float_views = pil_step(pool, data.train.split, stream_plan, views.pad, processes, "float")
    float_back = from_reference_float(float_views)
    levels = np.arange(256, dtype=np.uint8)
    round_trip = bool(np.array_equal(from_reference_float(to_reference_float(levels)), levels)
                      and np.array_equal(from_reference_float(levels.astype(np.float32) / 127.5 - 1), levels))

    def differing(a: np.ndarray, b: np.ndarray) -> int:
        return int(np.any(a.reshape(len(a), -1) != b.reshape(len(b), -1), axis=1).sum())

    n = len(torch_views)
    result = {
        "step": int(plan.step), "views": n,
        "plan_matches_loader": same_plan,
        "pil_pool_differing_views": differing(uint8_views, torch_views),
        "pil_pool_float_differing_views": differing(float_back, torch_views),
        "pil_pool_float_max_abs_diff": int(np.abs(float_back.astype(np.int16) - torch_views).max()) if n else 0,
        "float_round_trip_exact": round_trip,
    }
    result["bit_exact"] = bool(same_plan and result["pil_pool_differing_views"] == 0
                               and result["pil_pool_float_differing_views"] == 0)
    result["summary"] = (f"step {result['step']}: {n} views; pil-pool differs in {result['pil_pool_differing_views']}, "
                         f"pil-pool-float (rounded back to uint8) in {result['pil_pool_float_differing_views']}; "
                         f"uint8 -> float -> uint8 exact for all 256 levels: {round_trip}")
    return result


def _plans_equal(a, b) -> bool:
    """Two StepPlans hold the same step, K, rows, weak parameters and policies."""
    from dataclasses import fields, is_dataclass

    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x is None or y is None:
            if (x is None) != (y is None):
                return False
        elif is_dataclass(x):
            if not all(np.array_equal(getattr(x, g.name), getattr(y, g.name)) for g in fields(x)):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


# ---- assembling the report --------------------------------------------------------------------------

def find(rows: list[dict], backend: str, device: str = "cpu", **match) -> dict | None:
    return core.find(rows, backend=backend, device=device, **match)


def add_ratios(rows: list[dict]) -> None:
    reference, pool = find(rows, "pil-pool-float"), find(rows, "pil-pool")
    for r in measured(rows):
        if reference:
            r["ratio_vs_reference"] = r["strong_views_per_s"] / reference["strong_views_per_s"]
        if pool:
            r["ratio_vs_pil_pool"] = r["strong_views_per_s"] / pool["strong_views_per_s"]


def summarize(rows: list[dict], config: PipelineConfig, equivalence: dict | None) -> dict:
    named = {name: find(rows, backend, prefetch=prefetch, batch=config.batch)
             for name, (backend, prefetch) in SUMMARY_CPU_ROWS.items()}
    named |= {"torch_cuda": find(rows, "torch", "cuda", batch=config.batch),
              "torch_cuda_b256": find(rows, "torch", "cuda", batch=max(CUDA_BIG_BATCH, config.batch))}
    summary = {f"{name}_steps_per_s": value(row, "steps_per_s") for name, row in named.items()}
    summary |= {f"{name}_strong_views_per_s": value(named[name], "strong_views_per_s")
                for name in ("torch_cpu", "dali_cpu", "reference", "pil_pool")}
    summary |= {figure: ratio(named[a], named[b]) for figure, (a, b) in SUMMARY_RATIOS.items()}
    goal = summary["torch_vs_reference"]
    return {**summary, "goal_torch_vs_reference": GOAL_VS_REFERENCE,
            "goal_met": None if goal is None else goal >= GOAL_VS_REFERENCE,
            "views_bit_exact": None if equivalence is None else equivalence["bit_exact"]}


def run(config: PipelineConfig, log: Callable[[object], None]) -> dict:
    """Every row this machine can run; returns the report (not yet written)."""
    report = new_report("pipeline", config.as_dict())
    report["versions"] = package_versions(VERSION_PACKAGES)
    data = open_data(config.shards, config.labels, config.valid)
    report["inputs"] = data.describe(config)
    log(f"shards: {report['inputs']['shards']} ({report['inputs']['rows']} train rows, "
        f"{report['inputs']['encoding']}); B = {config.batch}, B_u = {config.batch}, K = {config.k}: "
        f"{config.views_per_step} views per step")

    rows, equivalence = [], None
    cpu_loaders = (("torch", True), ("torch", False), ("dali", True), ("dali", False),
                   ("dali-graph", True), ("dali-graph", False), ("dali-numba", True))
    if config.device == "cuda":
        # A GPU machine's report is about the GPU: its CPU rows would only spend the time it is lent for.
        rows += [skipped_row(backend, "cpu", config.batch, "--device cuda") for backend in POOL_BACKENDS]
        rows += [skipped_row(backend, "cpu", config.batch, "--device cuda", prefetch) for backend, prefetch in cpu_loaders]
    else:
        rows, equivalence = run_pool_rows(config, data, log)
        for backend, prefetch in cpu_loaders:
            rows.append(run_loader(config, data, backend, "cpu", prefetch, log))
            if "skipped" in rows[-1]:
                log(rows[-1])
    gpu = None
    reason = "--device cpu" if config.device == "cpu" else cuda_unavailable_reason()
    for batch in dict.fromkeys((config.batch, max(CUDA_BIG_BATCH, config.batch))):
        if reason:
            rows.append(skipped_row("torch", "cuda", batch, reason, True))
            log(rows[-1])
        else:
            rows.append(run_loader(config, data, "torch", "cuda", True, log, batch=batch))
            gpu = rows[-1].get("device_name", gpu)

    add_ratios(rows)
    threads = {"numba": config.threads, **numba_threads_info(),
               "dali": next((r.get("dali_threads") for r in measured(rows) if r["backend"] == "dali"), None),
               "pil_pool_processes": config.threads}
    report.update(machine=machine_info(gpu), threads=threads, results=rows,
                  summary=summarize(rows, config, equivalence), equivalence=equivalence)
    return report


# ---- markdown -------------------------------------------------------------------------------------

def _spread_text(r: dict) -> str:
    s = r["spread"]
    return f"{s['min']:.1f}-{s['max']:.1f}"


def _fine_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _row_name(r: dict) -> str:
    if r["backend"].startswith("pil"):
        return r["backend"]
    name = GRAPH_NAMES.get(r["backend"], f"{r['backend']} {r['device']}")
    return name + ("" if r.get("prefetch") is None else (", prefetch" if r["prefetch"] else ", no prefetch"))


COLUMNS = (
    ("loader", lambda r: _row_name(r)), ("B", lambda r: str(r["batch"])), ("K", lambda r: str(r["k"])),
    ("views/step", lambda r: str(r["views_per_step"])), ("steps/s", lambda r: f"{r['steps_per_s']:.1f}"),
    ("spread", _spread_text), ("strong views/s", lambda r: format_rate(r["strong_views_per_s"])),
    ("views/s", lambda r: format_rate(r["views_per_s"])), ("vs reference", lambda r: format_ratio(r["ratio_vs_reference"])),
    ("vs pil-pool", lambda r: format_ratio(r["ratio_vs_pil_pool"])), ("threads", lambda r: str(r["threads"])),
    ("start-up s", lambda r: f"{r['startup_seconds']:.1f}"), ("output", lambda r: r["output"]),
)


def body(report: dict, h: str = "##") -> list[str]:
    rows, summary, inputs, config = report["results"], report["summary"], report["inputs"], report["config"]
    b, k = config["batch"], config["k"]
    lines = [
        f"Inputs: shards `{inputs['shards']}` ({inputs['dataset']}, {inputs['rows']} train rows, {inputs['encoding']}, "
        f"{'x'.join(map(str, inputs['image_shape']))}); {inputs['labeled_subset']}; {inputs['policy']}; "
        f"view seed {inputs['view_seed']}. A step: B = {b} labeled strong + {b} probe + {b} unlabeled weak + "
        f"K x B_u = {k} x {b} unlabeled strong = {3 * b + k * b} views. Each figure: median of {config['reps']} "
        "repetitions of back-to-back steps after warm-up (spread: min-max steps/s).",
        "",
        f"{h} Headline: B = {b}, K = {k}",
        "",
        f"- torch loader on CPU (prefetch) vs the reference design (pil-pool-float): "
        f"**{format_ratio(summary['torch_vs_reference'])}** steps/s (goal >= {GOAL_VS_REFERENCE:.0f}x: "
        f"{'met' if summary['goal_met'] else 'not met' if summary['goal_met'] is not None else 'not measured'})",
        f"- torch loader on CPU (no prefetch) vs the reference design: "
        f"**{format_ratio(summary['torch_no_prefetch_vs_reference'])}**",
        f"- torch loader on CPU vs pil-pool (uint8): **{format_ratio(summary['torch_vs_pil_pool'])}**",
        f"- DALI CPU loader vs the reference design: **{format_ratio(summary['dali_vs_reference'])}**",
        f"- DALI CPU, kernel in the graph (python_function) vs kernel on DALI's output: "
        f"**{_fine_ratio(summary['dali_graph_vs_dali'])}**; numba_function in the graph vs on DALI's output: "
        f"**{_fine_ratio(summary['dali_numba_vs_dali'])}**",
        "",
        table(COLUMNS, measured(rows)),
        "",
        "Ratios are of strong views/s (at equal B and K, the step-rate ratio). Loader rows time `next(loader)` "
        "back to back: with nothing else to do, prefetch changes where the render waits, not how fast it is. "
        "Pool rows include the parent's plan drawing, row gather, pickling in and out.",
    ]
    eq = report.get("equivalence")
    if eq:
        lines += ["", f"{h} Like for like (untimed)", "",
                  f"Step {eq['step']}'s plan (drawn by the loader and by the pool's parent: "
                  f"{'identical' if eq['plan_matches_loader'] else 'DIFFERENT'}), {eq['views']} views: "
                  f"pil-pool differs from the torch loader in **{eq['pil_pool_differing_views']}** views; "
                  f"pil-pool-float, rounded back to uint8, in **{eq['pil_pool_float_differing_views']}** "
                  f"(max |diff| {eq['pil_pool_float_max_abs_diff']}). The reference's uint8 -> float -> uint8 "
                  f"conversion is exact for all 256 levels: {'yes' if eq['float_round_trip_exact'] else 'no'}."]
    return lines + skipped_block([f"- {_row_name({**r, 'prefetch': r.get('prefetch')})} B = {r['batch']}: "
                                  f"{r['skipped']}" for r in rows if "skipped" in r], h)


# ---- command line ---------------------------------------------------------------------------------

def build_parser() -> OneLineParser:
    return command_parser(PROG, "Complete ReMixMatch step batches per second: the torch and DALI loaders against "
                                "the PIL process-pool reference design.", PipelineConfig)


def config_from_args(args) -> PipelineConfig:
    return PipelineConfig.from_args(args, **checked_options(args, reps=(MIN_REPS, DEFAULT_REPS, MIN_REPS), shards=True))


def progress_line(r: dict) -> str:
    if "skipped" in r:
        return f"{_row_name(r)} B={r['batch']}: skipped ({r['skipped']})"
    s = r["spread"]
    return (f"{_row_name(r)} B={r['batch']} K={r['k']}: {r['steps_per_s']:.1f} steps/s "
            f"({format_rate(r['strong_views_per_s'])} strong views/s; median of {r['reps']} x {r['steps_per_rep']} steps, "
            f"{s['min']:.1f}-{s['max']:.1f})")
