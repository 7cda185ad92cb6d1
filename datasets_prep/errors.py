"""The error family of the dataset tools.

Every expected failure (a missing source, a corrupt archive, a shard whose bytes changed, an
impossible labeled subset...) raises `PrepError` with a single-line message that names what is
wrong and where; the command-line entry points print it as ``prog: error: <message>`` and exit
non-zero without a traceback. Anything else that escapes is a bug, and keeps its traceback.
"""

from __future__ import annotations

from remixmatch.common.errors import EXIT_FAILED, RemixMatchError


class PrepError(RemixMatchError):
    """A user-facing error of the dataset tools: str() is the whole one-line message."""


class ShardError(PrepError):
    """A shard directory that cannot be read or does not match its manifest."""


class VerifyError(ShardError):
    """Shards whose bytes no longer match the manifest's sizes and sha256 digests."""

    exit_code = EXIT_FAILED  # the check ran and found changed files: not a usage error
