"""What a run tells its user: a live line on a terminal, plain lines otherwise, and metrics.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from remixmatch.common.atomic import atomic_write_text


def _fmt(value, digits=4):
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


class Progress:
    """rich's live status on a terminal (step, kimg/s, losses, data wait, last accuracy); one plain
    line per logged step when stderr is not a terminal (CI, nohup, a pipe)."""

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total = total_steps
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.last_accuracy: str = "-"
        self._status = None
        if self.live:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
            self._status = self._console.status("starting", spinner="dots")
            self._status.start()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.live:
            self._console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        losses = " ".join(f"{k.removeprefix('loss_')} {_fmt(record[k])}" for k in
                          ("loss", "loss_x", "loss_u", "loss_kl", "loss_rot", "mask_rate", "pseudo_acc") if k in record)
        line = (f"step {record['step']}/{self.total}  {record['kimg_per_s']:.3f} kimg/s  {losses}  "
                f"data wait {100 * record['data_wait']:.0f}%  acc {self.last_accuracy}")
        if self.live:
            self._status.update(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def evaluation(self, record: dict) -> None:
        self.last_accuracy = f"{100 * record['acc_ema']:.2f}% (ema) {100 * record['acc_raw']:.2f}% (raw)"
        trained = ""
        if "acc_ema_trained_bn" in record:  # --eval-recalibrate-bn: which figures are which
            trained = (f" with BN statistics re-estimated; {100 * record['acc_ema_trained_bn']:.2f}% (ema) "
                       f"{100 * record['acc_raw_trained_bn']:.2f}% (raw) with the trained ones")
        self.message(f"eval step {record['step']}: accuracy {self.last_accuracy}{trained}")

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step and per evaluation, flushed line by line."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drops records past ``step`` (written after the checkpoint a resume starts from), so a
        resumed run's log reads as if the run had never stopped."""
        if not (self.enabled and self.path.exists()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def image(self, tag: str, png: Path, step: int) -> None:
        """A picture of the run at ``step`` (the CTAugment heatmap); only the TensorBoard log keeps them."""
