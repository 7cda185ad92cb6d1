"""``rmm-bench efficacy``: does ReMixMatch beat training on the labels alone, how do FixMatch and
MixMatch compare, and do the paper's ablations and the departures from the reference code point the
same way, on a run sized for the machine at hand?

Every variant (:data:`VARIANTS`; ``--algorithms`` first, then the ``--variants`` not among them)
trains on the same shards, labeled subset and steps with the same model under the ``cpu`` preset,
each method with its own settings unless --k / --uratio set them for all. Each row is one
``rmm-train`` run kept under OUT/runs/ (a second call with the same OUT continues or reuses it):
:class:`~remixmatch.bench.rows.EfficacyRow`. ``summary``: per variant the mean and stdev over seeds
of the figure and its difference from the baseline (:data:`BASELINES`); OUT/curves.png draws every
run's curves side by side.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.trainer.config import ALGORITHMS, FIDELITY

from .core import add_out, add_shards, check_out, shard_directory
from .errors import BenchError
from .render import module_main
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


def common_settings(args) -> dict:
    """The settings every variant shares, on top of the `cpu` preset's short-run values for its
    algorithm: the run's size from the flags (K and mu only where given)."""
    from remixmatch.trainer.config import PRESETS

    # The hold-out is the cpu preset's for every variant (--fidelity reference would hold one image
    # out): all train on the same images.
    settings = dict(data=str(args.shards), labels=args.labels, steps=args.steps, width=args.width,
                    valid=PRESETS["cpu"]["valid"], blocks_per_stage=args.blocks_per_stage, batch=args.batch,
                    eval_every=max(1, args.steps // args.evaluations), ckpt_every=max(1, args.steps // 10),
                    log_every=max(1, args.steps // 50), median_of=args.median_of, threads=args.threads)
    settings.update({name: getattr(args, name) for name in ("k", "uratio") if getattr(args, name) is not None})
    return settings


def variant_config(name: str, seed: int, settings: dict):
    from remixmatch.trainer.config import resolve

    # The cpu preset's short-run rule sizes every method's ramp, EMA, BN momentum and CTAugment
    # decay to --steps (trainer/schedules.py); a variant's overrides win over it.
    return resolve("cpu", [], {**settings, **VARIANTS[name][1], "seed": seed, "run_seed": seed})


def chosen_variants(args) -> list[str]:
    """--algorithms, then the --variants not among them; the default variants without either."""
    if args.algorithms is None and args.variants is None:
        return list(DEFAULT_VARIANTS)
    names = list(args.algorithms or [])
    return names + [name for name in (args.variants or []) if name not in names]


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
    parser = OneLineParser(prog=PROG,
                           description="ReMixMatch, FixMatch, MixMatch, the supervised baseline and ablations, "
                                       "same data and steps.")
    add_shards(parser)
    add_out(parser, "report.json, report.md and runs/")
    parser.add_argument("--algorithms", nargs="+", default=None, choices=ALGORITHMS,
                        help="methods to compare, each with its own settings (e.g. supervised mixmatch remixmatch "
                             "fixmatch)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help=f"methods, ReMixMatch ablations and fidelity variants, separated by spaces or commas "
                             f"(default without --algorithms: {' '.join(DEFAULT_VARIANTS)}): {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="labeled split (and run) seeds")
    parser.add_argument("--labels", type=positive_int, default=250)
    parser.add_argument("--steps", type=positive_int, default=5000)
    parser.add_argument("--width", type=positive_int, default=16)
    parser.add_argument("--blocks-per-stage", type=positive_int, default=1)
    parser.add_argument("--batch", type=positive_int, default=32)
    parser.add_argument("--k", type=positive_int, default=None,
                        help="views per unlabeled image beyond the weak one, for every method (default: each "
                             "method's under the cpu preset)")
    parser.add_argument("--uratio", type=positive_int, default=None,
                        help="unlabeled images per labeled image, for every method (default: each method's)")
    parser.add_argument("--evaluations", type=positive_int, default=20, help="evaluations per run")
    parser.add_argument("--median-of", type=positive_int, default=5, help="the figure: median of the last N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser


def config_from_args(args):
    """The arguments with the shards resolved, the ``settings`` every variant shares and the chosen
    ``variants``; raises a one-line error for input no variant can run with, before anything trains."""
    args.variants = None if args.variants is None else variant_names(args.variants)
    args.shards = shard_directory(args.shards, required=True)
    args.settings = common_settings(args)
    check_out(args.out)
    if args.threads < 0:
        raise BenchError(f"--threads must be at least 0, got {args.threads}")
    args.variants = chosen_variants(args)
    for name in args.variants:
        variant_config(name, args.seeds[0], args.settings)  # ConfigError (a ValueError) names the setting
    return args


def run(args, log) -> dict:
    import torch

    from remixmatch.datasets_prep import open_shards

    report = new_report("efficacy", {"settings": args.settings, "variants": args.variants, "seeds": args.seeds})
    shards = open_shards(args.shards)
    report["inputs"] = {"shards": Path(str(shards.path)).name, "dataset": shards.dataset,
                        "eval_split": args.settings.get("eval_split", "test")}
    for seed in args.seeds:
        for name in args.variants:
            report["results"].append(run_variant(name, seed, args.settings, args.out, log))
    report["threads"] = {"torch": torch.get_num_threads()}
    report["summary"] = summarize(report["results"])
    report["charts"] = {"curves": draw_variant_curves(report["results"], args.out)}
    return report


def main(argv: list[str] | None = None) -> int:
    # Bad input from any layer: one line, exit 2; a diverged run: exit 3, as rmm-train.
    return module_main(argv, sys.modules[__name__])


if __name__ == "__main__":
    sys.exit(main())
