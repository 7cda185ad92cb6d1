"""``rmm-eval``: a trained model on a split, with what its errors look like.

    rmm-eval RUN_DIR [--checkpoint PATH] [--data DIR] [--split test] [--model ema|raw] [--out DIR]
             [--recalibrate-bn N]

By default the run's own shards and evaluation split (``--eval-split``: a shard split, or ``valid``,
the hold-out recorded in labeled.json) at the run's evaluation batch, the EMA model of the newest
checkpoint: on the checkpoint a run ended with it gives the accuracy summary.json recorded for that
step, exactly (the same rows, batches, conversion and model). ``--data`` names other shards, which
must have the run's classes in the run's order (refused, naming the first mismatch).

Writes ``OUT/eval.json`` (default ``OUT = RUN_DIR/eval/step-<N>-<split>-<model>``): accuracy,
per-class accuracy, the confusion matrix (rows: true class, columns: predicted), the expected
calibration error over equal-width confidence bins, the most frequent confusions and the model's
identity; and ``OUT/confusion.png`` with the class names (matplotlib, the ``plots`` extra; without it
the JSON says why the picture is missing).

``--recalibrate-bn N`` first re-estimates the evaluated model's batch-norm statistics on N clean
training images of the run's own shards (trainer/recalibrate.py), and records the accuracy with the
trained statistics beside the recalibrated one (``bn_recalibration`` in eval.json; default ``OUT``
ends in ``-bnN``). ``rmm-train --eval-recalibrate-bn N`` measures the same at each of a run's evaluations.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from remixmatch.common.atomic import atomic_target, atomic_write_json
from remixmatch.common.cli import OneLineParser, positive_int, run_cli

from .inference import MODELS, TrainedModel, UseError, load_trained

EVAL_VERSION = 1
ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017's choice)
TOP_CONFUSIONS = 10


def check_same_classes(expected: tuple[str, ...], found: tuple[str, ...], where: str) -> None:
    """Other shards are usable only with the run's classes in the run's order (class ids are positions)."""
    for index, (mine, theirs) in enumerate(zip(expected, found)):
        if mine != theirs:
            raise UseError(f"{where}: other classes than the run's: class {index} is {theirs!r} there, "
                           f"{mine!r} in the run")
    if len(expected) != len(found):
        first = min(len(expected), len(found))
        extra, side = (found[first], "there") if len(found) > first else (expected[first], "in the run")
        raise UseError(f"{where}: other classes than the run's: {len(found)} classes there, {len(expected)} in "
                       f"the run (class {first}, {extra!r}, is only {side})")


def eval_rows(trained: TrainedModel, shards, split_name: str) -> tuple[object, np.ndarray]:
    """The split and the rows of it that are evaluated."""
    if split_name == "valid":
        from remixmatch.datasets_prep.subsets import load_subset

        if shards.fingerprint != trained.dataset.get("fingerprint"):
            raise UseError(f"--split valid is the run's hold-out of its own training split; {shards.path} holds "
                           "other shards (another fingerprint): name one of their splits")
        subset = load_subset(trained.run_dir / "labeled.json", expect_fingerprint=shards.fingerprint)
        if len(subset.valid) == 0:
            raise UseError("--split valid: the run held out no validation images (--valid 0); use --split test")
        return shards["train"], np.asarray(subset.valid, np.int64)
    if split_name not in shards:
        raise UseError(f"--split {split_name}: {shards.path} has no such split (splits: {', '.join(shards.splits)})")
    split = shards[split_name]
    return split, np.arange(len(split), dtype=np.int64)


@torch.no_grad()
def predict_split(trained: TrainedModel, split, rows: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, classes) float32, labels (N,) int64) of ``rows``, read as training's evaluation
    reads them (EvalLoader, the same batches, autocast on CUDA as configured)."""
    from remixmatch.pipeline import EvalLoader
    from remixmatch.pipeline.loader import make_fetcher

    device = str(trained.device)
    loader = EvalLoader(split, rows, batch, device=device,
                        fetcher=make_fetcher("torch", split, device, max_batch=batch))
    classifier = trained.classifier()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if trained.device.type == "cuda" and trained.config.bf16
                else torch.autocast("cpu", enabled=False))
    logits, labels = [], []
    for item in loader:
        with autocast:
            logits.append(classifier(item.images).cpu())
        labels.append(item.labels.cpu())
    return torch.cat(logits).numpy(), torch.cat(labels).numpy().astype(np.int64)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list]:
    """sum over bins of (bin share) |accuracy - mean confidence|; bins (lo, hi] of the top softmax."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            accuracy, mean_conf = float(correct[inside].mean()), float(confidence[inside].mean())
            ece += count / len(confidence) * abs(accuracy - mean_conf)
        else:
            accuracy = mean_conf = None
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                      "accuracy": accuracy, "confidence": mean_conf})
    return float(ece), table


def summarise(logits: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict:
    classes = len(class_names)
    predicted = logits.argmax(axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    confidence = probabilities.max(axis=1)
    correct = predicted == labels
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = []
    for c, name in enumerate(class_names):
        total = int(confusion[c].sum())
        per_class.append({"class": name, "images": total,
                          "accuracy": float(confusion[c, c] / total) if total else None})
    off = [(int(confusion[t, p]), t, p) for t in range(classes) for p in range(classes) if t != p and confusion[t, p]]
    off.sort(key=lambda x: (-x[0], x[1], x[2]))
    top = [{"true": class_names[t], "predicted": class_names[p], "count": n,
            "share_of_true_class": n / int(confusion[t].sum())} for n, t, p in off[:TOP_CONFUSIONS]]
    ece, bins = expected_calibration_error(confidence, correct)
    return {"images": int(len(labels)), "correct": int(correct.sum()),
            "accuracy": int(correct.sum()) / max(len(labels), 1),
            "per_class": per_class, "class_names": list(class_names), "confusion": confusion.tolist(),
            "ece": ece, "ece_bins": ECE_BINS, "calibration": bins, "mean_confidence": float(confidence.mean()),
            "top_confusions": top}


def confusion_png(path: Path, confusion: list, class_names: list, title: str) -> str | None:
    """Draws the matrix with class names; returns why not when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install 'remixmatch[plots]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for t in range(n):
        for p in range(n):
            if matrix[t, p]:
                ax.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if share[t, p] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return None


