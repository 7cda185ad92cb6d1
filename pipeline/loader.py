"""The step loader: samplers + CTAugment policy + fused kernels -> one StepBatch per step.

Each step has a plan (:mod:`.plan`) drawn in the caller's thread, from the policy's weights at that
moment; a background thread then gathers the rows and renders the views (the NumPy kernel on the
CPU, or one pinned host-to-device copy and the CUDA kernel on a side stream). With ``prefetch`` the
plan of step t + 1 is drawn when step t is handed out, before step t's CTAugment update: the
policies of step t + 1 then come from the weights after step t - 1 (one update older than without
prefetch). Drawing plans only in the caller's thread, at fixed points, keeps the batches a pure
function of the seed and the updates, whatever the thread timing.

On the CPU the kernel runs with ``kernel_threads`` Numba threads (set in the render thread: Numba's
count is per thread); by default :func:`remixmatch.kernels.threads.loader_threads`, torch's
intra-op count (the run renders between its synchronous CPU steps, when torch's threads are idle).

Where rows come from is a *fetcher*: ``fetch(rows) -> images`` ((N, H, W, 3) uint8 NumPy for the
CPU, a CUDA tensor for the GPU). :class:`HostFetcher` reads the memory-mapped shards; the DALI
loader supplies its own (``make_fetcher("dali", ...)``, :mod:`.dali`).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from remixmatch.kernels.threads import loader_threads, use_threads

from .batch import StepBatch, render_views, split_views
from .errors import PipelineError
from .plan import StepPlan, ViewConfig, draw_plan, kernel_call
from .policy import CTAugment
from .samplers import LABELED_STREAM, UNLABELED_STREAM, TrainSampler, eval_rows


@dataclass(frozen=True)
class TrainData:
    """The rows a training run reads: a split of a shard set and its labeled / unlabeled rows."""

    split: object  # remixmatch.datasets_prep.Split
    labels: np.ndarray  # (rows,) int64 class ids of the split, -1 = no label
    labeled: np.ndarray  # int64 rows with labels used for training
    unlabeled: np.ndarray  # int64 rows used as unlabeled data (the labeled ones included)
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return split_image_shape(self.split)

    def class_distribution(self) -> np.ndarray:
        """p_data: the labeled set's class frequencies."""
        counts = np.bincount(self.labels[self.labeled], minlength=self.num_classes)
        return counts / counts.sum()


def train_data(shards, subset, split: str = "train") -> TrainData:
    """TrainData from a ShardSet and a LabeledSubset, refusing a subset made for other data."""
    if subset.fingerprint is not None and subset.fingerprint != shards.fingerprint:
        raise PipelineError(f"the labeled subset was made for dataset fingerprint {subset.fingerprint[:12]}..., "
                            f"not for {shards.path} ({shards.fingerprint[:12]}...)")
    rows = shards[split]
    check_image_shape(split_image_shape(rows), f"{shards.path} split {split}")
    if subset.num_rows != len(rows):
        raise PipelineError(f"the labeled subset indexes {subset.num_rows} rows, split {split} of {shards.path} "
                            f"holds {len(rows)}")
    labels = np.asarray(rows.labels, np.int64)
    if np.any(labels[subset.labeled] < 0):
        raise PipelineError(f"the labeled subset names rows without a label in {shards.path}")
    return TrainData(rows, labels, subset.labeled, subset.unlabeled(), shards.num_classes)


def split_image_shape(split) -> tuple[int, int, int] | None:
    """The images' (H, W, C): the manifest's, or for encoded shards (whose manifest records none)
    the first image's; training needs one size, and a row of another size fails when fetched."""
    if split.image_shape is not None:
        return tuple(split.image_shape)
    if len(split) == 0:
        return None
    return tuple(split.images([0]).shape[1:])


def check_image_shape(shape, where: str) -> None:
    if shape is None or len(shape) != 3 or shape[2] != 3:
        raise PipelineError(f"{where}: images must be H x W x 3 uint8 (RGB); got shape {shape} "
                            "(encoded images of mixed sizes or a channel count other than 3)")


def _torch():
    import torch

    return torch


class HostFetcher:
    """Rows gathered from the memory-mapped shards; for CUDA, one pinned asynchronous copy."""

    def __init__(self, split, device: str = "cpu"):
        self.split = split
        self.device = device
        self.image_shape = split_image_shape(split)

    def __call__(self, rows: np.ndarray):
        shape = (len(rows), *self.image_shape)
        if self.device == "cpu":
            return self.split.images(rows, out=np.empty(shape, np.uint8))
        torch = _torch()
        # A fresh pinned buffer from torch's caching host allocator: it is not reused before the
        # copy that reads it has finished.
        host = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        self.split.images(rows, out=host.numpy())
        return host.to(self.device, non_blocking=True)

    def close(self) -> None:
        """The fetcher interface; the shards are memory-mapped by their ShardSet, nothing is held here."""


