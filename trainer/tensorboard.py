"""``rmm-train --tensorboard``: metrics.jsonl's records, also as TensorBoard event files in the run
directory (``tensorboard --logdir RUN_DIR``), written by the rank that writes metrics.jsonl (rank 0).

Every numeric field of a record becomes a scalar at the record's step: ``train/<field>`` for the
logged steps (the loss terms, kimg/s, the data-wait share, seconds per step, and whatever else the
step reports), ``eval/<field>`` for the evaluations (``acc_ema``, ``acc_raw``). The CTAugment
heatmap drawn at each evaluation goes in as the image ``cta/heatmap``. A resumed run hides the
events past its checkpoint, as metrics.jsonl drops those lines. Needs the ``tensorboard`` extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ConfigError
from .progress import MetricsLog

_NOT_SCALARS = ("step", "eval")


class TensorBoardMetricsLog(MetricsLog):
    def __init__(self, path: Path, enabled: bool = True):
        super().__init__(path, enabled)
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise ConfigError("--tensorboard needs the tensorboard package: pip install "
                                  "'remixmatch[tensorboard]'") from None
        self._writer = None
        self._purge_step = None  # events at or past this step are hidden (written before a resume)

    def _open(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path.parent), purge_step=self._purge_step)
        return self._writer

    def truncate_after(self, step: int) -> None:
        super().truncate_after(step)
        self._purge_step = step + 1

    def write(self, record: dict) -> None:
        super().write(record)
        if not self.enabled:
            return
        writer = self._open()
        group = "eval" if record.get("eval") else "train"
        for name, value in record.items():
            if name not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f"{group}/{name}", value, record["step"])
        writer.flush()

    def image(self, tag: str, png: Path, step: int) -> None:
        """A PNG written beside the log (the CTAugment heatmap), as an image at ``step``."""
        if not self.enabled or not Path(png).is_file():
            return
        from PIL import Image

        with Image.open(png) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        writer = self._open()
        writer.add_image(tag, pixels, step, dataformats="HWC")
        writer.flush()


def metrics_log(path: Path, enabled: bool, tensorboard: bool) -> MetricsLog:
    """metrics.jsonl, and with ``tensorboard`` the same records as event files beside it."""
    return TensorBoardMetricsLog(path, enabled) if tensorboard else MetricsLog(path, enabled)


__all__ = ["TensorBoardMetricsLog", "metrics_log"]
