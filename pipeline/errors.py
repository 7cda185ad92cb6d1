"""The error family of the view pipeline."""

from __future__ import annotations

from remixmatch.common.errors import RemixMatchError


class PipelineError(RemixMatchError, ValueError):
    """A user-facing error of the pipeline (bad batch size, K, missing DALI...): one line."""
