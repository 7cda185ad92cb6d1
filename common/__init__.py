"""remixmatch.common: what every layer shares and nothing heavy (no NumPy, pyarrow or torch).

- :mod:`~remixmatch.common.errors`: ``RemixMatchError``, the base of every layer's error family, and
  the exit status each kind of failure means;
- :mod:`~remixmatch.common.cli`: the one-line-error argument parser, ``positive_int`` and
  ``run_cli``, which turns the error family into ``prog: error: <message>`` and an exit status;
- :mod:`~remixmatch.common.paths`: where data comes from: a flag, else an environment variable, else
  a default.
"""

from .errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, RemixMatchError

__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_FAILED", "EXIT_INTERRUPTED", "RemixMatchError"]
