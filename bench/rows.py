"""The rows of a ``report.json`` ``results`` list, one dataclass per kind: the report schema.

Each field's comment is its documentation; ``dataclasses.asdict`` gives the JSON. A field made with
:func:`key` names the row (``rmm-bench compare`` pairs rows whose keys agree, and names a figure by
them, in the order of ``key``'s rank); one made with :func:`metric` is a figure ``compare`` puts side
by side. Every other field is detail. A skipped row is not one of these: it holds its kind's key
fields and ``"skipped": "<reason>"``. Reports of every ``schema_version`` 1 layout stay readable:
fields are only ever added.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def key(rank: int, default=None):
    """A field that names the row (``rank``: its place in a figure's name)."""
    return field(default=default, metadata={"key": rank})


def metric(default=None):
    """A figure ``rmm-bench compare`` compares."""
    return field(default=default, metadata={"metric": True})


def skipped(row: type, reason: str, **keys) -> dict:
    """A row of kind ``row`` that was not measured: its fixed ``bench`` and ``section``, the key fields
    given, and why."""
    fixed = {f.name: f.default for f in fields(row) if f.name in ("bench", "section") and f.default is not None}
    return {**fixed, **keys, "skipped": reason}


SCHEMA_VERSION = 1


@dataclass(kw_only=True)
class Report:
    """The frame of every ``report.json``; ``rmm-bench all`` and ``gpu-check`` add their own keys."""

    schema_version: int = SCHEMA_VERSION
    command: str  # the rmm-bench subcommand that wrote it
    created: str | None = None  # UTC, when the run finished: "2025-01-01T12:00:00Z"
    wall_seconds: float | None = None  # the whole run, JIT compile and pool start-up included
    # {"platform", "machine", "processor", "cpu_count", "cpus_usable" (affinity), "memory_gib", "gpu"}
    machine: dict | None = None
    # was the machine ours alone? {"load_average_at_start": [1, 5, 15 min], "other_cpu_seconds": CPU
    # time of other processes during the run, "other_cpu_share": that / (wall seconds * CPUs); above
    # ~0.05 the figures are lower than on an idle machine}; null values off Linux
    conditions: dict | None = None
    versions: dict = field(default_factory=dict)  # distribution -> version (null: not installed)
    threads: dict = field(default_factory=dict)  # thread counts and the Numba threading layer used
    config: dict = field(default_factory=dict)  # the parsed command-line arguments
    inputs: dict = field(default_factory=dict)  # the data: source name (never a full path), sizes, policy, seed
    summary: dict = field(default_factory=dict)  # the headline figures, derived from "results"
    results: list = field(default_factory=list)  # rows: the dataclasses below, or skipped rows


@dataclass(kw_only=True)
class ViewsRow:
    """``rmm-bench aug``: strong views/s of one backend (``"bench": "aug"``)."""

    bench: str = key(1, "aug")
    backend: str = key(3)  # "pil" | "pil-pool" | "numba-cpu" | "numba-cuda"
    k: int = key(11)  # views per image
    batch: int = key(12)  # images
    views: int  # k * batch: views made per call
    depth: int  # ops per view
    op: str | None = key(9)  # null: mixed policies; a name: every view applies that op once (depth 1)
    # where the per-view arrays live: "host" rows time their value checks and copy too; "device" rows
    # skip the checks (numba-cuda's kernel alone)
    inputs: str = key(10, "host")
    views_per_s: float = metric()  # median over the repetitions
    seconds: float = metric()  # median seconds per call (one call makes "views" views)
    spread: dict  # of views/s: {"min", "max", "q1", "q3", "iqr", "stdev"}
    reps: int  # timed repetitions (>= 5), after warm-up
    calls_per_rep: int  # back-to-back calls per repetition (short calls are batched)
    # views_per_s / the pil row's for the same op (the mixed-policy pil row when "op" is null)
    ratio_vs_pil: float | None = metric()
    threads: int  # numba threads, pool processes, or 1
    device: str = key(4)  # "cpu" | "<GPU name>"
    startup_seconds: float | None = None  # pil-pool only: starting the workers (not in the timed region)


@dataclass(kw_only=True)
class CompileRow:
    """``rmm-bench aug``: JIT cost of a Numba backend before its first steady call (``"bench": "aug-compile"``)."""

    bench: str = key(1, "aug-compile")
    backend: str = key(3)  # "numba-cpu" | "numba-cuda"
    seconds: float = metric()  # explicit compile (if any) + first call - steady per-call time
    method: str  # "compile_all + first call" | "first call"
    compile_all_seconds: float | None  # remixmatch.kernels.compile_all(): every CPU kernel
    first_call_seconds: float
    steady_call_seconds: float
    cache: str  # Numba's on-disk cache: "miss" | "hit" (every kernel loaded) | "partial" | "unknown"


@dataclass(kw_only=True)
class StepTiming:
    """The step rate of a timed row (:meth:`remixmatch.bench.core.Timing.fields`)."""

    steps_per_s: float = metric()  # median over the repetitions
    seconds_per_step: float = metric()
    spread: dict  # of steps/s: {"min", "max", "q1", "q3", "iqr", "stdev"}
    reps: int  # timed repetitions, after warm-up
    steps_per_rep: int  # back-to-back steps per repetition
    warmup_steps: int


@dataclass(kw_only=True)
class LoaderRow(StepTiming):
    """``rmm-bench pipeline``: complete step batches/s of one loader (``"bench": "pipeline"``)."""

    bench: str = key(1, "pipeline")
    # "torch": StepLoader, host fetcher, fused Numba kernel (CPU; CUDA at B = --batch and 256); "dali": DALI
    # reads, the kernel on its output; "dali-graph" | "dali-numba": the kernel inside the DALI graph
    # (python_function | numba_function, 1 thread; raw shards only); "pil-pool": the reference design, PIL
    # processes rendering the loader's plans (weak views in NumPy, all-identity views passed on);
    # "pil-pool-float": the same in the reference code's float32 [-1, 1] style, every ratio's baseline
    backend: str = key(3)
    device: str = key(4)  # "cpu" | "cuda"
    device_name: str  # "cpu" | "<GPU name>"
    prefetch: bool | None = key(6)  # null: the PIL pool (no loader)
    batch: int = key(12)  # labeled images per step
    unlabeled_batch: int
    k: int = key(11)
    views_per_step: int  # B labeled strong + B probes + B_u unlabeled weak + K B_u unlabeled strong
    strong_views_per_step: int  # K B_u
    output: str  # "uint8 NHWC torch tensor" | "uint8 NumPy" | "float32 [-1, 1] NumPy"
    strong_views_per_s: float = metric()  # steps_per_s * strong_views_per_step
    views_per_s: float = metric()  # steps_per_s * views_per_step
    ratio_vs_reference: float | None = metric()  # strong views/s / the pil-pool-float row's
    ratio_vs_pil_pool: float | None = metric()  # strong views/s / the pil-pool row's
    threads: int  # Numba threads of the loader's render thread, or pool processes
    # loader: construction + first step (Numba cache load, DALI build); pool: starting the workers
    startup_seconds: float
    dali_threads: int | None = None  # DALI's worker threads (DALI rows)


@dataclass(kw_only=True)
class TrainRow(StepTiming):
    """``rmm-bench train``: training steps/s of one device and feed (``"bench": "train"``)."""

    bench: str = key(1, "train")
    device: str = key(4)  # "cpu" | "cuda"
    device_name: str
    feed: str = key(5)  # "synthetic" (ready tensors: the ceiling) | "loader"
    prefetch: bool = key(6)  # synthetic: true (Run.train's default order; no loader)
    algorithm: str = key(7)  # "remixmatch" | "fixmatch" | "mixmatch" | "supervised"
    model: str = key(8)  # "WRN-10-1": as rmm-train names it
    width: int
    blocks_per_stage: int
    parameters: int
    batch: int = key(12)
    unlabeled_batch: int
    k: int = key(11)  # the algorithm's K (0: supervised)
    images_per_step: int  # labeled + unlabeled images
    views_per_step: int  # every view the step reads (MixMatch: B + K B_u, its K views all weak)
    train_views_per_labeled_image: float  # (views - probes) / B (FixMatch at mu = 7: 15)
    images_per_s: float = metric()
    views_per_s: float = metric()
    kimg_per_s: float  # labeled kimg/s (x 1024 images), as rmm-train logs it
    # median over reps of the host time in next(loader) per step (on CUDA the step's stream waiting
    # for the loader's render stream shows only in data_wait_share)
    wait_seconds_per_step: float
    wait_share_measured: float = metric()  # median over reps of that time / the repetition's time
    # 1 - steps_per_s / the synthetic row's (same device); null for the synthetic row. Can be slightly
    # negative (noise); on the CPU it also holds the render competing with the step for the cores
    data_wait_share: float | None = metric()
    projected_hours: float = metric()  # seconds_per_step * 2**20 / 3600: the paper's run
    threads: int  # torch threads
    numba_threads: int | None  # the loader's CPU render (null: synthetic or CUDA)
    bf16: bool  # autocast in effect (CUDA only)
    channels_last: bool
    losses_finite: bool  # the last step's losses, read after the timing
    startup_seconds: float  # model + loader and the first step (Numba cache, CUDA context, cuDNN autotuning)
    compile: bool  # torch.compile on the trained model (--compile)
    peak_memory_gib: float | None  # CUDA: torch.cuda.max_memory_allocated over the row
    phase_steps: int  # further steps, after the timed ones, split into phases (synchronised at every boundary)
    # seconds per step of "data_wait", "forward", "backward", "optimiser", "cta_update" and "other" (the rest)
    phase_seconds_per_step: dict
    phase_shares: dict  # the same / the phase steps' wall seconds per step


@dataclass(kw_only=True)
class ScalingRow:
    """``rmm-bench train --scaling``: steps/s of a short real ``rmm-train`` run on N processes, the
    global batch fixed (``"section": "scaling"``)."""

    bench: str = key(1, "train")
    section: str = key(2, "scaling")
    device: str = key(4)
    device_name: str
    ranks: int = key(13)  # processes (= GPUs on CUDA)
    launch: str  # "one process" | "--procs 2" | "--gpus 2"
    backend: str | None = key(3)  # null | "gloo" | "nccl"
    algorithm: str = key(7)
    model: str = key(8)
    width: int
    blocks_per_stage: int
    batch: int = key(12)  # global
    unlabeled_batch: int
    k: int = key(11)
    batch_per_rank: int  # labeled images per process per step
    images_per_step: int  # global labeled + unlabeled images
    steps: int  # the run's steps
    log_every: int  # its metrics windows
    window_step_seconds: list  # every logged window's step_seconds, the warm-up first
    timed_windows: int  # the windows after the first
    seconds_per_step: float = metric()  # their median
    steps_per_s: float = metric()
    images_per_s: float = metric()
    kimg_per_s: float
    speedup: float | None = metric()  # steps_per_s / the same device's 1-process row's
    efficiency: float | None = metric()  # speedup / ranks
    threads: int  # torch threads per process
    numba_threads: int | None  # the loader's Numba threads per process (CPU)
    wall_seconds: float  # the whole subprocess: start-up, training, evaluation, checkpoint


@dataclass(kw_only=True)
class PtxRow:
    """``rmm-bench ptx``: one kernel's resources from ``ptxas -v`` for one architecture."""

    bench: str = key(1, "ptx")
    section: str = key(2)  # "kernel" (as declared) | "sweep" (a register cap and block size tried)
    kernel: str = key(14)
    arch: str = key(15)  # "sm_80" | "sm_90"
    gpu: str  # "A100" | "H100"
    max_registers: int | None = key(16)  # the cap ptxas got (null: none)
    registers: int = metric()
    spill_store_bytes: int = metric()
    spill_load_bytes: int = metric()
    stack_bytes: int
    static_shared_bytes: int
    barriers: int
    # per view size: {"size", "designs", "threads_per_block", "dynamic_shared_bytes", "blocks_per_sm",
    # "warps_per_sm", "occupancy", "limited_by": "registers" | "shared memory" | "threads" | "blocks"}
    launches: list


@dataclass(kw_only=True)
class EfficacyRow:
    """``rmm-bench efficacy``: one variant's training run for one seed (no ``"bench"`` field)."""

    variant: str = key(19)  # a name of remixmatch.bench.efficacy.VARIANTS
    seed: int = key(20)
    what: str  # the variant in words
    run_dir: str  # OUT/runs/<variant>-seed<seed>
    acc_ema_median: float = metric()  # median EMA test accuracy of the last `median_of` evaluations (the figure)
    acc_ema_best: float = metric()
    acc_raw_median: float = metric()  # as acc_ema_median, of the raw (not averaged) weights
    median_of: int
    wall_seconds: float
    steps: int
    algorithm: str  # the run's method: "remixmatch" | "fixmatch" | "supervised" | ...
    k: int  # strong views per unlabeled image (0: supervised)
    uratio: int  # unlabeled batch / labeled batch (0: supervised)
    schedules: dict  # remixmatch.trainer.schedules.schedule_choices of the run


@dataclass(kw_only=True)
class SectionRow:
    """``rmm-bench all``: one entry of ``sections``, a child command's run."""

    status: str  # "measured" | "skipped" (not run) | "failed" (exited non-zero) | "timed_out" (stopped at its bound)
    reason: str | None = None  # why it was not measured: its last line of output, or what left it out
    seconds: float | None = None  # its wall time (not for skipped sections)
    report: dict | None = None  # measured: the section's own report.json (its timeout: SECTION_TIMEOUT_S)


ROWS = (ViewsRow, CompileRow, LoaderRow, TrainRow, ScalingRow, PtxRow, EfficacyRow)
# Figures of rows not typed here: prep (images/s), prep's reads; accuracy and ema_accuracy stay
# readable in reports that hold them.
OTHER_METRICS = ("shards_per_s", "rows_per_s", "mb_per_s", "accuracy", "ema_accuracy")
OTHER_KEYS = {0: "command", 17: "dataset", 18: "stage", 19: "variant", 20: "seed", 21: "labels"}


def metrics() -> tuple[str, ...]:
    """Every figure name a row may hold, from the rows' metadata."""
    names = [f.name for row in ROWS for f in fields(row) if f.metadata.get("metric")]
    return tuple(dict.fromkeys([*names, *OTHER_METRICS]))


def keys() -> tuple[str, ...]:
    """Every field that names a row, in its rank's order."""
    ranked = {**OTHER_KEYS, **{f.metadata["key"]: f.name for row in ROWS for f in fields(row) if "key" in f.metadata}}
    return tuple(dict.fromkeys(ranked[rank] for rank in sorted(ranked)))


@dataclass(kw_only=True)
class FigureRow:
    """``rmm-bench gpu-check``: one entry of ``figures``, a number a section measured. Not in ``ROWS``:
    ``compare`` names these rows by their own keys, the items of ``where`` among them."""

    section: str = key(2)  # the gpu-check section that measured it: "augmentation" | "training" | ...
    # a metric of the rows the section's reports hold ("views_per_s", "steps_per_s", "phase_shares.forward",
    # ...), a number of the summary of a report without rows ("kernel_compile_seconds"), or "acc_ema" |
    # "acc_raw" of the learning run's evaluations
    name: str = key(22)
    value: float = metric()
    unit: str  # unit_of(name): "views/s" | "steps/s" | "s" | "h" | "GiB" | "x" | "fraction" | ...
    # what tells it from the same figure measured elsewhere in the run: the row's key fields, with "part"
    # (the section's sub-folder: a kernel-tuning variant) and "size" (the images' side) of its report,
    # or "step" (learning)
    where: dict = key(23)


# What a figure's name says of its unit: the first (part of the name, unit) that matches; rates are
# "<thing>_per_s", and what matches none is a fraction (shares, accuracies, efficiency).
UNITS = (("hours", "h"), ("seconds", "s"), ("gib", "GiB"), ("bytes", "B"), ("ratio", "x"), ("speedup", "x"),
         ("registers", "registers"))


def unit_of(name: str) -> str:
    if name.endswith("_per_s"):
        return name[:-len("_per_s")].split("_")[-1] + "/s"
    return next((unit for part, unit in UNITS if part in name), "fraction")
