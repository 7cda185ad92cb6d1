"""Compiles the plain scalar functions of :mod:`pixel_math` for one target.

Every function of ``pixel_math`` is cloned with a globals dict of the target, in which each helper name is
that target's compiled wrapper, so a helper calling another helper calls the compiled one (Numba
resolves globals when it compiles). Targets:

- ``cpu``: ``numba.njit(inline="always")``;
- ``cuda``: ``numba.cuda.jit(device=True, inline="always")``, with the float arithmetic primitives
  bound to round-to-nearest intrinsics so that the CUDA compiler cannot contract ``a * b + c`` into
  an FMA (which would round differently from the CPU and from Pillow);
- ``cudasim``: the same device wrappers under ``NUMBA_ENABLE_CUDASIM=1``, where plain NumPy scalar
  arithmetic already rounds like the CPU (the simulator's libdevice stand-ins do not).
"""

from __future__ import annotations

import functools
import inspect
import types

from . import pixel_math

# The arithmetic primitives whose CUDA binding differs from their Python definition.
_CUDA_INTRINSICS = {"f32_mul": "fmul_rn", "f32_add": "fadd_rn", "f64_mul": "dmul_rn", "f64_add": "dadd_rn"}


def _scalar_functions() -> dict[str, types.FunctionType]:
    return {
        name: fn
        for name, fn in vars(pixel_math).items()
        if inspect.isfunction(fn) and fn.__module__ == pixel_math.__name__
    }


def _build(wrap, overrides: dict, target: str) -> types.ModuleType:
    namespace = dict(vars(pixel_math))
    compiled = {}
    for name, fn in _scalar_functions().items():
        clone = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
        clone.__qualname__ = fn.__qualname__
        compiled[name] = wrap(clone)
    compiled.update(overrides)
    namespace.update(compiled)
    # A module object, so that kernels can call ``fns.name(...)``: Numba resolves attributes of
    # module globals when it compiles.
    module = types.ModuleType(f"{pixel_math.__name__}.{target}")
    vars(module).update(compiled)
    return module


@functools.cache
def cpu_functions() -> types.ModuleType:
    import numba

    return _build(lambda fn: numba.njit(inline="always")(fn), {}, "cpu")


@functools.cache
def cuda_functions() -> types.ModuleType:
    """Device functions for the real CUDA target, or for the simulator when it is enabled."""
    from numba import cuda

    wrap = lambda fn: cuda.jit(device=True, inline="always")(fn)  # noqa: E731
    if cuda_simulated():
        return _build(wrap, {}, "cudasim")
    from numba.cuda import libdevice

    intrinsics = {name: getattr(libdevice, fn) for name, fn in _CUDA_INTRINSICS.items()}
    return _build(wrap, intrinsics, "cuda")


def cuda_simulated() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)
