"""The command-line helpers every command uses: one-line usage errors, positive integers, and the
error family mapped to ``prog: error: <message>`` and an exit status."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from remixmatch.common.cli import OneLineParser, positive_int, run_cli
from remixmatch.common.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED
from remixmatch.datasets_prep import ShardError, VerifyError
from remixmatch.pipeline import PipelineError
from remixmatch.trainer.run import Diverged


def _raise(error: BaseException):
    def body() -> int:
        raise error
    return body


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("error, status", [
    (ShardError("shards/: no manifest.json"), EXIT_BAD_INPUT),
    (PipelineError("K must be\nat least 0"), EXIT_BAD_INPUT),
    (VerifyError("train-0-of-1.arrow: sha256 differs"), EXIT_FAILED),
    (Diverged("step 7: loss term xe is nan"), EXIT_DIVERGED),
])
def test_the_family_becomes_one_line_and_its_exit_code(capsys, error, status):
    assert run_cli("tool", _raise(error)) == status
    assert _one_line(capsys) == f"tool: error: {' '.join(str(error).split())}"


def test_os_errors_name_the_file(capsys):
    assert run_cli("tool", _raise(PermissionError(13, "Permission denied", "/out/x"))) == EXIT_BAD_INPUT
    assert _one_line(capsys) == "tool: error: /out/x: Permission denied"


def test_interrupt_says_what_was_kept(capsys):
    assert run_cli("tool", _raise(KeyboardInterrupt()), interrupted="interrupted; nothing was written") == \
        EXIT_INTERRUPTED
    assert _one_line(capsys) == "tool: error: interrupted; nothing was written"


def test_argparse_exits_come_back_as_statuses(capsys):
    parser = OneLineParser(prog="tool")
    parser.add_argument("--n", type=positive_int)
    assert run_cli("tool", lambda: parser.parse_args(["--help"]) and 5) == 0
    assert run_cli("tool", lambda: parser.parse_args(["--n", "0"]) and 5) == EXIT_BAD_INPUT
    assert _one_line(capsys) == "tool: error: argument --n: must be >= 1, got 0 (see tool --help)"
    assert run_cli("tool", lambda: parser.parse_args(["--n", "3"]).n) == 3


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_cli("tool", lambda: 1 // 0)
    with pytest.raises(ValueError):  # a builtin ValueError is not the family: a bug, not bad input
        run_cli("tool", _raise(ValueError("internal")))


@pytest.mark.parametrize("text, message", [("x", "expected an integer, got 'x'"), ("0", "must be >= 1, got 0"),
                                           ("-2", "must be >= 1, got -2")])
def test_positive_int_refuses(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        positive_int(text)
    assert positive_int("12") == 12


def test_every_command_parses_with_the_one_parser():
    from remixmatch.bench import cli as bench_cli, prep, views
    from remixmatch.trainer import cli as trainer_cli, evaluate, export, predict

    for build in (bench_cli.build_parser, prep.build_parser, views.build_parser, trainer_cli.build_parser,
                  evaluate.build_parser, export.build_parser, predict.build_parser):
        assert isinstance(build(), OneLineParser)
    assert bench_cli.OneLineParser is OneLineParser and bench_cli.positive_int is positive_int


def test_bench_imports_without_pyarrow_or_the_datasets_code():
    code = """
import sys
sys.modules["pyarrow"] = None  # any import of pyarrow now fails
from remixmatch.bench import aug, cli, images, prep, views
assert cli.main(["aug", "--help"]) == 0
assert cli.main(["views", "--help"]) == 0
loaded = sorted(m for m in sys.modules if m.startswith(("remixmatch.datasets_prep", "torch")))
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
