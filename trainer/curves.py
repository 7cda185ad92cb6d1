"""Learning curves drawn from metrics.jsonl (matplotlib, the ``plots`` extra).

- :func:`draw_run_curves`: a run's ``curves.png``, redrawn at each evaluation: accuracy (EMA and
  raw) and every loss term against steps;
- :func:`draw_runs_side_by_side`: several runs (``rmm-bench efficacy``'s variants) in one chart, a
  column per run on shared axes, so the variants compare at a glance.

Both return None when the picture was written, else why not (no matplotlib, nothing logged yet).
"""

from __future__ import annotations

import json
from pathlib import Path

from remixmatch.common.atomic import atomic_target

LOSS_TERMS = ("loss", "loss_x", "loss_u", "loss_kl", "loss_rot")  # the step records' loss fields
NO_MATPLOTLIB = "matplotlib is not installed (pip install 'remixmatch[plots]')"


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(step records, evaluation records) of a metrics.jsonl; a line cut short by a kill is skipped."""
    steps, evaluations = [], []
    if not Path(path).is_file():
        return steps, evaluations
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        (evaluations if record.get("eval") else steps).append(record)
    return steps, evaluations


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_run(acc_ax, loss_ax, steps: list[dict], evaluations: list[dict]) -> None:
    if evaluations:
        x = [e["step"] for e in evaluations]
        acc_ax.plot(x, [100 * e["acc_ema"] for e in evaluations], marker="o", ms=3, label="EMA")
        acc_ax.plot(x, [100 * e["acc_raw"] for e in evaluations], marker="o", ms=3, label="raw")
        acc_ax.legend(fontsize=7)
    acc_ax.set_ylabel("accuracy %")
    acc_ax.grid(alpha=0.3)
    for term in LOSS_TERMS:
        points = [(r["step"], r[term]) for r in steps if term in r]
        if points and any(v != 0 for _, v in points):  # an ablated term stays at 0: not worth a line
            loss_ax.plot(*zip(*points), label=term if term != "loss" else "total", lw=1.2 if term == "loss" else 0.9)
    if loss_ax.lines:
        loss_ax.legend(fontsize=7)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)


def _save(fig, plt, path: Path) -> None:
    try:
        with atomic_target(path) as tmp:  # a viewer never sees half a picture
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def draw_run_curves(metrics_path: Path, out: Path, title: str = "") -> str | None:
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    steps, evaluations = read_metrics(metrics_path)
    if not steps and not evaluations:
        return f"{metrics_path} holds no records yet"
    fig, (acc_ax, loss_ax) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    _plot_run(acc_ax, loss_ax, steps, evaluations)
    if title:
        acc_ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, plt, out)
    return None


def draw_runs_side_by_side(runs: list[tuple[str, Path]], out: Path, title: str = "") -> str | None:
    """``runs``: (label, run directory) pairs, one column each; accuracy and loss axes shared."""
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    if not runs:
        return "no runs to draw"
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs) + 0.8, 5.5), sharex=True, sharey="row",
                             squeeze=False)
    for column, (label, run_dir) in enumerate(runs):
        steps, evaluations = read_metrics(Path(run_dir) / "metrics.jsonl")
        _plot_run(axes[0, column], axes[1, column], steps, evaluations)
        axes[0, column].set_title(label, fontsize=9)
        if column:
            axes[0, column].set_ylabel("")
            axes[1, column].set_ylabel("")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, plt, out)
    return None


__all__ = ["LOSS_TERMS", "draw_run_curves", "draw_runs_side_by_side", "read_metrics"]
