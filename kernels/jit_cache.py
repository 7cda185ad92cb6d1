"""On-disk cache of the compiled CPU kernels, invalidated by any change to the kernel sources.

Compiling the fused CPU kernel takes tens of seconds (every op is inlined into one loop), so it is
cached with ``cache=True``. Numba keys a cache on the file that defines the cached function only,
but the kernel inlines the pixel math of other modules: a stale kernel would survive an edit of
``scalar.py``. The locators below stamp the cache with a digest of every kernel source instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from numba.core import caching

_KERNEL_DIR = Path(__file__).resolve().parent
# What the compiled CPU kernels are made of.
_KERNEL_SOURCES = ("ops.py", "scalar.py", "compile.py", "cpu.py", "jit_cache.py")


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for name in _KERNEL_SOURCES:
        digest.update(name.encode())
        digest.update((_KERNEL_DIR / name).read_bytes())
    return digest.hexdigest()


_DIGEST = _sources_digest()


def _is_kernel_file(py_file: str) -> bool:
    return Path(py_file).resolve().parent == _KERNEL_DIR


class _KernelInTreeLocator(caching.InTreeCacheLocator):
    def get_source_stamp(self):
        return _DIGEST

    @classmethod
    def from_function(cls, py_func, py_file):
        return super().from_function(py_func, py_file) if _is_kernel_file(py_file) else None


class _KernelUserWideLocator(caching.UserWideCacheLocator):
    def get_source_stamp(self):
        return _DIGEST

    @classmethod
    def from_function(cls, py_func, py_file):
        return super().from_function(py_func, py_file) if _is_kernel_file(py_file) else None


def install() -> None:
    locators = caching.CacheImpl._locator_classes
    for locator in (_KernelUserWideLocator, _KernelInTreeLocator):
        if locator not in locators:
            locators.insert(0, locator)
