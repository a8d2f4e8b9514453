"""from_buffer: existing quantized arrays wrapped as a ScaledTensor, checked to fit together; and
the checks of a recipe and its layout that a cast makes too (:func:`check_recipe`,
:func:`checked_layout`).

Each check raises breccia's error for what does not fit (a dtype, a shape, a framework, a missing
or surplus global scale or zero point) and says what was expected.
"""

from __future__ import annotations

import math
from typing import Any

from .backends import Backend, backend_for, float_dtype_name
from .choices import RecipeConvention, ScaleFormat
from .errors import DTypeError, FrameworkError, LayoutError, RecipeError, ShapeError
from .formats import packed_length
from .layouts import Layout, scale_shape
from .recipes import Recipe
from .tensor import ScaledTensor

__all__ = ["check_recipe", "checked_layout", "from_buffer"]


def check_recipe(recipe: Any) -> Recipe:
    if not isinstance(recipe, Recipe):
        raise RecipeError(
            f"recipe must be a breccia recipe such as bc.MXFP8BlockScaling(); got {type(recipe).__name__}"
        )
    return recipe


def checked_layout(recipe: Recipe, layout: Layout | None, shape: tuple[int, ...]) -> Layout:
    """The layout a cast of ``shape`` under ``recipe`` uses (``layout``, or the recipe's default),
    checked against the recipe and the shape; raises LayoutError saying what does not fit."""
    layout = recipe.check_layout(layout)
    layout.check_shape(shape)
    if recipe.convention == RecipeConvention.MLX and shape and shape[-1] % layout.block_shape(shape)[-1]:
        raise LayoutError(
            f"{recipe!r} follows MLX's affine mode, which needs the last axis ({shape[-1]}) to be a "
            f"multiple of the group size {layout.block_shape(shape)[-1]}"
        )
    return layout


def from_buffer(
    data: Any,
    scale: Any,
    recipe: Recipe,
    layout: Layout | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: Any = None,
    global_scale: Any = None,
    zero_point: Any = None,
) -> ScaledTensor:
    """Wrap existing quantized arrays as a ScaledTensor, checking that they fit together.

    ``data`` holds the codes: the framework's fp8 dtype or uint8 bits for FP8; uint8 with two 4-bit
    codes per byte (element 2i low) for FP4/INT4; int8 for INT8. ``scale`` has the layout's grid
    shape (``ceil(dim / block)`` per axis): float32 (bfloat16/float16 are accepted), or E8M0/E4M3
    (native dtype or uint8 bits). ``shape`` is the logical shape (needed only for an odd packed last
    axis); ``dtype`` the logical dtype (default float32; any spelling :func:`dequantize` takes).
    NVFP4 needs ``global_scale``; asymmetric integer recipes need ``zero_point`` (same shape as
    ``scale``).
    """
    recipe = check_recipe(recipe)
    backend = backend_for(data, "data")
    fmt = recipe.element_format
    scale_backend = backend_for(scale, "scale")
    if scale_backend.name != backend.name:
        raise FrameworkError(
            f"data is a {backend.name} array but scale is a {scale_backend.name} array; "
            "pass both in one framework"
        )
    data = _check_data_dtype(backend, data, fmt)
    stored_shape = tuple(int(d) for d in data.shape)
    if shape is None:
        packed = fmt.packed and stored_shape
        logical = (*stored_shape[:-1], 2 * stored_shape[-1]) if packed else stored_shape
    else:
        logical = tuple(int(d) for d in shape)
        expected = (*logical[:-1], packed_length(logical[-1])) if fmt.packed and logical else logical
        if expected != stored_shape:
            raise ShapeError(
                f"data of shape {stored_shape} cannot hold a {fmt.name} tensor of shape {logical}; "
                f"expected data shape {expected}"
            )
    layout = checked_layout(recipe, layout, logical)
    grid = scale_shape(layout, logical or (1,))
    grid = grid if logical else ()
    if tuple(scale.shape) != grid:
        raise ShapeError(
            f"scale has shape {tuple(scale.shape)} but {layout!r} on a tensor of shape {logical} needs {grid}"
        )
    scale = _check_scale_dtype(backend, scale, recipe)
    if recipe.has_global_scale:
        if global_scale is None:
            raise RecipeError("NVFP4 needs global_scale= (the fp32 second-level scale)")
        global_scale = _check_float_array(backend, global_scale, "global_scale", (), allow_size1=True)
    elif global_scale is not None:
        raise RecipeError(f"{recipe.name} has no global scale; only NVFP4BlockScaling does")
    if recipe.zero_point_kind is not None:
        if zero_point is None:
            raise RecipeError(f"{recipe!r} is asymmetric and needs zero_point= (shape {grid})")
        zero_point = _check_float_array(backend, zero_point, "zero_point", grid)
    elif zero_point is not None:
        raise RecipeError(f"{recipe!r} is symmetric and takes no zero_point")
    dtype_name = "float32" if dtype is None else float_dtype_name(dtype)
    return ScaledTensor(
        data=data,
        scale=scale,
        recipe=recipe,
        layout=layout,
        shape=logical,
        dtype_name=dtype_name,
        framework=backend.name,
        global_scale=global_scale,
        zero_point=zero_point,
    )


def _check_data_dtype(backend: Backend, data: Any, fmt: Any) -> Any:
    name = backend.dtype_name(data)
    target = backend.storage_dtype(fmt)
    if name == target:
        return data
    if name == "uint8" and fmt.kind == "float" and not fmt.packed:
        return backend.bitcast(data, target)
    bits = " or uint8 bits" if target != "uint8" and fmt.kind == "float" else ""
    raise DTypeError(f"{fmt.name} data must be {target}{bits}; got {name}")


def _check_scale_dtype(backend: Backend, scale: Any, recipe: Recipe) -> Any:
    name = backend.dtype_name(scale)
    if recipe.scale_format == ScaleFormat.F32:
        if name not in ("float32", "bfloat16", "float16"):
            raise DTypeError(f"{recipe.name} scales must be float32 (or bfloat16/float16); got {name}")
        return scale
    fmt = recipe.scale_element_format
    target = backend.storage_dtype(fmt)
    if name == target:
        return scale
    if name == "uint8":
        return backend.bitcast(scale, target)
    raise DTypeError(f"{recipe.name} scales are {fmt.name}: {target} or uint8 bits; got {name}")


def _check_float_array(
    backend: Backend, a: Any, what: str, shape: tuple[int, ...], allow_size1: bool = False
) -> Any:
    """A float array ``a`` of ``shape`` in ``backend``'s framework (a size-1 array reshapes if allowed)."""
    found = backend_for(a, what).name
    if found != backend.name:
        raise FrameworkError(f"{what} must be a {backend.name} array like data; got a {found} one")
    if backend.dtype_name(a) not in ("float32", "bfloat16", "float16"):
        raise DTypeError(f"{what} must be float32; got {backend.dtype_name(a)}")
    got = tuple(a.shape)
    if got != shape:
        if allow_size1 and math.prod(got) == 1:
            return backend.xp.reshape(a, shape)
        raise ShapeError(f"{what} has shape {got}; expected {shape}")
    return a