def recalibrate(trained: TrainedModel, images: int, batch: int) -> dict:
    """Re-estimates ``trained.model``'s BN statistics on ``images`` clean training images of the
    run's shards (the hold-out excluded), as ``rmm-train --eval-recalibrate-bn`` does; what was read."""
    from remixmatch.datasets_prep import open_shards
    from remixmatch.datasets_prep.subsets import load_subset

    from .recalibrate import Recalibration

    shards = open_shards(trained.config.data)
    subset = load_subset(trained.run_dir / "labeled.json", expect_fingerprint=shards.fingerprint)
    recalibration = Recalibration(shards["train"], subset.valid, images, batch, trained.config.run_seed,
                                  str(trained.device))
    layers = recalibration(trained.model)
    return {**recalibration.describe(), "layers": layers}


def evaluate(run_dir: Path, *, checkpoint: Path | None = None, data: Path | None = None, split: str | None = None,
             which: str = "ema", out: Path | None = None, device: str = "cpu", batch: int | None = None,
             recalibrate_bn: int = 0) -> dict:
    import json

    from remixmatch.datasets_prep import open_shards

    trained = load_trained(run_dir, checkpoint=checkpoint, which=which, device=device)
    shards = open_shards(data if data is not None else trained.config.data)
    if data is not None:
        check_same_classes(trained.class_names, shards.class_names, f"--data {data}")
    split_name = split or trained.config.eval_split
    split_obj, rows = eval_rows(trained, shards, split_name)
    labeled = np.asarray(split_obj.labels, np.int64)[rows] >= 0
    if not labeled.any():
        raise UseError(f"--split {split_name} of {shards.path} has no labeled images to evaluate")
    rows = rows[labeled]
    batch = batch or trained.config.eval_batch
    recalibration = None
    if recalibrate_bn:
        before, _ = predict_split(trained, split_obj, rows, batch)
        recalibration = recalibrate(trained, recalibrate_bn, batch)
    logits, labels = predict_split(trained, split_obj, rows, batch)
    report = {"eval_version": EVAL_VERSION, "split": split_name, "shards": str(shards.path),
              "shards_fingerprint": shards.fingerprint, "unlabeled_rows_skipped": int((~labeled).sum()),
              "identity": trained.identity(), **summarise(logits, labels, trained.class_names)}
    if recalibration is not None:
        recalibration["accuracy_trained_statistics"] = float((before.argmax(axis=1) == labels).mean())
        report["bn_recalibration"] = recalibration
    suffix = f"-bn{recalibrate_bn}" if recalibrate_bn else ""
    out = Path(out) if out is not None else trained.run_dir / "eval" / f"step-{trained.step}-{split_name}-{which}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    missing = confusion_png(out / "confusion.png", report["confusion"], report["class_names"],
                            f"{trained.run_dir.name} step {trained.step} ({which}) on {split_name}: "
                            f"{100 * report['accuracy']:.2f}%")
    report["confusion_png"] = None if missing else "confusion.png"
    if missing:
        report["confusion_png_skipped"] = missing
    atomic_write_json(out / "eval.json", report)
    report["out"] = str(out)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rmm-eval", description="Evaluate a trained run's model on a split: accuracy, "
                           "per-class accuracy, confusion matrix, calibration error, top confusions.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="an rmm-train --out directory")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: the run's newest)")
    parser.add_argument("--data", type=Path, help="a shard directory with the run's classes (default: the run's)")
    parser.add_argument("--split", help="a split of the shards, or 'valid' (the run's hold-out); default: the "
                                        "run's --eval-split")
    parser.add_argument("--model", choices=MODELS, default="ema", help="the EMA weights (default) or the raw ones")
    parser.add_argument("--out", type=Path, help="output directory (default RUN_DIR/eval/step-N-SPLIT-MODEL)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--batch", type=positive_int, help="images per forward (default: the run's --eval-batch, "
                                                           "which reproduces its recorded accuracy exactly)")
    parser.add_argument("--recalibrate-bn", type=positive_int, metavar="N",
                        help="re-estimate the model's batch-norm statistics on N clean training images of the run's "
                             "shards before evaluating (eval.json keeps the accuracy with the trained ones too)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def body() -> int:
        args = parser.parse_args(argv)
        report = evaluate(args.run_dir, checkpoint=args.checkpoint, data=args.data, split=args.split,
                          which=args.model, out=args.out, device=args.device, batch=args.batch,
                          recalibrate_bn=args.recalibrate_bn or 0)
        worst = min((c for c in report["per_class"] if c["accuracy"] is not None), key=lambda c: c["accuracy"])
        print(f"{report['identity']['run']} step {report['identity']['step']} ({args.model}) on {report['split']}: "
              f"accuracy {100 * report['accuracy']:.2f}% ({report['correct']}/{report['images']}), "
              f"ECE {report['ece']:.4f}, worst class {worst['class']} {100 * worst['accuracy']:.1f}%"
              + (f" (BN statistics re-estimated on {report['bn_recalibration']['images']} training images; "
                 f"{100 * report['bn_recalibration']['accuracy_trained_statistics']:.2f}% with the trained ones)"
                 if "bn_recalibration" in report else "")
              + f"; {report['out']}/eval.json")
        return 0

    return run_cli(parser.prog, body)


__all__ = ["build_parser", "check_same_classes", "evaluate", "expected_calibration_error", "main", "summarise"]
