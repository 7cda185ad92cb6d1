"""On-disk cache of the compiled CPU kernels, invalidated by any change to the kernel sources.

Compiling the fused CPU kernel takes tens of seconds (every op is inlined into one loop), so it is
cached with ``cache=True``. Numba keys a cache on the file that defines the cached function only,
but the kernel inlines the pixel math of other modules: a stale kernel would survive an edit of
``scalar.py``. The locators below stamp the cache with a digest of every kernel source instead.

Why keep it: without a cache every process pays the compile (over a minute on two cores), and with
Numba's own stamp an edit of ``scalar.py`` or ``ops.py`` would silently reuse a stale kernel. It rests on
one private hook, ``numba.core.caching.CacheImpl._locator_classes`` (Numba 0.68); :func:`install`
refuses loudly if that hook is gone, and tests/test_kernels_registry.py checks that the compiled
kernels really use these locators, so a Numba upgrade that bypasses them fails a test instead of
recompiling or going stale unnoticed. ``NUMBA_CACHE_LOCATOR_CLASSES`` overrides the hook.
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


KERNEL_LOCATORS = (_KernelUserWideLocator, _KernelInTreeLocator)


def install() -> None:
    locators = getattr(caching.CacheImpl, "_locator_classes", None)
    if not isinstance(locators, list):
        raise RuntimeError("numba.core.caching.CacheImpl._locator_classes is gone: update kernels/jit_cache.py for this Numba")
    for locator in KERNEL_LOCATORS:
        if locator not in locators:
            locators.insert(0, locator)
