"""The package installed the way a user installs it (``pip install .``, not editable) finds its data
through flags and environment variables alone: ``rmm-bench aug --quick --shards DIR`` and
``rmm-bench views --shards DIR`` run against shards its own ``prep-cifar10`` made.

The fresh venv sees this venv's site-packages through a ``.pth`` line, for torch, Numba and the other
dependencies; the editable install's finder is not imported from there (a ``.pth`` file inside a
directory that a ``.pth`` line adds is never executed), which the test checks. Numba caches the CPU
kernels next to their sources, so a fresh install would compile them again (over a minute on 2
cores): the checkout's compiled kernels are copied next to the installed sources first. Numba stamps
them with a digest of the kernel sources (kernels/jit_cache.py), so they are used only when the
installed sources are the same, and a stale or missing cache merely costs the compile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from datasets_helpers import cifar_archive

REPO = Path(__file__).resolve().parents[1]
ENV_VARS = ("REMIXMATCH_SHARDS", "REMIXMATCH_CIFAR10_JPG", "PYTHONPATH")


def _source_copy(dest: Path) -> Path:
    """The project's sources alone, so that the build writes nothing into the checkout."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for folder in config["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _run(args: list, cwd: Path, env: dict) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args[0]}: {done.stderr[-3000:]}"
    return done.stdout


def _copy_numba_cache(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in [*src.glob("*.nbi"), *src.glob("*.nbc")]:
        shutil.copy2(path, dest / path.name)


@pytest.mark.slow
def test_installed_bench_runs_on_shards_it_made(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          _source_copy(tmp_path / "src")], tmp_path, env)

    where = json.loads(_run([python, "-c", "import json, sys, remixmatch.bench, remixmatch.common; "
                             "print(json.dumps([remixmatch.bench.__file__, remixmatch.common.__file__, "
                             "[m for m in sys.modules if 'editable' in m]]))"], tmp_path, env))
    assert all(Path(path).is_relative_to(site / "remixmatch") for path in where[:2]), where
    assert where[2] == [], "the checkout's editable finder leaked into the fresh venv"

    _copy_numba_cache(REPO / "kernels" / "__pycache__", site / "remixmatch" / "kernels" / "__pycache__")

    archive, _ = cifar_archive(tmp_path, per_batch=20)  # 100 train rows: more than aug's 64 images
    shards, out = tmp_path / "my-shards", tmp_path / "bench-out"
    _run([bin_dir / "prep-cifar10", "--source", archive, "--out", shards, "--no-progress"], tmp_path, env)
    _run([bin_dir / "rmm-bench", "aug", "--quick", "--device", "cpu", "--shards", shards, "--out", out], tmp_path, env)
    _run([bin_dir / "rmm-bench", "views", "--shards", shards, "--out", out / "views.png", "--images", "2", "--k", "2"],
         tmp_path, env)
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["images"] == "shards" and report["inputs"]["source"] == "cifar10 (my-shards)"
    assert any(r["backend"] == "numba-cpu" and "views_per_s" in r for r in report["results"])
    assert (out / "views.png").stat().st_size > 0
