"""CPU casts of any framework's arrays by the numba kernels of :mod:`.cpu_cast`, without copies.

The input's buffer is read in place as a numpy array of its bits (float32 as uint32, bfloat16 and
float16 as uint16), taken through DLPack (numpy, torch, JAX and MLX all export host memory) or, for
bfloat16 in torch and JAX, whose DLPack numpy cannot import, through the backend's own numpy view.
A non-contiguous input is copied once into a contiguous ``[rows, cols]`` array (the shared code
reads it in order too). The codes and scales are written into 64-byte aligned numpy buffers that
torch (``from_numpy``) and JAX (``device_put`` on the CPU) then wrap without a copy; numpy keeps them;
MLX, which cannot wrap memory it did not allocate, copies them once (a quarter of the input's bytes
or less).

A framework whose own CPU code flushes subnormals (JAX's XLA) computes other bits than the kernel
for inputs holding magnitudes below 2**-96 (subnormal, or blocks that small); such a cast is given
to the shared code after all, so that the arrays are always the framework's own.

numba is optional (the ``cpu`` extra), and the kernels are opt-in for now: they run only where the
environment sets ``BRECCIA_CPU_KERNELS=1``, because a fresh machine compiles each kernel on its
first cast, which takes seconds per input dtype (numba caches them on disk after that; RESULTS.md,
"Measurements behind code choices"). Without
numba, without the variable, or where a plan does not apply, :func:`host_cast` returns None and the
shared code runs, which gives the same arrays.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import numpy as np

from ..backends import Backend, get_backend
from ..backends._base import DLPACK_CPU
from ..backends.numpy_backend import aligned_empty
from ..formats import ElementFormat, encode_constants, packed_length
from ..layouts import Layout, scale_shape
from ..recipes import Recipe
from ..scaling import KernelRule
from ._cast_plan import CastPlan, cast_plan

__all__ = ["host_cast", "ENABLE"]

#: The environment variable that turns the CPU kernels on ("1").
ENABLE = "BRECCIA_CPU_KERNELS"


@functools.cache
def _kernels() -> Any:
    """:mod:`.cpu_cast`, or None where numba is not installed (or cannot be imported here)."""
    try:
        from . import cpu_cast
    except ImportError:
        return None
    return cpu_cast


def host_cast(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any) -> tuple | None:
    """``(data, scale, None, None, None)`` of a cast of the host array ``x`` by a CPU kernel, in
    ``x``'s framework, or None where none applies (the caller then runs the shared code)."""
    if os.environ.get(ENABLE) != "1":
        return None
    if history is not None or backend.is_traced(x) or backend.is_cuda(x):  # the GPU's fused kernels
        return None
    if backend.dlpack_device(x) != DLPACK_CPU:
        return None
    shape = tuple(int(d) for d in x.shape)
    plan = cast_plan(recipe, layout, shape, backend.dtype_name(x))
    if plan is None or (plan.packed and plan.block_cols % 2) or (kernels := _kernels()) is None:
        return None
    try:
        bits = _bits_view(backend, x)
    except ValueError:  # a trace that cannot read buffers (inside a user's mx.compile)
        return None
    bits = np.ascontiguousarray(np.reshape(bits, (plan.rows, plan.cols)))
    fmt = recipe.element_format
    codes = aligned_empty((plan.rows, packed_length(plan.cols) if fmt.packed else plan.cols), np.uint8)
    with _LAUNCH:
        scale, low = _launch(kernels, plan, bits, codes)
    if low < _TINY and _flushes_subnormals(backend):
        return None
    device = backend.device(x)
    data_shape = (*shape[:-1], packed_length(shape[-1]) if fmt.packed else shape[-1])
    data = _wrap(backend, codes.reshape(data_shape), backend.storage_dtype(fmt), device)
    scale_fmt = recipe.scale_element_format
    stored = "float32" if scale_fmt is None else backend.storage_dtype(scale_fmt)
    return data, _wrap(backend, scale.reshape(scale_shape(layout, shape)), stored, device), None, None, None


#: one kernel launch at a time: numba's fallback threading layer (workqueue, where neither OpenMP nor
#: TBB loads) aborts on concurrent parallel launches, and each launch uses every core anyway
_LAUNCH = threading.Lock()


