"""``rmm-export``: a trained model in a file that runs without this project.

    rmm-export RUN_DIR --format torchscript|onnx|safetensors --out PATH [--model ema|raw]
               [--checkpoint PATH] [--overwrite]

- ``torchscript`` (``torch.jit.load``) and ``onnx`` (onnxruntime; the ``onnx`` extra) hold the graph
  of :class:`~remixmatch.trainer.inference.ImageClassifier`: input ``images``, a uint8 batch
  (N, H, W, 3) of any N, output ``logits`` (N, classes) float32. Conversion and normalisation are
  inside the graph, so a caller hands over decoded RGB pixels and nothing else.
- ``safetensors``: the weights (the classifier, its batch-norm statistics, the normalisation buffers
  and the rotation head) for a caller that builds the network itself.

Every format carries the same metadata (:func:`export_metadata`): class names, image size, the input
and output contract, and the training run's identity (run directory, checkpoint and its sha256,
step, EMA or raw, dataset fingerprint, config). TorchScript keeps it as the extra file
``metadata.json``, ONNX in ``metadata_props`` (key ``remixmatch``, the same JSON), safetensors in
the header's ``__metadata__`` (key ``remixmatch``). Files are written under a temporary name beside
``--out`` and renamed when complete; an existing ``--out`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import torch

from remixmatch.common.atomic import atomic_target
from remixmatch.common.cli import OneLineParser, run_cli

from .inference import MODELS, TrainedModel, UseError, load_trained

FORMATS = ("torchscript", "onnx", "safetensors")
EXPORT_VERSION = 1
METADATA_KEY = "remixmatch"  # ONNX metadata_props and the safetensors __metadata__ key
TORCHSCRIPT_METADATA = "metadata.json"  # the TorchScript extra file
ONNX_OPSET = 18


def export_metadata(trained: TrainedModel, fmt: str) -> dict:
    height, width, channels = trained.image_shape
    return {"export_version": EXPORT_VERSION, "format": fmt,
            "class_names": list(trained.class_names), "num_classes": len(trained.class_names),
            "image_size": [height, width], "channels": channels,
            "input": {"name": "images", "dtype": "uint8", "layout": "NHWC", "shape": ["N", height, width, channels],
                      "note": "RGB pixels 0..255; the normalisation is inside the model"},
            "output": {"name": "logits", "dtype": "float32", "shape": ["N", len(trained.class_names)]},
            "identity": trained.identity(), "config": trained.config.to_dict()}


def check_out(out: Path, overwrite: bool) -> None:
    out = Path(out)
    if out.is_dir():
        raise UseError(f"--out {out} is a directory; name the export file")
    if out.exists() and not overwrite:
        raise UseError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UseError(f"--out {out}: no such directory {out.parent}")


def _example(trained: TrainedModel, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, *trained.image_shape), dtype=torch.uint8, generator=generator)


def write_torchscript(trained: TrainedModel, path: Path, metadata: dict) -> None:
    import warnings

    classifier = trained.classifier().cpu()
    # torch 2.13 marks torch.jit as deprecated in favour of torch.export, whose files need torch's
    # export runtime; a TorchScript file still loads with a bare torch.jit.load anywhere, which is the point.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(classifier, (_example(trained),), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata, indent=1)})


def write_onnx(trained: TrainedModel, path: Path, metadata: dict) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as error:
        raise UseError(f"--format onnx needs the onnx extra ({error.name} is not installed): "
                       "pip install 'remixmatch[onnx]'") from None
    import contextlib
    import io

    classifier = trained.classifier().cpu()
    batch = torch.export.Dim("batch")
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():  # the exporter narrates each stage
        program = torch.onnx.export(classifier, (_example(trained),), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    model.doc_string = f"{trained.run_dir.resolve().name} step {trained.step} ({trained.which}): uint8 NHWC -> logits"
    onnx.save(model, str(path))


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(trained: TrainedModel, path: Path, metadata: dict) -> None:
    """The safetensors layout (an 8-byte little-endian header size, the JSON header, then every
    tensor's bytes in header order, contiguous): a few lines, so no package is needed to write it."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in sorted(trained.model.state_dict().items())}
    header, offset = {"__metadata__": {METADATA_KEY: json.dumps(metadata)}}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for tensor in tensors.values():
            # Little-endian raw bytes, as the format stores them (every supported machine is little-endian).
            handle.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


WRITERS = {"torchscript": write_torchscript, "onnx": write_onnx, "safetensors": write_safetensors}


def export(run_dir: Path, fmt: str, out: Path, *, which: str = "ema", checkpoint: Path | None = None,
           overwrite: bool = False) -> dict:
    if fmt not in FORMATS:
        raise UseError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    check_out(out, overwrite)
    trained = load_trained(run_dir, checkpoint=checkpoint, which=which, device="cpu")
    metadata = export_metadata(trained, fmt)
    with atomic_target(out) as tmp:
        WRITERS[fmt](trained, tmp, metadata)
        check_out(out, overwrite)  # something may have appeared there meanwhile
    return metadata


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="rmm-export", description="Export a trained run's model: TorchScript or ONNX "
                           "(uint8 NHWC images in, logits out, normalisation inside), or safetensors weights.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="an rmm-train --out directory")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the export format")
    parser.add_argument("--out", type=Path, required=True, help="the file to write")
    parser.add_argument("--model", choices=MODELS, default="ema", help="the EMA weights (default) or the raw ones")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint file (default: the run's newest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def body() -> int:
        args = parser.parse_args(argv)
        metadata = export(args.run_dir, args.format, args.out, which=args.model, checkpoint=args.checkpoint,
                          overwrite=args.overwrite)
        identity = metadata["identity"]
        print(f"{args.out}: {args.format}, {identity['run']} step {identity['step']} ({identity['model']}), "
              f"{metadata['num_classes']} classes, {metadata['image_size'][0]}x{metadata['image_size'][1]} uint8 NHWC "
              "in, logits out")
        return 0

    return run_cli(parser.prog, body)


__all__ = ["EXPORT_VERSION", "FORMATS", "METADATA_KEY", "TORCHSCRIPT_METADATA", "build_parser", "export",
           "export_metadata", "main"]
