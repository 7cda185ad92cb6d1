"""Each private Numba / numba-cuda API that kernels/numba_internals.py uses still exists with the shape
used there: an upgrade that moves one fails here, naming it, instead of at a user's first launch on a
GPU. No GPU needed: each check inspects the API, and calls it where that needs no device."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from remixmatch.kernels import numba_internals

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("caching", [numba_internals.cpu_caching, numba_internals.cuda_caching], ids=["cpu", "cuda"])
def test_the_cache_locator_hook_and_base_classes(caching):
    module = caching()
    assert isinstance(module.CacheImpl._locator_classes, list)
    base = module._CacheLocator
    for method in ("ensure_cache_path", "get_cache_path", "get_source_stamp", "get_disambiguator", "from_function"):
        assert hasattr(base, method), method


def test_cpu_locator_bases_used_by_jit_cache():
    caching = numba_internals.cpu_caching()
    assert issubclass(caching.InTreeCacheLocator, caching._CacheLocator)
    assert issubclass(caching.UserWideCacheLocator, caching._CacheLocator)


def test_numba_cuda_caches_kernels_through_its_own_cache_impl():
    from numba.cuda.dispatcher import CUDACacheImpl

    assert issubclass(CUDACacheImpl, numba_internals.cuda_caching().CacheImpl)


def test_install_refuses_loudly_when_the_hook_is_gone(monkeypatch):
    caching = numba_internals.cpu_caching()
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", None)
    with pytest.raises(RuntimeError, match=re.escape("_locator_classes is gone")):
        numba_internals.install_locators(caching, ())


def test_dispatcher_stats_count_cache_hits_and_misses():
    from remixmatch.kernels.cpu import weak_augment_cpu

    counts = numba_internals.cache_counts(weak_augment_cpu)
    assert counts is not None and all(isinstance(c, int) for c in counts)
    assert numba_internals.cache_counts(object()) is None


def test_cuda_dispatchers_have_stats_with_the_cache_path():
    from remixmatch.kernels.cuda import weak_augment_kernel

    assert numba_internals.cache_counts(weak_augment_kernel) == (0, 0)
    assert weak_augment_kernel.stats.cache_path


def test_the_driver_pieces_of_the_shared_memory_opt_in():
    from numba.cuda.cudadrv import driver as driver_module
    from numba.cuda.dispatcher import _Kernel

    attribute = driver_module.binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    assert int(attribute) == 8  # CUDA's enum value
    # The driver object binds cuda.bindings.driver's functions by name on first use.
    assert callable(driver_module.binding.cuKernelSetAttribute)
    assert driver_module.Driver._cuda_python_wrap_fn and isinstance(driver_module.driver, driver_module.Driver)
    assert "self._codelibrary = " in inspect.getsource(_Kernel)
    from numba.cuda.codegen import CUDACodeLibrary

    assert callable(CUDACodeLibrary.get_cufunc)
    assert callable(getattr(driver_module.Driver, "get_version", None))


def test_nvvm_and_its_location():
    from numba.cuda import cuda_paths
    from numba.cuda.cudadrv import nvvm

    assert callable(nvvm.NVVM.get_version) and callable(cuda_paths.get_cuda_paths)
    try:
        version = numba_internals.nvvm_version()
    except Exception as error:  # noqa: BLE001 - no NVVM on this machine: the location still answers
        pytest.skip(f"no NVVM here: {error}")
    assert re.fullmatch(r"\d+\.\d+(\.\d+)*", version)
    assert numba_internals.nvvm_location() is not None


def test_the_one_lowering_ptx_pieces():
    from numba.cuda import compiler
    from numba.cuda.codegen import CUDACodeLibrary

    parameters = inspect.signature(compiler._compile_pyfunc_with_fixup).parameters
    assert {"device", "cc", "abi", "fastmath", "opt", "debug", "lineinfo"} <= parameters.keys()
    assert "cc" in inspect.signature(CUDACodeLibrary.get_asm_str).parameters


def test_the_simulator_array_type():
    from numba.cuda.simulator.cudadrv import devicearray

    assert inspect.isclass(devicearray.FakeCUDAArray)
    assert numba_internals.is_simulator_array(object()) is False


def test_the_threading_layer_started_flag():
    from numba.np.ufunc import parallel

    assert isinstance(parallel._is_initialized, bool)
    import remixmatch.kernels  # noqa: F401 (starts the layer)

    assert numba_internals.numba_threads_started() is True


def test_no_private_numba_api_outside_the_internals_module():
    """Every reach into Numba's internals is in kernels/numba_internals.py (tests excepted)."""
    import io
    import tokenize

    private = re.compile(r"_codelibrary|_locator_classes|cuKernelSetAttribute|cudadrv|cuda_paths|\.stats\b|"
                         r"numba\.core\.caching|numba\.cuda\.core|numba\.cuda\.simulator|_CacheLocator|"
                         r"_is_initialized|ufunc\.parallel")
    found = []
    for folder in ("kernels", "bench", "pipeline", "trainer", "common", "datasets_prep"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "numba_internals.py":
                continue
            code: dict[int, str] = {}  # line -> its code, strings and comments left out
            for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
                if token.type not in (tokenize.STRING, tokenize.COMMENT):
                    code[token.start[0]] = code.get(token.start[0], "") + token.string
            found += [f"{path.relative_to(REPO)}:{n}: {text}" for n, text in code.items() if private.search(text)]
    assert not found, "\n".join(found)
