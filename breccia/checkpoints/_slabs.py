"""Dequantize and cast whole checkpoint tensors a slab of rows at a time, so temporaries stay small.

A conversion holds one output tensor at a time; its float32 temporaries are bounded by
``SLAB_ELEMENTS``: a tensor is cut along axis 0 into slabs of whole block rows
(:meth:`ScaledTensor.row_blocks`, :func:`~breccia.tensor.row_ranges`), each slab is dequantized or
cast, and the results are written into one output array. A quantized tensor's per-tensor scale or
NVFP4 global scale is shared by its slabs; a cast to such a recipe is done whole (its amax spans
every row).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..choices import RecipeConvention
from ..layouts import Layout, PerTensor
from ..quantize import cast, dequantize, from_buffer
from ..recipes import Recipe
from ..tensor import ScaledTensor, row_ranges

__all__ = ["SLAB_ELEMENTS", "cast_rows", "dequantize_rows", "in_recipe", "relative_error"]

SLAB_ELEMENTS = 1 << 22  # about 16 MiB of float32 per slab


def dequantize_rows(st: ScaledTensor, dtype: str) -> np.ndarray:
    """``dequantize(st, dtype)`` (numpy), computed a slab of rows at a time."""
    slabs = list(st.row_blocks(SLAB_ELEMENTS)) if st.shape else []
    if len(slabs) <= 1:
        return np.asarray(dequantize(st, dtype))
    from ..backends import get_backend

    out = np.empty(st.shape, dtype=get_backend("numpy").dtype(dtype))
    for start, stop, rows in slabs:
        out[start:stop] = dequantize(rows, dtype)
    return out


def cast_rows(
    values: Callable[[slice], np.ndarray],
    shape: tuple[int, ...],
    recipe: Recipe,
    source_rows: int = 1,
    layout: Layout | None = None,
):
    """``cast`` of the tensor whose rows ``values(rows)`` gives, a slab at a time where blocks allow.

    ``source_rows`` is the block height of the source (slabs cover whole source blocks too);
    ``layout`` defaults to the recipe's. Recipes whose scale spans the tensor (per-tensor, NVFP4's
    global scale) are cast in one piece."""
    layout = recipe.default_layout() if layout is None else layout
    two_level = recipe.has_global_scale and recipe.convention != RecipeConvention.MLX
    spans_tensor = isinstance(layout, PerTensor) or two_level or len(shape) < 2
    if spans_tensor:
        return cast(values(slice(0, shape[0] if shape else 0)), recipe, layout)
    slabs = row_ranges(shape, math.lcm(layout.block_shape(shape)[0], source_rows), SLAB_ELEMENTS)
    parts = [cast(values(slice(start, stop)), recipe, layout) for start, stop in slabs]
    if len(parts) == 1:
        return parts[0]

    def stacked(field: str) -> Any:
        arrays = [getattr(p, field) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    return from_buffer(
        stacked("data"),
        stacked("scale"),
        recipe,
        layout,
        shape=shape,
        dtype=parts[0].dtype_name,
        zero_point=stacked("zero_point"),
        global_scale=parts[0].global_scale,  # slabs never cut a tensor-wide scale: the same in every slab
    )


def relative_error(reference: np.ndarray, approx: np.ndarray) -> float:
    """``||approx - reference|| / ||reference||`` over finite elements, in float64 (0 for a zero tensor)."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.asarray(approx, dtype=np.float64) - ref
    finite = np.isfinite(ref) & np.isfinite(diff)
    norm = float(np.linalg.norm(ref[finite]))
    return 0.0 if norm == 0 else float(np.linalg.norm(diff[finite])) / norm


def in_recipe(name: str, value: Any, recipe: Recipe, report: Any) -> ScaledTensor:
    """``value`` (a ScaledTensor or a float array) in ``recipe``, recorded in ``report``: repacked
    when it already is in that recipe and layout; else cast a slab of rows at a time, a quantized
    source dequantized once in float32 first and its added relative error recorded."""
    from ..errors import RecipeError

    if isinstance(value, ScaledTensor):
        if value.recipe == recipe and value.layout == recipe.default_layout():
            report.record(name, "repacked")
            return value
        values = dequantize_rows(value, "float32")
        st = cast_rows(lambda rows: values[rows], values.shape, recipe)
        report.record(name, "requantized", relative_error(values, dequantize_rows(st, "float32")))
        return st
    array = np.asarray(value)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise RecipeError(f"{name!r} is {array.dtype.name}; only float weights can be quantized")
    report.record(name, "quantized")
    return cast_rows(lambda rows: array[rows], array.shape, recipe)

