"""``rmm-bench all``: one report that shows where a training step's time goes, and what a full run costs.

Runs ``aug``, ``ptx``, ``pipeline`` (needs --shards) and ``train`` (of --algorithm, with the step
split; with ``--scaling`` where more than one device is usable and not --quick: the ``scaling``
section), each as its own ``rmm-bench`` process writing its report under ``DIR/<section>/``: one
section's threads, DALI or CUDA context never touch the next, and a section that fails leaves the
others standing.

``DIR/report.json`` (``"command": "all"``) adds::

    "sections": {"aug" | "ptx" | "pipeline" | "train" | "scaling": a SectionRow (remixmatch.bench.rows)
        without its null fields; scaling's holds the train section's scaling "rows" and "summary"},
    "charts": {"views_per_s" | "per_op" | "step_split" | "scaling": "views_per_s.png" | {"skipped": "..."}},
    "projection": {
        "paper_steps": 1048576, "device": "cpu", "model": "WRN-10-1", "batch": 64, "k": 8,
        "seconds_per_step": 0.61,              # the loader-fed step, prefetch on (train section)
        "projected_hours": 178.0,              # seconds_per_step * 2^20 / 3600
        "ceiling_projected_hours": 170.0,      # the same at the synthetic (ready-tensor) step
        "render_seconds_per_step": 0.005,      # the step's views / the kernel's views/s (aug, same K)
        "render_share": 0.009,                 # that / seconds_per_step: augmentation's share if not overlapped
        "data_wait_share": 0.013,              # the measured phase split's data wait, prefetch on
        "reference_render_seconds_per_step": 0.04,   # the same views through the PIL pool (aug)
        "reference_projected_hours": 12.0}     # 2^20 steps of the PIL pool's rendering alone
        | null,
    "summary": {"numba_cpu_vs_pil", "numba_cuda_best_views_per_s", "torch_vs_reference",
                "train_steps_per_s", "data_wait_share", "max_spill_bytes", ...}   # headline figures, null when absent

The PNG charts need matplotlib (the ``plots`` extra); without it each chart is listed as skipped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.trainer.config import ALGORITHMS

from . import aug, loaders, ptx, train_steps
from .charts import draw_charts
from .core import (
    CommandConfig, check_out, check_valid, command_parser, flag, gpu_count, labels_flag, out_flag, shard_directory,
    shards_flag, threads_flag, valid_flag,
)
from .errors import BenchError
from .render import frame
from .report import (
    RunConditions, finish_report, format_hours, format_rate, format_ratio, format_share, machine_info, new_report,
    usable_cpus,
)
from .rows import SectionRow
from .section_rows import aug_row, measured_rows, section_report
from .section_runner import run_bounded

PROG = "rmm-bench all"
SECTIONS = ("aug", "ptx", "pipeline", "train", "scaling")
PAPER_STEPS = 1 << 20
PAPER_K = 8  # ReMixMatch's strong views per unlabeled image
SECTION_TIMEOUT_S = 3600
BODIES = {"aug": aug.body, "ptx": ptx.body, "pipeline": loaders.body, "train": train_steps.body}  # their markdown


@dataclass(frozen=True)
class AllConfig(CommandConfig):
    out: Path = out_flag("report.json, report.md and the charts")
    device: str = flag("cpu", "the kernels and training device (cuda: an error without one)", choices=("cpu", "cuda"))
    quick: bool = flag(False, "every section's --quick; no scaling section")
    shards: Path | None = shards_flag("; without one pipeline and scaling are skipped and the train section measures "
                                      "ready tensors only")
    batch: int = flag(64, "labeled = unlabeled images per step (64)", type=positive_int)
    k: int | None = flag(None, "views per unlabeled image beyond the weak one (default: 8 for aug and pipeline, the "
                               "algorithm's for train)", type=positive_int)
    threads: int | None = threads_flag("threads per section", None)
    algorithm: str = flag("remixmatch", "the method the train section measures, with its paper's settings "
                                        "(remixmatch)", choices=ALGORITHMS)
    labels: int = labels_flag()
    valid: int = valid_flag()
    width: int | None = flag(None, "the trained model's first-stage channels", type=positive_int)
    blocks_per_stage: int | None = flag(None, "residual blocks per stage", type=positive_int)
    skip: tuple[str, ...] = flag((), f"leave a section out (repeatable): {', '.join(SECTIONS)}", parsed=[],
                                 action="append", choices=SECTIONS, metavar="SECTION")


# ---- sections -------------------------------------------------------------------------------------

def scaling_reason(config: AllConfig) -> str | None:
    """Why the scaling section does not run, or None."""
    if config.quick:
        return "--quick (scaling runs real rmm-train jobs; run without --quick)"
    if config.shards is None:
        return "no --shards (scaling runs real rmm-train jobs on shards)"
    if config.device == "cuda":
        gpus = gpu_count()
        return None if gpus > 1 else f"one device: {gpus} GPU visible"
    cores = usable_cpus()
    return None if cores > 1 else f"one device: {cores} usable CPU core"


def section_argv(name: str, config: AllConfig) -> list[str] | str:
    """The rmm-bench arguments of a section, or the reason it is skipped."""
    if name in config.skip:
        return "--skip"
    out = ["--out", str(config.out / name)]
    quick = ["--quick"] if config.quick else []
    threads = ["--threads", str(config.threads)] if config.threads else []
    data = ["--labels", str(config.labels), "--valid", str(config.valid)]
    shape = ["--batch", str(config.batch), "--k", str(config.k or PAPER_K)]
    train_shape = ["--algorithm", config.algorithm, "--batch", str(config.batch),
                   *(["--k", str(config.k)] if config.k else [])]
    model = ((["--width", str(config.width)] if config.width else [])
             + (["--blocks-per-stage", str(config.blocks_per_stage)] if config.blocks_per_stage else []))
    shards = ["--shards", str(config.shards)] if config.shards else []
    if name == "aug":
        return ["aug", "--device", config.device, *quick, *threads, *shards, *out]
    if name == "ptx":
        return ["ptx", *quick, *out]
    if name == "pipeline":
        if config.shards is None:
            return "no --shards (the loaders read shards: prep-cifar10 --out DIR)"
        return ["pipeline", "--shards", str(config.shards), *shape, *data, *quick, *threads, *out]
    scaling = ["--scaling"] if scaling_reason(config) is None else []
    return ["train", "--device", config.device, *shards, *train_shape, *data, *model, *quick, *threads, *scaling,
            *out]


def scaling_section(config: AllConfig, train: dict) -> dict:
    """The scaling rows come from the train section's own run (``rmm-bench train --scaling``)."""
    reason = scaling_reason(config)
    if reason is not None:
        return section("skipped", reason)
    if train["status"] != "measured":
        return section(train["status"], f"in the train section: {train['reason']}")
    return {"status": "measured", "reason": "measured by the train section (rmm-bench train --scaling)",
            "rows": train["report"]["scaling"], "summary": train["report"]["summary"].get("scaling")}


