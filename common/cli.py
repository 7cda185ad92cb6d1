"""What every command line shares: one-line usage errors, positive integers, and the mapping from
errors to ``prog: error: <message>`` and an exit status.

Exit statuses (:mod:`remixmatch.common.errors`): 0 success; 2 bad input (a usage error or any
:class:`RemixMatchError`, or an ``OSError`` such as a full disk or a denied ``--out``); 1 a check
that found a fault or a dead worker; 3 a diverged run; 130 interrupted. Only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from .errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, RemixMatchError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (status 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def fail(prog: str, message: str, status: int = EXIT_BAD_INPUT) -> int:
    """Prints ``prog: error: message`` (one line) to stderr; returns ``status``."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def run_cli(prog: str, body: Callable[[], int], *, interrupted: str = "interrupted") -> int:
    """Runs a command's body and returns its exit status; what the user can fix becomes one line.

    ``interrupted`` is the line Ctrl-C prints (say what was kept). argparse's exits (``--help``,
    usage errors) come back as their status, so an entry point can be called as a function.
    """
    try:
        return body()
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        return fail(prog, str(exit_.code), EXIT_FAILED)
    except RemixMatchError as error:
        return fail(prog, str(error), error.exit_code)
    except KeyboardInterrupt:
        return fail(prog, interrupted, EXIT_INTERRUPTED)
    except OSError as error:  # a full disk, a denied --out, a file that vanished
        where = f"{error.filename}: " if error.filename else ""
        return fail(prog, f"{where}{error.strerror or error}")
