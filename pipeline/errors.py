"""The one exception type for bad input to the view pipeline."""

from __future__ import annotations


class PipelineError(ValueError):
    """A user-facing error of the pipeline (bad batch size, K, missing DALI...): one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
