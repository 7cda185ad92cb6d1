"""The CUDA kernels' host side without a GPU: the on-disk cache's folder (its key: the kernel sources'
digest and the launch tuning) and its invalidation, the launch tuning object, the reused staging of
the per-view arrays, and the autocontrast table that keeps every division out of the kernels."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from remixmatch.kernels import cuda as kernels_cuda
from remixmatch.kernels import jit_cache, pixel_math
from remixmatch.kernels.cuda import DEFAULT_TUNING, LaunchTuning
from remixmatch.kernels.cuda_launch import ViewArgStaging, apply_launch, staged_bytes


def test_each_register_cap_and_block_size_has_its_own_cache_folder():
    folders = {jit_cache.cuda_cache_folder(t.cache_key()) for t in (
        DEFAULT_TUNING, LaunchTuning(max_registers=80), LaunchTuning(threads_per_block=128),
        LaunchTuning(max_registers=80, threads_per_block=128))}
    assert len(folders) == 4
    # The large-view design picks a kernel at launch, not how one compiles: no folder of its own.
    assert LaunchTuning(large_views="tiled").cache_key() == DEFAULT_TUNING.cache_key()


def test_the_real_kernels_cache_in_their_tunings_folder_under_numba_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernels_cuda, "_compiled", {})
    tuning = LaunchTuning(max_registers=72, threads_per_block=64)
    built = kernels_cuda.kernels(tuning)
    folder = tmp_path / f"cuda-{jit_cache._cuda_digest()[:20]}-regs72-threads64"
    for name, dispatcher in built.items():
        locator = dispatcher._cache._impl.locator
        assert locator.get_cache_path() == str(folder), name
        assert locator.get_source_stamp() == jit_cache._cuda_digest()
        assert dispatcher.targetoptions.get("max_registers") == (72 if name != "weak_augment_kernel" else None), name
    assert folder.is_dir()
    assert kernels_cuda.kernels(tuning) is built, "one set of dispatchers per tuning and process"


def test_an_edit_of_any_cuda_kernel_source_moves_the_cache_folder(tmp_path):
    """numba-cuda's own key covers only the kernel's bytecode: an edit of pixel_math.py (inlined device
    functions) must still miss, so the folder is named by a digest of every source."""
    sources = tmp_path / "kernels"
    sources.mkdir()
    for name in jit_cache._CUDA_KERNEL_SOURCES:
        shutil.copy(jit_cache._KERNEL_DIR / name, sources / name)
    before = jit_cache._sources_digest(jit_cache._CUDA_KERNEL_SOURCES, sources)
    assert before == jit_cache._cuda_digest()
    digests = {before}
    for name in ("pixel_math.py", "compile.py", "cuda.py", "ops.py"):
        path = sources / name
        path.write_text(path.read_text() + "\n# edited\n")
        digests.add(jit_cache._sources_digest(jit_cache._CUDA_KERNEL_SOURCES, sources))
    assert len(digests) == 5
    assert len({jit_cache.cuda_cache_folder("regsauto-threads256", tmp_path, d) for d in digests}) == 5
    # The CPU kernels' digest does not cover cuda.py: a CUDA edit leaves their cache alone.
    assert "cuda.py" not in jit_cache._KERNEL_SOURCES


def test_the_locator_serves_only_the_kernels_registered_with_a_folder(tmp_path):
    locator_class = jit_cache._cuda_locator_class()

    def stranger():
        pass

    assert locator_class.from_function(stranger, __file__) is None
    jit_cache.cache_cuda_kernel_in(stranger, tmp_path / "here")
    locator = locator_class.from_function(stranger, __file__)
    assert locator.get_cache_path() == str(tmp_path / "here") and (tmp_path / "here").is_dir()
    assert locator_class in locator_class.caching.CacheImpl._locator_classes


@pytest.mark.parametrize("fields, message", [
    ({"threads_per_block": 100}, "threads per block 100: must be a multiple of 32"),
    ({"max_registers": 8}, "register cap 8: must be in 16..255"),
    ({"large_views": "shared"}, "large-view design 'shared': must be one of global, tiled, shared-optin"),
])
def test_a_bad_tuning_names_its_field(fields, message):
    with pytest.raises(ValueError, match=message):
        LaunchTuning(**fields)


def test_the_tuning_reaches_the_launch_and_the_process_default_is_set_explicitly():
    assert kernels_cuda.current_tuning() == DEFAULT_TUNING, "nothing sets it at import"
    assert apply_launch(32, 32, tuning=LaunchTuning(threads_per_block=128)).threads_per_block == 128
    tiled = apply_launch(96, 96, tuning=LaunchTuning(large_views="tiled"))
    assert tiled.kernel == "apply_ops_kernel_tiled" and tiled.dynamic_shared_bytes == 4 * (96 + 96 + 2 * 768)
    previous = kernels_cuda.use_tuning(LaunchTuning(large_views="shared-optin"))
    try:
        assert apply_launch(96, 96).kernel == "apply_ops_kernel"
        assert apply_launch(96, 96, design="global").kernel == "apply_ops_kernel_global"
    finally:
        kernels_cuda.use_tuning(previous)
    assert apply_launch(96, 96).kernel == "apply_ops_kernel_global"


def _step(rng, n):
    return [rng.integers(0, 16, (n, 2)).astype(np.int32), rng.random((n, 2, 2), dtype=np.float32),
            rng.random((n, 3, 2), dtype=np.float32), np.arange(n, dtype=np.int32),
            rng.integers(0, 2, n).astype(np.int32), rng.integers(0, 9, (n, 2)).astype(np.int32)]


def test_the_per_view_arrays_are_staged_in_reused_buffers():
    """Step after step the six per-view arrays land in the same buffers (one device buffer, two host
    buffers taking turns: three allocations in all, not six per step), each as a typed view that holds
    exactly the host array; a larger step grows them once."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    staging = ViewArgStaging(torch.device("cpu"))
    pointers, hosts = set(), set()
    for n in (64, 64, 48, 64):
        arrays = _step(rng, n)
        staging.begin(staged_bytes(arrays))
        views = [staging.place(a) for a in arrays]
        staging.finish()
        for view, array in zip(views, arrays):
            assert view.shape == array.shape and view.numpy().dtype == array.dtype
            assert np.array_equal(view.numpy(), array)
            assert view.data_ptr() % 16 == 0
        pointers.add(staging.buffer.data_ptr())
        hosts.add(staging.host.data_ptr())
    assert staging.allocations == 3 and len(pointers) == 1 and len(hosts) == 2
    bigger = _step(rng, 4096)
    staging.begin(staged_bytes(bigger))
    views = [staging.place(a) for a in bigger]
    staging.finish()
    assert staging.allocations == 5 and all(np.array_equal(v.numpy(), a) for v, a in zip(views, bigger))
    with pytest.raises(ValueError, match="reserved by begin"):
        staging.begin(16)
        staging.place(np.zeros(64, np.int32))


def test_scratch_buffers_are_reused_per_shape():
    torch = pytest.importorskip("torch")
    staging = ViewArgStaging(torch.device("cpu"))
    first = staging.scratch((4, 27), np.uint8)
    assert staging.scratch((4, 27), np.uint8) is first and staging.scratch((4, 9), np.int32) is not first
    assert staging.allocations == 2


def test_the_autocontrast_table_is_pillows_division():
    """255 / d divided on the host, d = 1..255, bit for bit what Pillow's double division gives."""
    table = pixel_math.AUTOCONTRAST_SCALE
    assert table.dtype == np.float64 and table.shape == (256,)
    for d in range(1, 256):
        assert table[d] == 255.0 / float(d)


def test_the_kernel_sources_divide_no_float():
    """No float division left in the per-pixel math (ptxas would expand it with fused multiply-adds)."""
    import ast
    import inspect

    source = inspect.getsource(pixel_math)
    divisions = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)]
    inside = [node.lineno for node in divisions
              if any(isinstance(parent, ast.FunctionDef) and parent.lineno <= node.lineno <= parent.end_lineno
                     for parent in ast.walk(ast.parse(source)))]
    assert not inside, f"float division in pixel_math.py functions at lines {inside}"
