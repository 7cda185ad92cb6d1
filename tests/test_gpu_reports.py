"""The GPU reports committed under reports/gpu/<gpu>-<date>/ are what rmm-bench gpu-check writes: every
section with a status (and a reason when it did not measure), every figure with its unit, the machine
named, and the charts the markdown shows present beside it."""

from __future__ import annotations

import json

import pytest

from datasets_helpers import REPO
from remixmatch.bench.gpu_check import schema_problems

REPORTS = sorted((REPO / "reports" / "gpu").glob("*/report.json"))


@pytest.mark.skipif(not REPORTS, reason="no GPU report committed yet (reports/gpu/<gpu>-<date>/report.json)")
@pytest.mark.parametrize("path", REPORTS, ids=[p.parent.name for p in REPORTS])
def test_a_committed_gpu_report_is_well_formed(path):
    report = json.loads(path.read_text())
    assert schema_problems(report) == []
    assert report["machine"]["gpu"], "a committed GPU report names its GPU"
    assert (path.parent / "report.md").is_file()
    for chart in report["charts"].values():
        if isinstance(chart, str):
            assert (path.parent / chart).is_file(), chart
