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
