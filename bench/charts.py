"""The PNG charts of ``rmm-bench all``, drawn from the sections' report.json rows.

- ``views_per_s.png``: strong views/s per backend at the report's K, the PIL reference as the
  baseline (each bar labelled with its ratio to it); beside it, the loaders' strong views/s inside
  complete step batches (pipeline section);
- ``per_op.png``: views/s of each CTAugment op per backend;
- ``step_split.png``: a training step's milliseconds per phase (data wait, forward, backward,
  optimiser, CTA update, other), per device and feed;
- ``scaling.png``: steps/s against processes, with the linear ideal from one process;
- ``learning_curve.png`` (``gpu-check`` only): test accuracy of the EMA and raw models against steps,
  from the ``evaluations`` of a ``learning`` section.

A chart whose rows are missing is listed with the reason instead of a file; without matplotlib (the
``plots`` extra) every chart is.
"""

from __future__ import annotations

from pathlib import Path

from remixmatch.common.atomic import atomic_target

from .section_rows import aug_row, measured_rows

CHARTS = ("views_per_s", "per_op", "step_split", "scaling")
AUG_BACKENDS = ("pil", "pil-pool", "numba-cpu", "numba-cuda")
PHASE_COLOURS = ("#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#e0e0e0")


def _section_reason(sections: dict, name: str) -> str:
    section = sections.get(name) or {"status": "skipped", "reason": "not run"}
    if section["status"] == "measured":
        return f"the {name} section measured no rows for it"
    return f"the {name} section was {section['status']} ({section['reason']})"


def _save(fig, out: Path, name: str) -> str:
    # Written beside, then renamed: a reader never sees half a PNG. The temporary name does not end in
    # .png, so the format is named.
    path = out / f"{name}.png"
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path.name


def _aug_headline(sections: dict, k: int) -> list[tuple[str, float]]:
    """(label, views/s) per backend (mixed policies), PIL first, each at the K nearest the PIL row's
    (else nearest k): like for like."""
    pil = aug_row(sections, "pil", k)
    rows = [aug_row(sections, backend, pil["k"] if pil else k) for backend in AUG_BACKENDS]
    return [(f"{r['backend']}\nK={r['k']}", r["views_per_s"]) for r in rows if r is not None]


def views_chart(plt, sections: dict, k: int):
    aug = _aug_headline(sections, k)
    if not aug or not aug[0][0].startswith("pil\n"):
        return {"skipped": _section_reason(sections, "aug") if not aug else "no PIL reference row to compare with"}
    loaders = [r for r in measured_rows(sections, "pipeline") if r.get("prefetch") in (True, None) and r["k"] == k]
    fig, axes = plt.subplots(1, 2 if loaders else 1, figsize=(11 if loaders else 6, 4), squeeze=False)
    baseline = aug[0][1]
    ax = axes[0][0]
    labels, values = zip(*aug)
    bars = ax.bar(labels, values, color=["#9e9e9e" if label.startswith("pil") else "#1f77b4" for label in labels])
    ax.bar_label(bars, labels=[f"{v / baseline:.1f}x" for v in values])
    ax.set_yscale("log")
    ax.set_ylabel("strong views/s (log)")
    ax.set_title("Kernels vs the PIL reference (rmm-bench aug)")
    if loaders:
        reference = next((r for r in loaders if r["backend"] == "pil-pool-float"), None)
        ax = axes[0][1]
        names = [f"{r['backend']}\n{r['device']} B={r['batch']}" for r in loaders]
        rates = [r["strong_views_per_s"] for r in loaders]
        bars = ax.bar(names, rates, color=["#9e9e9e" if r["backend"].startswith("pil") else "#2ca02c" for r in loaders])
        if reference:
            ax.bar_label(bars, labels=[f"{v / reference['strong_views_per_s']:.1f}x" for v in rates])
        ax.set_yscale("log")
        ax.set_title("Complete step batches (rmm-bench pipeline)")
        ax.tick_params(axis="x", labelsize=7)
    return fig


