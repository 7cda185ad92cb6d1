"""The one exception type for bad input to the dataset tools.

Every expected failure (a missing source, a corrupt archive, a shard whose bytes changed, an
impossible labeled subset...) raises `PrepError` with a single-line message that names what is
wrong and where; the command-line entry points print it as ``prog: error: <message>`` and exit
non-zero without a traceback. Anything else that escapes is a bug, and keeps its traceback.
"""

from __future__ import annotations


class PrepError(Exception):
    """A user-facing error: str() is the whole one-line message."""

    def __init__(self, message: str):
        # Keep the message on one line whatever the caller passed (e.g. an OS error text).
        super().__init__(" ".join(str(message).split()))


class ShardError(PrepError):
    """A shard directory that cannot be read or does not match its manifest."""


class VerifyError(ShardError):
    """Shards whose bytes no longer match the manifest's sizes and sha256 digests."""
