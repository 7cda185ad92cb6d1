"""common/versions.py: installed distributions' versions from their metadata."""

from __future__ import annotations

import importlib.metadata
import platform

from remixmatch.common.versions import package_versions


def test_versions_come_from_the_metadata_and_a_missing_distribution_is_none():
    found = package_versions(("numpy", "no-such-distribution-remixmatch"))
    assert found == {"python": platform.python_version(), "numpy": importlib.metadata.version("numpy"),
                     "no-such-distribution-remixmatch": None}