def section(status: str, reason: str | None = None, seconds: float | None = None, report: dict | None = None) -> dict:
    """A ``sections`` entry: a :class:`~remixmatch.bench.rows.SectionRow` without its empty fields."""
    row = SectionRow(status=status, reason=reason, seconds=seconds, report=report)
    return {name: value for name, value in asdict(row).items() if value is not None}


def run_section(name: str, argv: list[str], log: Callable[[str], None],
                timeout_s: float = SECTION_TIMEOUT_S) -> dict:
    """Runs ``rmm-bench ARGV`` in a process group of its own, its progress passed through to stderr,
    for at most ``timeout_s`` seconds."""
    log(f"== {name}: rmm-bench {' '.join(argv)}")
    outcome = run_bounded([sys.executable, "-m", "remixmatch.bench.cli", *argv], timeout_s=timeout_s,
                          log=lambda line: log(f"   {line}"), merge_stdout=False)
    out = Path(argv[argv.index("--out") + 1]) / "report.json"
    if outcome.timed_out:
        return section("timed_out", f"stopped at its bound of {timeout_s:.0f} s: {outcome.last_line()}",
                       outcome.seconds)
    if outcome.code != 0 or not out.is_file():
        return section("failed", f"exit status {outcome.code}: {outcome.last_line()}", outcome.seconds)
    return section("measured", seconds=outcome.seconds, report=json.loads(out.read_text(encoding="utf-8")))


