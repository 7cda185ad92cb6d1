"""``rmm-train``: every TrainConfig field is a flag (``--w-match 1.5``, ``--no-prefetch``); a preset
and ablations are overrides applied before the explicit flags.

    rmm-train --data shards/cifar10 --labels 250 --out runs/c10-250 [--preset cifar10-250]
    rmm-train --data shards/cifar10 --out runs/cpu --preset cpu        # minutes on 2 CPU cores
    rmm-train --data shards/cifar10 --out runs/fm --algorithm fixmatch  # FixMatch as published (also mixmatch)
    rmm-train --out runs/c10-250 --data shards/cifar10 --resume        # continue after any stop
    rmm-train --gpus 8 ...  |  --device cpu --procs 2 ...  |  under torchrun   # several processes
                                                                      # (trainer/distributed.py)

Bad input prints ``rmm-train: error: <what and where>`` and exits 2; a diverged run exits 3 (the
mapping of :mod:`remixmatch.common.cli`). With several processes the message names the rank
(``rmm-train: error: rank 1: ...``), with the same codes; a worker that dies (a signal, an
unexpected exception) exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from remixmatch.common.cli import OneLineParser, run_cli
from remixmatch.common.errors import EXIT_BAD_INPUT, EXIT_DIVERGED

from .config import ABLATIONS, PRESETS, TrainConfig, config_fields

__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "build_parser", "main"]


def _comment(name: str) -> str:
    """The field's comment in config.py: the flag's help text (units and meaning live there once)."""
    import inspect

    from . import config

    for line in inspect.getsource(config.TrainConfig).splitlines():
        stripped = line.strip()
        if stripped.startswith(f"{name}:") and "#" in stripped:
            return stripped.split("#", 1)[1].strip()
    return ""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rmm-train", description="Train ReMixMatch, FixMatch, MixMatch or the supervised baseline from shards.")
    parser.add_argument("--out", type=Path, required=True, help="the run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named overrides of the paper's defaults")
    parser.add_argument("--ablation", action="append", default=[], choices=sorted(ABLATIONS),
                        help="an ablation of the paper's table (repeatable)")
    parser.add_argument("--kimg", type=float, help="train this many thousand (x1024) labeled images instead of --steps")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--gpus", type=int, help="spawn N processes, one GPU each (cuda:local_rank), NCCL + DDP; "
                                                 "--batch stays the global batch")
    parser.add_argument("--procs", type=int, help="with --device cpu: spawn N CPU processes (gloo + DDP)")
    parser.add_argument("--max-restarts", type=int, help="with --gpus/--procs: restart the whole group up to N "
                                                         "times after a failure; it resumes from the last checkpoint")
    defaults = TrainConfig()
    for field in config_fields():
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = f"{_comment(field.name)} (default {default!r})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=None, help=help_text, dest=field.name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(parser.prog, lambda: _train(parser.parse_args(argv), parser.prog),
                   interrupted="interrupted; continue with --resume (from the last checkpoint)")


def _train(args: argparse.Namespace, prog: str) -> int:
    from . import distributed
    from .config import ConfigError, preset_values, resolve
    from .run import Run, check_finite_config, check_run_dir

    overrides = {f.name: getattr(args, f.name) for f in config_fields() if getattr(args, f.name) is not None}
    if args.kimg is not None:
        batch = {**preset_values(args.preset, overrides.get("algorithm")), **overrides}.get("batch", TrainConfig.batch)
        overrides["steps"] = max(1, round(args.kimg * 1024 / batch))
    if not overrides.get("data") and not PRESETS.get(args.preset or "", {}).get("data"):
        raise ConfigError("--data is required: a shard directory (prep-cifar10 --out DIR)")
    config = resolve(args.preset, args.ablation, overrides)
    check_finite_config(config)
    world, config = distributed.plan_world(config, args.gpus, args.procs, args.max_restarts)
    if world is not None and world.mode == "torchrun":
        return distributed.join(config, args.out, world, resume=args.resume, quiet=args.quiet, prog=prog)
    if world is not None:
        check_run_dir(args.out, args.resume)  # refused here, before any process starts
        return distributed.launch(config, args.out, world, resume=args.resume, quiet=args.quiet, prog=prog)
    Run(config, args.out, resume=args.resume, quiet=args.quiet).train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
