"""``rmm-bench semantics``: what the reference code's translate and rescale do to the user's images.

Under ``semantics="reference"`` (``--cta-semantics reference``) translate moves by at most 0.3 px and
rescale crops at most 0.25 px off each side. This counts, over every image and a sweep of levels
(all 17 bin centres and edges, plus random levels; for rescale every filter), how many views differ
from the image they were made from, under both semantics, with the CPU kernel. Images as
``rmm-bench aug`` takes them: ``--images`` (an archive or a directory), else ``--shards``, else a
synthetic set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from remixmatch.common.atomic import atomic_write_json
from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.common.paths import SHARDS_ENV

from .report import command_main

PROG = "rmm-bench semantics"
OPS_MEASURED = ("translate_x", "translate_y", "rescale")


def sweep_levels(random_levels: int, seed: int) -> np.ndarray:
    """float32 levels: 0, 1, the 17 bins' edges and centres, and ``random_levels`` uniform ones."""
    fixed = [k / 17 for k in range(18)] + [(k + 0.5) / 17 for k in range(17)]
    drawn = np.random.default_rng(seed).random(random_levels)
    return np.unique(np.concatenate([fixed, drawn]).astype(np.float32))


def count_changed_views(images: np.ndarray, levels: np.ndarray) -> list[dict]:
    """Per op and semantics: views made (every image at every level, rescale at every filter too)
    and how many of them differ from their source image."""
    from remixmatch.kernels import apply_ops
    from remixmatch.kernels.ops import OP_ID, RESCALE_FILTERS, SEMANTICS

    filters = np.array([(f + 0.5) / len(RESCALE_FILTERS) for f in range(len(RESCALE_FILTERS))], np.float32)
    rows = []
    for name in OPS_MEASURED:
        second = filters if name == "rescale" else np.zeros(1, np.float32)
        pairs = np.array([(v0, v1) for v0 in levels for v1 in second], np.float32)
        n = len(images) * len(pairs)
        sources = np.repeat(np.arange(len(images), dtype=np.int32), len(pairs))
        op_ids = np.full((n, 1), OP_ID[name], np.int32)
        view_levels = np.ascontiguousarray(np.tile(pairs, (len(images), 1))[:, None, :])
        rand = np.zeros((n, 2, 2), np.float32)
        for semantics in SEMANTICS:
            views = apply_ops(images, op_ids, view_levels, rand, sources=sources, semantics=semantics)
            changed = (views != images[sources]).reshape(n, -1).any(axis=1)
            rows.append({"op": name, "semantics": semantics, "views": int(n), "changed": int(changed.sum())})
    return rows


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Views that reference-semantics translate and rescale "
                                                  "change, against the corrected semantics.")
    parser.add_argument("--images", default=None, metavar="PATH",
                        help="a tar archive or a directory of PNG/JPEG files (its train/ part)")
    parser.add_argument("--shards", default=None, metavar="DIR",
                        help=f"a shard directory (default: ${SHARDS_ENV}; synthetic images when unset)")
    parser.add_argument("--count", type=positive_int, default=1000, help="images (default 1000)")
    parser.add_argument("--levels", type=int, default=64, help="random levels besides the bins' (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the counts here")
    return parser


def _run(args) -> int:
    from .images import load_images

    images = load_images(args.count, images=args.images, shards=args.shards, seed=args.seed)
    levels = sweep_levels(max(args.levels, 0), args.seed)
    rows = count_changed_views(images.pixels, levels)
    described = images.describe()
    print(f"{described['count']} {described['height']}x{described['width']} images ({described['images']}: "
          f"{described['source']}), {len(levels)} levels per op")
    for row in rows:
        print(f"{row['op']:<12} {row['semantics']:<10} {row['changed']:>9} of {row['views']} views changed")
    if args.json is not None:
        atomic_write_json(args.json, {"images": described, "levels": len(levels), "rows": rows})
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(argv, prog=PROG, build_parser=build_parser, run=_run)


if __name__ == "__main__":
    sys.exit(main())
