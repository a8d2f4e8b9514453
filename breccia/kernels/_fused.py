"""The fused GPU casts and dequantizations, framework-neutral: plan, launch, and assemble the arrays;
and :func:`host_cast`, the one-pass CPU casts of host arrays (:mod:`._host`), chosen by the same plan.

:func:`fused_cast` returns exactly what :func:`breccia.quantize._cast_arrays` returns, computed by the
kernels of :mod:`.torch_cast` or :mod:`.jax_cast`, which share one interface: ``launch_cast`` (a
per-block cast), ``launch_per_tensor`` (a per-tensor cast, with DelayedScaling's next history) and
``launch_dequantize``. A per-tensor cast needs the whole tensor's amax before any element can be
encoded, so current scaling is two passes over the tensor; DelayedScaling takes its scale from the
history and needs one, which also yields the amax it records. How each module joins the passes is its
own: torch's reduce the amax with atomics inside its Triton kernels, JAX's reduce per-tile amaxes with
:mod:`breccia.scaling`'s rule, which XLA compiles into the caller's program beside the Pallas kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from ..layouts import Layout, scale_shape
from ..recipes import Recipe
from ._cast_plan import cast_plan, dequantize_plan
from ._host import host_cast

__all__ = ["fused_cast", "fused_dequantize", "host_cast"]

_MODULES = {"torch": "torch_cast", "jax": "jax_cast"}


def _kernels(backend: Any, x: Any) -> Any:
    module = _MODULES.get(backend.name)
    if module is None or not backend.is_cuda(x):
        return None
    return import_module(f"{__package__}.{module}")


def fused_cast(
    backend: Any, recipe: Recipe, layout: Layout, x: Any, history: Any, shared: Callable[[], tuple]
) -> tuple:
    """``(data, scale, None, None, new_history)`` of a cast: by a fused kernel where one applies on
    ``x``'s device, else ``shared()`` (the reference path, which gives the same arrays)."""
    plan = cast_plan(recipe, layout, tuple(x.shape), backend.dtype_name(x))
    kernels = None if plan is None else _kernels(backend, x)
    if kernels is None:
        return shared()
    return backend.by_platform(x, lambda: _cast(backend, kernels, plan, recipe, layout, x, history), shared)


def _cast(backend: Any, kernels: Any, plan: Any, recipe: Recipe, layout: Layout, x: Any, history: Any):
    xp = backend.xp
    shape = tuple(x.shape)
    new_history = None
    if plan.rule == "given":
        data, scale, new_history = kernels.launch_per_tensor(plan, recipe, x, history)
    else:
        data, scale = kernels.launch_cast(plan, x)
    fmt = recipe.element_format
    data = xp.reshape(data, (*shape[:-1], shape[-1] // 2 if fmt.packed else shape[-1]))
    scale = xp.reshape(scale, scale_shape(layout, shape))
    scale_fmt = recipe.scale_element_format
    if scale_fmt is not None:
        scale = backend.to_storage(scale, scale_fmt)
    return backend.to_storage(data, fmt), scale, None, None, new_history


def fused_dequantize(backend: Any, st: Any, dtype_name: str, shared: Callable[[], Any]) -> Any:
    """``dequantize(st, dtype_name)``: by a fused kernel where one applies, else ``shared()``."""
    plan = dequantize_plan(st, dtype_name)
    kernels = None if plan is None else _kernels(backend, st.data)
    if kernels is None:
        return shared()

    def fused() -> Any:
        out = kernels.launch_dequantize(plan, st.data, st.scale, dtype_name)
        return backend.xp.reshape(out, st.shape)

    return backend.by_platform(st.data, fused, shared)

