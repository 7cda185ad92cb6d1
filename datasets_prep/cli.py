"""Command-line entry points: prep-cifar10, prep-cifar100, prep-stl10, prep-svhn, prep-folder and rmm-shards.

Each `*_main(argv=None) -> int` returns the exit status. Expected bad input prints one line,
``prog: error: <what is wrong and where>``, to stderr and returns 2 (1 when `verify` finds a
changed shard); only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from remixmatch.common.cli import OneLineParser, positive_int, run_cli

from .decode import FILTERS
from .errors import PrepError
from .format import DEFAULT_SHARD_ROWS

# Ctrl-C during a prep: the output is built under a temporary name and renamed only when whole.
NOTHING_WRITTEN = "interrupted; nothing was written"
ARCHIVE_SOURCE_HELP = "archive, folder or URL (default: download the official archive; an archive's MD5 is checked)"


def _common_prep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="shard directory to create")
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it holds an earlier shard directory")
    parser.add_argument(
        "--shard-rows",
        type=positive_int,
        default=DEFAULT_SHARD_ROWS,
        metavar="N",
        help=f"rows per shard file (default {DEFAULT_SHARD_ROWS})",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they are off anyway when stderr is not a terminal)",
    )


def _official_source_options(parser: argparse.ArgumentParser, source_help: str, checked: str) -> None:
    """--source, and --md5 for a copy of the official archive whose digest is not the official one."""
    parser.add_argument("--source", metavar="PATH|URL", help=source_help)
    parser.add_argument("--md5", metavar="HEX",
                        help=f"the MD5 {checked} must have, instead of the official one: for a mirror or a "
                             "re-packed copy whose digest is published elsewhere")


def _summary(manifest: dict, out: Path, seconds: float, sizes: bool = False) -> str:
    """One line per prep; `sizes` adds each split's bytes on disk and the encoding."""

    def part(name: str, entry: dict) -> str:
        shards = len(entry["shards"])
        text = f"{name} {entry['rows']:,} rows in {shards} shard{'s' if shards != 1 else ''}"
        if sizes:
            text += f" ({_human_bytes(sum(s['bytes'] for s in entry['shards']))})"
        return text

    parts = [part(name, entry) for name, entry in manifest["splits"].items()]
    encoding = f" [{manifest['encoding']}]" if sizes else ""
    return f"{manifest['dataset']}{encoding}: {', '.join(parts)} -> {out} ({seconds:.1f} s)"


def _progress(args) -> bool | None:
    return False if args.no_progress else None


def _run_prep(prog: str, args, source: str, function: str, *, sizes: bool = False, options=dict) -> int:
    """Runs ``function`` of the module ``source`` (imported only now: ``--help`` stays light) on
    ``args.source`` into ``args.out`` with the common options and ``options()``'s own, then prints
    the one-line summary."""

    def body() -> int:
        import importlib

        prep = getattr(importlib.import_module(f".{source}", __package__), function)
        start = time.perf_counter()
        manifest = prep(args.source, args.out, overwrite=args.overwrite, shard_rows=args.shard_rows,
                        progress=_progress(args), **options())
        print(_summary(manifest, args.out, time.perf_counter() - start, sizes=sizes))
        return 0

    return run_cli(prog, body, interrupted=NOTHING_WRITTEN)


def prep_cifar10_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(
        prog="prep-cifar10",
        description="Shard CIFAR-10 (the official python archive, downloaded by default; its extracted "
        "cifar-10-batches-py/ folder; or a train/<class>/*, test/<class>/* image tree, as a folder or a tar).",
    )
    _official_source_options(parser, "archive, folder or URL (default: download the official archive and check "
                                     "its MD5)", "a downloaded archive")
    parser.add_argument(
        "--workers", type=positive_int, metavar="N", help="decoding processes for image trees (default: CPU count)"
    )
    _common_prep_options(parser)
    args = parser.parse_args(argv)

    return _run_prep(parser.prog, args, "sources_cifar", "prep_cifar10",
                     options=lambda: dict(workers=args.workers, expected_md5=args.md5))