# ---- what the figures mean for a full run ------------------------------------------------------------

def _train_row(sections: dict, device: str, feed: str, prefetch: bool) -> dict | None:
    return next((r for r in measured_rows(sections, "train")
                 if r.get("section") is None and r["device"] == device and r["feed"] == feed
                 and r["prefetch"] == prefetch), None)


def _aug_rate(sections: dict, backend: str, k: int) -> float | None:
    row = aug_row(sections, backend, k)
    return row["views_per_s"] if row else None


PAPER_RUNS = {"cifar10": "CIFAR-10", "svhn": "SVHN", "stl10": "STL-10 (96x96)", "cifar100": "CIFAR-100"}


def paper_run(shards: Path | None) -> str:
    """The paper's run a projection stands for: that of the shards' dataset, else CIFAR-10."""
    if shards is None:
        return PAPER_RUNS["cifar10"]
    try:
        manifest = json.loads((Path(shards) / "manifest.json").read_text())
    except (OSError, ValueError):
        return PAPER_RUNS["cifar10"]
    return PAPER_RUNS.get(manifest.get("dataset"), str(manifest.get("dataset")))


def projection(sections: dict, config: AllConfig) -> dict | None:
    device = config.device
    loader = _train_row(sections, device, "loader", True)
    ceiling = _train_row(sections, device, "synthetic", True)
    row = loader or ceiling
    if row is None:
        return None
    seconds = row["seconds_per_step"]
    kernel = _aug_rate(sections, "numba-cuda" if device == "cuda" else "numba-cpu", row["k"])
    reference = _aug_rate(sections, "pil-pool", row["k"])
    render = row["views_per_step"] / kernel if kernel else None
    reference_render = row["views_per_step"] / reference if reference else None
    return {
        "paper_run": paper_run(config.shards),
        "paper_steps": PAPER_STEPS, "device": device, "model": row["model"], "batch": row["batch"], "k": row["k"],
        "algorithm": row.get("algorithm", "remixmatch"), "unlabeled_batch": row.get("unlabeled_batch", row["batch"]),
        "feed": row["feed"], "views_per_step": row["views_per_step"],
        "seconds_per_step": seconds, "projected_hours": seconds * PAPER_STEPS / 3600,
        "ceiling_projected_hours": ceiling["seconds_per_step"] * PAPER_STEPS / 3600 if ceiling else None,
        "render_seconds_per_step": render,
        "render_share": render / seconds if render else None,
        "data_wait_share": row["phase_shares"]["data_wait"] if loader else None,
        "reference_render_seconds_per_step": reference_render,
        "reference_projected_hours": reference_render * PAPER_STEPS / 3600 if reference_render else None,
    }


