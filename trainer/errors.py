"""The error family of the trainer; its members live beside the code that raises them
(``ConfigError`` in config.py, ``CheckpointError`` in checkpoint.py, ``RunError`` and ``Diverged``
in run.py)."""

from __future__ import annotations

from remixmatch.common.errors import RemixMatchError


class TrainerError(RemixMatchError):
    """A run that cannot be configured, started, resumed or continued; one line."""
