"""ScaledTensor: quantized data, its scales, and what they mean, in one framework's arrays.

``x ~ decode(data) * scale [* global_scale]`` blockwise under ``layout`` (see ``quantize.py`` for the
zero-point forms). The arrays belong to one framework (``framework``) and device; ``shape`` and
``dtype`` are the logical (dequantized) shape and dtype.

A ScaledTensor is a JAX pytree (its arrays are the leaves, everything else static), so it passes
through ``jax.jit``, ``jax.vmap`` and sharding. Registration happens as soon as JAX is in use by
breccia, or at import if JAX was imported first, so ``import breccia`` never imports JAX.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from .layouts import Layout
from .recipes import Recipe

__all__ = ["ScaledTensor", "register_jax_pytrees"]


def _nbytes(a: Any) -> int:
    if a is None:
        return 0
    nbytes = getattr(a, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return int(math.prod(a.shape)) * int(a.dtype.itemsize)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"


class ScaledTensor:
    """A block-scaled low-precision tensor (see the module docstring for the meaning of fields)."""

    __slots__ = (
        "data",
        "dtype_name",
        "framework",
        "global_scale",
        "layout",
        "recipe",
        "scale",
        "shape",
        "zero_point",
    )

    def __init__(
        self,
        data: Any,
        scale: Any,
        recipe: Recipe,
        layout: Layout,
        shape: tuple[int, ...],
        dtype_name: str,
        framework: str,
        *,
        global_scale: Any = None,
        zero_point: Any = None,
    ) -> None:
        self.data = data
        self.scale = scale
        self.global_scale = global_scale
        self.zero_point = zero_point
        self.recipe = recipe
        self.layout = layout
        self.shape = tuple(shape)
        self.dtype_name = dtype_name
        self.framework = framework

    # --- derived properties -------------------------------------------------------------------------
    @property
    def dtype(self) -> Any:
        """The logical dtype as the framework's dtype object (e.g. ``torch.bfloat16``)."""
        from .backends import get_backend

        return get_backend(self.framework).dtype(self.dtype_name)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data, scales, global scale and zero points together."""
        return sum(_nbytes(a) for a in (self.data, self.scale, self.global_scale, self.zero_point))

    @property
    def device(self) -> Any:
        """The device of the data array (``None`` for numpy and MLX's unified memory)."""
        from .backends import get_backend

        return get_backend(self.framework).device(self.data)

    @property
    def arrays(self) -> tuple[Any, Any, Any, Any]:
        """``(data, scale, global_scale, zero_point)``; absent ones are None."""
        return self.data, self.scale, self.global_scale, self.zero_point

    def replace_arrays(
        self,
        data: Any,
        scale: Any,
        global_scale: Any = None,
        zero_point: Any = None,
        *,
        framework: str | None = None,
    ) -> ScaledTensor:
        """The same tensor description over other arrays (of ``framework``, by default this one's)."""
        return ScaledTensor(
            data,
            scale,
            self.recipe,
            self.layout,
            self.shape,
            self.dtype_name,
            framework or self.framework,
            global_scale=global_scale,
            zero_point=zero_point,
        )

    # --- operations ---------------------------------------------------------------------------------
    def dequantize(self, dtype: Any = None) -> Any:
        """Same as :func:`breccia.dequantize`."""
        from .quantize import dequantize

        return dequantize(self, dtype)

    def to(self, framework: str, device: Any = None, *, copy: bool | None = None) -> ScaledTensor:
        """This tensor in another framework (and/or on another device), bits unchanged.

        Moves go through the DLPack hub (:func:`breccia.bridges.from_dlpack`): zero-copy wherever the
        two frameworks can share memory.
        """
        from .bridges import from_dlpack

        return from_dlpack(self, framework, device=device, copy=copy)

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.shape) or "scalar"
        dense = self.size * {"float64": 8, "float32": 4}.get(self.dtype_name, 2)
        ratio = ""
        if self.nbytes and dense:
            ratio = f", {dense / self.nbytes:.2f}x smaller than {self.dtype_name}"
        return (
            f"ScaledTensor({self.recipe!r}, {self.layout!r}, shape={shape}, "
            f"dtype={self.dtype_name}, framework={self.framework}, "
            f"bytes={_human(self.nbytes)}{ratio})"
        )


_JAX_REGISTERED = False


def register_jax_pytrees() -> None:
    """Register ScaledTensor and AmaxHistory as JAX pytrees (idempotent; imports JAX)."""
    global _JAX_REGISTERED
    if _JAX_REGISTERED:
        return
    import jax

    from .scaling import AmaxHistory

    def flatten(st: ScaledTensor):
        aux = (st.recipe, st.layout, st.shape, st.dtype_name, st.framework)
        return st.arrays, aux

    def unflatten(aux, children) -> ScaledTensor:
        recipe, layout, shape, dtype_name, framework = aux
        data, scale, global_scale, zero_point = children
        return ScaledTensor(
            data, scale, recipe, layout, shape, dtype_name, framework,
            global_scale=global_scale, zero_point=zero_point,
        )

    jax.tree_util.register_pytree_node(ScaledTensor, flatten, unflatten)
    jax.tree_util.register_pytree_node(
        AmaxHistory, lambda h: ((h.amax,), None), lambda _, children: AmaxHistory(children[0])
    )
    _JAX_REGISTERED = True


if sys.modules.get("jax") is not None:  # JAX came first: register now
    register_jax_pytrees()