def summarize(sections: dict, proj: dict | None) -> dict:
    aug, pipeline, ptx = (section_report(sections, name) for name in ("aug", "pipeline", "ptx"))
    train = section_report(sections, "train")
    scaling = sections.get("scaling", {}).get("summary")
    ptx_rows = [r for r in (ptx or {}).get("results", []) if r.get("section") == "kernel" and "skipped" not in r]

    def pick(report, *path):
        value = report
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    device = proj["device"] if proj else None
    return {
        "numba_cpu_vs_pil": pick(aug, "summary", "numba_cpu_vs_pil"),
        "numba_cpu_vs_pil_pool": pick(aug, "summary", "numba_cpu_vs_pil_pool"),
        "numba_cuda_best_views_per_s": pick(aug, "summary", "numba_cuda_best_views_per_s"),
        "torch_vs_reference": pick(pipeline, "summary", "torch_vs_reference"),
        "torch_cpu_steps_per_s": pick(pipeline, "summary", "torch_cpu_steps_per_s"),
        "train_steps_per_s": pick(train, "summary", device, "loader_steps_per_s") if device else None,
        "train_synthetic_steps_per_s": pick(train, "summary", device, "synthetic_steps_per_s") if device else None,
        "data_wait_share": pick(train, "summary", device, "data_wait_share") if device else None,
        "scaling_speedup": pick(scaling, device, "speedup") if device else None,
        "max_spill_bytes": max((r["spill_store_bytes"] + r["spill_load_bytes"] for r in ptx_rows), default=None),
        "projected_hours": proj["projected_hours"] if proj else None,
        "render_share": proj["render_share"] if proj else None,
    }


# ---- markdown -------------------------------------------------------------------------------------

def projection_markdown(proj: dict | None, config: AllConfig) -> list[str]:
    lines = ["## What this means for a full run", ""]
    if proj is None:
        return lines + ["No training step was measured (see the train section), so nothing is projected."]
    algorithm = proj.get("algorithm", "remixmatch")
    paper_k = {"remixmatch": PAPER_K, "fixmatch": 1, "mixmatch": 2}.get(algorithm)
    kind = "weak" if algorithm == "mixmatch" else "strong"
    k_note = "" if proj["k"] == paper_k else f" (measured at K = {proj['k']}, not the paper's {paper_k})"
    lines.append(
        f"- The {algorithm} paper's {proj.get('paper_run', 'CIFAR-10')} run, 2^20 steps of B = {proj['batch']} labeled + "
        f"{proj.get('unlabeled_batch', proj['batch'])} unlabeled images with K = {proj['k']} {kind} views each{k_note}, "
        f"{proj['views_per_step']} views per step, on this machine's {proj['device']} with {proj['model']}: "
        f"**{format_hours(proj['projected_hours'])}** ({1000 * proj['seconds_per_step']:.0f} ms per "
        f"{'loader-fed' if proj['feed'] == 'loader' else 'ready-tensor'} step"
        + (f"; {format_hours(proj['ceiling_projected_hours'])} at the ready-tensor ceiling)." if proj["ceiling_projected_hours"]
           and proj["feed"] == "loader" else ")."))
    if proj["render_share"] is not None:
        lines.append(
            f"- Augmentation: rendering a step's {proj['views_per_step']} views takes "
            f"{1000 * proj['render_seconds_per_step']:.1f} ms with the kernel, **{format_share(proj['render_share'])} of a "
            f"step** if nothing overlapped it"
            + (f"; with prefetch the step waits for data {format_share(proj['data_wait_share'])} of its time."
               if proj["data_wait_share"] is not None else "."))
    if proj["reference_render_seconds_per_step"] is not None:
        lines.append(
            f"- The reference design (a PIL process pool) would need {1000 * proj['reference_render_seconds_per_step']:.0f} ms "
            f"per step for the same views: {format_hours(proj['reference_projected_hours'])} of rendering alone over 2^20 steps.")
    if proj["device"] == "cpu":
        lines.append("- On the CPU the model is small (the CPU preset) and the step, not the views, sets the pace; "
                     "the paper's WRN-28-2 at this batch is a GPU job (`rmm-bench all --device cuda`).")
    return lines


