"""rmm-export: TorchScript and ONNX exports run in a process that cannot import remixmatch and give
the project's logits; the metadata names the classes, the image size and the run; safetensors
holds the weights; bad input is one line and exit 2; nothing is half written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from datasets_helpers import assert_one_line_error, run_main
from remixmatch.trainer.checkpoint import checkpoint_paths
from remixmatch.trainer.export import main
from remixmatch.trainer.inference import load_trained
from remixmatch.trainer.predict import main as predict_main
from use_helpers import pipeline_shards, smoke_run  # noqa: F401  (session fixtures)

PROG = "rmm-export"
# Largest |logit difference| allowed between an export and the project's model on the same images
# (float32 both; the ONNX graph may fuse or reorder a few sums).
LOGIT_TOLERANCE = 1e-4

# Runs in a child process with remixmatch made unimportable: the export must stand alone.
_STANDALONE = textwrap.dedent("""
    import json, sys
    sys.modules["remixmatch"] = None  # any import of the project now fails
    try:
        import remixmatch.trainer  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("remixmatch is importable")
    import numpy as np
    fmt, path, images_path, out_path = sys.argv[1:]
    images = np.load(images_path)
    if fmt == "torchscript":
        import torch
        extra = {"metadata.json": ""}
        model = torch.jit.load(path, _extra_files=extra)
        logits = model(torch.from_numpy(images)).detach().numpy()
        metadata = json.loads(extra["metadata.json"])
    else:
        import onnx, onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"images": images})[0]
        props = {p.key: p.value for p in onnx.load(path).metadata_props}
        metadata = json.loads(props["remixmatch"])
    np.save(out_path, logits)
    print(json.dumps(metadata))