def _launch(kernels: Any, plan: CastPlan, bits: np.ndarray, codes: np.ndarray) -> tuple[Any, float]:
    """Run the plan's kernel; returns the scales (float32, or E8M0 codes as uint8) and the smallest
    nonzero magnitude of the input."""
    f = _encode_fields(plan.fmt)
    fmax = np.float32(plan.fmax)
    given = plan.rule == KernelRule.GIVEN
    lows = np.empty(plan.rows if given else plan.scale_rows, np.float32)
    if given:  # per-tensor current scaling: two passes
        stored = kernels.tensor_cast(bits, codes, lows, fmax, np.float32(plan.eps), plan.power_2, f)
        scale = aligned_empty((1, 1), np.float32)
        scale[...] = stored
    elif plan.scale_e8m0:  # the MX rules
        scale = aligned_empty((plan.rows, plan.scale_cols), np.uint8)
        kernel = kernels.mx4_blocks if plan.packed else kernels.mx_blocks
        kernel(bits, codes, scale, lows, plan.block_cols, plan.rule.code, fmax, plan.emax_elem, f)
    else:
        scale = aligned_empty((plan.scale_rows, plan.scale_cols), np.float32)
        kernels.float8_blocks(
            bits, codes, scale, lows, plan.block_rows, plan.block_cols, plan.rule.code, fmax,
            np.float32(plan.eps), plan.power_2, f,
        )
    return scale, float(lows.min())


#: below this magnitude a backend that flushes subnormals can round differently (a subnormal input
#: read as 0, a block scale or ``amax / max`` below 2**-126 flushed); above it the kernel's bits are
#: its bits too, since a flushed product ``x * q`` keeps its sign and encodes to the same +-0
_TINY = 2.0**-96


def _flushes_subnormals(backend: Backend) -> bool:
    """Whether ``backend``'s compiled CPU code flushes subnormals to zero (XLA's CPU code does):
    probed once, by multiplying 2**-140 by 1 through :meth:`Backend.compile`."""
    cached = _FLUSHES.get(backend.name)
    if cached is None:
        probe = backend.compile(("host_cast:flush-probe",), lambda a, b: a * b)
        tiny, one = (backend.from_numpy(np.array([v], np.float32)) for v in (2.0**-140, 1.0))
        cached = _FLUSHES[backend.name] = bool(backend.to_numpy(probe(tiny, one))[0] == 0)
    return cached


_FLUSHES: dict[str, bool] = {}


def _bits_view(backend: Backend, x: Any) -> np.ndarray:
    """A numpy view of host array ``x``'s bits: uint32 for float32, uint16 for bfloat16, int16 for
    float16 (the kernels choose the widening by this dtype)."""
    name = backend.dtype_name(x)
    if name == "bfloat16" and backend.dlpack_native(name):  # torch, JAX: their numpy view
        view = backend.to_numpy(x)
    else:  # numpy, MLX: a free bit view first, as numpy's DLPack knows no bfloat16
        carried = backend.bitcast(x, "uint16") if name == "bfloat16" else x
        view = np.from_dlpack(backend.dlpack_export(carried))
    return view.view({"float32": np.uint32, "bfloat16": np.uint16, "float16": np.int16}[name])


def _wrap(backend: Backend, a: np.ndarray, storage: str, device: Any) -> Any:
    """``a`` (uint8 codes or float32) as a ``backend`` array of dtype ``storage`` (a bit view)."""
    if storage not in ("uint8", "float32"):
        a = a.view(get_backend("numpy").dtype(storage))
    return backend.from_numpy(a, device=device)


@functools.cache
def _encode_fields(fmt: ElementFormat) -> np.ndarray:
    """The constants of :func:`._cpu_scalar.encode` for ``fmt``, :func:`breccia.formats.encode_constants`
    with the float ones as their float32 bit patterns (uint32)."""
    c = encode_constants(fmt)

    def bits(v: float) -> int:
        return int(np.float32(v).view(np.uint32))

    fields = (bits(c.max_value), bits(c.min_normal), c.shift, c.rebias, bits(c.subnormal_scale), c.sign_shift)
    return np.array(fields, np.uint32)
