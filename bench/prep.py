"""Data preparation benchmark: prep time of CIFAR-10 sources and random-access reads from the shards.

``python -m remixmatch.bench.prep --out DIR [--quick]`` (or ``rmm-bench prep ...``) writes
``DIR/prep_report.json`` and ``DIR/prep_report.md``. Figures:

- prep of a synthetic archive in the official python format (60,000 images; 6,000 with --quick),
  median over repetitions (goal: <= 10 s for 60,000 on 2 cores);
- prep of a CIFAR-10 JPEG export (``train/<class>/*.jpg``, ``test/<class>/*.jpg`` as a tar or a
  folder) named by ``--jpeg-tree``, else ``$REMIXMATCH_CIFAR10_JPG`` (goal: <= 60 s on 2 cores;
  skipped with --quick, or when neither names one);
- reading 64 images at random indices from the memory-mapped shards (a gather across shards), and
  64 contiguous rows (a zero-copy view), in microseconds per batch: median and spread over the
  repetitions. The page cache is warm (the shards were just written).

The JSON follows the layout of :mod:`remixmatch.bench.report` (``command`` "prep"); a ``results``
row is ``{"bench": "prep", "source": ..., "images": N, "seconds": median, "images_per_s": ...,
"spread": {...seconds}, "reps": n, "goal_seconds": ...}`` or ``{"bench": "read", "pattern":
"random" | "contiguous", "batch": 64, "us_per_batch": median, "spread": {...us}, "reps": n}``, or
a skipped row ``{"bench": "prep", "source": ..., "skipped": reason}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from remixmatch.common.cli import OneLineParser, positive_int, run_cli
from remixmatch.common.paths import CIFAR10_JPG_ENV, DataPath, resolve_path

from .report import (
    RunConditions, conditions_line, finish_report, machine_info, markdown_table, new_report,
    package_versions, spread, write_report,
)

PROG = "rmm-bench prep"
BATCH = 64
VERSION_PACKAGES = ("numpy", "pyarrow", "pillow", "rich", "remixmatch")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Prep and shard-read benchmark (CIFAR-10 sources).")
    parser.add_argument("--out", required=True, type=Path, help="directory for prep_report.json and prep_report.md")
    parser.add_argument(
        "--quick", action="store_true", help="6,000 synthetic images, no JPEG tree, fewer reads (well under a minute)"
    )
    parser.add_argument(
        "--jpeg-tree", type=Path, default=None, help=f"a CIFAR-10 JPEG export to prep (default: ${CIFAR10_JPG_ENV})"
    )
    parser.add_argument(
        "--prep-reps",
        type=positive_int,
        default=None,
        help="repetitions of the synthetic prep (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--read-reps", type=positive_int, default=None, help="timed 64-image reads (default 2000; 300 with --quick)"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=None, help="decoding processes for the JPEG tree (default: all cores)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _time_prep(run: Callable[[Path], dict], work: Path, reps: int) -> tuple[list[float], dict]:
    seconds, manifest = [], {}
    for i in range(reps):
        out = work / f"shards-{i}"
        start = time.perf_counter()
        manifest = run(out)
        seconds.append(time.perf_counter() - start)
        if i < reps - 1:
            shutil.rmtree(out)
    return seconds, manifest


def _prep_row(source: str, seconds: list[float], images: int, goal: float, **extra) -> dict:
    median = statistics.median(seconds)
    row = {
        "bench": "prep",
        "source": source,
        "images": images,
        "seconds": round(median, 3),
        "images_per_s": round(images / median, 1),
        "reps": len(seconds),
        "goal_seconds": goal,
    }
    if len(seconds) > 1:
        row["spread"] = {k: round(v, 3) for k, v in spread(seconds).items()}
    else:
        row["spread"] = None
    row.update(extra)
    return row


def _read_rows(shards: Path, reps: int, seed: int) -> list[dict]:
    from remixmatch.datasets_prep import open_shards

    part = open_shards(shards)["train"]
    rng = np.random.default_rng(seed)
    n = len(part)
    out = np.empty((BATCH, *part.image_shape), np.uint8)
    rows = []
    patterns = {
        "random": lambda: part.images(rng.integers(0, n, BATCH), out=out),
        "contiguous": lambda: part.images(slice(s := int(rng.integers(0, n - BATCH)), s + BATCH)),
    }
    for pattern, read in patterns.items():
        for _ in range(min(50, reps)):  # warm-up
            read()
        timings = []
        for _ in range(reps):
            start = time.perf_counter_ns()
            read()
            timings.append((time.perf_counter_ns() - start) / 1000)
        median = statistics.median(timings)
        rows.append(
            {
                "bench": "read",
                "pattern": pattern,
                "batch": BATCH,
                "rows": n,
                "shards": len(part.shardset.shard_paths("train")),
                "us_per_batch": round(median, 2),
                "images_per_s": round(BATCH / median * 1e6, 1),
                "spread": {k: round(v, 2) for k, v in spread(timings).items()},
                "reps": reps,
            }
        )
    return rows


def jpeg_tree_to_time(args: argparse.Namespace) -> tuple[DataPath | None, str | None]:
    """The CIFAR-10 JPEG export to prep (--jpeg-tree, else $REMIXMATCH_CIFAR10_JPG), or why that row
    is skipped."""
    if args.quick:
        return None, "--quick"
    tree = resolve_path(args.jpeg_tree, "--jpeg-tree", CIFAR10_JPG_ENV)
    if tree is None:
        return None, f"no --jpeg-tree and no ${CIFAR10_JPG_ENV}"
    if not tree.path.exists():
        return None, f"{tree}: not found"
    return tree, None


def run(args: argparse.Namespace) -> dict:
    from remixmatch.datasets_prep.decode import default_workers
    from remixmatch.datasets_prep.sources_cifar import prep_cifar10
    from remixmatch.datasets_prep.synthetic import synthetic_batches, write_cifar10_archive

    import pyarrow as pa

    per_batch = 1000 if args.quick else 10000
    prep_reps = args.prep_reps or (1 if args.quick else 3)
    read_reps = args.read_reps or (300 if args.quick else 2000)
    workers = args.workers or default_workers()
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = new_report("prep", config)
    report["machine"] = machine_info()
    report["versions"] = package_versions(VERSION_PACKAGES)
    report["threads"] = {"prep_decode_processes": workers, "pyarrow_cpu_count": pa.cpu_count(), "reader": 1}
    images = per_batch * 6
    report["inputs"] = {
        "synthetic": f"official python format, {images} random 32x32x3 images, "
        "gzip level 1 (inflating costs the same at any level)",
        "seed": args.seed,
    }

    work = args.out / f"work-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        archive = write_cifar10_archive(
            work / "cifar-10-python.tar.gz", synthetic_batches(per_batch, args.seed), compresslevel=1
        )
        report["inputs"]["synthetic_archive_bytes"] = archive.stat().st_size
        seconds, _ = _time_prep(
            lambda out: prep_cifar10(str(archive), out, progress=False), work / "synthetic", prep_reps
        )
        report["results"].append(_prep_row("synthetic-official", seconds, images, 10.0 * images / 60000))
        shards = work / "synthetic" / f"shards-{prep_reps - 1}"

        jpeg_tree, skip = jpeg_tree_to_time(args)
        if skip:
            report["results"].append({"bench": "prep", "source": "cifar10-jpg", "skipped": skip})
        else:
            report["inputs"]["jpeg_tree"] = jpeg_tree.path.name
            seconds, manifest = _time_prep(
                lambda out: prep_cifar10(str(jpeg_tree.path), out, workers=workers, progress=False), work / "jpeg", 1
            )
            rows = sum(s["rows"] for s in manifest["splits"].values())
            report["results"].append(_prep_row("cifar10-jpg", seconds, rows, 60.0, workers=workers))

        report["results"].extend(_read_rows(shards, read_reps, args.seed))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by_key = {(r["bench"], r.get("source") or r.get("pattern")): r for r in report["results"]}
    report["summary"] = {
        "synthetic_official_prep_seconds": by_key[("prep", "synthetic-official")]["seconds"],
        "synthetic_official_images": images,
        "cifar10_jpg_prep_seconds": by_key[("prep", "cifar10-jpg")].get("seconds"),
        "random_read_64_us": by_key[("read", "random")]["us_per_batch"],
        "contiguous_read_64_us": by_key[("read", "contiguous")]["us_per_batch"],
    }
    return report


def markdown(report: dict) -> str:
    m, v, t = report["machine"], report["versions"], report["threads"]
    lines = [
        "# Data preparation benchmark",
        "",
        f"Machine: {m['processor']}, {m['cpus_usable']} of {m['cpu_count']} CPUs usable, {m['memory_gib']} GiB; "
        f"{m['platform']}.  ",
        conditions_line(report) + "  ",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None) + ".  ",
        "Threads: " + ", ".join(f"{k} {val}" for k, val in t.items()) + ".",
        "",
        "## Prep",
        "",
    ]
    prep_rows = []
    for r in report["results"]:
        if r["bench"] != "prep":
            continue
        if "skipped" in r:
            prep_rows.append([r["source"], "-", "-", "-", "-", f"skipped: {r['skipped']}"])
            continue
        spread_text = "-" if not r["spread"] else f"{r['spread']['min']:.2f}-{r['spread']['max']:.2f} s"
        prep_rows.append(
            [
                r["source"],
                f"{r['images']:,}",
                f"{r['seconds']:.2f}",
                f"{r['images_per_s']:,.0f}",
                spread_text,
                f"<= {r['goal_seconds']:g} s" + (" (met)" if r["seconds"] <= r["goal_seconds"] else " (missed)"),
            ]
        )
    lines.append(markdown_table(["source", "images", "seconds (median)", "images/s", "range", "goal"], prep_rows))
    lines += ["", "## Reads from the shards (64 images, memory-mapped, warm page cache)", ""]
    read_rows = [
        [
            r["pattern"],
            f"{r['us_per_batch']:.1f}",
            f"{r['spread']['q1']:.1f}-{r['spread']['q3']:.1f}",
            f"{r['spread']['min']:.1f}-{r['spread']['max']:.1f}",
            f"{r['images_per_s']:,.0f}",
            str(r["reps"]),
        ]
        for r in report["results"]
        if r["bench"] == "read"
    ]
    lines.append(markdown_table(["indices", "µs per batch (median)", "IQR", "min-max", "images/s", "reps"], read_rows))
    lines += [
        "",
        "random: `Split.images(random indices, out=buffer)`, a gather across the train shards; "
        "contiguous: `Split.images(slice)`, a zero-copy view of the mapped file.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(PROG, lambda: _bench(parser.parse_args(argv)), interrupted="interrupted; no report was written")


def _bench(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    conditions = RunConditions()
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    finish_report(report, time.perf_counter() - start, conditions)
    text = markdown(report)
    json_path, md_path = write_report(args.out, report, text, stem="prep_report")
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
