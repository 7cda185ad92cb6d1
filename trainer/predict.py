"""``rmm-predict``: label images with a trained run or its export.

    rmm-predict RUN_DIR|EXPORT INPUT... [--out preds.csv|preds.jsonl] [--batch 256] [--device cpu]
                [--top-k 3] [--filter bicubic | --no-resize] [--model ema|raw] [--checkpoint PATH]

The model: a run directory (its newest checkpoint's EMA weights unless told otherwise), or a
TorchScript (``.pt``) or ONNX (``.onnx``, onnxruntime) file written by ``rmm-export``, whose
metadata gives the class names and the image size.

INPUT: image files, folder trees (every file with an image suffix below them, sorted; other files
are ignored), or shard directories (every row of every split, or ``--split``). Images are decoded
with PIL and converted to RGB; one of another size than the model's is resized to it with
``--filter`` (PIL's bicubic by default; each such row records its original size and the filter),
or, with ``--no-resize``, listed as an error. A file that cannot be read or decoded is listed as an
error; the others are still labeled.

Output, one row per image: ``path``, ``class`` (predicted name), ``confidence`` (its softmax
probability), ``top_k`` (the k most probable classes with their probabilities), ``resized_from``
(``WxH filter`` or empty), ``error`` (empty, or why the image has no prediction). CSV (``top_k`` as
``name:probability`` joined by ``;``) or JSON lines, by the suffix of ``--out``; CSV on stdout without
``--out``. The file is written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from remixmatch.common.atomic import atomic_target
from remixmatch.common.cli import OneLineParser, positive_int, run_cli

from .inference import MODELS, UseError

OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
COLUMNS = ("path", "class", "confidence", "top_k", "resized_from", "error")


@dataclass
class Predictor:
    """Logits of uint8 (N, H, W, 3) images, whatever runs them."""

    run: Callable[[np.ndarray], np.ndarray]
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    source: str  # what the model came from (for the summary line)


def _from_run(run_dir: Path, which: str, checkpoint: Path | None, device: str) -> Predictor:
    import torch

    from .inference import load_trained

    trained = load_trained(run_dir, checkpoint=checkpoint, which=which, device=device)
    classifier = trained.classifier()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return classifier(torch.from_numpy(images).to(trained.device)).cpu().numpy()

    return Predictor(run, trained.class_names, trained.image_shape,
                     f"{trained.run_dir.name} step {trained.step} ({which})")


def _metadata_shape(metadata: dict) -> tuple[int, int, int]:
    height, width = metadata["image_size"]
    return int(height), int(width), int(metadata.get("channels", 3))


def _from_torchscript(path: Path, device: str) -> Predictor:
    import torch

    from .export import TORCHSCRIPT_METADATA

    import warnings

    extra = {TORCHSCRIPT_METADATA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's notice (see export.py)
            model = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        metadata = json.loads(extra[TORCHSCRIPT_METADATA])
    except Exception as error:  # a zip of something else, a truncated file: many failure types
        raise UseError(f"{path}: not a TorchScript export of rmm-export ({type(error).__name__}: "
                       f"{' '.join(str(error).split())[:120]})") from None

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images).to(device)).cpu().numpy()

    return Predictor(run, tuple(metadata["class_names"]), _metadata_shape(metadata), f"{path.name} (TorchScript)")


def _from_onnx(path: Path, device: str) -> Predictor:
    from .export import METADATA_KEY

    try:
        import onnxruntime
    except ImportError:
        raise UseError(f"{path}: running an ONNX export needs onnxruntime: pip install 'remixmatch[onnx]'") from None
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
        metadata = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    except Exception as error:  # onnxruntime raises its own exception types for a bad file
        raise UseError(f"{path}: not an ONNX export of rmm-export ({type(error).__name__}: "
                       f"{' '.join(str(error).split())[:120]})") from None

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"images": images})[0]

    return Predictor(run, tuple(metadata["class_names"]), _metadata_shape(metadata), f"{path.name} (ONNX)")


def load_predictor(source: Path, *, which: str = "ema", checkpoint: Path | None = None,
                   device: str = "cpu") -> Predictor:
    source = Path(source)
    if source.is_dir():
        return _from_run(source, which, checkpoint, device)
    if not source.is_file():
        raise UseError(f"{source}: no such run directory or export file")
    if source.suffix == ".onnx":
        return _from_onnx(source, device)
    if source.suffix == ".safetensors":
        raise UseError(f"{source}: a safetensors export holds weights only; predict with the run directory "
                       "or a TorchScript/ONNX export")
    return _from_torchscript(source, device)


# -- inputs ---------------------------------------------------------------------------------------------


@dataclass
class Item:
    path: str
    image: np.ndarray | None = None  # (H, W, 3) uint8 at the model's size
    resized_from: str = ""
    error: str = ""
    extra: dict = field(default_factory=dict)


def _fit(path: str, pixels: np.ndarray, shape: tuple[int, int, int], filter_name: str | None) -> Item:
    """The image at the model's size, resized with the named filter, or an error without one."""
    from PIL import Image

    from remixmatch.datasets_prep.decode import FILTERS

    height, width = shape[:2]
    if pixels.shape[:2] == (height, width):
        return Item(path, np.ascontiguousarray(pixels))
    size = f"{pixels.shape[1]}x{pixels.shape[0]}"
    if filter_name is None:
        return Item(path, error=f"image is {size}, the model takes {width}x{height} (--no-resize)")
    resized = Image.fromarray(pixels).resize((width, height), FILTERS[filter_name])
    return Item(path, np.asarray(resized, np.uint8), resized_from=f"{size} {filter_name}")


