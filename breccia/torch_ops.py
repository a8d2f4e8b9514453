"""``bc.cast``, ``bc.dequantize`` and ``bc.matmul``/``bc.linear`` as torch custom ops, so that
``torch.compile(fullgraph=True)`` captures them.

Dynamo (torch.compile's tracer) cannot trace all of breccia's eager path: the backend lookup imports
modules, the NaN/Inf and range checks read values (``Tensor.item()``), the kernel plan is an
``lru_cache``, and ScaledTensor's constructor keeps an identity-keyed cache. So under torch.compile
:func:`breccia.quantize.cast`, :func:`~breccia.quantize.dequantize`, :func:`breccia.matmul.matmul`
and :func:`~breccia.matmul.linear` hand torch tensors to this module, which calls one opaque op each:

- ``breccia::cast(x, recipe, layout, history?) -> (data, scale, global_scale, zero_point, history)``
- ``breccia::dequantize(data, scale, global_scale?, zero_point?, recipe, layout, shape, dtype, out_dtype)``
- ``breccia::matmul(a side, b side, transpose_b) -> y``, a side being a tensor, or a ScaledTensor's
  arrays and description as for dequantize

Their eager implementations run the normal eager path (``bc.cast``, ``bc.dequantize``, ...) on real
tensors, so the bits are those of an uncompiled call by construction, and every check (NaN/Inf rules,
float64 range, ggml's finite input, the amax history's shape) still runs, at run time. The fake
implementations, which torch.compile runs on shapes alone, compute the outputs' shapes and dtypes from
the recipe and layout: data ``(*shape[:-1], ceil(shape[-1] / 2))`` for packed 4-bit formats, else
``shape``; scales ``ceil(dim / block)`` per axis (:func:`~breccia.layouts.scale_shape`); the storage
dtypes of the torch backend (a product: the product of placeholders of the operands' logical shapes,
in the wider logical dtype). An output a recipe lacks (global scale, zero point, history) comes back
as an empty float32 tensor and is dropped again by the caller, so the op's schema is fixed.

Recipes and layouts cross the op boundary as strings, ``Name(field=value, ...)`` with each value a
plain ``str``/``int``/``float``/``bool``/``None`` literal (a recipe's str-enum fields written as their
strings): built from :func:`dataclasses.fields` and ``getattr``, which Dynamo traces (it traces
neither ``json.dumps`` nor a dataclass's ``repr``), and parsed back outside the trace into the same
recipe by :func:`~breccia.recipes.recipe_from_dict` / :func:`~breccia.layouts.layout_from_dict`.
The ScaledTensor is then built without the constructor's checks: the eager op built and checked the
same arrays, and the fake implementation gives them the shapes and dtypes those checks demand.

The ops are registered once, when this module is first imported: by :mod:`breccia.quantize` or
:mod:`breccia.matmul` inside a trace (torch is loaded by then), never by ``import breccia``. It
imports both, so it sits beside them rather than in :mod:`breccia.kernels` (which never calls back).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
from typing import Any

import torch

from .backends import backend_for
from .blockwise import HALF_DTYPES
from .buffers import check_recipe, checked_layout
from .errors import LayoutError, RecipeError
from .formats import packed_length
from .layouts import Layout, layout_from_dict, scale_shape
from .matmul import linear, matmul, result_dtype
from .quantize import cast, cast_with_history, dequantize
from .recipes import RECIPE_SCHEMA_VERSION, DelayedScaling, Recipe, recipe_from_dict
from .tensor import AmaxHistory, ScaledTensor

__all__ = ["compiled_cast", "compiled_dequantize", "compiled_matmul", "spec"]


def spec(obj: Recipe | Layout) -> str:
    """``Name(field=value, ...)`` of a recipe or layout, each value the literal of a plain str, int,
    float, bool or None; traceable by Dynamo (no ``repr`` of the dataclass, no JSON)."""
    values = []
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, int) and not isinstance(value, bool):
            value = _constant_int(value)
        values.append(field.name + "=" + repr(value))
    return type(obj).__name__ + "(" + ",".join(values) + ")"


def _constant_int(n: int) -> int:
    """``n`` as a plain int. Dynamo makes an int field symbolic once it has seen it change between
    calls (automatic dynamic shapes), and a symbolic int has no ``repr``; ``len(range(n))`` is one
    that Dynamo evaluates to a constant, guarded so that another value recompiles."""
    return len(range(n)) if n >= 0 else -len(range(-n))


def _parsed(text: str) -> tuple[str, dict[str, Any]]:
    """The name and fields of a :func:`spec` string."""
    call = ast.parse(text, mode="eval").body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
        raise RecipeError(f"not a breccia recipe or layout spec: {text!r}")
    return call.func.id, {k.arg: ast.literal_eval(k.value) for k in call.keywords}


@functools.lru_cache(maxsize=256)
def _recipe(text: str) -> Recipe:
    name, fields = _parsed(text)
    return recipe_from_dict({"version": RECIPE_SCHEMA_VERSION, "name": name, "fields": fields})


@functools.lru_cache(maxsize=256)
def _layout(text: str) -> Layout:
    name, fields = _parsed(text)
    return layout_from_dict({"name": name, **fields})


def _absent(like: torch.Tensor) -> torch.Tensor:
    """The placeholder for an output the recipe lacks."""
    return torch.empty(0, dtype=torch.float32, device=like.device)


@torch.library.custom_op("breccia::cast", mutates_args=())
def _cast_op(
    x: torch.Tensor, recipe: str, layout: str, history: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bc.cast`` (``bc.cast_with_history`` when ``history`` is given) of ``x``, eagerly."""
    r, lay = _recipe(recipe), _layout(layout)
    given = None if history is None else AmaxHistory(history)
    if isinstance(r, DelayedScaling):
        st, next_history = cast_with_history(x, r, lay, history=given)
        new = next_history.amax
    else:  # a history given to another recipe raises there, as in an eager call
        st, new = cast(x, r, lay, history=given), _absent(x)
    out = [a if a is not None else _absent(x) for a in (st.data, st.scale, st.global_scale, st.zero_point)]
    return out[0], out[1], out[2], out[3], new


