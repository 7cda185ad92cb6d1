"""The DALI fetcher: rows of a shard split read through a DALI pipeline (``loader="dali"``).

    fetch = DaliFetcher(split, device="cuda")          # or make_fetcher("dali", split, "cuda")
    images = fetch(np.array([3, 1, 4], np.int64))    # (3, H, W, 3) uint8 torch CUDA tensor
    loader = StepLoader(data, CTAugment(), config, device="cuda", fetcher=fetch)

The graph only reads, decodes and moves rows: ``fn.external_source`` takes each call's rows (raw
shards: the uint8 HWC images gathered from the memory-mapped shards; PNG/JPEG shards: the stored
file bytes, decoded by ``fn.decoders.image`` on the GPU ("mixed") or the CPU); on a GPU the images
go to the device inside the graph (``.gpu()``) and come out as torch CUDA tensors through DLPack,
with no host copy. The weak augmentation (flip, reflect pad, crop) is deliberately *not* in the
graph: DALI's named per-sample arguments (flip's ``horizontal``, crop's ``crop_pos_x/y``) must be
CPU data nodes and its reflect padding would need an op of its own, while our CTAugment kernel
(``apply_ops``) fuses the weak augmentation for free, so one launch makes every view of the step.

Rows reach DALI with ``feed_input`` before each run, not through a ``source=`` callable: the rows
are known only when the loader calls the fetcher, and a source is pulled by DALI itself (ahead of
time, prefetch_queue_depth batches at the first run), which would need a hand-off through shared
state. With ``prefetch_queue_depth=1`` each call feeds one batch and runs it, so any batch size up
to ``max_batch`` works (the last partial batch of an eval pass too; more rows take several runs)
and DALI's errors are raised in the calling thread. No Python worker processes are involved, so
there is no worker that could die and leave the caller waiting. Rows out of range raise the
split's IndexError before DALI sees them; a DALI error becomes a one-line PipelineError (the
original chained), and since DALI declares a pipeline invalid after one, the next call builds a
new pipeline.

:class:`DaliGraphFetcher` (``loader="dali-graph"``, CPU and raw shards only) is the other design, kept
as a benchmark row: the CTAugment kernel *inside* the graph. Its ``render(rows, call, pad)`` feeds
the step's images and the kernel call's arrays as one sample each and runs ``apply_ops`` once for the
step in ``fn.python_function`` (or our njit kernel in ``numba_function``, single-threaded: the parallel
build writes nothing from DALI's compiled callback); the StepLoader uses ``render`` when a fetcher has
one. Measured on 2 busy cores (B = 64, K = 8): the same kernel, so no faster in itself (a direct
render A/B: ~12% slower, from feeding the step's arrays in and copying the views out of the Python
operator); ``rmm-bench pipeline`` shows it ~1.25x faster only under OpenMP's default spin-wait, and
with ``OMP_WAIT_POLICY=PASSIVE`` the kernel on DALI's output is faster again. numba_function, on one
thread, runs at about half the speed.

The pipeline runs on DALI's dynamic executor (``exec_dynamic=True``, DALI's default), which
allocates each run's outputs afresh and keeps them alive while referenced: the NumPy array (CPU)
or torch tensor (GPU) handed out is a view of DALI's output, not a copy, and no later run
overwrites it.
"""

from __future__ import annotations

import importlib
import os
import re
import threading

import numpy as np

from .errors import PipelineError

DALI_MISSING = ("loader 'dali' needs the nvidia-dali-cuda120 package (pip install nvidia-dali-cuda120), "
                "or use loader='torch'")

_INPUT = "rows"  # the external source's name


def import_dali():
    """nvidia.dali, or the one-line PipelineError that says how to get it."""
    try:
        return importlib.import_module("nvidia.dali")
    except ImportError as exc:
        raise PipelineError(DALI_MISSING) from exc


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    # Decoding is the only real CPU work in the graph; a few threads saturate it at 32x32.
    return max(1, min(4, cores))