def _decode_file(path: Path, shape, filter_name) -> Item:
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), np.uint8)
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError... for bad files
        return Item(str(path), error=f"unreadable image ({type(error).__name__}: {' '.join(str(error).split())[:120]})")
    return _fit(str(path), pixels, shape, filter_name)


def _tree_files(root: Path) -> list[Path]:
    from remixmatch.datasets_prep.imagetree import IMAGE_EXTENSIONS

    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / f for f in sorted(files)
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found, key=lambda p: p.relative_to(root).parts)  # a folder's files and subfolders interleaved by name


def _shard_items(root: Path, splits: list[str] | None, shape, filter_name, chunk: int = 512) -> Iterator[Item]:
    from remixmatch.datasets_prep import open_shards

    shards = open_shards(root)
    for name in splits or list(shards.splits):
        if name not in shards:
            raise UseError(f"--split {name}: {root} has no such split (splits: {', '.join(shards.splits)})")
        split = shards[name]
        for start in range(0, len(split), chunk):
            rows = np.arange(start, min(start + chunk, len(split)))
            sources = split.sources(rows)
            for row, image, source in zip(rows, split.images(rows), sources):
                item = _fit(f"{root}/{name}/{int(row)}", image, shape, filter_name)
                item.extra = {"source": source}
                yield item


def input_items(inputs: list[Path], shape, filter_name: str | None, splits: list[str] | None) -> Iterator[Item]:
    for entry in inputs:
        entry = Path(entry)
        if (entry / "manifest.json").is_file():
            yield from _shard_items(entry, splits, shape, filter_name)
        elif entry.is_dir():
            files = _tree_files(entry)
            if not files:
                raise UseError(f"{entry}: no image files below it")
            for path in files:
                yield _decode_file(path, shape, filter_name)
        elif entry.is_file():
            yield _decode_file(entry, shape, filter_name)
        else:
            yield Item(str(entry), error="no such file or directory")


# -- predictions ----------------------------------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predictions(predictor: Predictor, items: Iterator[Item], batch: int, top_k: int) -> Iterator[dict]:
    """One record per item, in input order; images go through the model ``batch`` at a time."""
    pending: list[Item] = []

    def flush() -> Iterator[dict]:
        ready = [item for item in pending if item.error == ""]
        probabilities = _softmax(predictor.run(np.stack([i.image for i in ready]))) if ready else None
        k = min(top_k, len(predictor.class_names))
        position = 0
        for item in pending:
            record = {"path": item.path, "class": None, "confidence": None, "top_k": [],
                      "resized_from": item.resized_from or None, "error": item.error or None, **item.extra}
            if not item.error:
                p = probabilities[position]
                position += 1
                order = np.argsort(-p, kind="stable")[:k]
                record.update({"class": predictor.class_names[order[0]], "confidence": float(p[order[0]]),
                               "top_k": [[predictor.class_names[c], float(p[c])] for c in order]})
            yield record
        pending.clear()

    for item in items:
        pending.append(item)
        if sum(1 for i in pending if not i.error) >= batch:
            yield from flush()
    yield from flush()