FETCHER_KINDS = ("torch", "dali", "dali-graph")


def make_fetcher(kind: str, split, device: str = "cpu", max_batch: int = 1024):
    """The fetcher of a ``loader`` setting: "torch" reads the shards on the host (:class:`HostFetcher`),
    "dali" runs a DALI pipeline (:class:`remixmatch.pipeline.dali.DaliFetcher`, imported only here so
    that this package imports without DALI)."""
    if kind == "torch":
        return HostFetcher(split, device)
    if kind == "dali":
        from .dali import DaliFetcher

        # Without nvidia.dali this raises the one-line "pip install nvidia-dali-cuda120, or use
        # loader='torch'" PipelineError.
        return DaliFetcher(split, device=device, max_batch=max_batch)
    if kind == "dali-graph":  # DALI with the CTAugment kernel inside the graph (CPU, raw shards)
        from .dali import DaliGraphFetcher

        return DaliGraphFetcher(split, device=device, max_batch=max_batch)
    raise PipelineError(f"unknown loader {kind!r}: choose one of {', '.join(repr(k) for k in FETCHER_KINDS)}")


class PlanStream:
    """The plans a StepLoader over the same data, policy and config draws, in order, without
    rendering anything (``rmm-bench pipeline`` hands them to the PIL reference design)."""

    def __init__(self, data: TrainData, policy: CTAugment | None, config: ViewConfig, rank: int = 0,
                 world_size: int = 1):
        self.policy, self.config, self.step = policy, config, 0
        self.labeled = TrainSampler(data.labeled, config.batch, config.seed, LABELED_STREAM, rank, world_size,
                                    name="labeled")
        self.unlabeled = None
        if config.unlabeled_batch > 0:
            self.unlabeled = TrainSampler(data.unlabeled, config.unlabeled_batch, config.seed, UNLABELED_STREAM,
                                          rank, world_size, name="unlabeled")

    def draw(self, step: int) -> StepPlan:
        x_rows = self.labeled.next_global()
        u_rows = self.unlabeled.next_global() if self.unlabeled is not None else np.zeros(0, np.int64)
        return draw_plan(step, x_rows, u_rows, self.policy, self.config)

    def next(self) -> StepPlan:
        """The next step's plan."""
        self.step += 1
        return self.draw(self.step - 1)