def _dali_reason(exc: BaseException) -> str:
    """The operator and cause out of DALI's multi-line error text (traceback and C++ context left out)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    operator = next((line.split("`")[1] for line in lines if line.startswith("Error in ") and line.count("`") >= 2),
                    None)
    cause = lines
    if "encountered:" in lines:
        cause = lines[len(lines) - lines[::-1].index("encountered:"):]
    cause = [line for line in cause if not line.startswith(("C++ context:", "Current pipeline object",
                                                             "Critical error in pipeline"))]
    text = " ".join(cause) or type(exc).__name__
    return f"{operator}: {text}" if operator else text


def _where(split) -> str:
    shardset = getattr(split, "shardset", None)
    return f"split {split.name} of {shardset.path}" if shardset is not None else f"split {split.name}"


def _first_undecodable(rows: np.ndarray, blobs) -> int | None:
    """The first row whose bytes PIL cannot decode either (DALI's decoder errors name no sample)."""
    import io

    from PIL import Image

    for row, blob in zip(rows, blobs):
        try:
            with Image.open(io.BytesIO(blob.tobytes())) as image:
                image.load()
        except Exception:
            return int(row)
    return None


class DaliFetcher:
    """``fetch(rows)`` -> (N, H, W, 3) uint8 images of ``split``: NumPy on "cpu", torch CUDA otherwise."""

    def __init__(self, split, device: str = "cpu", max_batch: int = 1024, num_threads: int | None = None,
                 seed: int = 0):
        if max_batch < 1:
            raise PipelineError(f"DALI fetcher max_batch must be at least 1, got {max_batch}")
        if num_threads is not None and num_threads < 1:
            raise PipelineError(f"DALI fetcher num_threads must be at least 1, got {num_threads}")
        if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
            raise PipelineError(f"DALI fetcher device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if split.encoding not in ("raw", "png", "jpeg"):
            raise PipelineError(f"DALI fetcher, {_where(split)}: encoding {split.encoding!r} is not one of "
                                "'raw', 'png', 'jpeg'")
        import_dali()
        self.split, self.device, self.max_batch, self.seed = split, device, int(max_batch), int(seed)
        self.num_threads = _default_threads() if num_threads is None else int(num_threads)
        self.encoded = split.encoding != "raw"
        self._gpu = device != "cpu"
        self._device_id = None  # DALI refuses a device id without a CUDA driver, even for a CPU graph
        if self._gpu:
            import torch

            index = torch.device(device).index
            self._device_id = torch.cuda.current_device() if index is None else index
        # The StepLoader fetches from its worker thread and the EvalLoader from the caller's: one
        # pipeline must not be fed and run by two threads at once.
        self._lock = threading.Lock()
        self._closed = False
        self._pipe = self._build()

    def _build(self):
        import_dali()
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        try:
            pipe = Pipeline(batch_size=self.max_batch, num_threads=self.num_threads, device_id=self._device_id,
                            seed=self.seed, prefetch_queue_depth=1, exec_dynamic=True)
            # DALI copies each batch when it is fed (no_copy=False): measured on 2 CPU cores, the
            # copied batch becomes the output as it is (~150 us per 128 rows) while a batch read in
            # place is copied again on the way out (~270 us); on a GPU, run() may return before the
            # host-to-device copy has read its input, which a batch of ours would have to outlive.
            with pipe:
                if self.encoded:
                    data = fn.external_source(name=_INPUT, device="cpu", dtype=types.UINT8, ndim=1, no_copy=False)
                    images = fn.decoders.image(data, device="mixed" if self._gpu else "cpu", output_type=types.RGB)
                else:
                    data = fn.external_source(name=_INPUT, device="cpu", dtype=types.UINT8, ndim=3, layout="HWC",
                                              no_copy=False)
                    images = data.gpu() if self._gpu else data
                pipe.set_outputs(images)
            pipe.build()
        except Exception as exc:
            raise PipelineError(f"DALI fetcher, {self._where}, device {self.device}: the pipeline does not "
                                f"build: {_dali_reason(exc)}") from exc
        return pipe

    @property
    def _where(self) -> str:
        return _where(self.split)

    # -- fetching -----------------------------------------------------------------------------------

    def __call__(self, rows):
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
            raise PipelineError(f"DALI fetcher: rows must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.int64, copy=False)
        with self._lock:
            if self._closed:
                raise PipelineError(f"DALI fetcher, {self._where}: used after close()")
            if len(rows) == 0:
                return self._empty()
            # More rows than the pipeline's batch: several runs, joined.
            parts = [self._run(rows[start:start + self.max_batch]) for start in range(0, len(rows), self.max_batch)]
        if len(parts) == 1:
            return parts[0]
        shapes = {tuple(part.shape[1:]) for part in parts}
        if len(shapes) > 1:
            raise PipelineError(f"DALI fetcher, {self._where}: rows decode to different sizes {sorted(shapes)[:3]}; "
                                "the loaders need one image size (prep without --encoded, with --size)")
        if self._gpu:
            import torch

            return torch.cat(parts)
        return np.concatenate(parts)

    def _inputs(self, rows: np.ndarray):
        # The split checks the rows (IndexError naming a bad one) before DALI is given anything.
        if self.encoded:
            return [np.frombuffer(blob, np.uint8) for blob in self.split.encoded(rows)]
        return self.split.images(rows, out=np.empty((len(rows), *self.split.image_shape), np.uint8))

    def _run(self, rows: np.ndarray):
        batch = self._inputs(rows)
        if self._pipe is None:
            self._pipe = self._build()
        stream = None
        if self._gpu:
            import torch

            # The outputs are bound to the caller's current stream (the StepLoader's side stream),
            # so its kernels wait for DALI without a host synchronisation.
            stream = torch.cuda.current_stream(torch.device("cuda", self._device_id))
        try:
            self._pipe.feed_input(_INPUT, batch)
            (out,) = self._pipe.run(stream) if stream is not None else self._pipe.run()
        except Exception as exc:
            self._pipe = None  # DALI: "Current pipeline object is no longer valid"
            culprit = _first_undecodable(rows, batch) if self.encoded else None
            what = (f"row {culprit} does not decode" if culprit is not None
                    else f"a batch of {len(rows)} rows from row {int(rows[0])} failed")
            raise PipelineError(f"DALI fetcher, {self._where}: {what}: {_dali_reason(exc)}") from exc
        # DALI makes every pipeline output contiguous, so a batch that is not one tensor holds
        # images of different sizes.
        if not out.is_dense_tensor():
            shapes = sorted({tuple(out[i].shape()) for i in range(len(out))})
            raise PipelineError(f"DALI fetcher, {self._where}: rows {int(rows[0])}.. decode to different sizes "
                                f"{shapes[:3]}; the loaders need one image size (prep without --encoded, with --size)")
        tensor = out.as_tensor()
        if self._gpu:
            from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

            return to_torch_tensor(tensor, copy=False)  # DLPack, bound to the current stream: no copy
        return np.asarray(tensor)  # a view of DALI's output buffer (see the module docstring)

    def _empty(self):
        shape = (0, *(self.split.image_shape or (0, 0, 3)))
        if self._gpu:
            import torch

            return torch.empty(shape, dtype=torch.uint8, device=torch.device("cuda", self._device_id))
        return np.empty(shape, np.uint8)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pipe = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"DaliFetcher(split={self.split.name!r}, encoding={self.split.encoding!r}, device={self.device!r}, "
                f"max_batch={self.max_batch}, num_threads={self.num_threads})")


# -- the CTAugment kernel inside the graph (loader="dali-graph") -------------------------------------

KERNEL_RUNNERS = ("python", "numba")
# op_ids first: numba_function's setup_fn is handed only as many input shapes as there are outputs
# (DALI 2.4 passes num_outs for the inputs too), so the output's N must come from input 0.
_GRAPH_INPUTS = ("op_ids", "images", "levels", "rand", "views")


def _python_runner(pad: int, numba_threads: int | None, semantics: str):
    """fn.python_function's callable: one apply_ops call (the parallel Numba kernel) for the step."""
    from remixmatch.kernels import apply_ops

    def run(op_ids, images, levels, rand, views):
        if numba_threads is not None:
            import numba

            if numba.get_num_threads() != numba_threads:  # thread-local: DALI's thread, not the caller's
                numba.set_num_threads(numba_threads)
        return apply_ops(images, op_ids, levels, rand, sources=np.ascontiguousarray(views[:, 0]),
                         flips=np.ascontiguousarray(views[:, 1]), offsets=np.ascontiguousarray(views[:, 2:4]),
                         pad=pad, check_values=False, semantics=semantics)

    return run


def _numba_runner(pad: int, height: int, width: int, semantics: str):
    """numba_function's run_fn and setup_fn: our njit kernel called from DALI's compiled callback."""
    from remixmatch.kernels.cpu import apply_ops_cpu_serial as kernel
    from remixmatch.kernels.tables import kernel_tables, level_form_table

    rotations, bounds_y, coef_y, bounds_x, coef_x = kernel_tables(height, width).arrays()
    forms = level_form_table(semantics)
    # The arguments typed as kernels.args.apply_args types them, so that the callback calls the very
    # specialisation kernels.compile_all() compiles and caches instead of compiling one of its
    # own (minutes): int32 scalars, booleans read from an array (a Python True would reach the kernel as
    # a literal type), and DALI's inputs, which numba_function hands over as optional arrays, reshaped
    # into plain ones.
    pad, height, width = np.int32(pad), np.int32(height), np.int32(width)
    switches = np.array([True, False])  # weak (the views' flips and offsets apply), cutout (none appended)

    def run(out, op_ids, images, levels, rand, views):
        # DALI compiles this callback, so no Python bundle (kernels.args.ApplyArgs) can be built here:
        # the arguments go by the bundle's field names instead, which a swap or a new field cannot
        # get past silently.
        kernel(images=images.reshape(images.shape[0], -1), sources=np.ascontiguousarray(views[:, 0]),
               weak=switches[0], flips=np.ascontiguousarray(views[:, 1]),
               offsets=np.ascontiguousarray(views[:, 2:4]), pad=pad, op_ids=op_ids.reshape(op_ids.shape),
               levels=levels.reshape(levels.shape), rand=rand.reshape(rand.shape), forms=forms,
               cutout=switches[1], cutout_level=0.0, height=height, width=width,
               out=out.reshape(out.shape[0], -1), rotations=rotations, bounds_y=bounds_y, coef_y=coef_y,
               bounds_x=bounds_x, coef_x=coef_x)

    def setup(outs, ins):
        for sample in range(len(outs[0])):
            outs[0][sample][0] = ins[0][sample][0]
            outs[0][sample][1] = height
            outs[0][sample][2] = width
            outs[0][sample][3] = 3

    return run, setup


class DaliGraphFetcher(DaliFetcher):
    """The DALI fetcher whose graph also runs the CTAugment kernel (``loader="dali-graph"``, CPU, raw shards).

        fetch = DaliGraphFetcher(split)                    # or make_fetcher("dali-graph", split)
        views = fetch.render(rows, kernel_call(plan), pad)  # (N, H, W, 3) uint8 NumPy, = render_views(...)

    ``render`` feeds the step as ONE DALI sample each: the rows' images (R, H, W, 3) and the kernel
    call's arrays (op_ids, levels, rand, and sources / flips / offsets packed as (N, 4) int32), and one
    in-graph operator makes every view of the step in one kernel call. ``kernel="python"``:
    ``fn.python_function`` calling :func:`remixmatch.kernels.apply_ops` (the parallel Numba kernel, on
    ``numba_threads`` threads of DALI's worker thread, default all); ``kernel="numba"``:
    ``nvidia.dali.plugin.numba``'s ``numba_function`` calling our njit kernel from DALI's compiled
    callback (single-threaded: :func:`remixmatch.kernels.cpu.apply_ops_cpu_serial`, cached on disk
    like the parallel build; each graph build compiles the callback, a few seconds). ``fetch(rows)``
    still returns the plain images (the EvalLoader's use). A StepLoader given this fetcher calls ``render`` instead of fetch + kernel.

    Why CPU and raw only: DALI's GPU numba_function launches once per sample and cannot run the
    batch-wide kernel (see :mod:`.dali`'s docstring); decoded PNG/JPEG rows come out of DALI as R
    samples, not the one (R, H, W, 3) sample the kernel takes.
    """

    def __init__(self, split, device: str = "cpu", max_batch: int = 1024, num_threads: int | None = None,
                 seed: int = 0, kernel: str = "python", numba_threads: int | None = None):
        if kernel not in KERNEL_RUNNERS:
            raise PipelineError(f"DALI graph fetcher kernel must be one of {', '.join(map(repr, KERNEL_RUNNERS))}, "
                                f"got {kernel!r}")
        if device != "cpu":
            raise PipelineError(f"DALI graph fetcher: the kernel in the graph runs on the CPU only, got device "
                                f"{device!r} (on a GPU use loader='dali', whose views the CUDA kernel makes)")
        if getattr(split, "encoding", None) != "raw":
            raise PipelineError(f"DALI graph fetcher, {_where(split)}: encoding {getattr(split, 'encoding', None)!r}; "
                                "the kernel in the graph needs raw shards (prep without --encoded), or use "
                                "loader='dali'")
        if numba_threads is not None and numba_threads < 1:
            raise PipelineError(f"DALI graph fetcher numba_threads must be at least 1, got {numba_threads}")
        super().__init__(split, device=device, max_batch=max_batch, num_threads=num_threads, seed=seed)
        self.kernel, self.numba_threads = kernel, numba_threads
        self._graph = None
        self._graph_key = None

    def _build_graph(self, pad: int, height: int, width: int, semantics: str):
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        kinds = {"op_ids": (types.INT32, 2), "images": (types.UINT8, 4), "levels": (types.FLOAT, 3),
                 "rand": (types.FLOAT, 3), "views": (types.INT32, 2)}
        try:
            pipe = Pipeline(batch_size=1, num_threads=self.num_threads, device_id=None, seed=self.seed,
                            prefetch_queue_depth=1, exec_dynamic=True)
            with pipe:
                inputs = [fn.external_source(name=name, device="cpu", dtype=kinds[name][0], ndim=kinds[name][1],
                                             no_copy=False) for name in _GRAPH_INPUTS]
                if self.kernel == "python":
                    views = fn.python_function(*inputs, function=_python_runner(pad, self.numba_threads, semantics),
                                               num_outputs=1)
                else:
                    from nvidia.dali.plugin.numba.fn.experimental import numba_function

                    run, setup = _numba_runner(pad, height, width, semantics)
                    views = numba_function(*inputs, run_fn=run, setup_fn=setup, out_types=[types.UINT8],
                                           in_types=[kinds[name][0] for name in _GRAPH_INPUTS], outs_ndim=[4],
                                           ins_ndim=[kinds[name][1] for name in _GRAPH_INPUTS])
                pipe.set_outputs(views)
            pipe.build()
        except Exception as exc:
            raise PipelineError(f"DALI graph fetcher, {self._where}, kernel {self.kernel}: the pipeline does not "
                                f"build: {_dali_reason(exc)}") from exc
        return pipe

    def render(self, rows, call, pad: int, stream=None):
        """The step's views, (N, H, W, 3) uint8 NumPy: ``render_views(fetch(rows), call, pad)`` in one graph run."""
        if stream is not None:
            raise PipelineError("DALI graph fetcher: CPU only, no CUDA stream")
        rows = np.asarray(rows)
        if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
            raise PipelineError(f"DALI graph fetcher: rows must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.int64, copy=False)
        op_ids, levels, rand = call.policies.arrays()
        views = np.empty((len(call.sources), 4), np.int32)
        views[:, 0], views[:, 1], views[:, 2:4] = call.sources, call.weak.flips, call.weak.offsets
        with self._lock:
            if self._closed:
                raise PipelineError(f"DALI graph fetcher, {self._where}: used after close()")
            images = self._inputs(rows)  # the split's IndexError for a bad row, before DALI
            height, width = images.shape[1:3]
            if len(views) == 0 or len(rows) == 0:
                return np.empty((len(views), height, width, 3), np.uint8)
            key = (int(pad), height, width, call.semantics)
            if self._graph is None or self._graph_key != key:
                self._graph, self._graph_key = None, None
                self._graph = self._build_graph(*key)
                self._graph_key = key
            arrays = {"op_ids": op_ids, "images": images, "levels": levels, "rand": rand, "views": views}
            try:
                for name in _GRAPH_INPUTS:
                    self._graph.feed_input(name, [np.ascontiguousarray(arrays[name])])
                (out,) = self._graph.run()
            except Exception as exc:
                self._graph = None  # DALI: "Current pipeline object is no longer valid"
                raise PipelineError(f"DALI graph fetcher, {self._where}: the kernel on {len(views)} views of "
                                    f"{len(rows)} rows failed: {_dali_reason(exc)}") from exc
            return np.asarray(out.as_tensor())[0]  # a view of DALI's output (dynamic executor)

    def close(self) -> None:
        with self._lock:
            self._graph = None
        super().close()

    def __repr__(self) -> str:
        return (f"DaliGraphFetcher(split={self.split.name!r}, kernel={self.kernel!r}, "
                f"numba_threads={self.numba_threads}, num_threads={self.num_threads})")
