"""The versions of installed distributions, as reports and run summaries record them.

Read from the distributions' metadata (``importlib.metadata``): nothing gets imported, so asking for
torch's version costs no torch import, and a distribution that is not installed is ``None``.
"""

from __future__ import annotations

import importlib.metadata
import platform


def package_versions(names: tuple[str, ...]) -> dict:
    """``{"python": ..., name: version or None, ...}`` for the distribution ``names``."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


__all__ = ["package_versions"]