class StepLoader:
    """An endless iterator of StepBatch for one rank; ``state_dict`` resumes it exactly."""

    def __init__(self, data: TrainData, policy: CTAugment | None, config: ViewConfig, *, device: str = "cpu",
                 rank: int = 0, world_size: int = 1, prefetch: bool = True, fetcher=None,
                 kernel_threads: int | None = None):
        config.check()
        check_image_shape(data.image_shape, "training images")
        self.data, self.policy, self.config = data, policy, config
        self.device, self.rank, self.world_size = device, rank, world_size
        self.prefetch = prefetch
        self.plans = PlanStream(data, policy, config, rank, world_size)
        self.labeled, self.unlabeled = self.plans.labeled, self.plans.unlabeled
        self.fetch = fetcher if fetcher is not None else HostFetcher(data.split, device)
        # The CPU kernel's Numba threads (None on a GPU): the caller's, else torch's intra-op count.
        self.kernel_threads = _kernel_threads(kernel_threads) if device == "cpu" else None
        self.step = 0  # the step of the next batch handed out
        self._pending: tuple[StepPlan, Future] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="remixmatch-views")
        self._stream = None
        if device != "cpu":
            torch = _torch()
            self._stream = torch.cuda.Stream(device=torch.device(device))
        self._lock = threading.Lock()

    # -- plans and rendering ------------------------------------------------------------------------

    def _draw(self, step: int) -> StepPlan:
        return self.plans.draw(step)

    def _render(self, plan: StepPlan):
        local = plan.local(self.rank, self.world_size)
        call = kernel_call(local)
        rows = np.concatenate([local.x_rows, local.u_rows])
        labels = self.data.labels[rows]  # labeled rows' labels, then the unlabeled rows' (diagnostics)
        if self._stream is None:
            torch = _torch()
            use_threads(self.kernel_threads)
            render = getattr(self.fetch, "render", None)  # a fetcher that renders the views itself (dali-graph)
            views = (render(rows, call, self.config.pad) if render is not None
                     else render_views(self.fetch(rows), call, self.config.pad))
            views = torch.from_numpy(views)
            return local, call, views, torch.from_numpy(labels), None
        torch = _torch()
        with torch.cuda.stream(self._stream):
            images = self.fetch(rows)
            views = render_views(images, call, self.config.pad, stream=self._stream)
            labels = torch.from_numpy(labels).pin_memory().to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        return local, call, views, labels, ready

    def _submit(self, plan: StepPlan) -> tuple[StepPlan, Future]:
        return plan, self._executor.submit(self._render, plan)

    # -- iteration ----------------------------------------------------------------------------------

    def __iter__(self):
        return self

    def prepare(self) -> None:
        """Draws the next step's plan now, from the policy's weights as they are, and starts
        rendering it in the background (nothing if it is drawn already). A trainer that wants the
        render to overlap its step calls this once its CTAugment update is in; otherwise
        ``__next__`` draws at the latest moment (with ``prefetch``: right after handing out a batch)."""
        with self._lock:
            if self._pending is None:
                self._pending = self._submit(self._draw(self.step))

    def __next__(self) -> StepBatch:
        self.prepare()
        with self._lock:
            plan, future = self._pending
            self._pending = None
            local, call, views, labels, ready = future.result()  # re-raises a worker's error here
            self.step = plan.step + 1
            if self.prefetch:
                self._pending = self._submit(self._draw(self.step))
        if ready is not None:
            torch = _torch()
            current = torch.cuda.current_stream(views.device)
            current.wait_event(ready)
            views.record_stream(current)
            labels.record_stream(current)
        b = len(local.x_rows)
        return split_views(views, local, call, labels[:b], plan, u_labels=labels[b:])

    @property
    def epoch(self) -> float:
        """Labeled epochs consumed (by the batches handed out)."""
        return self.step * self.config.batch / len(self.data.labeled)

    # -- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where the stream stands: the next step, the sampler positions (past any plan already
        drawn) and that drawn plan, so a resumed loader renders exactly what this one would have."""
        with self._lock:
            pending = None if self._pending is None else self._pending[0].state_dict()
            return {"step": self.step, "labeled": self.labeled.state_dict(),
                    "unlabeled": None if self.unlabeled is None else self.unlabeled.state_dict(),
                    "pending_plan": pending}

    def load_state_dict(self, state: dict) -> None:
        with self._lock:
            if self._pending is not None:
                self._pending[1].cancel()
                self._pending = None
            self.step = int(state["step"])
            self.labeled.load_state_dict(state["labeled"])
            if (state["unlabeled"] is None) != (self.unlabeled is None):
                raise PipelineError("loader state and config disagree on whether there is an unlabeled stream")
            if self.unlabeled is not None:
                self.unlabeled.load_state_dict(state["unlabeled"])
            if state["pending_plan"] is not None:
                self._pending = self._submit(StepPlan.from_state_dict(state["pending_plan"]))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        getattr(self.fetch, "close", lambda: None)()  # a plain function is a fetcher too

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _kernel_threads(requested: int | None) -> int:
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    if requested is None:
        return loader_threads(_torch().get_num_threads(), most)
    if not 1 <= requested <= most:
        raise PipelineError(f"kernel_threads must be in 1..{most} (NUMBA_NUM_THREADS), got {requested}")
    return requested


@dataclass
class EvalBatch:
    images: object  # (n, H, W, 3) uint8 tensor on the device
    labels: object  # (n,) int64 tensor on the device
    rows: np.ndarray  # (n,) int64 rows of the split


class EvalLoader:
    """One pass over ``rows`` of a split (default: all of it), no augmentation, in order: this
    rank's contiguous share, every row on exactly one rank, the last partial batch kept."""

    def __init__(self, split, rows: np.ndarray | None = None, batch: int = 500, *, device: str = "cpu",
                 rank: int = 0, world_size: int = 1, fetcher=None):
        if batch < 1:
            raise PipelineError(f"eval batch must be at least 1, got {batch}")
        check_image_shape(split_image_shape(split), f"eval split {split.name}")
        rows = np.arange(len(split), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.split, self.batch, self.device = split, batch, device
        self.rows = eval_rows(rows, rank, world_size)
        self.labels = np.asarray(split.labels, np.int64)
        self.fetch = fetcher if fetcher is not None else HostFetcher(split, device)

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch)

    def __iter__(self):
        torch = _torch()
        for start in range(0, len(self.rows), self.batch):
            rows = self.rows[start:start + self.batch]
            images = self.fetch(rows)
            labels = torch.from_numpy(self.labels[rows])
            if self.device == "cpu":
                images = torch.from_numpy(images)
            else:
                labels = labels.to(self.device, non_blocking=True)
            yield EvalBatch(images, labels, rows)