def render_markdown(report: dict) -> str:
    config, sections = report["config"], report["sections"]
    s = report["summary"]
    train = section_report(sections, "train")
    wait = (train_steps.wait_share_text(train["results"], report["projection"]["device"], True)
            if train and report["projection"] else format_share(s["data_wait_share"]))
    lines = [
        "## Headline",
        "",
        f"- Kernel vs PIL, strong views/s: numba-cpu **{format_ratio(s['numba_cpu_vs_pil'])}** of one PIL process, "
        f"{format_ratio(s['numba_cpu_vs_pil_pool'])} of the PIL pool"
        + (f"; numba-cuda best {format_rate(s['numba_cuda_best_views_per_s'])} views/s" if s["numba_cuda_best_views_per_s"] else ""),
        f"- Step batches: torch loader {format_ratio(s['torch_vs_reference'])} the reference design's rate",
        f"- Training: {'-' if s['train_steps_per_s'] is None else format(s['train_steps_per_s'], '.2f')} steps/s "
        f"loader-fed, data-wait share {wait}; 2^20 steps: {format_hours(s['projected_hours'])}",
        f"- CUDA kernels: {'not compiled' if s['max_spill_bytes'] is None else ('no spills' if s['max_spill_bytes'] == 0 else str(s['max_spill_bytes']) + ' spill bytes')}",
        "",
        "| section | status | seconds | note |",
        "|---|---|---|---|",
    ]
    for name in SECTIONS:
        sec = sections[name]
        lines.append(f"| {name} | {sec['status']} | {sec.get('seconds', '-')} | {sec.get('reason', '')} |")
    charts = report["charts"]
    shown = [(name, value) for name, value in charts.items() if isinstance(value, str)]
    if shown:
        lines += ["", "## Charts", ""] + [f"![{name}]({value})" for name, value in shown]
    skipped_charts = [f"- {name}: {value['skipped']}" for name, value in charts.items() if isinstance(value, dict)]
    if skipped_charts:
        lines += ["", "Charts not drawn:", "", *skipped_charts]
    for name in SECTIONS[:-1]:  # scaling's table is in the train section's
        if (section := section_report(sections, name)) is not None:
            lines += ["", f"## {name}", "", *BODIES[name](section, "###")]
    return frame(report, PROG, [*lines, "", *projection_markdown(report["projection"], config)])


# ---- the run --------------------------------------------------------------------------------------

def run(config: AllConfig, log: Callable[[object], None]) -> dict:
    report = new_report("all", {**config.as_dict(), "skip": list(config.skip)})
    conditions, start = RunConditions(), time.perf_counter()
    sections = {}
    for name in SECTIONS[:-1]:
        argv = section_argv(name, config)
        if isinstance(argv, str):
            sections[name] = section("skipped", argv)
            log(f"== {name}: skipped ({argv})")
        else:
            sections[name] = run_section(name, argv, log)
            if sections[name]["status"] in ("failed", "timed_out"):
                log(f"== {name}: FAILED ({sections[name]['reason']})")
    sections["scaling"] = scaling_section(config, sections["train"])
    train = section_report(sections, "train")
    gpu = next((r["device_name"] for r in measured_rows(sections, "train") if r["device"] == "cuda"), None)
    report["machine"] = machine_info(gpu)
    report["threads"] = dict(train["threads"]) if train else {}
    report["inputs"] = {"shards": config.shards.name if config.shards else None, "batch": config.batch,
                        "k": config.k or PAPER_K, "algorithm": config.algorithm}
    report["sections"] = sections
    report["projection"] = projection(sections, config)
    report["summary"] = summarize(sections, report["projection"])
    report["charts"] = draw_charts(sections, config.out, config.k or PAPER_K)
    finish_report(report, time.perf_counter() - start, conditions)
    return report


# ---- command line ---------------------------------------------------------------------------------

def build_parser() -> OneLineParser:
    return command_parser(PROG, "One report: views/s per backend against PIL, CUDA kernel resources, step batches/s, "
                                "training steps/s with the step split into its phases, scaling, and the paper's run "
                                "projected.", AllConfig)


def config_from_args(args) -> AllConfig:
    check_out(args.out)
    shards = shard_directory(args.shards, required=False)
    check_valid(args.valid)
    if args.device == "cuda" and gpu_count() == 0:
        raise BenchError("--device cuda: no CUDA device (torch.cuda.is_available() is False); use --device cpu")
    return AllConfig.from_args(args, shards=shards, skip=tuple(args.skip))
