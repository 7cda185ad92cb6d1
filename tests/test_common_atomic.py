"""common/atomic.py: a file appears whole under its name, or the old one stays as it was."""

from __future__ import annotations

import json
import os

import pytest

from remixmatch.common import atomic
from remixmatch.common.atomic import (
    atomic_target, atomic_write_bytes, atomic_write_json, atomic_write_text, temporary_sibling,
)


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_temporary_name_is_a_hidden_sibling_named_by_the_process(tmp_path):
    tmp = temporary_sibling(tmp_path / "summary.json")
    assert tmp.parent == tmp_path and tmp.name == f".summary.json.tmp-{os.getpid()}"


def test_writes_replace_the_file_and_leave_nothing_else(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    assert atomic_write_text(path, "new text\n") == path
    assert path.read_text() == "new text\n"
    assert atomic_write_bytes(tmp_path / "blob.bin", b"\x00\xff") == tmp_path / "blob.bin"
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\xff"
    assert _names(tmp_path) == ["blob.bin", "out.txt"]


def test_json_is_indented_by_one_with_a_final_newline_and_takes_dump_options(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert path.read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=1) + "\n"
    atomic_write_json(path, {"b": 1, "a": 2}, indent=2, sort_keys=True)
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(TypeError):  # not JSON: nothing written, the old file stays
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 2, "b": 1}
    assert _names(tmp_path) == ["a.json"]


def test_the_rename_comes_only_after_the_whole_file_is_written(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    path.write_text("old")
    seen = []
    real_replace = os.replace

    def watching_replace(src, dst):
        seen.append((open(src).read(), open(dst).read()))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", watching_replace)
    with atomic_target(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write("first half, ")
            assert path.read_text() == "old"  # a reader meanwhile sees the old file whole
            handle.write("second half")
    assert seen == [("first half, second half", "old")]
    assert path.read_text() == "first half, second half"


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_removes_the_temporary_file_and_keeps_the_old_one(tmp_path, error):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old weights")
    with pytest.raises(type(error)):
        with atomic_target(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise error
    assert path.read_bytes() == b"old weights"
    assert _names(tmp_path) == ["model.pt"]


def test_a_block_that_writes_nothing_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_target(tmp_path / "never.txt"):
            pass
    assert _names(tmp_path) == []