def prep_cifar100_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(
        prog="prep-cifar100",
        description="Shard CIFAR-100 (the official python archive, downloaded by default, MD5 checked; or its "
        "extracted cifar-100-python/ folder). Fine labels (100 classes) unless --coarse; names from meta.",
    )
    _official_source_options(parser, ARCHIVE_SOURCE_HELP, "the archive")
    parser.add_argument("--coarse", action="store_true", help="store the 20 superclasses instead of the 100 classes")
    _common_prep_options(parser)
    args = parser.parse_args(argv)

    return _run_prep(parser.prog, args, "sources_cifar100", "prep_cifar100",
                     options=lambda: dict(coarse=args.coarse, expected_md5=args.md5))


def prep_stl10_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(
        prog="prep-stl10",
        description="Shard STL-10 (the official stl10_binary.tar.gz, downloaded by default, MD5 checked; or its "
        "extracted stl10_binary/ folder): splits train (5,000), test (8,000), unlabeled (100,000, label -1), "
        "96x96, and the 10 official folds in the manifest. Streamed in blocks.",
    )
    _official_source_options(parser, ARCHIVE_SOURCE_HELP, "the archive")
    parser.add_argument("--encoded", action="store_true", help="store PNG bytes instead of raw pixels")
    _common_prep_options(parser)
    args = parser.parse_args(argv)

    return _run_prep(parser.prog, args, "sources_stl10", "prep_stl10", sizes=True,
                     options=lambda: dict(encoded=args.encoded, expected_md5=args.md5))


def prep_svhn_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(
        prog="prep-svhn",
        description="Shard SVHN (cropped digits: train_32x32.mat, test_32x32.mat, and with --extra extra_32x32.mat). "
        "Label 10 in the files is stored as digit 0.",
    )
    parser.add_argument(
        "--source",
        metavar="DIR|URL",
        help="folder holding the .mat files, or a base URL (default: download the official files and check their MD5s)",
    )
    parser.add_argument("--extra", action="store_true", help="also prepare the extra split (531,131 images)")
    parser.add_argument("--md5", action="append", default=[], metavar="FILE=HEX",
                        help="the MD5 a downloaded .mat file must have, instead of the official one (repeatable, "
                             "e.g. train_32x32.mat=HEX): for a mirror whose digests are published elsewhere")
    _common_prep_options(parser)
    args = parser.parse_args(argv)

    def md5s() -> dict:
        found = {}
        for item in args.md5:
            name, sep, digest = item.partition("=")
            if not sep:
                raise PrepError(f"--md5 takes FILE=HEX, not {item!r}")
            found[name] = digest
        return found

    return _run_prep(parser.prog, args, "sources_svhn", "prep_svhn",
                     options=lambda: dict(extra=args.extra, expected_md5=md5s()))


def prep_folder_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(
        prog="prep-folder",
        description="Shard a class-per-folder image tree: <class>/<image>, or <split>/<class>/<image> when a train/ "
        "folder is present; as a folder or a tar. Classes are the sorted folder names.",
    )
    parser.add_argument("--source", required=True, metavar="DIR|TAR", help="the tree, or a .tar/.tar.gz holding it")
    parser.add_argument(
        "--size",
        type=positive_int,
        metavar="S",
        help="resize every image to SxS (without it all images must share one size)",
    )
    parser.add_argument(
        "--filter",
        choices=sorted(FILTERS),
        default="bicubic",
        help="resampling filter for --size (PIL's; default bicubic)",
    )
    parser.add_argument(
        "--mode", choices=("RGB", "L"), default="RGB", help="stored pixels: RGB (C=3, default) or L (grey, C=1)"
    )
    parser.add_argument("--encoded", action="store_true", help="keep each file's PNG/JPEG bytes instead of decoding")
    parser.add_argument("--name", metavar="NAME", help="dataset name in the manifest (default: the source's name)")
    parser.add_argument("--workers", type=positive_int, metavar="N", help="decoding processes (default: CPU count)")
    _common_prep_options(parser)
    args = parser.parse_args(argv)

    return _run_prep(parser.prog, args, "sources_folder", "prep_folder",
                     options=lambda: dict(size=args.size, resample=args.filter, mode=args.mode, encoded=args.encoded,
                                          dataset=args.name, workers=args.workers))


# -- rmm-shards ------------------------------------------------------------------------------------


