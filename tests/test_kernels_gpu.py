"""On a real CUDA device: the CUDA kernels equal the CPU kernels on 512 views of real images, through
Numba device arrays and through torch CUDA tensors on a torch stream (no copies)."""

from __future__ import annotations

import numpy as np
import pytest

from remixmatch.kernels import NUM_OPS, apply_ops, weak_augment

from kernel_images import cifar_images

pytestmark = pytest.mark.gpu

K = 8


@pytest.fixture(scope="module")
def batch():
    real = cifar_images()
    if real is None:
        pytest.skip("the shared CIFAR-10 archive is absent")
    images = np.resize(real[1], (64, 32, 32, 3))
    rng = np.random.default_rng(8)
    n = images.shape[0] * K
    return {
        "images": np.ascontiguousarray(images),
        "op_ids": rng.integers(0, NUM_OPS, (n, 2)).astype(np.int32),
        "levels": rng.random((n, 2, 2), dtype=np.float32),
        "rand": rng.random((n, 3, 2), dtype=np.float32),
        "sources": np.repeat(np.arange(64, dtype=np.int32), K),
        "flips": rng.integers(0, 2, n).astype(np.int32),
        "offsets": rng.integers(0, 9, (n, 2)).astype(np.int32),
    }


def cpu_views(batch, **extra):
    return apply_ops(batch["images"], batch["op_ids"], batch["levels"], batch["rand"],
                     sources=batch["sources"], **extra)


def test_cuda_equals_cpu_on_512_real_views(batch):
    from numba import cuda

    views = apply_ops(cuda.to_device(batch["images"]), batch["op_ids"], batch["levels"],
                      batch["rand"], sources=batch["sources"])
    assert np.array_equal(views.copy_to_host(), cpu_views(batch))


def test_cuda_fused_weak_and_cutout_equals_cpu(batch):
    from numba import cuda

    extra = {"flips": batch["flips"], "offsets": batch["offsets"], "cutout_level": 1.0}
    views = apply_ops(cuda.to_device(batch["images"]), batch["op_ids"], batch["levels"],
                      batch["rand"], sources=batch["sources"], **extra)
    assert np.array_equal(views.copy_to_host(), cpu_views(batch, **extra))


def test_torch_tensors_on_a_torch_stream(batch):
    torch = pytest.importorskip("torch")
    device = torch.device("cuda")
    images = torch.from_numpy(batch["images"]).to(device)
    per_view = {k: torch.from_numpy(batch[k]).to(device) for k in ("op_ids", "levels", "rand", "sources")}
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        views = apply_ops(images, per_view["op_ids"], per_view["levels"], per_view["rand"],
                          sources=per_view["sources"])
    stream.synchronize()
    assert isinstance(views, torch.Tensor) and views.device.type == "cuda"
    assert np.array_equal(views.cpu().numpy(), cpu_views(batch))


def test_cuda_weak_augment_equals_cpu(batch):
    from numba import cuda

    got = weak_augment(cuda.to_device(batch["images"]), batch["flips"], batch["offsets"],
                       sources=batch["sources"]).copy_to_host()
    expected = weak_augment(batch["images"], batch["flips"], batch["offsets"], sources=batch["sources"])
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("design, kernel", [("global", "apply_ops_kernel_global"), ("tiled", "apply_ops_kernel_tiled"),
                                            ("shared-optin", "apply_ops_kernel")])
def test_cuda_large_view_designs_equal_cpu_at_96x96(batch, design, kernel):
    """96x96 views do not fit a block's default 48 KiB of shared memory: each design for them (global
    memory, filter tiles staged in shared memory, the view in opted-in shared memory) renders them."""
    from numba import cuda

    from remixmatch.kernels import cuda_launch
    from remixmatch.kernels.cuda import LaunchTuning, use_tuning

    images = np.ascontiguousarray(batch["images"][:16].repeat(3, axis=1).repeat(3, axis=2))  # real, 96x96
    n = 16 * 4
    per_view = {"op_ids": batch["op_ids"][:n], "levels": batch["levels"][:n], "rand": batch["rand"][:n],
                "sources": np.repeat(np.arange(16, dtype=np.int32), 4),
                "flips": batch["flips"][:n], "offsets": batch["offsets"][:n] * 3}  # offsets in [0, 2 pad]
    args = (per_view["op_ids"], per_view["levels"], per_view["rand"])
    extra = {"sources": per_view["sources"], "flips": per_view["flips"], "offsets": per_view["offsets"],
             "pad": 12, "cutout_level": 0.5}
    previous = use_tuning(LaunchTuning(large_views=design))
    try:
        assert cuda_launch.apply_launch(96, 96).kernel == kernel
        got = apply_ops(cuda.to_device(images), *args, **extra).copy_to_host()
    finally:
        use_tuning(previous)
    assert np.array_equal(got, apply_ops(images, *args, **extra))


# Not the tiled kernel: its PTX is checked like every kernel's (tests/test_kernels_ptx.py), and one
# more compile would cost the GPU run's correctness section what the 96x96 designs' own test needs.
@pytest.mark.parametrize("name", ["apply_ops_kernel", "apply_ops_kernel_global", "weak_augment_kernel"])
def test_the_machine_code_has_no_fused_multiply_add(name):
    """The PTX test shows every float product and sum goes through the round-to-nearest intrinsics;
    this reads the SASS that ptxas made of it, where a contraction to FFMA/DFMA would change bits."""
    import re

    from remixmatch.kernels.cuda import kernel_signatures

    kernel, signature = kernel_signatures()[name]
    try:
        sass = kernel.inspect_sass(signature)
    except Exception as error:  # no nvdisasm on this machine
        pytest.skip(f"no SASS to read: {' '.join(str(error).split())[:160]}")
    fused = sorted(set(re.findall(r"\b[DFH]FMA\w*", sass)))
    assert not fused, f"{name}: {fused} in the SASS"
