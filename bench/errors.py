"""The error family of the benchmarks: bad command-line values and unreadable inputs."""

from __future__ import annotations

from remixmatch.common.errors import RemixMatchError


class BenchError(RemixMatchError, ValueError):
    """A benchmark cannot run with what it was given; one line saying what and where."""


class BenchInputError(BenchError):
    """A command-line value or input the benchmark cannot run with; shown as one line."""
