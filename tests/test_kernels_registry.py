"""The op registry (kernels/ops.py) against everything that dispatches on an op, the op table in docs/kernels.md,
the kernel-argument bundles against every kernel's parameters, and the on-disk cache's Numba hook.

These are the checks that make adding an op safe: an op the registry declares but a dispatcher does
not handle fails here, instead of running some other op's pixel code."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from remixmatch.kernels import pixel_math
from remixmatch.kernels.args import ApplyArgs, WeakArgs
from remixmatch.kernels.ops import NUM_OPS, OP_NAMES, OPS, Kind, op_table
from remixmatch.kernels.tables import kernel_tables, level_form_table

OPS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "kernels.md"
IDS = range(NUM_OPS)


def _named_ops(function) -> set[str]:
    """The op names a dispatcher compares ``op`` against (``op == NAME``)."""
    tree = ast.parse(inspect.getsource(function))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "op":
            names |= {c.id.lower() for c in node.comparators if isinstance(c, ast.Name)}
    return names


def _ops(condition) -> set[str]:
    return {op.name for op in OPS if condition(op)}


def test_every_op_has_its_id_constant():
    for op_id, name in enumerate(OP_NAMES):
        assert getattr(pixel_math, name.upper(), None) == op_id, f"pixel_math.py lacks {name.upper()} = OP_ID[{name!r}]"


def test_trait_dispatchers_follow_the_kinds():
    for op_id in IDS:
        op = OPS[op_id]
        assert pixel_math.is_point_op(op_id) == (op.kind is Kind.POINT), op.name
        assert pixel_math.has_row_pass(op_id) == (op.kind is Kind.RESAMPLE), op.name
        assert pixel_math.needs_histogram(op_id) == op.histogram, op.name


def test_prepare_op_handles_every_op_with_levels():
    missing = _ops(lambda op: op.args) - _named_ops(pixel_math.prepare_op)
    assert not missing, f"prepare_op has no branch for {sorted(missing)}"


def test_point_value_handles_every_point_op_with_levels():
    # A point op without levels (identity) is the final `return v`.
    missing = _ops(lambda op: op.kind is Kind.POINT and op.args) - _named_ops(pixel_math.point_value)
    assert not missing, f"point_value has no branch for {sorted(missing)}"


def test_op_pixel_handles_every_other_op():
    # Geometric ops share the affine branch, selected by kind; every other non-point op needs its own.
    named = _named_ops(pixel_math.op_pixel)
    missing = _ops(lambda op: op.kind not in (Kind.POINT, Kind.GEOMETRIC)) - named
    assert not missing, f"op_pixel has no branch for {sorted(missing)}"
    assert not named & _ops(lambda op: op.kind is Kind.POINT), "op_pixel names a point op"


def test_statistics_handle_every_histogram_op():
    missing = _ops(lambda op: op.histogram) - _named_ops(pixel_math.finish_statistics)
    assert not missing, f"finish_statistics has no branch for {sorted(missing)}"


def test_one_resample_op():
    # row_pass_rows / row_pass_pixel run rescale's passes without testing the op: a second
    # resample op needs branches there first.
    assert _ops(lambda op: op.kind is Kind.RESAMPLE) == {"rescale"}


@pytest.mark.parametrize("op_id", IDS, ids=OP_NAMES)
def test_every_op_writes_every_pixel(op_id):
    # The scalar functions run as plain Python: the pass the kernels make for this op must write
    # every output element, whatever the output buffer held before.
    height, width = 7, 9
    rng = np.random.default_rng(op_id)
    image = rng.integers(0, 256, height * width * 3).astype(np.uint8)
    tables = kernel_tables(height, width)
    outs = [_run_op(op_id, image, height, width, tables, fill) for fill in (0, 255)]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_row_dispatchers_follow_the_kinds():
    # op_row serves every filter and resample op (the CPU backend routes them there by has_row_output).
    for op_id in IDS:
        assert pixel_math.has_row_output(op_id) == (OPS[op_id].kind in (Kind.FILTER, Kind.RESAMPLE)), OP_NAMES[op_id]
    missing = _ops(lambda op: op.kind is Kind.FILTER) - _named_ops(pixel_math.filter_row)
    assert not missing, f"filter_row has no branch for {sorted(missing)}"
    assert _ops(lambda op: op.kind is Kind.RESAMPLE) <= _named_ops(pixel_math.op_row)


ROW_OPS = [i for i in IDS if OPS[i].kind in (Kind.FILTER, Kind.RESAMPLE)]


@pytest.mark.parametrize("height, width", [(1, 1), (2, 5), (3, 3), (4, 6), (5, 5), (7, 9), (9, 4)])
@pytest.mark.parametrize("op_id", ROW_OPS, ids=[OP_NAMES[i] for i in ROW_OPS])
def test_a_row_at_a_time_equals_a_pixel_at_a_time(op_id, height, width):
    # The CPU backend's op_row and the CUDA backend's op_pixel, on sizes where the borders the
    # filters copy meet or cover the whole image.
    rng = np.random.default_rng(op_id * 100 + height * 10 + width)
    image = rng.integers(0, 256, height * width * 3).astype(np.uint8)
    tables = kernel_tables(height, width)
    for levels in ((0.8, 0.3), (0.2, 0.9), (1.0, 0.0)):
        by_pixel = _run_op(op_id, image, height, width, tables, 0, levels=levels)
        by_row = _run_op(op_id, image, height, width, tables, 255, levels=levels, by_rows=True)
        np.testing.assert_array_equal(by_row, by_pixel, err_msg=f"{OP_NAMES[op_id]} at levels {levels}")


@pytest.mark.parametrize("size", [8, 32, 96, 255])
def test_resampling_sums_fit_in_int32(size):
    # rescale's vertical pass sums in int32, as Pillow does: the largest weighted sum of 255s plus
    # the rounding half must stay below 2^31 for every filter, crop and output pixel.
    from remixmatch.kernels.tables import resample_table

    coefs = resample_table(size).coefs.astype(np.int64)
    largest = int(np.abs(coefs).sum(axis=-1).max()) * 255 + pixel_math.RESAMPLE_HALF
    assert largest < 2**31, f"size {size}: {largest}"


def _run_op(op, image, height, width, tables, fill, levels=(0.8, 0.3), by_rows=False):
    params_i = np.zeros(pixel_math.PARAMS_I, np.int32)
    params_f = np.zeros(pixel_math.PARAMS_F, np.float64)
    coords = np.zeros(height + width, np.int32)
    hist = np.zeros(pixel_math.LUT_SIZE, np.int32)
    lut = np.zeros(pixel_math.LUT_SIZE, np.int32)
    rows = np.zeros_like(image)
    out = np.full_like(image, fill)
    pixel_math.prepare_op(op, *levels, 0.4, 0.6, height, width, params_i, params_f, coords,
                      tables.rotations, level_form_table("corrected"))
    if pixel_math.needs_histogram(op):
        for p in range(height * width):
            for c in range(3):
                slot = pixel_math.histogram_slot(op, image, p, c)
                if slot >= 0:
                    hist[slot] += 1
        for c in range(3):
            pixel_math.finish_statistics(op, hist, lut, params_i, c, height * width)
    if pixel_math.is_point_op(op):
        for j in range(pixel_math.LUT_SIZE):
            lut[j] = pixel_math.point_value(op, j & 255, lut[j], params_i, params_f)
        return lut[(np.arange(image.size) % 3) * 256 + image]
    acc = np.zeros(max(height, width) * 3, np.int32)
    if pixel_math.has_row_pass(op) and by_rows:
        pixel_math.row_pass_by_columns(op, image, rows, out, width, params_i, tables.rescale_x.bounds,
                                   tables.rescale_x.coefs, acc)
    elif pixel_math.has_row_pass(op):
        for r in range(pixel_math.row_pass_rows(op, params_i)):
            for x in range(width):
                pixel_math.row_pass_pixel(op, image, rows, r, x, width, params_i,
                                      tables.rescale_x.bounds, tables.rescale_x.coefs)
    if by_rows:
        for y in range(height):
            pixel_math.op_row(op, image, rows, out, y, height, width, params_i, params_f,
                          tables.rescale_y.bounds, tables.rescale_y.coefs, acc)
        return out
    for y in range(height):
        for x in range(width):
            pixel_math.op_pixel(op, image, rows, out, y, x, height, width, params_i, params_f, coords,
                            tables.rescale_y.bounds, tables.rescale_y.coefs)
    return out


def test_docs_op_table_is_generated_from_the_registry():
    text = OPS_PAGE.read_text()
    section = text[text.index("## The ops"): text.index("## How to add an op")]
    assert op_table() in section, (
        "docs/kernels.md's op table differs from the registry: replace it with the output of "
        "python -c 'from remixmatch.kernels.ops import op_table; print(op_table())'")


def _parameters(function) -> tuple[str, ...]:
    return tuple(inspect.signature(getattr(function, "py_func", function)).parameters)


def test_cpu_kernels_take_the_bundles():
    from remixmatch.kernels.cpu import apply_ops_cpu, apply_ops_cpu_serial, weak_augment_cpu

    assert _parameters(apply_ops_cpu) == ApplyArgs._fields
    assert _parameters(apply_ops_cpu_serial) == ApplyArgs._fields
    assert _parameters(weak_augment_cpu) == WeakArgs._fields


def test_cuda_kernels_take_the_bundles():
    from remixmatch.kernels.cuda import kernel_signatures

    kernels = kernel_signatures()
    for name, (kernel, signature) in kernels.items():
        fields = WeakArgs._fields if name == "weak_augment_kernel" else ApplyArgs._fields
        assert _parameters(kernel)[: len(fields)] == fields, name
        assert len(signature) == len(_parameters(kernel)), name


def test_no_weak_and_no_cutout_are_flags():
    from remixmatch.kernels.args import apply_args

    images = np.zeros((2, 4, 4, 3), np.uint8)
    op_ids = np.zeros((2, 1), np.int32)
    levels = np.zeros((2, 1, 2), np.float32)
    rand = np.zeros((2, 2, 2), np.float32)
    out = np.empty_like(images)
    tables = kernel_tables(4, 4).arrays()
    forms = level_form_table("corrected")
    plain = apply_args(images, op_ids, levels, rand, forms, None, None, None, None, 4, out, tables, np.asarray)
    assert plain.weak is False and plain.cutout is False
    fused = apply_args(images, op_ids, levels, rand, forms, 0.0, None, np.zeros(2, np.int32),
                       np.zeros((2, 2), np.int32), 4, out, tables, np.asarray)
    assert fused.weak is True and fused.cutout is True and fused.cutout_level == 0.0


def test_kernel_cache_uses_the_source_digest():
    # The CPU kernels must be cached under the digest of every kernel source: if a Numba upgrade
    # picks another locator, an edit of pixel_math.py would reuse a stale kernel (or every run recompiles).
    from remixmatch.kernels import jit_cache
    from remixmatch.kernels.cpu import apply_ops_cpu, weak_augment_cpu

    for kernel in (apply_ops_cpu, weak_augment_cpu):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, jit_cache.KERNEL_LOCATORS), type(locator).__name__
        # Beside the sources while that folder is writable (as here): the installed-package test copies
        # kernels/__pycache__ into a fresh venv so that its commands do not compile again.
        assert type(locator) is jit_cache.KERNEL_LOCATORS[0], type(locator).__name__
        assert locator.get_source_stamp() == jit_cache._sources_digest()


def test_cache_hook_refuses_loudly_when_numba_drops_it(monkeypatch):
    from numba.core import caching

    from remixmatch.kernels import jit_cache

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", None)
    with pytest.raises(RuntimeError, match=re.escape("_locator_classes is gone")):
        jit_cache.install()


def test_the_serial_twin_renders_the_parallel_kernels_views():
    # DALI's in-graph kernel calls the one-thread twin; with the same arguments it must write the
    # same pixels as apply_ops (every op, weak source views, a cutout after each chain).
    from remixmatch.kernels import apply_ops
    from remixmatch.kernels.args import apply_args
    from remixmatch.kernels.cpu import apply_ops_cpu_serial

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 12, 10, 3), dtype=np.uint8)
    n = 2 * NUM_OPS
    op_ids = np.stack([np.arange(n) % NUM_OPS, rng.integers(0, NUM_OPS, n)], axis=1).astype(np.int32)
    levels = rng.random((n, 2, 2), dtype=np.float32)
    rand = rng.random((n, 3, 2), dtype=np.float32)
    sources = rng.integers(0, 3, n).astype(np.int32)
    flips = rng.integers(0, 2, n).astype(np.int32)
    offsets = rng.integers(0, 9, (n, 2)).astype(np.int32)
    expected = apply_ops(images, op_ids, levels, rand, cutout_level=0.5, sources=sources, flips=flips,
                         offsets=offsets, pad=4)
    out = np.zeros_like(expected)
    apply_ops_cpu_serial(*apply_args(images, op_ids, levels, rand, level_form_table("corrected"), 0.5, sources,
                                     flips, offsets, 4, out, kernel_tables(12, 10).arrays(), np.asarray))
    np.testing.assert_array_equal(out, expected)
