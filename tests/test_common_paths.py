"""The data path resolver: the flag, else the environment variable, else the default."""

from __future__ import annotations

from pathlib import Path

from remixmatch.common.paths import DataPath, resolve_path

ENV = "REMIXMATCH_TEST_PATH"


def test_flag_wins_over_variable_and_default(monkeypatch):
    monkeypatch.setenv(ENV, "/from/env")
    found = resolve_path("from/flag", "--data", ENV, default="/from/default")
    assert found == DataPath(Path("from/flag"), "--data") and str(found) == "--data from/flag"


def test_variable_wins_over_default(monkeypatch):
    monkeypatch.setenv(ENV, "/from/env")
    found = resolve_path(None, "--data", ENV, default="/from/default")
    assert found == DataPath(Path("/from/env"), ENV) and str(found) == f"{ENV}=/from/env"


def test_default_when_neither_and_none_without_one(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    found = resolve_path(None, "--data", ENV, default="/from/default")
    assert found == DataPath(Path("/from/default"), "default") and str(found) == "/from/default"
    assert resolve_path(None, "--data", ENV) is None


def test_an_empty_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv(ENV, "")
    assert resolve_path(None, "--data", ENV) is None


def test_library_code_never_locates_data_through_its_own_files():
    # kernels/ is left out: its JIT cache is keyed by its own sources, which is not data.
    repo = Path(__file__).resolve().parents[1]
    offenders = [f"{folder}/{source.name}" for folder in ("bench", "common", "datasets_prep", "pipeline", "trainer")
                 for source in sorted((repo / folder).glob("*.py")) if "__file__" in source.read_text(encoding="utf-8")]
    assert not offenders, offenders
