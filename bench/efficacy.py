"""``rmm-bench efficacy``: does ReMixMatch beat training on the labels alone, how do FixMatch and
MixMatch compare, and do the paper's ablations and the departures from the reference code point the
same way, on a run sized for the machine at hand?

Every variant (:data:`VARIANTS`) trains on the same shards, labeled subset and steps with the same
model under the ``cpu`` preset, one ``rmm-train`` run per row kept under OUT/runs/ (a second call with
the same OUT continues or reuses it): :class:`~remixmatch.bench.rows.EfficacyRow`. ``summary``: per
variant the mean and stdev over seeds and the difference from the baseline (:data:`BASELINES`).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.trainer.config import ALGORITHMS, FIDELITY

from .core import CommandConfig, check_out, command_parser, flag, out_flag, shard_directory, shards_flag
from .errors import BenchError
from .report import markdown_table, new_report
from .rows import EfficacyRow

PROG = "rmm-bench efficacy"
TITLE = "ReMixMatch efficacy on this machine"

# name -> (what it tests, TrainConfig overrides on top of the common settings)
VARIANTS: dict[str, tuple[str, dict]] = {
    "remixmatch": ("ReMixMatch, all parts", {}),
    "supervised": ("labeled images only, weak augmentation", {"algorithm": "supervised"}),
    "no-da": ("ReMixMatch without distribution alignment", {"distribution_alignment": False}),
    "k1": ("ReMixMatch with K = 1 strong view", {"k": 1}),
    "no-rotation": ("ReMixMatch without the rotation loss", {"w_rot": 0.0}),
    "no-kl": ("ReMixMatch without the pre-mixup loss", {"w_kl": 0.0}),
    "fixmatch": ("FixMatch: confident weak-view pseudo-labels on a strong view (CTAugment + Cutout)",
                 {"algorithm": "fixmatch"}),
    "mixmatch": ("MixMatch: K weak views' mean guess, MixUp, L2 unlabeled loss", {"algorithm": "mixmatch"}),
    # What the departures from the reference code cost (docs/results.md, "Reference fidelity: what the departures cost"). Every one
    # keeps the common hold-out, so that all train on the same images.
    "corrected": ("ReMixMatch, the corrected defaults (= remixmatch)", {}),
    "reference": ("every choice of the reference code (--fidelity reference)",
                  {"fidelity": "reference", **{k: v for k, v in FIDELITY["reference"].items() if k != "valid"}}),
    "reference-ops-only": ("the reference's CTAugment ops (--cta-semantics reference), the rest corrected",
                           {"cta_semantics": "reference"}),
    "reference-bn-only": ("the reference's interleaved batch norm (--bn-mode reference), the rest corrected",
                          {"bn_mode": "reference"}),
    # The short-run choices of the cpu preset, each undone alone (docs/training.md), and the
    # early-training candidates, each alone.
    "labeled-strong": ("ReMixMatch with the paper's strong labeled views (--labeled-aug strong)",
                       {"labeled_aug": "strong"}),
    "labeled-weak-then-strong": ("ReMixMatch with weak labeled views, strong from half the run",
                                 {"labeled_aug": "weak-then-strong"}),
    "ramp-128": ("ReMixMatch with the old cpu ramp (4 kimg: 128 steps of 32) instead of the whole run",
                 {"warmup_kimg": 4.0}),
    "cta-decay-0.99": ("ReMixMatch with the paper's CTAugment decay 0.99 instead of the rule's",
                       {"cta_decay": 0.99}),
    "ema-bn-old": ("ReMixMatch with the old cpu EMA 0.99 and BN momentum 0.1 instead of the rule's",
                   {"ema": 0.99, "bn_momentum": 0.1}),
    "cta-gentle": ("ReMixMatch, CTAugment's harsh settings start below the threshold (--cta-start gentle)",
                   {"cta_start": "gentle"}),
    "mixup-per-batch": ("ReMixMatch with one MixUp lambda per batch (--mixup-lambda batch)",
                        {"mixup_lambda": "batch"}),
    "da-first-batch": ("ReMixMatch, p_model starts from the first batch's mean (--da-start first-batch)",
                       {"da_start": "first-batch"}),
}
DEFAULT_VARIANTS = ("remixmatch", "supervised", "no-da", "k1")
# The row the others are compared with: the first of these a report holds (the same configuration).
BASELINES = ("remixmatch", "corrected")


@dataclass(frozen=True)
class EfficacyConfig(CommandConfig):
    shards: Path = shards_flag()
    out: Path = out_flag("report.json, report.md and runs/")
    algorithms: list[str] | None = flag(None, "methods to compare, each with its own settings (e.g. supervised "
                                              "mixmatch remixmatch fixmatch)", nargs="+", choices=ALGORITHMS)
    variants: list[str] | None = flag(None, f"methods, ReMixMatch ablations and fidelity variants, separated by spaces "
                                            f"or commas (default without --algorithms: {' '.join(DEFAULT_VARIANTS)}): "
                                            f"{', '.join(VARIANTS)}", nargs="+", metavar="NAME")
    seeds: tuple[int, ...] = flag((1,), "labeled split (and run) seeds", nargs="+", type=int)
    labels: int = flag(250, type=positive_int)
    steps: int = flag(5000, type=positive_int)
    width: int = flag(16, type=positive_int)
    blocks_per_stage: int = flag(1, type=positive_int)
    batch: int = flag(32, type=positive_int)
    k: int | None = flag(None, "views per unlabeled image beyond the weak one, for every method (default: each "
                               "method's under the cpu preset)", type=positive_int)
    uratio: int | None = flag(None, "unlabeled images per labeled image, for every method (default: each method's)",
                              type=positive_int)
    evaluations: int = flag(20, "evaluations per run", type=positive_int)
    median_of: int = flag(5, "the figure: median of the last N", type=positive_int)
    threads: int = flag(0, "torch CPU threads (0: torch's default)", type=int)

    @property
    def settings(self) -> dict:
        """The settings every variant shares, on top of the `cpu` preset's short-run values for its
        algorithm: the run's size from the flags (K and mu only where given)."""
        from remixmatch.trainer.config import PRESETS

        # The hold-out is the cpu preset's for every variant (--fidelity reference would hold one image
        # out): all train on the same images.
        settings = dict(data=str(self.shards), labels=self.labels, steps=self.steps, width=self.width,
                        valid=PRESETS["cpu"]["valid"], blocks_per_stage=self.blocks_per_stage, batch=self.batch,
                        eval_every=max(1, self.steps // self.evaluations), ckpt_every=max(1, self.steps // 10),
                        log_every=max(1, self.steps // 50), median_of=self.median_of, threads=self.threads)
        return settings | {name: getattr(self, name) for name in ("k", "uratio") if getattr(self, name) is not None}


def baseline_of(names) -> str | None:
    return next((name for name in BASELINES if name in names), None)


def variant_names(values: list[str]) -> list[str]:
    """--variants as given: names separated by spaces, commas or both, each known, in order."""
    names = [name for value in values for name in value.split(",") if name]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise BenchError(f"--variants: unknown {', '.join(map(repr, unknown)) or 'empty list'} "
                         f"(variants: {', '.join(VARIANTS)})")
    return names


def variant_config(name: str, seed: int, settings: dict):
    from remixmatch.trainer.config import resolve

    # The cpu preset's short-run rule sizes every method's ramp, EMA, BN momentum and CTAugment
    # decay to --steps (trainer/schedules.py); a variant's overrides win over it.
    return resolve("cpu", [], {**settings, **VARIANTS[name][1], "seed": seed, "run_seed": seed})


def chosen_variants(algorithms, variants) -> list[str]:
    """--algorithms, then the --variants not among them; the default variants without either."""
    if algorithms is None and variants is None:
        return list(DEFAULT_VARIANTS)
    names = list(algorithms or [])
    return names + [name for name in (variants or []) if name not in names]


def run_variant(name: str, seed: int, settings: dict, out: Path, log) -> dict:
    from remixmatch.trainer.run import Run
    from remixmatch.trainer.schedules import schedule_choices

    config = variant_config(name, seed, settings)
    run_dir = out / "runs" / f"{name}-seed{seed}"
    # An interrupted report continues its runs from their last checkpoint (one a tenth of the run).
    resume = run_dir.exists()
    log(f"{name} (seed {seed}): {VARIANTS[name][0]} -> {run_dir}")
    started = time.perf_counter()
    summary = Run(config, run_dir, resume=resume, quiet=True).train()
    accuracy = summary["accuracy"]
    log(f"  EMA accuracy {100 * accuracy['ema_median_last']:.2f}% (median of last {accuracy['median_of']}), "
        f"best {100 * accuracy['ema_best']:.2f}%, {time.perf_counter() - started:.0f} s")
    return asdict(EfficacyRow(
        variant=name, seed=seed, what=VARIANTS[name][0], run_dir=str(run_dir),
        acc_ema_median=accuracy["ema_median_last"], acc_ema_best=accuracy["ema_best"],
        acc_raw_median=accuracy["raw_median_last"], median_of=accuracy["median_of"],
        wall_seconds=summary["wall_seconds"], steps=summary["steps"],
        algorithm=config.algorithm, k=0 if config.algorithm == "supervised" else config.k,
        uratio=0 if config.algorithm == "supervised" else config.uratio,
        schedules=schedule_choices(config)))


def summarize(results: list[dict]) -> dict:
    by_variant: dict[str, list[float]] = {}
    for row in results:
        by_variant.setdefault(row["variant"], []).append(row["acc_ema_median"])
    means = {name: statistics.mean(accs) for name, accs in by_variant.items()}
    baseline = baseline_of(means)
    return {name: {"acc_ema_median_mean": means[name],
                   "acc_ema_median_stdev": statistics.stdev(accs) if len(accs) > 1 else None,
                   "vs_remixmatch": None if baseline is None or name == baseline
                   else means[name] - means[baseline],
                   "seeds": len(accs)}
            for name, accs in by_variant.items()}


def body(report: dict, h: str = "##") -> list[str]:
    """The settings, one line per variant (its figures from the report's summary) and the schedules."""
    settings, summary = report["config"]["settings"], report["summary"]
    by_variant: dict[str, list[dict]] = {}
    for row in report["results"]:
        by_variant.setdefault(row["variant"], []).append(row)

    def mean(runs: list[dict], value) -> float:
        return statistics.mean(value(r) for r in runs)

    rows = []
    for name, runs in by_variant.items():
        s = summary[name]
        spread = "" if s["acc_ema_median_stdev"] is None else f" +- {100 * s['acc_ema_median_stdev']:.2f}"
        rows.append([name, runs[0]["what"], f"{100 * s['acc_ema_median_mean']:.2f}{spread}",
                     f"{100 * mean(runs, lambda r: r['acc_ema_best']):.2f}",
                     "" if s["vs_remixmatch"] is None else f"{100 * s['vs_remixmatch']:+.2f}", str(s["seeds"]),
                     f"{mean(runs, lambda r: r['wall_seconds']) / 60:.1f}", str(runs[0]["steps"]),
                     str(runs[0].get("k", settings.get("k", ""))), str(runs[0].get("uratio", 1)),
                     f"{mean(runs, lambda r: r['wall_seconds'] / r['steps']):.3f}"])
    return [
        f"Data: shards `{report['inputs'].get('shards', settings['data'])}`; {settings['labels']} labels (seeds {', '.join(map(str, report['config']['seeds']))}); "
        f"{settings['steps']} steps of {settings['batch']} labeled images (and mu times as many unlabeled: the "
        f"mu column); model width {settings['width']}, {settings['blocks_per_stage']} block(s) per stage; each "
        f"method with its own settings under the cpu preset; evaluated on the test split every "
        f"{settings['eval_every']} steps.", "",
        markdown_table(["variant", "what", "EMA acc. % (median of last evals)", "best %", "vs ReMixMatch",
                        "seeds", "minutes", "steps", "K", "mu", "s / step"], rows), "",
        *schedule_lines(by_variant),
    ]


def schedule_lines(by_variant: dict[str, list[dict]]) -> list[str]:
    """The table of what each variant's schedules were (the short-run rule's values, or a variant's
    own), from the rows' ``schedules``; nothing for rows written before they were recorded."""
    rows = []
    for name, runs in by_variant.items():
        s = runs[0].get("schedules")
        if s is not None:
            rows.append([name, s["schedules"], s["labeled_aug"], f"{s['ramp_steps']:.0f}", f"{s['ema']:.4g}",
                         f"{s['bn_momentum']:.4g}", f"{s['cta_decay']:.4g}"])
    if not rows:
        return []
    return ["Schedules (`--schedules run-length`: the short-run rule of docs/training.md, sized to --steps):", "",
            markdown_table(["variant", "schedules", "labeled views", "ramp steps", "EMA decay", "BN momentum",
                            "CTAugment decay"], rows), ""]


def draw_variant_curves(results: list[dict], out: Path) -> str | dict:
    """OUT/curves.png: every run's accuracy and loss curves side by side on shared axes; else why not."""
    from remixmatch.trainer.curves import draw_runs_side_by_side

    runs = [(f"{r['variant']} (seed {r['seed']})", Path(r["run_dir"])) for r in results]
    skipped = draw_runs_side_by_side(runs, Path(out) / "curves.png", "rmm-bench efficacy: accuracy and losses per run")
    return {"skipped": skipped} if skipped else "curves.png"


def build_parser() -> OneLineParser:
    return command_parser(PROG, "ReMixMatch, FixMatch, MixMatch, the supervised baseline and ablations, same data "
                                "and steps.", EfficacyConfig)


def config_from_args(args) -> EfficacyConfig:
    """Raises a one-line error for input no variant can run with, before anything trains."""
    variants = None if args.variants is None else variant_names(args.variants)
    config = EfficacyConfig.from_args(args, shards=shard_directory(args.shards, required=True),
                                      variants=chosen_variants(args.algorithms, variants))
    check_out(args.out)
    if args.threads < 0:
        raise BenchError(f"--threads must be at least 0, got {args.threads}")
    for name in config.variants:
        variant_config(name, config.seeds[0], config.settings)  # ConfigError (a ValueError) names the setting
    return config


def run(config: EfficacyConfig, log) -> dict:
    import torch

    from remixmatch.datasets_prep import open_shards

    settings = config.settings
    report = new_report("efficacy", {"settings": settings, "variants": config.variants, "seeds": list(config.seeds)})
    shards = open_shards(config.shards)
    report["inputs"] = {"shards": Path(str(shards.path)).name, "dataset": shards.dataset,
                        "eval_split": settings.get("eval_split", "test")}
    for seed in config.seeds:
        for name in config.variants:
            report["results"].append(run_variant(name, seed, settings, config.out, log))
    report["threads"] = {"torch": torch.get_num_threads()}
    report["summary"] = summarize(report["results"])
    report["charts"] = {"curves": draw_variant_curves(report["results"], config.out)}
    return report
