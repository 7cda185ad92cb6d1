"""``rmm-bench prep``: prep time of CIFAR-10 sources (a synthetic archive in the official format, and
the JPEG export of --jpeg-tree or $REMIXMATCH_CIFAR10_JPG) and 64-image reads from the shards, at
random indices (a gather) and contiguous (a view). Writes ``prep_report.json`` / ``.md``; its rows
are untyped (their figures: ``OTHER_METRICS`` of :mod:`remixmatch.bench.rows`).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.common.paths import CIFAR10_JPG_ENV, DataPath, resolve_path

from .core import CommandConfig, check_out, command_parser, flag, out_flag, time_calls
from .render import module_main, table
from .report import new_report, package_versions, spread

PROG = "rmm-bench prep"
TITLE = "Data preparation benchmark"
BATCH = 64
VERSION_PACKAGES = ("numpy", "pyarrow", "pillow", "rich", "remixmatch")


@dataclass(frozen=True)
class PrepConfig(CommandConfig):
    out: Path = out_flag("prep_report.json and prep_report.md")
    quick: bool = flag(False, "6,000 synthetic images, no JPEG tree, fewer reads (well under a minute)")
    jpeg_tree: Path | None = flag(None, f"a CIFAR-10 JPEG export to prep (default: ${CIFAR10_JPG_ENV})", type=Path)
    prep_reps: int | None = flag(None, "repetitions of the synthetic prep (default 3; 1 with --quick)",
                                 type=positive_int)
    read_reps: int | None = flag(None, "timed 64-image reads (default 2000; 300 with --quick)", type=positive_int)
    workers: int | None = flag(None, "decoding processes for the JPEG tree (default: all cores)", type=positive_int)
    seed: int = flag(0, type=int)


def build_parser() -> OneLineParser:
    return command_parser(PROG, "Prep and shard-read benchmark (CIFAR-10 sources).", PrepConfig)


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
    return {"bench": "prep", "source": source, "images": images, "seconds": round(median, 3),
            "images_per_s": round(images / median, 1), "reps": len(seconds), "goal_seconds": goal,
            "spread": {k: round(v, 3) for k, v in spread(seconds).items()} if len(seconds) > 1 else None, **extra}


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
        # min(50, reps) calls of warm-up, then one call per repetition
        timings = [seconds * 1e6 for seconds in time_calls(read, reps, 0.0, warm_calls=min(50, reps) - 1).per_call]
        median = statistics.median(timings)
        rows.append({"bench": "read", "pattern": pattern, "batch": BATCH, "rows": n,
                     "shards": len(part.shardset.shard_paths("train")), "us_per_batch": round(median, 2),
                     "images_per_s": round(BATCH / median * 1e6, 1),
                     "spread": {k: round(v, 2) for k, v in spread(timings).items()}, "reps": reps})
    return rows


def jpeg_tree_to_time(args: PrepConfig) -> tuple[DataPath | None, str | None]:
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


def run(args: PrepConfig, log: Callable[[object], None]) -> dict:
    from remixmatch.datasets_prep.decode import default_workers
    from remixmatch.datasets_prep.sources_cifar import prep_cifar10
    from remixmatch.datasets_prep.synthetic import synthetic_batches, write_cifar10_archive

    import pyarrow as pa

    per_batch = 1000 if args.quick else 10000
    prep_reps = args.prep_reps or (1 if args.quick else 3)
    read_reps = args.read_reps or (300 if args.quick else 2000)
    workers = args.workers or default_workers()
    report = new_report("prep", args.as_dict())
    report["versions"] = package_versions(VERSION_PACKAGES)
    report["threads"] = {"prep_decode_processes": workers, "pyarrow_cpu_count": pa.cpu_count(), "reader": 1}
    images = per_batch * 6
    report["inputs"] = {"synthetic": f"official python format, {images} random 32x32x3 images, gzip level 1 "
                                     "(inflating costs the same at any level)", "seed": args.seed}

    work = args.out / f"work-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        archive = write_cifar10_archive(work / "cifar-10-python.tar.gz", synthetic_batches(per_batch, args.seed),
                                        compresslevel=1)
        report["inputs"]["synthetic_archive_bytes"] = archive.stat().st_size
        seconds, _ = _time_prep(lambda out: prep_cifar10(str(archive), out, progress=False), work / "synthetic",
                                prep_reps)
        report["results"].append(_prep_row("synthetic-official", seconds, images, 10.0 * images / 60000))
        shards = work / "synthetic" / f"shards-{prep_reps - 1}"

        jpeg_tree, skip = jpeg_tree_to_time(args)
        if skip:
            report["results"].append({"bench": "prep", "source": "cifar10-jpg", "skipped": skip})
        else:
            report["inputs"]["jpeg_tree"] = jpeg_tree.path.name
            seconds, manifest = _time_prep(lambda out: prep_cifar10(str(jpeg_tree.path), out, workers=workers,
                                                                    progress=False), work / "jpeg", 1)
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


def _prep_goal(r: dict) -> str:
    return f"<= {r['goal_seconds']:g} s" + (" (met)" if r["seconds"] <= r["goal_seconds"] else " (missed)")


PREP_COLUMNS = (
    ("source", lambda r: r["source"]), ("images", lambda r: "-" if "skipped" in r else f"{r['images']:,}"),
    ("seconds (median)", lambda r: "-" if "skipped" in r else f"{r['seconds']:.2f}"),
    ("images/s", lambda r: "-" if "skipped" in r else f"{r['images_per_s']:,.0f}"),
    ("range", lambda r: "-" if not r.get("spread") else f"{r['spread']['min']:.2f}-{r['spread']['max']:.2f} s"),
    ("goal", lambda r: f"skipped: {r['skipped']}" if "skipped" in r else _prep_goal(r)),
)
READ_COLUMNS = (
    ("indices", lambda r: r["pattern"]), ("µs per batch (median)", lambda r: f"{r['us_per_batch']:.1f}"),
    ("IQR", lambda r: f"{r['spread']['q1']:.1f}-{r['spread']['q3']:.1f}"),
    ("min-max", lambda r: f"{r['spread']['min']:.1f}-{r['spread']['max']:.1f}"),
    ("images/s", lambda r: f"{r['images_per_s']:,.0f}"), ("reps", lambda r: str(r["reps"])),
)


def body(report: dict, h: str = "##") -> list[str]:
    rows = report["results"]
    return [
        f"{h} Prep", "", table(PREP_COLUMNS, [r for r in rows if r["bench"] == "prep"]),
        "", f"{h} Reads from the shards (64 images, memory-mapped, warm page cache)", "",
        table(READ_COLUMNS, [r for r in rows if r["bench"] == "read"]), "",
        "random: `Split.images(random indices, out=buffer)`, a gather across the train shards; "
        "contiguous: `Split.images(slice)`, a zero-copy view of the mapped file.",
    ]


def config_from_args(args) -> PrepConfig:
    check_out(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    return PrepConfig.from_args(args)


def main(argv: list[str] | None = None) -> int:
    return module_main(argv, sys.modules[__name__], stem="prep_report",
                       interrupted="interrupted; no report was written")


if __name__ == "__main__":
    sys.exit(main())