def per_op_chart(plt, sections: dict):
    rows = [r for r in measured_rows(sections, "aug") if r.get("bench") == "aug" and r["op"] is not None]
    if not rows:
        return {"skipped": _section_reason(sections, "aug")}
    ops = sorted({r["op"] for r in rows})
    backends = [b for b in AUG_BACKENDS if any(r["backend"] == b for r in rows)]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(ops) * len(backends) + 1.5))
    height = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        rate = {r["op"]: r["views_per_s"] for r in rows if r["backend"] == backend}
        ax.barh([j + i * height for j in range(len(ops))], [rate.get(op, 0) for op in ops], height=height,
                label=backend)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(ops))], ops)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("views/s (log), one op per view")
    ax.set_title("Each CTAugment op alone (longer bar: cheaper op)")
    ax.legend()
    return fig


def step_split_chart(plt, sections: dict):
    rows = [r for r in measured_rows(sections, "train") if "phase_seconds_per_step" in r]
    if not rows:
        return {"skipped": _section_reason(sections, "train")}
    names = list(rows[0]["phase_seconds_per_step"])
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6))
    labels = [f"{r['device']} {r['model']}\n{r['feed']}"
              + ("" if r["feed"] != "loader" else ", prefetch" if r["prefetch"] else ", no prefetch") for r in rows]
    left = [0.0] * len(rows)
    for name, colour in zip(names, PHASE_COLOURS):
        widths = [1000 * r["phase_seconds_per_step"][name] for r in rows]
        ax.barh(labels, widths, left=left, label=name, color=colour)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("ms per step")
    ax.set_title("Where a training step's time goes")
    ax.legend(ncol=len(names), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    return fig


def scaling_chart(plt, sections: dict):
    section = sections.get("scaling") or {}
    rows = [r for r in section.get("rows") or [] if "skipped" not in r]
    if len(rows) < 2:
        return {"skipped": _section_reason(sections, "scaling") if not rows else "one process count measured"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for device in sorted({r["device"] for r in rows}):
        mine = sorted((r for r in rows if r["device"] == device), key=lambda r: r["ranks"])
        ranks = [r["ranks"] for r in mine]
        ax.plot(ranks, [r["steps_per_s"] for r in mine], "o-", label=f"{device} measured")
        one = next((r["steps_per_s"] for r in mine if r["ranks"] == 1), None)
        if one:
            ax.plot(ranks, [one * n for n in ranks], "--", color="#9e9e9e", label=f"{device} linear")
    ax.set_xticks(sorted({r["ranks"] for r in rows}))
    ax.set_xlabel("processes (ranks)")
    ax.set_ylabel("steps/s, global batch fixed")
    ax.set_title("Scaling")
    ax.legend()
    return fig


def learning_chart(plt, sections: dict):
    evaluations = (sections.get("learning") or {}).get("evaluations") or []
    if not evaluations:
        return {"skipped": "the learning section has no evaluation"}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [e["step"] for e in evaluations]
    ax.plot(steps, [100 * e["acc_ema"] for e in evaluations], marker="o", label="EMA model")
    ax.plot(steps, [100 * e["acc_raw"] for e in evaluations], marker=".", label="raw model")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("cifar10-250, the first minutes")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def draw_charts(sections: dict, out: Path, k: int = 8, names: tuple[str, ...] = CHARTS) -> dict:
    """The charts ``names`` (default: ``rmm-bench all``'s), each a file name in ``out`` or ``{"skipped": reason}``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        reason = "matplotlib is not installed (pip install 'remixmatch[plots]')"
        return {name: {"skipped": reason} for name in names}
    out.mkdir(parents=True, exist_ok=True)
    makers = {"views_per_s": lambda: views_chart(plt, sections, k), "per_op": lambda: per_op_chart(plt, sections),
              "step_split": lambda: step_split_chart(plt, sections), "scaling": lambda: scaling_chart(plt, sections),
              "learning_curve": lambda: learning_chart(plt, sections)}
    charts = {}
    for name in names:
        fig = makers[name]()
        if isinstance(fig, dict):
            charts[name] = fig
            continue
        try:
            fig.tight_layout()
            charts[name] = _save(fig, out, name)
        finally:
            plt.close(fig)
    return charts