@_cast_op.register_fake
def _cast_fake(x, recipe, layout, history):
    r, lay = _recipe(recipe), _layout(layout)
    backend = backend_for(x, "cast input")
    dtype_name = backend.check_float_input(x)
    shape = tuple(x.shape)
    checked_layout(r, lay, shape)  # the layout's errors at trace time, where Dynamo cannot format them
    fmt = r.element_format
    data_shape = (*shape[:-1], packed_length(shape[-1])) if fmt.packed and shape else shape
    grid = scale_shape(lay, shape) if shape else ()
    scale_fmt = r.scale_element_format
    float_scales = torch.float32
    if r.zero_point_kind == "float" and dtype_name in HALF_DTYPES:
        float_scales = x.dtype  # MLX's affine mode keeps scales and biases in the input's dtype
    scale_dtype = float_scales if scale_fmt is None else backend.dtype(backend.storage_dtype(scale_fmt))
    data = x.new_empty(data_shape, dtype=backend.dtype(backend.storage_dtype(fmt)))
    scale = x.new_empty(grid, dtype=scale_dtype)
    global_scale = x.new_empty((), dtype=torch.float32) if r.has_global_scale else _absent(x)
    zero_point = x.new_empty(grid, dtype=float_scales) if r.zero_point_kind is not None else _absent(x)
    delayed = isinstance(r, DelayedScaling)
    new = x.new_empty((r.amax_history_len,), dtype=torch.float32) if delayed else _absent(x)
    return data, scale, global_scale, zero_point, new


def compiled_cast(
    x: torch.Tensor, recipe: Recipe, layout: Layout | None, history: AmaxHistory | None
) -> tuple[ScaledTensor, AmaxHistory | None]:
    """``bc.cast`` of a tensor being traced by torch.compile, through ``breccia::cast``: the
    ScaledTensor and, under DelayedScaling, the next amax history (else None)."""
    recipe = check_recipe(recipe)
    if layout is None:
        layout = recipe.default_layout()
    elif not isinstance(layout, Layout):
        raise LayoutError(f"layout must be a breccia layout; got {type(layout).__name__}")
    delayed = isinstance(recipe, DelayedScaling)
    if history is not None and not isinstance(history, AmaxHistory):
        raise RecipeError(f"history must be a bc.AmaxHistory; got {type(history).__name__}")
    amax = None if history is None else history.amax
    data, scale, global_scale, zero_point, new = torch.ops.breccia.cast(x, spec(recipe), spec(layout), amax)
    st = ScaledTensor._unchecked(
        data,
        scale,
        recipe,
        layout,
        tuple(x.shape),
        str(x.dtype).removeprefix("torch."),
        "torch",
        global_scale if recipe.has_global_scale else None,
        zero_point if recipe.zero_point_kind is not None else None,
    )
    return st, AmaxHistory(new) if delayed else None