def _human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .reader import open_shards

    ds = open_shards(args.dir)
    m = ds.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    console = Console()
    shape = "x".join(str(d) for d in ds.image_shape) if ds.image_shape else "mixed"
    console.print(
        f"[bold]{ds.path}[/]: dataset [bold]{ds.dataset}[/], {ds.num_classes} classes, images {shape} ({ds.encoding})"
    )
    console.print(
        f"format {m['format']} v{m['format_version']}, written by {m['tool']['name']} {m['tool']['version']}, "
        f"fingerprint {ds.fingerprint[:16]}"
    )
    console.print(f"source: {m['source']}")

    splits = Table(title="Splits")
    for col in ("split", "rows", "labeled", "shards", "size", "per class"):
        splits.add_column(col, justify="left" if col == "split" else "right")
    for name in ds.splits:
        e = m["splits"][name]
        counts = e["class_counts"]
        per_class = f"{min(counts):,}" if min(counts) == max(counts) else f"{min(counts):,}-{max(counts):,}"
        size = sum(s["bytes"] for s in e["shards"])
        splits.add_row(
            name, f"{e['rows']:,}", f"{e['labeled_rows']:,}", str(len(e["shards"])), _human_bytes(size), per_class
        )
    console.print(splits)

    classes = Table(title="Classes")
    classes.add_column("id", justify="right")
    classes.add_column("name")
    for name in ds.splits:
        classes.add_column(name, justify="right")
    for i, cls in enumerate(ds.class_names):
        classes.add_row(str(i), cls, *(f"{m['splits'][s]['class_counts'][i]:,}" for s in ds.splits))
    console.print(classes)
    return 0


def _verify(args) -> int:
    from .progress import progress_bars
    from .reader import open_shards

    ds = open_shards(args.dir)
    paths = ds.shard_paths()
    total = sum(s["bytes"] for e in ds.manifest["splits"].values() for s in e["shards"])
    start = time.perf_counter()
    with progress_bars(False if args.no_progress else None) as bars:
        ds.verify(progress=bars.task("verify", total, unit="bytes"))
    print(
        f"{ds.path}: {len(paths)} shards, {_human_bytes(total)} match the manifest "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


def _subset(args) -> int:
    from .reader import open_shards
    from .subsets import fold_subset, labeled_subset, save_subset

    ds = open_shards(args.dir)
    if args.fold is not None:
        if args.labels is not None or args.seed is not None or args.valid:
            raise PrepError("--fold takes the official fold exactly: no --labels, --seed or --valid with it")
        subset = fold_subset(ds, args.fold)
        out = args.out or Path(f"{ds.dataset}.fold{args.fold}.json")
    else:
        if args.labels is None or args.seed is None:
            raise PrepError("give --labels N --seed S, or --fold F for a dataset's official fold")
        subset = labeled_subset(ds, args.labels, args.seed, args.valid, split=args.split)
        out = args.out or Path(f"{ds.dataset}.{args.split}@{args.labels}-seed{args.seed}.json")
    save_subset(subset, out, labels=ds[subset.split].labels)
    print(
        f"{out}: {len(subset.labeled)} labeled, {len(subset.valid)} validation of {subset.num_rows} {subset.split} rows"
    )
    return 0


def shards_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="rmm-shards", description="Inspect and check shard directories.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    info = sub.add_parser("info", help="splits, classes, counts and sizes")
    info.add_argument("dir", type=Path)
    info.add_argument("--json", action="store_true", help="print the manifest instead")
    verify = sub.add_parser("verify", help="check every shard's sha256 against the manifest")
    verify.add_argument("dir", type=Path)
    verify.add_argument("--no-progress", action="store_true")
    subset = sub.add_parser("subset", help="write a class-balanced labeled subset (JSON)")
    subset.add_argument("dir", type=Path)
    subset.add_argument("--labels", type=positive_int, metavar="N", help="number of labeled rows (with --seed)")
    subset.add_argument("--seed", type=int)
    subset.add_argument(
        "--fold",
        type=int,
        metavar="F",
        help="the dataset's official fold F exactly (STL-10: 0..9), with every train and unlabeled row as unlabeled data",
    )
    subset.add_argument("--valid", type=int, default=0, metavar="N", help="validation rows held out from the rest")
    subset.add_argument("--split", default="train")
    subset.add_argument("--out", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    command = {"info": _info, "verify": _verify, "subset": _subset}[args.command]
    return run_cli(f"{parser.prog} {args.command}", lambda: command(args), interrupted=NOTHING_WRITTEN)
