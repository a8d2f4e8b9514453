"""The fused GPU casts and dequantizations, framework-neutral: which one applies, and its launch.

:func:`fused_cast` and :func:`fused_dequantize` answer, from values alone (framework, whether the
array is on an NVIDIA GPU, recipe, layout, shape, dtype), with a launcher or None; the answer is
cached per those values. :mod:`breccia.quantize` runs the launcher (through
:meth:`Backend.by_platform`, so that a traced JAX array chooses per platform) or the shared code of
:mod:`breccia.blockwise`, which gives the same arrays. Nothing here calls back into :mod:`breccia.quantize`.

A launcher runs the kernels of :mod:`.torch_cast` or :mod:`.jax_cast`, which share one interface:
``launch_cast`` (a per-block cast), ``launch_per_tensor`` (a per-tensor cast, with DelayedScaling's
next history) and ``launch_dequantize``, each taking the framework's :class:`Backend` first. A
per-tensor cast needs the whole tensor's amax before any element can be encoded, so current scaling
is two passes over the tensor; DelayedScaling takes its scale from the history and needs one, which
also yields the amax it records. How each module joins the passes is its own: torch's reduce the amax
with atomics inside its Triton kernels, JAX's reduce per-tile amaxes with :mod:`breccia.scaling`'s
rule, which XLA compiles into the caller's program beside the Pallas kernels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..layouts import Layout, scale_shape
from ..recipes import Recipe
from ._cast_plan import CastPlan, cast_plan, dequantize_plan

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = ["FusedCast", "FusedDequantize", "fused_cast", "fused_dequantize"]

#: the kernel module of each framework that has fused kernels
_MODULES = {"torch": "torch_cast", "jax": "jax_cast"}


@dataclass(frozen=True)
class FusedCast:
    """One fused cast: ``launch(backend, x, history)`` returns what the shared code
    (:func:`breccia.blockwise.cast_arrays`) returns, ``(data, scale, None, None, next_history)``."""

    module: str
    plan: CastPlan
    recipe: Recipe
    layout: Layout

    def __call__(self, backend: Backend, x: Any, history: Any) -> tuple:
        kernels = import_module(f"{__package__}.{self.module}")
        xp = backend.xp
        shape = tuple(x.shape)
        new_history = None
        if self.plan.rule == "given":
            data, scale, new_history = kernels.launch_per_tensor(backend, self.plan, self.recipe, x, history)
        else:
            data, scale = kernels.launch_cast(backend, self.plan, x)
        fmt = self.recipe.element_format
        data = xp.reshape(data, (*shape[:-1], shape[-1] // 2 if fmt.packed else shape[-1]))
        scale = xp.reshape(scale, scale_shape(self.layout, shape))
        scale_fmt = self.recipe.scale_element_format
        if scale_fmt is not None:
            scale = backend.to_storage(scale, scale_fmt)
        return backend.to_storage(data, fmt), scale, None, None, new_history


@dataclass(frozen=True)
class FusedDequantize:
    """One fused dequantize: ``launch(backend, data, scale)`` returns the values, of ``shape`` and
    ``dtype_name``, that the shared code (:func:`breccia.blockwise.dequantize_arrays`) returns."""

    module: str
    plan: CastPlan
    shape: tuple[int, ...]
    dtype_name: str

    def __call__(self, backend: Backend, data: Any, scale: Any) -> Any:
        kernels = import_module(f"{__package__}.{self.module}")
        out = kernels.launch_dequantize(backend, self.plan, data, scale, self.dtype_name)
        return backend.xp.reshape(out, self.shape)


@functools.lru_cache(maxsize=256)
def fused_cast(
    framework: str, on_cuda: bool, recipe: Recipe, layout: Layout, shape: tuple[int, ...], dtype_name: str
) -> FusedCast | None:
    """The fused cast of a ``framework`` array of ``shape`` and ``dtype_name`` (on an NVIDIA GPU when
    ``on_cuda``) under ``recipe`` and ``layout``, or None where the shared code runs."""
    module = _MODULES.get(framework)
    if module is None or not on_cuda:
        return None
    plan = cast_plan(recipe, layout, shape, dtype_name)
    return None if plan is None else FusedCast(module, plan, recipe, layout)


@functools.lru_cache(maxsize=256)
def fused_dequantize(
    framework: str, on_cuda: bool, recipe: Recipe, layout: Layout, shape: tuple[int, ...], dtype_name: str
) -> FusedDequantize | None:
    """The fused dequantize to ``dtype_name`` of a ``framework`` ScaledTensor of ``recipe``, ``layout``
    and logical ``shape`` (on an NVIDIA GPU when ``on_cuda``), or None where the shared code runs."""
    module = _MODULES.get(framework)
    if module is None or not on_cuda:
        return None
    plan = dequantize_plan(recipe, layout, shape, dtype_name)
    return None if plan is None else FusedDequantize(module, plan, shape, dtype_name)
