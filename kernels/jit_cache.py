"""On-disk caches of the compiled CPU and CUDA kernels, invalidated by any change to the kernel sources.

Compiling the fused CPU kernel takes tens of seconds (every op is inlined into one loop), so it is
cached with ``cache=True``. Numba keys a cache on the file that defines the cached function only,
but the kernel inlines the pixel math of other modules: a stale kernel would survive an edit of
``pixel_math.py``. The locators below stamp the cache with a digest of every kernel source instead.

Why keep it: without a cache every process pays the compile (over a minute on two cores), and with
Numba's own stamp an edit of ``pixel_math.py`` or ``ops.py`` would silently reuse a stale kernel. It rests on
one private hook, ``CacheImpl._locator_classes`` (kernels/numba_internals.py); :func:`install`
refuses loudly if that hook is gone, and tests/test_kernels_registry.py checks that the compiled
kernels really use these locators, so a Numba upgrade that bypasses them fails a test instead of
recompiling or going stale unnoticed.

The CUDA kernels (``cuda.jit(cache=True)``) are cached the same way, by numba-cuda's own copy of
that machinery. Its key (argument types, CUDA version, compute capability, numba-cuda version, the
kernel's own bytecode) covers neither the device functions a kernel inlines from ``pixel_math.py`` nor
its register cap: each kernel is cached in :func:`cuda_cache_folder`, a folder named by a digest of
every CUDA kernel source and by the launch tuning, under ``$NUMBA_CACHE_DIR`` (else the user's cache
folder). One compile of the 32x32 apply kernel for sm_90 is ~23 s of one core; with the cache each
machine pays it once, not once per process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import weakref
from pathlib import Path

from .numba_internals import cpu_caching, install_locators

caching = cpu_caching()

_KERNEL_DIR = Path(__file__).resolve().parent
# What the compiled CPU kernels are made of.
_KERNEL_SOURCES = ("ops.py", "pixel_math.py", "compile.py", "cpu.py", "jit_cache.py")
# What the compiled CUDA kernels are made of.
_CUDA_KERNEL_SOURCES = ("ops.py", "pixel_math.py", "compile.py", "cuda.py", "jit_cache.py")


def _sources_digest(names=_KERNEL_SOURCES, folder: Path = _KERNEL_DIR) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
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


# Tried in this order, as Numba's own: beside the sources (kernels/__pycache__, which a non-editable
# install's tests can copy), else the user's cache folder where the sources are read-only.
KERNEL_LOCATORS = (_KernelInTreeLocator, _KernelUserWideLocator)


def install() -> None:
    install_locators(caching, KERNEL_LOCATORS)


# ---- CUDA ------------------------------------------------------------------------------------------------

def cuda_cache_root() -> Path:
    """Where the CUDA kernel folders go: $NUMBA_CACHE_DIR when set (gpu-check sets it for every
    section), else the user's cache folder."""
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "remixmatch"


def cuda_cache_folder(tuning_key: str, root: Path | None = None, digest: str | None = None) -> Path:
    """The folder of the CUDA kernels compiled under one launch tuning: ``cuda-<digest>-<tuning>``,
    the digest of every CUDA kernel source (an edit of any one of them starts a new folder)."""
    digest = digest or _cuda_digest()
    return (root or cuda_cache_root()) / f"cuda-{digest[:20]}-{tuning_key}"


@functools.cache
def _cuda_digest() -> str:
    return _sources_digest(_CUDA_KERNEL_SOURCES)


# The kernel functions (one object per tuning) whose cache is in a folder of ours.
_CUDA_FOLDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_cuda_kernel_in(py_func, folder: Path) -> None:
    """Caches the kernel ``cuda.jit(cache=True)`` is about to make of ``py_func`` in ``folder``."""
    _CUDA_FOLDERS[py_func] = Path(folder)
    install_locators(_cuda_locator_class().caching, (_cuda_locator_class(),))


@functools.cache
def _cuda_locator_class():
    from .numba_internals import cuda_caching, cuda_locator_base

    class _CudaKernelLocator(cuda_locator_base()):
        caching = cuda_caching()

        def __init__(self, py_func, py_file, folder: Path):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = str(folder)

        def get_cache_path(self):
            return self._cache_path

        def get_source_stamp(self):
            return _cuda_digest()

        def get_disambiguator(self):
            return str(self._lineno)

        @classmethod
        def from_function(cls, py_func, py_file):
            folder = _CUDA_FOLDERS.get(py_func)
            if folder is None:
                return None  # not one of our kernels: numba-cuda's own locators decide
            locator = cls(py_func, py_file, folder)
            try:
                locator.ensure_cache_path()
            except OSError:
                return None
            return locator

    return _CudaKernelLocator