def _csv_row(record: dict) -> list:
    top = ";".join(f"{name}:{p:.6f}" for name, p in record["top_k"])
    confidence = "" if record["confidence"] is None else f"{record['confidence']:.6f}"
    return [record["path"], record["class"] or "", confidence, top, record["resized_from"] or "", record["error"] or ""]


def write_records(records: Iterator[dict], handle, fmt: str) -> tuple[int, int]:
    """Writes every record; returns (images, errors)."""
    total = errors = 0
    writer = csv.writer(handle) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(COLUMNS)
    for record in records:
        total += 1
        errors += record["error"] is not None
        if writer is not None:
            writer.writerow(_csv_row(record))
        else:
            handle.write(json.dumps(record) + "\n")
    return total, errors


def output_format(out: Path | None) -> str:
    if out is None:
        return "csv"
    fmt = OUTPUT_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise UseError(f"--out {out}: the suffix must be .csv or .jsonl")
    return fmt


def build_parser() -> argparse.ArgumentParser:
    from remixmatch.datasets_prep.decode import FILTERS

    parser = OneLineParser(prog="rmm-predict", description="Label images with a trained run or its "
                           "TorchScript/ONNX export: path, class, confidence and the top-k classes per image.")
    parser.add_argument("model", type=Path, metavar="RUN_DIR|EXPORT", help="a run directory or an rmm-export file")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                        help="image files, folder trees or shard directories")
    parser.add_argument("--out", type=Path, help="preds.csv or preds.jsonl (default: CSV on stdout)")
    parser.add_argument("--batch", type=positive_int, default=256, help="images per forward (default 256)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--top-k", type=positive_int, default=3, help="classes listed per image (default 3)")
    parser.add_argument("--filter", choices=sorted(FILTERS), default="bicubic",
                        help="PIL filter that resizes images of another size to the model's (default bicubic)")
    parser.add_argument("--no-resize", action="store_true", help="list images of another size as errors instead")
    parser.add_argument("--split", action="append", help="of a shard directory: only this split (repeatable)")
    parser.add_argument("--model", choices=MODELS, default="ema", dest="which",
                        help="of a run directory: the EMA weights (default) or the raw ones")
    parser.add_argument("--checkpoint", type=Path, help="of a run directory: this checkpoint (default: the newest)")
    return parser


def predict(args: argparse.Namespace) -> tuple[int, int, Predictor]:
    fmt = output_format(args.out)
    if args.out is not None and Path(args.out).is_dir():
        raise UseError(f"--out {args.out} is a directory; name the file")
    predictor = load_predictor(args.model, which=args.which, checkpoint=args.checkpoint, device=args.device)
    items = input_items(args.inputs, predictor.image_shape, None if args.no_resize else args.filter, args.split)
    records = predictions(predictor, items, args.batch, args.top_k)
    if args.out is None:
        return (*write_records(records, sys.stdout, fmt), predictor)
    out = Path(args.out)
    with atomic_target(out) as tmp, open(tmp, "w", newline="") as handle:
        counts = write_records(records, handle, fmt)
    return (*counts, predictor)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def body() -> int:
        args = parser.parse_args(argv)
        total, errors, predictor = predict(args)
        where = f"; {args.out}" if args.out is not None else ""
        print(f"rmm-predict: {total - errors} of {total} images labeled with {predictor.source}"
              f"{f', {errors} listed as errors' if errors else ''}{where}", file=sys.stderr)
        return 0

    return run_cli(parser.prog, body)


__all__ = ["Predictor", "build_parser", "input_items", "load_predictor", "main", "predictions"]