""")


def _standalone_logits(fmt, path, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "standalone.py"
    script.write_text(_STANDALONE)
    done = subprocess.run([sys.executable, "-I", str(script), fmt, str(path), str(tmp_path / "images.npy"),
                           str(tmp_path / "logits.npy")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return np.load(tmp_path / "logits.npy"), json.loads(done.stdout.strip().splitlines()[-1])


def _project_logits(run, images, which="ema"):
    trained = load_trained(run, which=which)
    with torch.no_grad():
        return trained.classifier()(torch.from_numpy(images)).numpy(), trained


def _images(n=5, seed=1):
    # A batch size other than the one traced: the batch dimension is dynamic.
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _check_metadata(metadata, trained, fmt):
    assert metadata["format"] == fmt
    assert metadata["class_names"] == list(trained.class_names) and metadata["class_names"][0] == "airplane"
    assert metadata["image_size"] == [32, 32]
    assert metadata["input"]["dtype"] == "uint8" and metadata["input"]["layout"] == "NHWC"
    identity = metadata["identity"]
    assert identity["step"] == 20 and identity["model"] == trained.which
    assert identity["checkpoint"] == checkpoint_paths(trained.run_dir)[-1].name
    assert identity["dataset_fingerprint"] == trained.dataset["fingerprint"]


@pytest.mark.parametrize("which", ["ema", "raw"])
def test_torchscript_export_runs_without_the_project_and_matches(smoke_run, tmp_path, capsys, which):
    path = tmp_path / "model.pt"
    rc, out, err = run_main(main, [smoke_run, "--format", "torchscript", "--out", path, "--model", which], capsys)
    assert rc == 0, err
    assert "torchscript" in out
    images = _images()
    expected, trained = _project_logits(smoke_run, images, which)
    logits, metadata = _standalone_logits("torchscript", path, images, tmp_path)
    assert logits.shape == (5, 10)
    assert np.abs(logits - expected).max() <= LOGIT_TOLERANCE
    _check_metadata(metadata, trained, "torchscript")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ema_and_raw_exports_differ(smoke_run):
    images = _images()
    ema, _ = _project_logits(smoke_run, images, "ema")
    raw, _ = _project_logits(smoke_run, images, "raw")
    assert np.abs(ema - raw).max() > 1e-3


def test_onnx_export_runs_in_onnxruntime_without_the_project_and_matches(smoke_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra: pip install 'remixmatch[onnx]')")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (the onnx extra: pip install 'remixmatch[onnx]')")
    path = tmp_path / "model.onnx"
    rc, _, err = run_main(main, [smoke_run, "--format", "onnx", "--out", path], capsys)
    assert rc == 0, err
    images = _images(n=3)
    expected, trained = _project_logits(smoke_run, images)
    logits, metadata = _standalone_logits("onnx", path, images, tmp_path)
    assert np.abs(logits - expected).max() <= LOGIT_TOLERANCE
    _check_metadata(metadata, trained, "onnx")
    # rmm-predict runs the ONNX file too (onnxruntime), reading the class names from its metadata.
    from PIL import Image

    Image.fromarray(images[0]).save(tmp_path / "one.png")
    rc, out, err = run_main(predict_main, [path, tmp_path / "one.png"], capsys)
    assert rc == 0, err
    row = out.splitlines()[1].split(",")
    assert row[1] == trained.class_names[int(expected[0].argmax())]


def test_safetensors_export_holds_the_weights_and_metadata(smoke_run, tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.torch", reason="safetensors is not installed (the dev extra)")
    path = tmp_path / "model.safetensors"
    rc, _, err = run_main(main, [smoke_run, "--format", "safetensors", "--out", path], capsys)
    assert rc == 0, err
    trained = load_trained(smoke_run)
    tensors = safetensors.load_file(str(path))  # the library's reader is the oracle for our writer
    expected = trained.model.state_dict()
    assert tensors.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensors[name], tensor), name
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["remixmatch"])
    _check_metadata(metadata, trained, "safetensors")


def test_bad_inputs_are_one_line_and_exit_2(smoke_run, tmp_path, capsys):
    existing = tmp_path / "model.pt"
    existing.write_bytes(b"keep me")
    rc, _, err = run_main(main, [smoke_run, "--format", "torchscript", "--out", existing], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "exists", "--overwrite")
    assert existing.read_bytes() == b"keep me"
    rc, _, err = run_main(main, [smoke_run, "--format", "torchscript", "--out", existing, "--overwrite"], capsys)
    assert rc == 0, err
    assert existing.read_bytes() != b"keep me"
    rc, _, err = run_main(main, [smoke_run, "--format", "tflite", "--out", tmp_path / "m.tflite"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "tflite")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.json").write_text((smoke_run / "config.json").read_text())
    rc, _, err = run_main(main, [empty, "--format", "safetensors", "--out", tmp_path / "x.safetensors"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "holds no checkpoint")
    assert not (tmp_path / "x.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def _docs_example() -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "after-training.md").read_text()
    block = text.split("<!-- torchscript-example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in block.splitlines() if line.strip()]) <= 10, "docs/after-training.md promises 10 lines"
    return block


def test_docs_torchscript_example_runs_without_the_project(smoke_run, tmp_path, capsys):
    from PIL import Image

    assert run_main(main, [smoke_run, "--format", "torchscript", "--out", tmp_path / "model.pt"], capsys)[0] == 0
    image = _images(n=1, seed=3)[0]
    Image.fromarray(image).resize((40, 40)).save(tmp_path / "cat.png")  # another size: the example resizes
    script = tmp_path / "example.py"
    script.write_text('import sys\nsys.modules["remixmatch"] = None\n' + _docs_example())
    done = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    name, probability = done.stdout.split()
    from PIL import Image as PILImage

    resized = np.asarray(PILImage.open(tmp_path / "cat.png").convert("RGB").resize((32, 32), PILImage.Resampling.BICUBIC))
    expected, trained = _project_logits(smoke_run, resized[None].copy())
    p = torch.softmax(torch.from_numpy(expected), dim=1)[0]
    assert name == trained.class_names[int(p.argmax())]
    assert abs(float(probability) - float(p.max())) < 1e-5


def test_onnx_without_the_extra_is_one_line_exit_2(smoke_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    rc, _, err = run_main(main, [smoke_run, "--format", "onnx", "--out", tmp_path / "m.onnx"], capsys)
    assert rc == 2
    assert_one_line_error(err, PROG, "--format onnx needs the onnx extra", "remixmatch[onnx]")
    assert list(tmp_path.iterdir()) == []
