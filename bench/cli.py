"""``rmm-bench``: the benchmark commands, each writing ``--out DIR/report.json`` and ``report.md``.

``aug`` (strong views/s of the kernels against PIL) is parsed here; ``prep``, ``views``,
``pipeline``, ``train``, ``efficacy``, ``ptx``, ``all``, ``compare``, ``semantics``, ``gpu-env`` and
``gpu-check`` own their arguments: everything after the name goes to their module
(:data:`DELEGATED`; ``rmm-bench NAME --help``), to its ``main(argv)`` where it has one, else to
:func:`~remixmatch.bench.render.module_main`. Bad input exits with status 2 and a one-line
message. This module imports nothing heavy: ``--help`` and the delegation cost no NumPy, Numba or
pyarrow import."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

# OneLineParser and positive_int are imported by the delegated commands from here as well.
from remixmatch.common.cli import OneLineParser, positive_int, run_cli
from remixmatch.common.paths import SHARDS_ENV

from .core import (
    CommandConfig, add_flags, command_parser, device_flag, flag, out_flag, reps_flag, threads_flag,
)

PROG = "rmm-bench"

# Subcommands that own their argument parsing (everything after the name goes to their module): module, help.
DELEGATED = {
    "prep": ("remixmatch.bench.prep", "data preparation benchmark"),
    "views": ("remixmatch.bench.views", "a PNG of weak and strong views"),
    "pipeline": ("remixmatch.bench.loaders", "step batches/s: torch and DALI loaders vs the PIL pool"),
    "train": ("remixmatch.bench.train_steps", "training steps/s, synthetic vs loader-fed"),
    "efficacy": ("remixmatch.bench.efficacy",
                 "ReMixMatch, FixMatch, MixMatch vs supervised and ablations, same data and steps"),
    "ptx": ("remixmatch.bench.ptx", "CUDA kernel registers, spills, shared memory, occupancy, no GPU needed"),
    "all": ("remixmatch.bench.all_sections",
            "one report: aug, ptx, pipeline, train with the step split, scaling, charts"),
    "compare": ("remixmatch.bench.compare", "two report.json side by side with ratios"),
    "semantics": ("remixmatch.bench.reference_changes", "views that reference-semantics translate and rescale change"),
    "gpu-env": ("remixmatch.bench.gpu_env",
                "the GPU stack: GPU, driver, torch, numba-cuda, NVVM, ptxas, kernel JIT time"),
    "gpu-check": ("remixmatch.bench.gpu_check", "every CUDA path and the GPU figures in one run bounded in time"),
}


@dataclass(frozen=True)
class AugConfig(CommandConfig):
    """The options of ``rmm-bench aug`` (here, not in aug.py: ``--help`` imports no NumPy or Numba)."""

    out: Path = out_flag()
    device: str = device_flag("which Numba backends to run: auto (CPU, plus CUDA if a device is present), cpu, or "
                              "cuda (an error without a device); the PIL reference always runs")
    quick: bool = flag(False, "5 repetitions, shorter repetitions, no PIL per-op rows (under 2 minutes on 2 cores)")
    reps: int = reps_flag(5, 7, 5, "figure")
    threads: int = threads_flag("Numba threads and PIL pool processes")
    images: str | None = flag(None, "instead of --shards: a tar archive or a directory of PNG/JPEG files (its "
                                    "train/ part)", metavar="PATH")
    shards: str | None = flag(None, f"a shard directory (prep-cifar10 --out): the first 64 images of its train "
                                    f"split (default: ${SHARDS_ENV}; synthetic images when that is unset too)",
                              metavar="DIR")
    seed: int = flag(0, "seed of the policies (and of synthetic images)", type=int)
    size: int | None = flag(None, "image side: synthetic images of S x S (default 32); with --shards or --images, "
                                  "their images must be S x S (e.g. 96 for STL-10)", type=positive_int, metavar="S")
    busy: int = flag(0, "also measure the numba-cpu headline with 1 and --threads threads under 0..N busy processes "
                        "(5 alternating runs each: the kernel on oversubscribed cores)", type=int, metavar="N")


AUG = "CTAugment strong views/s: Numba CPU/CUDA kernels vs the PIL reference"


def aug_parser() -> OneLineParser:
    return command_parser(f"{PROG} aug", f"{AUG}.", AugConfig)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Benchmarks of the ReMixMatch building blocks.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_flags(commands.add_parser("aug", help=AUG, description=f"{AUG}."), AugConfig)
    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=f"{help_text} (see: {PROG} {name} --help)", add_help=False)
    return parser


def run_aug(argv: list[str]) -> int:
    """``rmm-bench aug``: its markdown rendered by Rich, its progress through Rich too."""
    from rich.console import Console
    from rich.markdown import Markdown

    from .report import report_main

    def aug(name: str):  # imported once the arguments parse: --help costs no NumPy or Numba import
        return lambda *args: getattr(importlib.import_module("remixmatch.bench.aug"), name)(*args)

    return report_main(argv, prog=f"{PROG} aug", build_parser=aug_parser, config_from_args=aug("config_from_args"),
                       run=aug("run"), render_markdown=aug("render_markdown"),
                       log=progress_log(Console(stderr=True, highlight=False)),
                       show=lambda text: Console(highlight=False).print(Markdown(text)))


def progress_log(console):
    """The ``log`` that ``aug.run`` calls: a line of text, or a result row made into one. Printed
    literally (markup off): "[host]", "[device]" and paths with brackets are text, not Rich markup."""

    def log(item) -> None:
        line = item if isinstance(item, str) else importlib.import_module("remixmatch.bench.aug").progress_line(item)
        console.print(line, markup=False)

    return log


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["aug"]:
        return run_aug(argv[1:])
    if argv and argv[0] in DELEGATED:
        from .render import module_main

        module = importlib.import_module(DELEGATED[argv[0]][0])
        return module.main(argv[1:]) if hasattr(module, "main") else module_main(argv[1:], module)
    parser = build_parser()
    return run_cli(parser.prog, lambda: parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