@torch.library.custom_op("breccia::dequantize", mutates_args=())
def _dequantize_op(
    data: torch.Tensor,
    scale: torch.Tensor,
    global_scale: torch.Tensor | None,
    zero_point: torch.Tensor | None,
    recipe: str,
    layout: str,
    shape: list[int],
    dtype: str,
    out_dtype: str,
) -> torch.Tensor:
    """``bc.dequantize`` of the ScaledTensor these arrays and descriptions make, eagerly (built
    through the ScaledTensor constructor's checks)."""
    st = ScaledTensor(
        data=data,
        scale=scale,
        recipe=_recipe(recipe),
        layout=_layout(layout),
        shape=tuple(shape),
        dtype_name=dtype,
        framework=backend_for(data).name,
        global_scale=global_scale,
        zero_point=zero_point,
    )
    return dequantize(st, out_dtype)


@_dequantize_op.register_fake
def _dequantize_fake(data, scale, global_scale, zero_point, recipe, layout, shape, dtype, out_dtype):
    return data.new_empty(tuple(shape), dtype=backend_for(data).dtype(out_dtype))


def compiled_dequantize(st: ScaledTensor, dtype_name: str) -> torch.Tensor:
    """``bc.dequantize(st, dtype_name)`` of a ScaledTensor being traced by torch.compile, through
    ``breccia::dequantize``."""
    return torch.ops.breccia.dequantize(
        st.data,
        st.scale,
        st.global_scale,
        st.zero_point,
        spec(st.recipe),
        spec(st.layout),
        list(st.shape),
        st.dtype_name,
        dtype_name,
    )


def _side(v: Any) -> tuple:
    """One operand of a product as the op's arguments: ``(data or array, scale, global_scale,
    zero_point, recipe spec, layout spec, logical shape, logical dtype)``; a plain tensor has no
    scales and empty specs."""
    if isinstance(v, ScaledTensor):
        return (*v.arrays, spec(v.recipe), spec(v.layout), list(v.shape), v.dtype_name)
    return v, None, None, None, "", "", list(v.shape), str(v.dtype).removeprefix("torch.")


def _operand(data, scale, global_scale, zero_point, recipe, layout, shape, dtype) -> Any:
    """The operand :func:`_side` described: the tensor, or the ScaledTensor (constructor-checked)."""
    if not recipe:
        return data
    return ScaledTensor(
        data=data,
        scale=scale,
        recipe=_recipe(recipe),
        layout=_layout(layout),
        shape=tuple(shape),
        dtype_name=dtype,
        framework=backend_for(data).name,
        global_scale=global_scale,
        zero_point=zero_point,
    )


@torch.library.custom_op("breccia::matmul", mutates_args=())
def _matmul_op(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    a_global_scale: torch.Tensor | None,
    a_zero_point: torch.Tensor | None,
    a_recipe: str,
    a_layout: str,
    a_shape: list[int],
    a_dtype: str,
    b: torch.Tensor,
    b_scale: torch.Tensor | None,
    b_global_scale: torch.Tensor | None,
    b_zero_point: torch.Tensor | None,
    b_recipe: str,
    b_layout: str,
    b_shape: list[int],
    b_dtype: str,
    transpose_b: bool,
) -> torch.Tensor:
    """``bc.linear(a, b)`` (``transpose_b``) or ``bc.matmul(a, b)``, eagerly; each side a tensor or
    the ScaledTensor its arrays and descriptions make."""
    left = _operand(a, a_scale, a_global_scale, a_zero_point, a_recipe, a_layout, a_shape, a_dtype)
    right = _operand(b, b_scale, b_global_scale, b_zero_point, b_recipe, b_layout, b_shape, b_dtype)
    return linear(left, right) if transpose_b else matmul(left, right)


@_matmul_op.register_fake
def _matmul_fake(
    a,
    a_scale,
    a_global_scale,
    a_zero_point,
    a_recipe,
    a_layout,
    a_shape,
    a_dtype,
    b,
    b_scale,
    b_global_scale,
    b_zero_point,
    b_recipe,
    b_layout,
    b_shape,
    b_dtype,
    transpose_b,
):
    # the product of logical-shape placeholders gives the result's shape (and torch's shape errors)
    left = a.new_empty(tuple(a_shape), dtype=torch.float32)
    right = b.new_empty(tuple(b_shape), dtype=torch.float32)
    y = left @ (right.T if transpose_b else right)
    return y.to(backend_for(a).dtype(result_dtype(a_dtype, b_dtype)))


def compiled_matmul(a: Any, b: Any, transpose_b: bool) -> torch.Tensor:
    """``bc.linear(a, b)`` (``transpose_b``) or ``bc.matmul(a, b)`` of operands being traced by
    torch.compile, through ``breccia::matmul``."""
    return torch.ops.breccia.matmul(*_side(a), *_side(b), transpose_b)
