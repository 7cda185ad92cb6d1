"""The base class of every user-facing error, and the exit status each kind of failure means.

Each layer raises one family, all derived from :class:`RemixMatchError`:

- ``remixmatch.datasets_prep``: ``PrepError`` (``ShardError``, ``VerifyError``);
- ``remixmatch.kernels``: ``AugmentInputError``;
- ``remixmatch.pipeline``: ``PipelineError``;
- ``remixmatch.trainer``: ``TrainerError`` (``ConfigError``, ``CheckpointError``, ``RunError``,
  ``Diverged``);
- ``remixmatch.bench``: ``BenchError`` (``ImageInputError``, ``AugInputError``, ``BenchInputError``).

The families keep their historical builtin bases too (``ValueError``, ``RuntimeError``), so an
``except ValueError`` written against one still catches it.

str() of any of them is the whole message, on one line. ``exit_code`` is the status a command
exits with when the error reaches it (:func:`remixmatch.common.cli.run_cli`): 2 for bad input,
unless a subclass says otherwise (``VerifyError`` 1, ``Diverged`` 3).
"""

from __future__ import annotations

EXIT_FAILED = 1  # a check ran and found a fault (rmm-shards verify), or a worker process died
EXIT_BAD_INPUT = 2  # the input cannot work: a missing file, a bad value, a contradiction
EXIT_DIVERGED = 3  # training stopped on a non-finite loss
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class RemixMatchError(Exception):
    """A user-facing error: str() is the whole one-line message, ``exit_code`` the command's status."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: object = ""):
        # One line whatever the caller passed (an OS error text, a multi-line library message).
        super().__init__(" ".join(str(message).split()))
