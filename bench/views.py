"""``rmm-bench views``: a PNG contact sheet of what the kernels make of the user's images.

One row per image: the original, its weak view, then K strong views (weak + a depth-2 policy from
the library's probe sampler, ops and levels uniform, as CTAugment samples before it has learnt
anything), each captioned with its ops and levels. A quick way to see that the ops do what their
names say. Images come from a shard directory: ``--shards DIR``, else ``$REMIXMATCH_SHARDS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from remixmatch.common.atomic import atomic_target
from remixmatch.common.cli import OneLineParser, positive_int
from remixmatch.common.paths import SHARDS_ENV, resolve_path

from .errors import BenchError
from .report import command_main

PROG = "rmm-bench views"
SCALE = 3  # 32x32 views are unreadable at 1:1
CAPTION_HEIGHT = 24
GAP = 4
DEPTH = 2


def sample_views(images: int, k: int, seed: int):
    """(weak parameters, policies) of K views of each image, image-major; view 0 of each image
    also gives its weak-view column."""
    from remixmatch.pipeline.plan import ViewConfig, WeakParams
    from remixmatch.pipeline.policy import uniform_policies

    rng = np.random.default_rng(seed)
    n = images * k
    return WeakParams.sample(n, rng, ViewConfig()), uniform_policies(n, DEPTH, rng)


def contact_sheet(images: np.ndarray, k: int, seed: int):
    """The sheet as a PIL image."""
    from PIL import Image, ImageDraw

    from remixmatch.kernels import apply_ops, weak_augment

    weak, policies = sample_views(len(images), k, seed)
    sources = np.repeat(np.arange(len(images), dtype=np.int32), k)
    first = weak[::k]
    weak_views = weak_augment(images, np.ascontiguousarray(first.flips), np.ascontiguousarray(first.offsets))
    strong = apply_ops(images, *policies.arrays(), sources=sources, flips=weak.flips, offsets=weak.offsets)
    height, width = images.shape[1] * SCALE, images.shape[2] * SCALE
    cell_w, cell_h = width + GAP, height + CAPTION_HEIGHT + GAP
    sheet = Image.new("RGB", ((k + 2) * cell_w, images.shape[0] * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for row, image in enumerate(images):
        cells = [(image, ["original"]), (weak_views[row], ["weak"])]
        cells += [(strong[v], policies.describe_ops(v)) for v in range(row * k, (row + 1) * k)]
        for col, (pixels, lines) in enumerate(cells):
            x, y = col * cell_w, row * cell_h
            sheet.paste(Image.fromarray(pixels).resize((width, height), Image.NEAREST), (x, y))
            for i, line in enumerate(lines):
                draw.text((x + 1, y + height + 1 + 11 * i), line, fill="black")
    return sheet


def _load_images(shards, count: int, split: str, seed: int) -> np.ndarray:
    """``count`` rows of ``split`` picked by the seed, in row order; ``shards`` as --shards takes it."""
    from .images import open_split

    source = resolve_path(shards, "--shards", SHARDS_ENV)
    if source is None:
        raise BenchError(f"no images: pass --shards DIR (a prep-cifar10 --out directory) or set {SHARDS_ENV}")
    rows = open_split(source, split)
    picks = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(count, len(rows)), replace=False))
    return np.ascontiguousarray(rows.images(picks))


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="A PNG of weak and strong views of the images of a shard directory.")
    parser.add_argument("--shards", type=Path, default=None, metavar="DIR",
                        help=f"a shard directory (prep-cifar10 --out; default: ${SHARDS_ENV})")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=positive_int, default=6, help="rows (default 6)")
    parser.add_argument("--k", type=positive_int, default=8, help="strong views per image (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _draw(args) -> int:
    images = _load_images(args.shards, args.images, args.split, args.seed)
    sheet = contact_sheet(images, args.k, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(args.out) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {args.out} ({len(images)} images x (original, weak, {args.k} strong views))")
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(argv, prog=PROG, build_parser=build_parser, run=_draw)


if __name__ == "__main__":
    sys.exit(main())
