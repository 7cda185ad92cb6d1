"""Where data comes from: the command's flag, else an environment variable, else a default.

Library code never locates data relative to its own files: an installed package has no checkout
around it. The variables:

- ``REMIXMATCH_SHARDS``: a shard directory (``prep-cifar10 --out``) for ``rmm-bench aug`` and
  ``rmm-bench views`` when ``--shards`` is not given;
- ``REMIXMATCH_CIFAR10_JPG``: the CIFAR-10 JPEG export that ``rmm-bench prep`` times when
  ``--jpeg-tree`` is not given (without either, that row is skipped).

An empty variable counts as unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SHARDS_ENV = "REMIXMATCH_SHARDS"
CIFAR10_JPG_ENV = "REMIXMATCH_CIFAR10_JPG"


@dataclass(frozen=True)
class DataPath:
    path: Path
    origin: str  # the flag or the variable it came from, or "default"

    def __str__(self) -> str:
        """How error messages name it, e.g. ``--shards data/c10`` or ``REMIXMATCH_SHARDS=data/c10``."""
        if self.origin.startswith("--"):
            return f"{self.origin} {self.path}"
        if self.origin == "default":
            return str(self.path)
        return f"{self.origin}={self.path}"


def resolve_path(value: str | os.PathLike | None, flag: str, env: str,
                 default: str | os.PathLike | None = None) -> DataPath | None:
    """``value`` (the flag's) if given, else ``$env`` if set and non-empty, else ``default``
    (None when there is none)."""
    if value is not None:
        return DataPath(Path(value), flag)
    from_env = os.environ.get(env, "")
    if from_env:
        return DataPath(Path(from_env), env)
    if default is not None:
        return DataPath(Path(default), "default")
    return None
