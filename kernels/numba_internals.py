"""Every use of a private Numba or numba-cuda API, in one place.

Numba offers no public call for what these do; each is the smallest reach into its internals that
serves. An upgrade that moves one of them fails ``tests/test_kernels_numba_internals.py``, which
checks that each still exists with the shape used here, so only this file needs the update.
Upstream references are to numba 0.68 (github.com/numba/numba) and numba-cuda 0.30
(github.com/NVIDIA/numba-cuda, package path ``numba_cuda/numba/cuda``).
"""

from __future__ import annotations

# ---- on-disk caches: which folder a compiled function is cached in ------------------------------------


def cpu_caching():
    """``numba.core.caching``: its ``CacheImpl._locator_classes`` (the list of locators Numba tries,
    in order, for every ``cache=True`` function) and the locator base classes
    ``InTreeCacheLocator`` / ``UserWideCacheLocator``. Upstream: numba/core/caching.py,
    ``class CacheImpl``."""
    from numba.core import caching

    return caching


def cuda_caching():
    """numba-cuda's own copy of the caching machinery (``CUDACacheImpl`` derives from its
    ``CacheImpl``, which has its own ``_locator_classes``) and the locator base ``_CacheLocator``.
    Upstream: numba_cuda/numba/cuda/core/caching.py; numba_cuda/numba/cuda/dispatcher.py,
    ``class CUDACacheImpl(CacheImpl)``."""
    from numba.cuda.core import caching

    return caching


def cuda_locator_base():
    """The base class of numba-cuda's cache locators. Upstream: numba_cuda/numba/cuda/core/caching.py
    ``class _CacheLocator``."""
    return cuda_caching()._CacheLocator


def install_locators(caching, locators) -> None:
    """Puts ``locators`` first in ``caching.CacheImpl._locator_classes`` (a class attribute: every
    later ``cache=True`` function of that target tries them before Numba's own)."""
    classes = getattr(caching.CacheImpl, "_locator_classes", None)
    if not isinstance(classes, list):
        raise RuntimeError(f"{caching.__name__}.CacheImpl._locator_classes is gone: update "
                           "kernels/numba_internals.py for this Numba")
    for locator in reversed(locators):
        if locator not in classes:
            classes.insert(0, locator)


def cache_counts(dispatcher) -> tuple[int, int] | None:
    """(cache hits, cache misses) of a Numba dispatcher, or None for anything else. Upstream:
    numba/core/dispatcher.py ``_DispatcherBase.stats`` (a ``_CompileStats``);
    numba_cuda/numba/cuda/dispatcher.py ``CUDADispatcher.stats``."""
    stats = getattr(dispatcher, "stats", None)
    if stats is None or not hasattr(stats, "cache_hits"):
        return None
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


def cache_path(dispatcher) -> str:
    """The folder a ``cache=True`` dispatcher's compiled code is saved in (same upstream as
    :func:`cache_counts`)."""
    return str(dispatcher.stats.cache_path)


# ---- the CUDA driver -----------------------------------------------------------------------------------


def allow_dynamic_shared(kernel, argtypes: tuple, nbytes: int, device) -> None:
    """Lets ``kernel`` as compiled for ``argtypes`` launch with ``nbytes`` of dynamic shared memory
    (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES). numba-cuda has no public call for it
    (NVIDIA/numba-cuda#94); this sets it on the driver function of the compiled overload the way
    numba-cuda sets the shared memory carveout. Upstream: numba_cuda/numba/cuda/dispatcher.py
    ``_Kernel._codelibrary`` and ``CUDACodeLibrary.get_cufunc``; numba_cuda/numba/cuda/cudadrv/driver.py
    ``binding`` (cuda.bindings.driver), ``driver.cuKernelSetAttribute`` (as in ``CudaPythonFunction.
    set_shared_memory_carveout``)."""
    from numba.cuda.cudadrv.driver import binding, driver

    function = kernel.compile(argtypes)._codelibrary.get_cufunc()
    attribute = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attribute, nbytes, function.handle, device.id)


def driver_version() -> str:
    """The CUDA driver API's version. Upstream: numba_cuda/numba/cuda/cudadrv/driver.py
    ``Driver.get_version``."""
    from numba.cuda.cudadrv.driver import driver

    return ".".join(map(str, driver.get_version()))


# ---- NVVM (the compiler every CUDA kernel needs) --------------------------------------------------------


def nvvm_version() -> str:
    """Loads NVVM (raising when numba-cuda finds none) and returns its version. Upstream:
    numba_cuda/numba/cuda/cudadrv/nvvm.py ``NVVM().get_version``."""
    from numba.cuda.cudadrv import nvvm

    return ".".join(map(str, nvvm.NVVM().get_version()))


def nvvm_location() -> str | None:
    """Where numba-cuda found NVVM ("<how>: <path>"), or None. Upstream:
    numba_cuda/numba/cuda/cuda_paths.py ``get_cuda_paths()["nvvm"]`` (a ``_env_path_tuple(by, info)``)."""
    from numba.cuda.cuda_paths import get_cuda_paths

    found = get_cuda_paths().get("nvvm")
    return None if found is None else f"{found.by}: {found.info}"


def kernel_ptx(py_func, signature, ccs) -> dict[tuple[int, int], str]:
    """A kernel's PTX for each compute capability in ``ccs``, from ONE lowering: numba-cuda's public
    ``compile_ptx`` lowers the Python function again for every target, and the lowering (typing and
    inlining every device function) is most of the time; NVVM per target is a fraction of it.
    Upstream: numba_cuda/numba/cuda/compiler.py ``_compile_pyfunc_with_fixup`` (what ``compile_ptx``
    calls, with its kernel defaults: Numba ABI, opt, no fastmath) and numba_cuda/numba/cuda/codegen.py
    ``CUDACodeLibrary.get_asm_str(cc=)`` (one library, PTX per compute capability)."""
    from numba.cuda import compiler

    library, _ = compiler._compile_pyfunc_with_fixup(py_func, signature, device=False, cc=ccs[0], abi="numba",
                                                     fastmath=False, opt=True, debug=False, lineinfo=False)
    return {cc: library.get_asm_str(cc=cc) for cc in ccs}


# ---- the simulator ----------------------------------------------------------------------------------------


def is_simulator_array(array) -> bool:
    """Whether ``array`` is a device array of the CUDA simulator (NUMBA_ENABLE_CUDASIM=1). Upstream:
    numba_cuda/numba/cuda/simulator/cudadrv/devicearray.py ``FakeCUDAArray``."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    return isinstance(array, FakeCUDAArray)


# ---- the threading layer: whether it has started ---------------------------------------------------------


def numba_threads_started() -> bool:
    """Whether Numba's threading layer is running in this process (its OpenMP runtime, if that is the
    layer, then loaded and its environment read). Upstream: numba/np/ufunc/parallel.py, the module
    flag ``_is_initialized`` that ``_launch_threads`` sets."""
    from numba.np.ufunc import parallel

    return bool(parallel._is_initialized)
