"""``rmm-bench views``: a PNG contact sheet of what the kernels make of real images.

One row per image: the original, its weak view, then K strong views (weak + a depth-2 policy with ops
and levels drawn uniformly, as CTAugment samples before it has learnt anything), each captioned with
its ops and levels. A quick way to see that the ops do what their names say.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .cli import OneLineParser, positive_int

SCALE = 3  # 32x32 views are unreadable at 1:1
CAPTION_HEIGHT = 24
GAP = 4


def sample_views(images: np.ndarray, k: int, seed: int, depth: int = 2):
    """Weak augmentation and uniform depth-``depth`` policies for K views of each image."""
    from remixmatch.kernels.ops import NUM_OPS

    rng = np.random.default_rng(seed)
    n = images.shape[0] * k
    return {
        "sources": np.repeat(np.arange(images.shape[0], dtype=np.int32), k),
        "flips": rng.integers(0, 2, n).astype(np.int32),
        "offsets": rng.integers(0, 9, (n, 2)).astype(np.int32),
        "op_ids": rng.integers(0, NUM_OPS, (n, depth)).astype(np.int32),
        "levels": rng.random((n, depth, 2), dtype=np.float32),
        "rand": rng.random((n, depth + 1, 2), dtype=np.float32),
    }


def _caption(op_ids, levels) -> list[str]:
    from remixmatch.kernels.ops import OPS

    return [f"{OPS[op].name} {levels[i, 0]:.2f}" for i, op in enumerate(op_ids)]


def contact_sheet(images: np.ndarray, k: int, seed: int):
    """The sheet as a PIL image."""
    from PIL import Image, ImageDraw

    from remixmatch.kernels import apply_ops, weak_augment

    views = sample_views(images, k, seed)
    weak = weak_augment(images, views["flips"][::k].copy(), views["offsets"][::k].copy())
    strong = apply_ops(images, views["op_ids"], views["levels"], views["rand"], sources=views["sources"],
                       flips=views["flips"], offsets=views["offsets"])
    height, width = images.shape[1] * SCALE, images.shape[2] * SCALE
    cell_w, cell_h = width + GAP, height + CAPTION_HEIGHT + GAP
    sheet = Image.new("RGB", ((k + 2) * cell_w, images.shape[0] * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for row, image in enumerate(images):
        cells = [(image, ["original"]), (weak[row], ["weak"])]
        for j in range(k):
            v = row * k + j
            cells.append((strong[v], _caption(views["op_ids"][v], views["levels"][v])))
        for col, (pixels, lines) in enumerate(cells):
            x, y = col * cell_w, row * cell_h
            sheet.paste(Image.fromarray(pixels).resize((width, height), Image.NEAREST), (x, y))
            for i, line in enumerate(lines):
                draw.text((x + 1, y + height + 1 + 11 * i), line, fill="black")
    return sheet


def _load_images(shards: Path, count: int, split: str, seed: int) -> np.ndarray:
    from remixmatch.datasets_prep import open_shards

    rows = open_shards(shards)[split]
    picks = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(count, len(rows)), replace=False))
    return np.ascontiguousarray(rows.images(picks))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="rmm-bench views", description="A PNG of weak and strong views of real images.")
    parser.add_argument("--shards", type=Path, required=True, help="a shard directory (prep-cifar10 --out)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=positive_int, default=6, help="rows (default 6)")
    parser.add_argument("--k", type=positive_int, default=8, help="strong views per image (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    from remixmatch.datasets_prep import PrepError

    try:
        images = _load_images(args.shards, args.images, args.split, args.seed)
    except PrepError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    sheet = contact_sheet(images, args.k, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.images} images x (original, weak, {args.k} strong views))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
