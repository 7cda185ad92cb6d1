"""A training run from start (or checkpoint) to summary, top to bottom.

    run dir/
      config.json      the resolved TrainConfig
      labeled.json     the labeled subset (indices, seed, dataset fingerprint)
      metrics.jsonl    one line per logged step and per evaluation
      checkpoints/     ckpt-<step>.pt, the last --keep-ckpts of them
      cta_weights.txt, cta_heatmap.png   the CTAugment weights at the last evaluation
      curves.png       accuracy (EMA, raw) and the loss terms against steps, redrawn at each evaluation
      events.out.tfevents.*   with --tensorboard: the same records for TensorBoard
      summary.json     the result (written at the end)
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from remixmatch.common.atomic import atomic_write_json
from remixmatch.common.versions import package_versions
from remixmatch.kernels.threads import wait_policy
from remixmatch.common.errors import EXIT_DIVERGED
from remixmatch.pipeline import EvalLoader, PipelineError, StepLoader
from remixmatch.pipeline.loader import make_fetcher, split_image_shape

from .algorithms import METRICS, STEPS
from .build import build_policy_and_views, build_train_state
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, checkpoint_paths, latest_checkpoint, save_checkpoint
from .config import TrainConfig, contradictions, fidelity_choices
from .schedules import schedule_choices
from .curves import draw_run_curves
from .data import load_run_data
from .errors import TrainerError
from .interrupt import Interrupted, stop_on_sigint
from .loop import apply_pending, train_step
from .model import count_parameters, model_name
from .progress import Progress
from .recalibrate import Recalibration
from .step import as_float_images
from .tensorboard import metrics_log

SUMMARY_VERSION = 1


class RunError(TrainerError, RuntimeError):
    """A run that cannot start or continue; one line saying why and where."""


class Diverged(RunError):
    """A non-finite loss: the run stops, the last good checkpoint stays."""

    exit_code = EXIT_DIVERGED


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: no CUDA device is available (torch {torch.__version__}, "
                       f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"--device {name}: only cpu and cuda are supported")
    return device


def resolve_loader(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            return "torch"
        return "dali"
    return "torch"  # DALI's CPU ops do not beat the Numba kernels on a few cores


def check_run_dir(out: Path, resume: bool) -> bool:
    """True when resuming a run that exists; refuses to write over another run."""
    holds_run = (out / "config.json").exists() or bool(checkpoint_paths(out))
    if holds_run and not resume:
        raise RunError(f"{out} holds a run already (config.json); pass --resume to continue it, or choose another --out")
    if not holds_run and out.exists() and any(out.iterdir()) and not resume:
        raise RunError(f"{out} is not empty and holds no run; choose an empty or new --out")
    return holds_run and resume


def versions() -> dict:
    found = package_versions(("torch", "numpy", "numba", "numba-cuda", "nvidia-dali-cuda120", "pyarrow", "remixmatch"))
    # torch's own string names its build ("2.11.0+cu130"), which the package metadata may not.
    return {**found, "torch": torch.__version__}


def _remove_new_files(out: Path, existed: set[str] | None) -> None:
    """Undoes a failed fresh start: the files it wrote, and ``out`` itself if it made it."""
    for path in out.iterdir():
        if (existed is None or path.name not in existed) and path.is_file():
            path.unlink()
    if existed is None:
        with contextlib.suppress(OSError):  # something else put files there meanwhile: leave it
            out.rmdir()


class Run:
    """The objects of one run and the loop that drives them."""

    def __init__(self, config: TrainConfig, out: Path, *, resume: bool = False, rank: int = 0,
                 world_size: int = 1, all_reduce_mean=None, wrap_model=None, quiet: bool = False):
        self.config, self.out = config, Path(out)
        self.rank, self.world_size = rank, world_size
        self.lead = rank == 0
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        resuming = self._lead_decides(lambda: check_run_dir(self.out, resume))
        # Before the directory is made: a missing --tensorboard package refuses the run, leaving nothing.
        self.metrics = metrics_log(self.out / "metrics.jsonl", self.lead, config.tensorboard)
        existed = {p.name for p in self.out.iterdir()} if self.out.is_dir() else None
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = Progress(config.steps, enabled=self.lead and not quiet)
        try:
            self._setup(config, resuming, all_reduce_mean, wrap_model)
        except BaseException:
            self.progress.close()
            if not resuming and self.lead:
                _remove_new_files(self.out, existed)  # a failed start must not block the next one
            raise

    def _lead_decides(self, decide):
        """``decide()`` on the lead rank alone, its result (or its RunError) on every rank: the other
        ranks must not look at the run directory while the lead starts writing it."""
        if self.world_size == 1:
            return decide()
        import torch.distributed as dist

        box = [None, None]
        if self.lead:
            try:
                box = [decide(), None]
            except RunError as error:
                box = [None, str(error)]
        dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            raise RunError(box[1])
        return box[0]

    def _sync_buffers(self) -> None:
        """Rank 0's batch-norm running statistics on every rank (DDP broadcasts them at each forward;
        each rank's last forward then updated its own copy with its own batch): evaluations and
        checkpoints see one model."""
        if self.world_size > 1:
            import torch.distributed as dist

            for model in (self.state.raw_model, self.state.ema_model):
                for buffer in model.buffers():
                    dist.broadcast(buffer, 0)

    def _setup(self, config: TrainConfig, resuming: bool, all_reduce_mean, wrap_model) -> None:
        rank, world_size = self.rank, self.world_size
        checkpoint = self._load_checkpoint() if resuming else None
        if resuming and checkpoint is None:
            # Stopped before its first checkpoint: the run starts over, so its log does too.
            self.metrics.truncate_after(0)
        self.data = load_run_data(config, self.out, checkpoint is not None)
        if len(self.data.train.labeled) < config.batch and self.lead:
            self.progress.message(f"note: the labeled set ({len(self.data.train.labeled)} images) is smaller than "
                                  f"the batch ({config.batch}): each batch repeats labeled images, each epoch "
                                  "reshuffled, as the reference's endless shuffled stream does")

        # Model, EMA copy, optimiser: the same initialisation on every rank (seeded).
        self.state = build_train_state(config, self.data.shards.num_classes, self.data.train.class_distribution(),
                                       self.device, mean=self.data.mean, std=self.data.std, rank=rank,
                                       world_size=world_size, wrap_model=wrap_model, all_reduce_mean=all_reduce_mean,
                                       image_side=self.data.train.image_shape[0])

        # CTAugment and the loaders.
        self.policy, views = build_policy_and_views(config, self.data.train.image_shape[0])
        self.loader_kind = resolve_loader(config.loader, self.device)
        fetch = make_fetcher(self.loader_kind, self.data.train.split, str(self.device),
                             max_batch=config.batch + config.unlabeled_batch)
        # The run draws each plan itself (prepare()), after its CTAugment update: see train().
        self.loader = StepLoader(self.data.train, self.policy, views, device=str(self.device), rank=rank,
                                 world_size=world_size, prefetch=False, fetcher=fetch)
        self.eval_loader = EvalLoader(self.data.eval_split, self.data.eval_rows, config.eval_batch,
                                      device=str(self.device), rank=rank, world_size=world_size,
                                      fetcher=make_fetcher(self.loader_kind, self.data.eval_split, str(self.device),
                                                           max_batch=config.eval_batch))
        # Every rank reads all the images: the same statistics on each, whatever the batch norm.
        self.recalibration = (Recalibration(self.data.shards["train"], self.data.subset.valid,
                                            config.eval_recalibrate_bn, config.eval_batch, config.run_seed,
                                            str(self.device))
                              if config.eval_recalibrate_bn else None)
        self.step = 0
        self.evaluations: list[dict] = []
        self.elapsed = 0.0  # wall seconds of earlier sessions of this run
        self.pending = None  # (probe policies, this rank's scores) awaiting the CTAugment update
        self.log_window = None  # (losses (n, 5), first step, data wait s) not yet logged, from a Ctrl-C checkpoint
        if checkpoint is not None:
            self._restore(checkpoint)
        elif self.lead:
            atomic_write_json(self.out / "config.json", config.to_dict())
        self.step_fn = STEPS[config.algorithm]
        self.metric_names = METRICS[config.algorithm]
        if self.lead:
            self.progress.message("fidelity: " + ", ".join(
                f"{name.replace('_', '-')} {value}" for name, value in fidelity_choices(config).items()))
            self.progress.message("schedules: " + ", ".join(
                f"{name.replace('_', '-')} {value:.4g}" if isinstance(value, float) else f"{name.replace('_', '-')} {value}"
                for name, value in schedule_choices(config).items()))

    # -- checkpoints --------------------------------------------------------------------------------

    def _load_checkpoint(self) -> dict | None:
        found = latest_checkpoint(self.out, self._warn)
        if found is None:
            return None
        path, state = found
        clash = contradictions(state["config"], self.config)
        if clash:
            name = clash[0]
            raise RunError(f"--resume: {name} = {getattr(self.config, name)!r} contradicts the checkpoint's "
                           f"{state['config'][name]!r} ({path}); drop the flag or start a new --out")
        self.progress.message(f"resuming from {path} (step {state['step']})")
        return state

    def _warn(self, text: str) -> None:
        """A skipped checkpoint is reported even with --quiet (which silences progress only)."""
        if self.progress.enabled:
            self.progress.message(text)
        elif self.lead:
            print(text, file=sys.stderr, flush=True)

    def _restore(self, state: dict) -> None:
        self.state.raw_model.load_state_dict(state["model"])
        self.state.ema_model.load_state_dict(state["ema"])
        self.state.optimizer.load_state_dict(state["optimizer"])
        if self.policy is not None:
            self.policy.load_state_dict(state["policy"])
        if self.state.distribution is not None:
            self.state.distribution.load_state_dict(state["distribution_alignment"])
        self.loader.load_state_dict(state["loader"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
        self.evaluations = list(state["evaluations"])
        self.elapsed = float(state["elapsed"])
        self.log_window = state.get("log_window")
        self.metrics.truncate_after(self.step)

    def _checkpoint_state(self, elapsed: float) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
            "config": self.config.to_dict(),
            "model": self.state.raw_model.state_dict(), "ema": self.state.ema_model.state_dict(),
            "optimizer": self.state.optimizer.state_dict(),
            "policy": None if self.policy is None else self.policy.state_dict(),
            "distribution_alignment": None if self.state.distribution is None else self.state.distribution.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
            "labeled_subset": self.data.subset.to_json(),
            "evaluations": self.evaluations, "elapsed": elapsed,
            "log_window": self.log_window,
        }

    # -- CTAugment feedback ---------------------------------------------------------------------------

    def _apply_pending(self) -> None:
        """Feeds the held probe scores to the policy (every rank the same global update)."""
        pending, self.pending = self.pending, None
        apply_pending(self.policy, pending, self.world_size)

    # -- evaluation -----------------------------------------------------------------------------------

    @torch.no_grad()
    def accuracy(self, model: torch.nn.Module) -> float:
        model.eval()
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        total = torch.zeros((), dtype=torch.int64, device=self.device)
        for batch in self.eval_loader:
            images = as_float_images(batch.images)
            with self.state.autocast():
                logits = model(images)
            correct += (logits.argmax(dim=1) == batch.labels).sum()
            total += batch.labels.numel()
        if self.world_size > 1:
            import torch.distributed as dist

            counts = torch.stack([correct, total])
            dist.all_reduce(counts)
            correct, total = counts[0], counts[1]
        return float(correct) / max(int(total), 1)

    def _recalibrated(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` with its BN statistics re-estimated (--eval-recalibrate-bn): the
        trained model, and so the rest of the run, stays as it was."""
        copied = copy.deepcopy(model)
        self.recalibration(copied)
        return copied

    def evaluate(self) -> dict:
        self._sync_buffers()
        ema, raw = self.state.ema_model, self.state.raw_model
        record = {"eval": True, "step": self.step, "kimg": self.step * self.config.batch / 1024}
        if self.recalibration is None:
            record.update(acc_ema=self.accuracy(ema), acc_raw=self.accuracy(raw))
        else:
            record.update(acc_ema=self.accuracy(self._recalibrated(ema)), acc_raw=self.accuracy(self._recalibrated(raw)),
                          acc_ema_trained_bn=self.accuracy(ema), acc_raw_trained_bn=self.accuracy(raw))
        self.evaluations.append(record)
        if self.lead:
            self.metrics.write(record)
            self.progress.evaluation(record)
            if self.policy is not None:
                (self.out / "cta_weights.txt").write_text(self.policy.table() + "\n")
                # matplotlib (the plots extra) is optional; the table is always written.
                with contextlib.suppress(PipelineError):
                    self.policy.heatmap(self.out / "cta_heatmap.png")
                    self.metrics.image("cta/heatmap", self.out / "cta_heatmap.png", self.step)
            # None, or why not (matplotlib missing): the run goes on without the picture either way.
            draw_run_curves(self.out / "metrics.jsonl", self.out / "curves.png",
                            f"{self.out.name}: {self.config.algorithm}, step {self.step}")
        return record

    # -- the loop -------------------------------------------------------------------------------------

    def _log(self, rows: list, first_step: int, seconds: float, wait: float) -> None:
        """Reads the logged steps' losses back (the only host sync of the loop) and stops on a
        non-finite one, naming the step and the loss term."""
        losses = torch.stack(rows)
        if self.world_size > 1:  # the logged figures are the global batch's
            import torch.distributed as dist

            dist.all_reduce(losses)
            losses /= self.world_size
        losses = losses.cpu().numpy()
        bad = ~np.isfinite(losses)
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            # The total is non-finite whenever a term is: name the term (the total only if it alone is).
            terms = np.flatnonzero(bad[row, 1:])
            term = int(terms[0]) + 1 if terms.size else 0
            raise Diverged(f"step {first_step + row}: loss term {self.metric_names[term]} is {losses[row, term]}; "
                           f"stopped. {self._last_good()}")
        mean = losses.mean(axis=0)
        images = len(rows) * self.config.batch
        record = {"step": self.step, "kimg": self.step * self.config.batch / 1024,
                  "loss": float(mean[0]), **{name: float(mean[i]) for i, name in enumerate(self.metric_names) if i},
                  "kimg_per_s": images / 1024 / max(seconds, 1e-9), "data_wait": wait / max(seconds, 1e-9),
                  "step_seconds": seconds / len(rows)}
        if self.lead:
            self.metrics.write(record)
            self.progress.step(record)

    def train(self) -> dict:
        start_time = time.perf_counter()
        try:
            self._loop(start_time)
        finally:
            self.loader.close()
            self.progress.close()
        return self.finish(self.elapsed + time.perf_counter() - start_time)

    def _loop(self, start_time: float) -> None:
        rows, first, window_start, wait = [], self.step, time.perf_counter(), 0.0
        if self.log_window is not None:  # the steps a Ctrl-C checkpoint held back from the log
            losses, first, wait = self.log_window
            rows, self.log_window = list(losses.to(self.device)), None
        with stop_on_sigint(self.world_size == 1) as stop:
            self._steps(rows, first, window_start, wait, start_time, stop)

    def _steps(self, rows, first, window_start, wait, start_time, stop) -> None:
        config = self.config
        while self.step < config.steps:
            outcome = train_step(self.state, self.step_fn, self.loader, self.policy, self.step, self.pending,
                                 prefetch=config.prefetch, world_size=self.world_size)
            self.pending = outcome.pending
            wait += outcome.wait
            self.step += 1
            rows.append(outcome.result.losses)
            last = self.step == config.steps or self._time_is_up(start_time)
            if self.step % config.log_every == 0 or last or self.step % config.ckpt_every == 0:
                self._log(rows, first, time.perf_counter() - window_start, wait)
                rows, first, window_start, wait = [], self.step, time.perf_counter(), 0.0
            if self.step % config.eval_every == 0 or last:
                self._apply_pending()  # the weights written beside the evaluation are current
                self.evaluate()
            if self.step % config.ckpt_every == 0 or last:
                # Applying the held update now is what the next step would do before drawing a plan.
                self._apply_pending()
                self._save(self.elapsed + time.perf_counter() - start_time)
            elif stop.requested:
                self._stop(rows, first, wait, start_time)
            if stop.requested and not last:
                raise Interrupted(f"interrupted at step {self.step}: checkpoint {checkpoint_paths(self.out)[-1]} "
                                  "written; continue with --resume")
            if last:
                break

    def _stop(self, rows, first, wait, start_time) -> None:
        """Ctrl-C between checkpoints: a checkpoint of this step, holding the steps not yet logged so
        that a resumed run logs the same window, then the same lines, as one that never stopped."""
        self._apply_pending()
        self.log_window = (torch.stack(rows).cpu(), first, wait) if rows else None
        self._save(self.elapsed + time.perf_counter() - start_time)
        self.log_window = None

    def _time_is_up(self, start_time: float) -> bool:
        """--time-limit, looked at on log steps only; on several ranks the lead's clock decides for all."""
        limit = self.config.time_limit
        if limit <= 0 or self.step % self.config.log_every:
            return False
        up = time.perf_counter() - start_time >= limit
        if self.world_size > 1:
            import torch.distributed as dist

            flag = torch.tensor([float(up)], device=self.device)
            dist.broadcast(flag, src=0)
            up = bool(flag.item())
        return up

    def _last_good(self) -> str:
        kept = checkpoint_paths(self.out)
        return f"Last good checkpoint: {kept[-1] if kept else 'none (no checkpoint written yet)'}"

    def _save(self, elapsed: float) -> None:
        # A finite loss is computed before its update: an update can still overflow the weights
        # (an absurd lr), and a checkpoint of those would not be a good one to fall back to.
        finite = torch.stack([torch.isfinite(p).all() for p in self.state.raw_model.parameters()]).all()
        if not bool(finite):
            raise Diverged(f"step {self.step - 1}: the weights are not finite after the update; stopped "
                           f"without writing a checkpoint. {self._last_good()}")
        self._sync_buffers()
        state = self._checkpoint_state(elapsed)  # every rank joins the collectives above
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
        if self.lead:
            save_checkpoint(self.out, state, self.config.keep_ckpts)

    def threads(self) -> dict:
        """torch's intra-op threads, the loader's kernel threads (CPU; null on a GPU: the rule in
        docs/pipeline.md) and the wait policy Numba's OpenMP workers started with."""
        return {"torch": torch.get_num_threads(), "loader_kernel": getattr(self.loader, "kernel_threads", None),
                **wait_policy()}

    def finish(self, elapsed: float) -> dict:
        config = self.config
        recent = self.evaluations[-config.median_of:]
        summary = {
            "summary_version": SUMMARY_VERSION,
            "algorithm": config.algorithm,
            "steps": self.step,
            "kimg": self.step * config.batch / 1024,
            "accuracy": {
                "ema_median_last": statistics.median(e["acc_ema"] for e in recent) if recent else None,
                "raw_median_last": statistics.median(e["acc_raw"] for e in recent) if recent else None,
                "median_of": len(recent),
                "ema_best": max((e["acc_ema"] for e in self.evaluations), default=None),
                "raw_best": max((e["acc_raw"] for e in self.evaluations), default=None),
                "ema_last": self.evaluations[-1]["acc_ema"] if self.evaluations else None,
                # 0: the figures above are the trained statistics'; N: re-estimated on N training images.
                "recalibrate_bn": config.eval_recalibrate_bn,
            },
            "eval_split": config.eval_split, "eval_rows": int(len(self.data.eval_rows)),
            "labeled": {"file": "labeled.json", "n_labeled": int(len(self.data.subset.labeled)),
                        "seed": config.seed, "n_valid": int(len(self.data.subset.valid)),
                        "fold": self.data.subset.fold, "fingerprint": self.data.shards.fingerprint},
            "dataset": {"path": str(self.data.shards.path), "name": self.data.shards.dataset,
                        "mean": self.data.mean, "std": self.data.std,
                        "fingerprint": self.data.shards.fingerprint,
                        "class_names": list(self.data.shards.class_names),
                        "image_shape": list(split_image_shape(self.data.train.split))},
            "model": {"parameters": count_parameters(self.state.raw_model), "stages": self.state.raw_model.stages,
                      "name": model_name(config.width, config.blocks_per_stage,
                                                                    self.state.raw_model.stages)},
            "device": str(self.device), "loader": self.loader_kind, "world_size": self.world_size,
            "wall_seconds": elapsed,
            "versions": versions(),
            "threads": self.threads(),
            "fidelity": fidelity_choices(config),
            "schedules": schedule_choices(config),
            "config": config.to_dict(),
        }
        if self.lead:
            atomic_write_json(self.out / "summary.json", summary)
            acc = summary["accuracy"]
            if acc["ema_median_last"] is not None:
                self.progress.message(
                    f"done: {self.step} steps in {elapsed:.0f} s; EMA accuracy median of the last {acc['median_of']} "
                    f"evaluations {100 * acc['ema_median_last']:.2f}% (best {100 * acc['ema_best']:.2f}%); "
                    f"{self.out / 'summary.json'}")
        return summary


def check_finite_config(config: TrainConfig) -> None:
    for name, value in config.to_dict().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise RunError(f"--{name.replace('_', '-')} must be finite, got {value}")
