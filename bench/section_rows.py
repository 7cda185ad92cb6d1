"""Reading the rows of ``rmm-bench all``'s sections: what the projection and the charts are drawn from."""

from __future__ import annotations


def section_report(sections: dict, name: str) -> dict | None:
    """A measured section's own report, else None."""
    section = sections.get(name)
    return section["report"] if section and section["status"] == "measured" else None


def measured_rows(sections: dict, name: str) -> list[dict]:
    """The rows a section measured (none when it was skipped or failed)."""
    report = section_report(sections, name)
    return [r for r in report["results"] if "skipped" not in r] if report else []


def aug_row(sections: dict, backend: str, k: int) -> dict | None:
    """The aug section's mixed-policy row of ``backend`` at K = k, else at the nearest K measured
    (views/s barely moves with K at one batch); device-resident inputs preferred."""
    rows = [r for r in measured_rows(sections, "aug")
            if r.get("bench") == "aug" and r["backend"] == backend and r["op"] is None]
    return min(rows, key=lambda r: (abs(r["k"] - k), r.get("inputs") != "device")) if rows else None
