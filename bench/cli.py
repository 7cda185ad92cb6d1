"""``rmm-bench``: the benchmark commands, each writing ``--out DIR/report.json`` and ``report.md``.

``aug`` (strong views/s of the kernels against PIL) is parsed here; ``prep``, ``views``,
``pipeline``, ``train``, ``efficacy``, ``ptx``, ``all``, ``compare``, ``semantics``, ``gpu-env`` and
``gpu-check`` own their arguments: everything after the name goes to the ``main(argv)`` of their
module (:data:`DELEGATED`; ``rmm-bench NAME --help``). Bad input exits with status 2 and a one-line
message. This module imports nothing heavy: ``--help`` and the delegation cost no NumPy, Numba or
pyarrow import.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# OneLineParser and positive_int are imported by the delegated commands from here as well.
from remixmatch.common.cli import OneLineParser, positive_int, run_cli
from remixmatch.common.paths import SHARDS_ENV

PROG = "rmm-bench"

# Subcommands that own their argument parsing: everything after the name goes to their main(argv).
DELEGATED = {
    "prep": ("remixmatch.bench.prep", "data preparation benchmark (see: rmm-bench prep --help)"),
    "views": ("remixmatch.bench.views", "a PNG of weak and strong views (see: rmm-bench views --help)"),
    "pipeline": ("remixmatch.bench.loaders",
                 "step batches/s: torch and DALI loaders vs the PIL pool (see: rmm-bench pipeline --help)"),
    "train": ("remixmatch.bench.train_steps",
              "training steps/s, synthetic vs loader-fed (see: rmm-bench train --help)"),
    "efficacy": ("remixmatch.bench.efficacy",
                 "ReMixMatch, FixMatch, MixMatch vs supervised and ablations, same data and steps "
                 "(see: rmm-bench efficacy --help)"),
    "ptx": ("remixmatch.bench.ptx",
            "CUDA kernel registers, spills, shared memory, occupancy, no GPU needed (see: rmm-bench ptx --help)"),
    "all": ("remixmatch.bench.all_sections",
            "one report: aug, ptx, pipeline, train with the step split, scaling, charts (see: rmm-bench all --help)"),
    "compare": ("remixmatch.bench.compare", "two report.json side by side with ratios (see: rmm-bench compare --help)"),
    "semantics": ("remixmatch.bench.reference_changes",
                  "views that reference-semantics translate and rescale change (see: rmm-bench semantics --help)"),
    "gpu-env": ("remixmatch.bench.gpu_env",
                "the GPU stack: GPU, driver, torch, numba-cuda, NVVM, ptxas, kernel JIT time (see: rmm-bench gpu-env --help)"),
    "gpu-check": ("remixmatch.bench.gpu_check",
                  "every CUDA path and the GPU figures in one run bounded in time (see: rmm-bench gpu-check --help)"),
}


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Benchmarks of the ReMixMatch building blocks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    aug = commands.add_parser("aug", help="CTAugment strong views/s: Numba CPU/CUDA kernels vs the PIL reference",
                              description="CTAugment strong views/s: Numba CPU/CUDA kernels vs the PIL reference.")
    aug.add_argument("--out", required=True, type=Path, help="directory for report.json and report.md")
    aug.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="which Numba backends to run: auto (CPU, plus CUDA if a device is present), "
                          "cpu, or cuda (an error without a device); the PIL reference always runs")
    aug.add_argument("--quick", action="store_true",
                     help="5 repetitions, shorter repetitions, no PIL per-op rows (under 2 minutes on 2 cores)")
    aug.add_argument("--reps", type=int, default=None,
                     help="timed repetitions per figure, at least 5 (default 7; 5 with --quick)")
    aug.add_argument("--threads", type=positive_int, default=None,
                     help="Numba threads and PIL pool processes (default: all cores)")
    aug.add_argument("--shards", default=None, metavar="DIR",
                     help=f"a shard directory (prep-cifar10 --out): the first 64 images of its train split "
                          f"(default: ${SHARDS_ENV}; synthetic images when that is unset too)")
    aug.add_argument("--images", default=None, metavar="PATH",
                     help="instead of --shards: a tar archive or a directory of PNG/JPEG files (its train/ part)")
    aug.add_argument("--seed", type=int, default=0, help="seed of the policies (and of synthetic images)")
    aug.add_argument("--busy", type=int, default=0, metavar="N",
                     help="also measure the numba-cpu headline with 1 and --threads threads under 0..N busy "
                          "processes (5 alternating runs each: the kernel on oversubscribed cores)")
    aug.add_argument("--size", type=positive_int, default=None, metavar="S",
                     help="image side: synthetic images of S x S (default 32); with --shards or --images, "
                          "their images must be S x S (e.g. 96 for STL-10)")
    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def run_aug(args: argparse.Namespace) -> int:
    # Imported here so that `rmm-bench prep` and `--help` do not pay for NumPy/Numba imports.
    from rich.console import Console
    from rich.markdown import Markdown

    from . import aug
    from .report import write_report

    config = aug.AugConfig(
        out=args.out,
        device=args.device,
        quick=args.quick,
        reps=args.reps if args.reps is not None else (aug.MIN_REPS if args.quick else aug.DEFAULT_REPS),
        threads=args.threads if args.threads is not None else aug.default_threads(),
        images=args.images,
        shards=args.shards,
        seed=args.seed,
        size=args.size,
        busy=args.busy,
    )
    aug.validate(config)
    console = Console(stderr=True, highlight=False)
    log = progress_log(console)
    report = aug.run(config, log)
    json_path, md_path = write_report(config.out, report, aug.render_markdown(report))
    Console(highlight=False).print(Markdown(md_path.read_text(encoding="utf-8")))
    log(f"wrote {json_path} and {md_path}")
    return 0


def progress_log(console):
    """The ``log`` that ``aug.run`` calls: a line of text, or a result row made into one. Printed
    literally (markup off): "[host]", "[device]" and paths with brackets are text, not Rich markup."""

    def log(item) -> None:
        console.print(item if isinstance(item, str) else _progress_line(item), markup=False)

    return log


def _progress_line(result: dict) -> str:
    from .report import format_rate

    if "skipped" in result:
        return f"{result['backend']}: skipped ({result['skipped']})"
    if result["bench"] == "aug-compile":
        return f"{result['backend']}: JIT compile {result['seconds']:.1f} s (Numba cache: {result['cache']})"
    what = result["op"] or f"K={result['k']} x {result['batch']} images"
    return (f"{result['backend']} {what} [{result['inputs']}]: {format_rate(result['views_per_s'])} views/s "
            f"(median of {result['reps']}, {format_rate(result['spread']['min'])}-{format_rate(result['spread']['max'])})")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    parser = build_parser()
    return run_cli(parser.prog, lambda: _run_command(parser.parse_args(argv)))


def _run_command(args: argparse.Namespace) -> int:
    return run_cli(f"{PROG} {args.command}", lambda: COMMANDS[args.command](args))


COMMANDS = {"aug": run_aug}


if __name__ == "__main__":
    sys.exit(main())
