"""cast, dequantize, from_buffer and requantize: the numerics, written once against a namespace.

The tensor is reshaped into "split" form: an axis of size ``n`` with block ``b`` becomes the pair
``(ceil(n/b), b)``, zero-padded when ``b`` does not divide ``n`` (zeros never change an amax, which is
DeepSeek's "zero-pad to 128"). Block statistics reduce the odd axes with ``keepdims``, so a block's
scale broadcasts against its elements with no gather. Everything else is elementwise.

Memory is bounded by the tensor, whatever the layout says: a block longer than its axis is clamped
to the axis (``b' = min(b, n)``: the same single block), so a cast pads an axis to at most
``n + b' - 1``; dequantize pads nothing where a block does not divide its axis: it spreads the scale
to the elements one axis at a time instead (each intermediate at most the data's size plus one
block row), and multiplies elementwise as before (the same bits).

cast, per block (the scale rule of each recipe is in :mod:`breccia.scaling`)::

    amax = max |x| over the block's finite elements
    scale, encode step = rule(amax)                  # scaling.block_scales
    data = encode(step(x))                           # formats.encode: RNE, saturating

dequantize::

    y = decode(data) * scale [* global_scale]        # computed in float32, then cast to st.dtype
    y = decode(data) * (scale / global_scale)        # NVFP4BlockScaling(convention="compressed-tensors")
    y = (decode(data) - zero_point) * scale          # integer zero point
    y = (decode(data) + 2**(bits-1)) * scale + zero_point   # MLX-style float zero point

Non-finite input: NaN elements are stored as code 0 and their block's scale is NaN, so exactly that
block decodes to NaN and no other block changes; +-Inf saturates to the block's largest code. The
backend, device and framework of the input are kept; the output's logical dtype is the input's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .backends import Backend, backend_for, float_dtype_name
from .choices import RecipeConvention, ScaleFormat
from .errors import DTypeError, FrameworkError, LayoutError, NotAnArrayError, RecipeError, ShapeError
from .formats import (
    ElementFormat,
    fp4_ties_toward_zero,
    packed_length,
    round_integers,
    unpack_nibbles,
)
from .kernels._fused import fused_cast, fused_dequantize, host_cast
from .layouts import Layout, scale_shape
from .recipes import DelayedScaling, Recipe
from .scaling import FLT_MAX, AmaxHistory, BlockStats, Scales, block_scales, decode_scale
from .tensor import ScaledTensor

__all__ = ["cast", "cast_with_history", "dequantize", "from_buffer", "requantize"]


class _Blocking:
    """The split form of a tensor of ``shape`` under ``layout``."""

    def __init__(self, shape: tuple[int, ...], layout: Layout) -> None:
        self.shape = shape
        # a block longer than its axis is that axis' one block: clamped, it pads nothing
        self.block = tuple(min(b, max(n, 1)) for n, b in zip(shape, layout.block_shape(shape)))
        self.grid = tuple(-(-n // b) for n, b in zip(shape, self.block))
        self.padded = tuple(g * b for g, b in zip(self.grid, self.block))
        self.split_shape = tuple(v for gb in zip(self.grid, self.block) for v in gb)
        self.scale_split_shape = tuple(v for g in self.grid for v in (g, 1))
        self.reduce_axes = tuple(range(1, 2 * len(shape), 2))

    def split(self, backend: Backend, x: Any) -> Any:
        xp = backend.xp
        for axis, (n, p) in enumerate(zip(self.shape, self.padded)):
            if p != n:
                pad_shape = tuple(p - n if a == axis else s for a, s in enumerate(x.shape))
                x = xp.concat([x, backend.zeros(pad_shape, like=x)], axis=axis)
        return xp.reshape(x, self.split_shape)

    def merge(self, xp: Any, xb: Any) -> Any:
        x = xp.reshape(xb, self.padded)
        if self.padded != self.shape:
            x = x[tuple(slice(0, n) for n in self.shape)]
        return x

    def grid_of(self, xp: Any, s: Any) -> Any:
        return xp.reshape(s, self.grid)

    def expand(self, xp: Any, s: Any) -> Any:
        return xp.reshape(s, self.scale_split_shape)

    def spread(self, backend: Backend, s: Any) -> Any:
        """Per-block values ``s`` (grid shape) repeated over their blocks: an array of ``shape``.

        One axis at a time: ``s`` becomes ``(..., g, 1, ...)``, plus zeros ``(..., g, b, ...)``
        broadcasts it over the block, merged to ``g * b`` and cut to ``n``; no intermediate holds
        more than the data's size plus one block row."""
        xp = backend.xp
        for axis, (n, g, b) in enumerate(zip(self.shape, self.grid, self.block)):
            if b == 1:
                continue
            dims = tuple(s.shape)
            split = (*dims[:axis], g, 1, *dims[axis + 1 :])
            s = xp.reshape(s, split) + backend.zeros((*dims[:axis], g, b, *dims[axis + 1 :]), like=s)
            s = xp.reshape(s, (*dims[:axis], g * b, *dims[axis + 1 :]))
            if g * b != n:
                s = s[(slice(None),) * axis + (slice(0, n),)]
        return s


class _Slabs:
    """Cache-sized slabs of a split-form tensor, for a cast that runs op by op on a CPU.

    A slab is a range along the first split axis that has more than one index (block rows, or the
    rows inside the only block row), so it cuts no block; an array of per-block values is sliced
    with it. Slab by slab, every temporary stays in cache and is reused by the allocator: a fresh
    64 MB temporary costs torch and numpy more in page faults than the arithmetic it holds. Blocks
    are independent, so the bits are those of one pass over the whole tensor, which is what a traced
    or GPU cast makes (:meth:`Backend.chunk_elements` is 0 there, and ``whole`` is true).
    """

    def __init__(self, backend: Backend, x: Any, shape: tuple[int, ...], eager: bool) -> None:
        self.axis = 0 if shape[0] > 1 else 1
        self.size = shape[self.axis]
        limit = backend.chunk_elements(x) if eager else 0
        per_index = math.prod(shape) // max(1, self.size)
        self.step = max(1, limit // max(1, per_index))
        self.whole = not limit or self.step >= self.size or per_index > 4 * limit

    def __iter__(self):
        for start in range(0, self.size, self.step):
            yield (slice(None),) * self.axis + (slice(start, start + self.step),)

    def part(self, a: Any, index: tuple[slice, ...]) -> Any:
        """``a``'s values for the slab ``index``: sliced if ``a`` holds one per block along the
        slab axis, else ``a`` itself (a scalar, or one value for all blocks on that axis)."""
        if getattr(a, "ndim", 0) > self.axis and a.shape[self.axis] == self.size > 1:
            return a[index]
        return a

    def abs_max(self, backend: Backend, xb: Any, axes: tuple[int, ...]) -> Any:
        """:meth:`Backend.abs_max` of ``xb`` slab by slab, as float32 (exact: max is exact in the
        input's dtype, and bfloat16/float16 convert exactly)."""
        if self.whole:
            return _float32(backend, backend.abs_max(xb, axes))
        parts = [_float32(backend, backend.abs_max(xb[index], axes)) for index in self]
        if self.axis == 0:
            return backend.xp.concat(parts, axis=0)
        out = parts[0]  # slabs inside one block row: the block's amax is the largest slab's
        for p in parts[1:]:
            out = backend.xp.maximum(out, p)
        return out


def _float32(backend: Backend, x: Any) -> Any:
    """float32 values of x (bfloat16/float16 convert exactly; float32 is not copied)."""
    return backend.xp.astype(x, backend.xp.float32, copy=False)


def _block_scales(
    backend: Backend,
    xb: Any,
    blocking: _Blocking,
    recipe: Recipe,
    eager: bool,
    slabs: _Slabs,
    input_dtype: str,
    history: Any,
) -> tuple[BlockStats, Scales, Any, Any]:
    """Finite-only block statistics, their scales, the input with NaN zeroed, and the NaN blocks.

    The common all-finite case costs one reduction: eagerly it is checked on the block amaxes (max
    propagates NaN and Inf in numpy and torch); under a trace, a backend with a conditional runs the
    non-finite branch only when ``sum(x)`` is not finite (some element is NaN or +-Inf, or it overflows).
    The scale rule runs inside the conditional: its outputs are per-block arrays the compiler must
    materialize, so the encode loop reads one multiplier per block instead of recomputing the rule
    for every element (XLA's CPU fusion does that to a rule that follows the conditional).
    """
    xp = backend.xp
    axes = blocking.reduce_axes

    def finite_only(xb: Any) -> tuple[Any, Any]:
        # (XLA's multi-axis max does not always propagate NaN, so NaN is looked for explicitly)
        magnitude = xp.abs(_float32(backend, xb))
        amax = xp.max(xp.where(magnitude < math.inf, magnitude, 0.0), axis=axes, keepdims=True)
        return amax, xp.any(xp.isnan(xb), axis=axes, keepdims=True)

    def stats_and_scales(xb: Any, amax: Any, nan_blocks: Any) -> tuple[BlockStats, Scales]:
        stats = BlockStats(amax=amax, input_dtype=input_dtype)
        if recipe.zero_point_kind is not None:
            finite_x = xb if nan_blocks is None else xp.where(xp.abs(xb) < math.inf, xb, 0.0)
            stats.lo = _float32(backend, xp.min(finite_x, axis=axes, keepdims=True))
            stats.hi = _float32(backend, xp.max(finite_x, axis=axes, keepdims=True))
        if recipe.has_global_scale:
            stats.tensor_amax = xp.max(amax)
        if recipe.integer_rounding == "ggml_q4_0":
            stats.signed_max = _first_signed_max(backend, xb, amax, blocking)
        return stats, block_scales(backend, recipe, stats, history)

    if eager or not backend.has_cond:
        if eager:
            amax = slabs.abs_max(backend, xb, axes)
            nan_blocks = None
            if not backend.known_true(xp.all(xp.isfinite(amax))):  # non-finite, or cannot tell here
                amax, nan_blocks = finite_only(xb)
        else:
            amax, nan_blocks = finite_only(xb)
        stats, scales = stats_and_scales(xb, amax, nan_blocks)
    else:
        # sum(x) is NaN or +-Inf whenever an element is (and, harmlessly, when the sum overflows);
        # only small per-block arrays cross the conditional (a full-size one would be copied)
        product_dtype = []  # Scales' one static (str) field leaves the traced branches by closure

        def branch(xb: Any, amax: Any, nan_blocks: Any) -> tuple[Any, ...]:
            stats, scales = stats_and_scales(xb, amax, nan_blocks)
            product_dtype[:] = [scales.product_dtype]
            return (stats.amax, nan_blocks, *(getattr(scales, name) for name in _SCALE_ARRAYS))

        outs = backend.cond(
            xp.logical_not(xp.isfinite(xp.sum(xb))),
            lambda xb, amax: branch(xb, *finite_only(xb)),
            lambda xb, amax: branch(xb, amax, xp.zeros(amax.shape, dtype=xp.bool)),
            xb,
            _float32(backend, backend.abs_max(xb, axes)),
        )
        amax, nan_blocks = outs[:2]
        stats = BlockStats(amax=amax, input_dtype=input_dtype)
        scales = Scales(**dict(zip(_SCALE_ARRAYS, outs[2:])), product_dtype=product_dtype[0])
    if nan_blocks is not None:
        xb = xp.where(xp.isnan(xb), 0.0, xb)
    return stats, scales, xb, nan_blocks


def _first_signed_max(backend: Backend, xb: Any, amax: Any, blocking: _Blocking) -> Any:
    """Per block, its first element (in row-major order) of magnitude ``amax``, with that element's
    sign (``-0.0`` for a block whose first element is ``-0.0`` and all zero): ggml's Q4_0 ``max``."""
    import numpy as np

    xp = backend.xp
    axes = blocking.reduce_axes
    dims = tuple(blocking.split_shape[a] if a in axes else 1 for a in range(len(blocking.split_shape)))
    size = math.prod(dims)
    positions = backend.constant(f"positions:{dims}", np.arange(size, dtype=np.float32).reshape(dims), xb)
    at_max = xp.abs(_float32(backend, xb)) == amax
    negative = xp.signbit(xb)

    def first(where: Any) -> Any:
        return xp.min(xp.where(where, positions, float(size)), axis=axes, keepdims=True)

    first_negative = first(xp.logical_and(at_max, negative))
    first_positive = first(xp.logical_and(at_max, xp.logical_not(negative)))
    return xp.where(first_negative < first_positive, -amax, amax)


#: the array fields of :class:`Scales` (what a conditional returns; ``product_dtype`` is static)
_SCALE_ARRAYS = ("stored", "multiplier", "divisor", "pre_offset", "post_offset", "zero_point", "global_scale")


def _mark_nan(backend: Backend, stored: Any, nan_blocks: Any, scale_format: ScaleFormat) -> Any:
    xp = backend.xp
    fmt = ScaleFormat(scale_format).element_format
    if fmt is None:
        return xp.where(nan_blocks, math.nan, stored)
    code = fmt.nan_code
    return xp.where(nan_blocks, xp.asarray(code, dtype=xp.uint8), stored)


def _cast_arrays(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any, eager: bool):
    """The arrays of a cast: (data, scale, global_scale, zero_point, new_history).

    On an NVIDIA GPU a fused one-pass kernel computes them where one applies (same bits)."""
    def shared() -> tuple:
        return _shared_cast_arrays(backend, recipe, layout, x, history, eager)

    return fused_cast(backend, recipe, layout, x, history, shared)


def _shared_cast_arrays(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any, eager: bool):
    """:func:`_cast_arrays` by the shared array-API code."""
    xp = backend.xp
    fmt = recipe.element_format
    shape = tuple(x.shape)
    blocking = _Blocking(shape, layout)
    slabs = _Slabs(backend, x, blocking.split_shape, eager)
    # bfloat16/float16 go to float32 where they are used (exactly: min/max commute with it): slab by
    # slab when there are slabs, and inside the compiled loops (XLA's CPU reductions would otherwise
    # read a materialized float32 copy); a whole eager cast converts once
    keep_half = not (eager and slabs.whole) and backend.dtype_name(x) in _HALF_DTYPES
    xb = blocking.split(backend, x if keep_half else _float32(backend, x))
    stats, scales, xb, nan_blocks = _block_scales(
        backend, xb, blocking, recipe, eager, slabs, backend.dtype_name(x), history
    )
    codes = blocking.merge(
        xp,
        _encode_blocks(
            backend, xb, scales, fmt, slabs, recipe.fp4_ties_toward_zero, recipe.integer_rounding
        ),
    )
    if fmt.packed:
        codes = backend.pack_nibbles(codes)
    stored = scales.stored
    if nan_blocks is not None:
        stored = _mark_nan(backend, stored, nan_blocks, recipe.scale_format)
    scale = blocking.grid_of(xp, stored)
    scale_fmt = recipe.scale_element_format
    if scale_fmt is not None:
        scale = backend.to_storage(scale, scale_fmt)
    zero_point = None if scales.zero_point is None else blocking.grid_of(xp, scales.zero_point)
    if recipe.zero_point_kind == "float" and backend.dtype_name(x) in _HALF_DTYPES:
        # MLX's affine mode stores scales and biases in the weight's dtype (its codes use float32 ones)
        scale = backend.astype(scale, backend.dtype_name(x))
        zero_point = backend.astype(zero_point, backend.dtype_name(x))
    new_history = None
    if history is not None:
        current = xp.reshape(xp.max(stats.amax), (1,))
        new_history = xp.concat([current, history[:-1]], axis=0)
    return backend.to_storage(codes, fmt), scale, scales.global_scale, zero_point, new_history


def _encode_blocks(
    backend: Backend,
    xb: Any,
    scales: Scales,
    fmt: ElementFormat,
    slabs: _Slabs,
    ties_toward_zero: bool,
    integer_rounding: str = "even",
) -> Any:
    """Codes (split form) of the blocks ``xb`` under ``scales``: the elementwise half of a cast.
    ``ties_toward_zero``: E2M1 rounds as MLX (and ggml) do (:func:`~breccia.formats.fp4_ties_toward_zero`);
    ``integer_rounding`` other than ``"even"``: integers round as ggml's do
    (:func:`~breccia.formats.round_integers`)."""
    if slabs.whole:
        y = _step(backend, _float32(backend, xb), scales)
        if ties_toward_zero:
            y = fp4_ties_toward_zero(backend.xp, y)
        if integer_rounding != "even":
            y = round_integers(backend.xp, y, integer_rounding)
        return backend.encode(y, fmt, consume=True)  # y is this cast's own temporary
    out = backend.empty(tuple(xb.shape), backend.code_dtype(fmt), like=xb)
    for index in slabs:
        part = xb[index]
        scales_part = Scales(
            stored=None,
            multiplier=slabs.part(scales.multiplier, index),
            divisor=slabs.part(scales.divisor, index),
            pre_offset=slabs.part(scales.pre_offset, index),
            post_offset=slabs.part(scales.post_offset, index),
            product_dtype=scales.product_dtype,
        )
        y = _step(backend, part, scales_part, out=backend.scratch(tuple(part.shape), like=xb))
        if ties_toward_zero:
            y = fp4_ties_toward_zero(backend.xp, y)
        if integer_rounding != "even":
            y = round_integers(backend.xp, y, integer_rounding)
        backend.encode_into(y, fmt, out[index])
    return out


def _step(backend: Backend, xb: Any, scales: Scales, out: Any = None) -> Any:
    """The encode step: ``x - pre_offset``, then ``* multiplier`` (or the exact ``/ divisor``), for
    torchao's convention a rounding to the input's dtype, and ``round(.) + post_offset`` for integer
    zero points, all in float32 (a bfloat16/float16 ``xb`` is promoted exactly by the first
    operation). Returns a new array, or ``out`` where given (every operation then writes into it).
    The element format's RNE encode, saturating, comes next."""
    xp = backend.xp
    y = xb

    def then(name: str, *operands: Any) -> None:
        nonlocal y
        if out is None:
            y = _OPERATIONS[name](backend, *operands)
        elif name == "divide":
            y = backend.divide(*operands, out=out)
        else:
            y = getattr(xp, name)(*operands, out=out)

    if scales.pre_offset is not None:
        then("subtract", y, scales.pre_offset)
    if scales.multiplier is not None:
        then("multiply", y, scales.multiplier)
    else:
        then("divide", y, scales.divisor)
    if scales.product_dtype is not None:
        y = backend.round_to(y, scales.product_dtype)
    if scales.post_offset is not None:
        then("round", y)
        then("add", y, scales.post_offset)
    return y


#: :func:`_step`'s operations as new arrays (operators: every framework has them)
_OPERATIONS: dict[str, Callable[..., Any]] = {
    "subtract": lambda backend, a, b: a - b,
    "multiply": lambda backend, a, b: a * b,
    "divide": lambda backend, a, b: backend.divide(a, b),
    "round": lambda backend, a: backend.xp.round(a),
    "add": lambda backend, a, b: a + b,
}


_OUTPUTS = ("data", "scale", "global_scale", "zero_point", "history")
_HALF_DTYPES = ("bfloat16", "float16")


def _compiled_cast(backend: Backend, recipe: Recipe, layout: Layout):
    """The cast as one compiled function of (x[, history]) returning only the arrays that exist."""
    present = [
        True,
        True,
        recipe.has_global_scale,
        recipe.zero_point_kind is not None,
        isinstance(recipe, DelayedScaling),
    ]

    def run(x: Any, history: Any = None) -> list[Any]:
        arrays = _cast_arrays(backend, recipe, layout, x, history, eager=False)
        return [a for a, keep in zip(arrays, present) if keep]

    compiled = backend.compile(("cast", recipe, layout), run)

    def call(x: Any, history: Any) -> dict[str, Any]:
        args = (x,) if history is None else (x, history)
        names = [n for n, keep in zip(_OUTPUTS, present) if keep]
        return dict(zip(names, compiled(*args)))

    return call


def _runs_eagerly(backend: Backend, x: Any) -> bool:
    """Whether to run the shared code op by op rather than through the backend's compiler.

    jax and mlx always compile; torch compiles on CUDA (``TorchBackend.compiles``); numpy never.
    Empty tensors always run eagerly: there is nothing to compile for.
    """
    if math.prod(x.shape) == 0:
        return True
    return not backend.compiles(x) and not backend.is_traced(x)


def _empty_cast(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any) -> dict[str, Any]:
    """The arrays of a cast of a tensor with no elements: empty data and scales, nothing computed."""
    import numpy as np

    fmt = recipe.element_format
    shape = tuple(x.shape)
    data_shape = (*shape[:-1], packed_length(shape[-1])) if fmt.packed else shape
    grid = scale_shape(layout, shape)
    device = backend.device(x)

    def empty(dims: tuple[int, ...], storage: str) -> Any:
        zeros = backend.from_numpy(np.zeros(dims, np.uint8 if storage != "int8" else np.int8), device=device)
        return zeros if storage in ("uint8", "int8") else backend.bitcast(zeros, storage)

    scale_fmt = recipe.scale_element_format
    out: dict[str, Any] = {
        "data": empty(data_shape, backend.storage_dtype(fmt)),
        "scale": empty(grid, backend.storage_dtype(scale_fmt)) if scale_fmt else
        backend.from_numpy(np.zeros(grid, np.float32), device=device),
    }
    if recipe.has_global_scale:
        out["global_scale"] = backend.from_numpy(np.ones((), np.float32), device=device)
    if recipe.zero_point_kind is not None:
        out["zero_point"] = backend.from_numpy(np.zeros(grid, np.float32), device=device)
    if history is not None:
        newest = backend.xp.zeros((1,), dtype=history.dtype)  # an empty tensor's amax is 0
        out["history"] = backend.xp.concat([newest, history[:-1]], axis=0)
    return out


def _run_cast(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any) -> dict[str, Any]:
    """The cast's arrays by name, eagerly or through the backend's compiler."""
    if math.prod(x.shape) == 0:
        return _empty_cast(backend, recipe, layout, x, history)
    on_host = host_cast(backend, recipe, layout, x, history)  # a one-pass CPU kernel, same arrays
    if on_host is not None:
        return dict(zip(_OUTPUTS, on_host))
    if _runs_eagerly(backend, x):
        eager = not backend.is_traced(x)
        return dict(zip(_OUTPUTS, _cast_arrays(backend, recipe, layout, x, history, eager)))
    return _compiled_cast(backend, recipe, layout)(x, history)


def _check_recipe(recipe: Any) -> Recipe:
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


def cast(
    x: Any, recipe: Recipe, layout: Layout | None = None, *, history: AmaxHistory | None = None
) -> ScaledTensor:
    """Quantize array ``x`` (numpy, jax, mlx or torch; float32, bfloat16, float16 or float64).

    Returns a :class:`ScaledTensor` in ``x``'s framework and on its device, whose logical dtype is
    ``x``'s. ``layout`` defaults to the recipe's. For :class:`DelayedScaling`, ``history`` is the
    :class:`AmaxHistory` to scale from (a fresh one, scale 1, if omitted); :func:`cast_with_history`
    is the same cast that also returns the next history.
    """
    return _cast(x, recipe, layout, history)[0]


def cast_with_history(
    x: Any, recipe: DelayedScaling, layout: Layout | None = None, *, history: AmaxHistory | None = None
) -> tuple[ScaledTensor, AmaxHistory]:
    """DelayedScaling's step: ``(cast(x, recipe, layout, history=history), next_history)``.

    The scale comes from ``history`` (a fresh one, scale 1, if omitted), and ``next_history`` is
    ``[amax(x), history[0], ..., history[-2]]``, computed in the same pass. Functional: ``history``
    is not changed, so a step runs under ``jax.jit``; pass ``next_history`` to the next step.
    """
    if not isinstance(recipe, DelayedScaling):
        raise RecipeError(
            f"cast_with_history is DelayedScaling's cast; {_check_recipe(recipe).name} keeps no amax "
            "history: use cast"
        )
    return _cast(x, recipe, layout, history)  # type: ignore[return-value]


def _cast(
    x: Any, recipe: Recipe, layout: Layout | None, history: AmaxHistory | None
) -> tuple[ScaledTensor, AmaxHistory | None]:
    """The cast of ``x`` and, under DelayedScaling, the next amax history (else None)."""
    recipe = _check_recipe(recipe)
    backend = backend_for(x, "cast input")
    _check_dense(x)
    dtype_name = backend.check_float_input(x)
    if dtype_name == "float64" and not backend.is_traced(x):
        _check_float32_range(backend, x)
    shape = tuple(int(d) for d in x.shape)
    delayed = isinstance(recipe, DelayedScaling)
    if history is not None and not delayed:
        raise RecipeError(f"history= is DelayedScaling's state; {recipe.name} takes none")
    if delayed:
        history = _check_history(backend, recipe, history, x)
    layout = checked_layout(recipe, layout, shape)
    if recipe.finite_input_only and not backend.is_traced(x) and math.prod(shape):
        _check_ggml_input(backend, recipe, x)
    x_work = x if shape else backend.xp.reshape(x, (1,))  # a 0-d tensor is quantized as one element
    out = _run_cast(backend, recipe, layout, x_work, history.amax if delayed else None)
    data, scale = backend.finalize_output(out["data"]), backend.finalize_output(out["scale"])
    if not shape:
        data = backend.xp.reshape(data, ())
        scale = backend.xp.reshape(scale, ())
    st = ScaledTensor(
        data=data,
        scale=scale,
        recipe=recipe,
        layout=layout,
        shape=shape,
        dtype_name=dtype_name,
        framework=backend.name,
        global_scale=out.get("global_scale"),
        zero_point=out.get("zero_point"),
    )
    return st, AmaxHistory(out["history"]) if delayed else None


def _check_dense(x: Any) -> None:
    """Refuse arrays that hold no dense values to quantize: ``np.matrix`` (its operators are not the
    array API's), torch meta tensors (no values) and sparse tensors (COO, CSR, CSC, BSR, BSC)."""
    import numpy as np

    if isinstance(x, np.matrix):
        raise NotAnArrayError("cannot quantize an np.matrix; pass np.asarray(m), a plain ndarray")
    if getattr(x, "is_meta", False):
        raise NotAnArrayError("cannot quantize a meta tensor: it has a shape but no values")
    if str(getattr(x, "layout", "")).startswith("torch.sparse") or getattr(x, "is_sparse", False) is True:
        raise NotAnArrayError("cannot quantize a sparse tensor; densify it first (x.to_dense())")


def _check_ggml_input(backend: Backend, recipe: Recipe, x: Any) -> None:
    """ggml's quantizers (``convention="ggml"``) have no rule for NaN or Inf, and store Q8_0/Q4_0
    scales as fp16: refuse non-finite input, input whose scale ``amax / 127`` (``/ 8``) would
    overflow float16 (ggml would store an infinite scale), and MXFP4 input within 44 floats of
    float32's largest (where ggml's encoder overflows). One reduction over ``x``."""
    from .scaling import GGML_DIVISORS, GGML_MXFP4_LIMIT

    xp = backend.xp
    amax = _float32(backend, xp.max(xp.abs(x)))
    if not backend.known_true(xp.isfinite(amax)):
        nan = int(xp.sum(xp.astype(xp.isnan(x), xp.int32)))
        inf = int(xp.sum(xp.astype(xp.isinf(x), xp.int32)))
        raise RecipeError(
            f"{recipe.label()} reproduces ggml's quantizer, which has no rule for NaN or Inf, and this "
            f"tensor holds {nan} NaN and {inf} Inf values; replace them (e.g. with nan_to_num) or use "
            "a recipe with breccia's NaN rule"
        )
    if recipe.element_format.kind != "int":
        if backend.known_true(amax >= GGML_MXFP4_LIMIT):
            raise RecipeError(
                f"{recipe.label()}: this tensor's largest magnitude {float(amax):.9g} rounds ggml's "
                f"float32 log2 up to 128, so ggml's exponent byte becomes 253, at which its encoder's "
                f"candidates 4 and 6 overflow float32 (a rule breccia does not copy); values must stay "
                f"below {GGML_MXFP4_LIMIT:.9g}"
            )
    else:
        divisor = abs(GGML_DIVISORS[recipe.element_format.bits])
        d = backend.round_to(backend.divide(xp.reshape(amax, (1,)), divisor), "float16")
        if not backend.known_true(xp.all(xp.isfinite(d))):
            raise RecipeError(
                f"{recipe.label()}: this tensor's largest magnitude {float(amax):.6g} makes ggml's block "
                f"scale amax / {divisor:g} overflow float16 (ggml would store an infinite scale); scale "
                "the tensor down first"
            )


def _check_float32_range(backend: Backend, x: Any) -> None:
    """float64 input is quantized in float32 (every scale rule is float32), so a finite value beyond
    float32's range would become +-Inf there and be saturated as Inf: refuse it instead."""
    xp = backend.xp
    magnitude = xp.abs(x)
    finite = xp.where(magnitude < math.inf, magnitude, 0.0)
    if backend.known_true(xp.any(finite > FLT_MAX)):
        raise DTypeError(
            f"this float64 tensor holds finite values up to {float(xp.max(finite)):.3g}, beyond "
            f"float32's range ({FLT_MAX:.4g}); breccia computes scales in float32. Divide the "
            "tensor by a power of two first (and multiply the dequantized result back)"
        )


def _check_history(backend: Backend, recipe: DelayedScaling, history: Any, like: Any) -> AmaxHistory:
    if history is None:
        return AmaxHistory.zeros(recipe, like)
    if not isinstance(history, AmaxHistory):
        raise RecipeError(f"history must be a bc.AmaxHistory; got {type(history).__name__}")
    if backend_for(history.amax, "history").name != backend.name:
        raise RecipeError("history must be in the same framework as the input; move it with .to()")
    if backend.dtype_name(history.amax) != "float32":
        raise DTypeError(
            f"history amaxes must be float32; got {backend.dtype_name(history.amax)} "
            "(start one with bc.AmaxHistory.zeros(recipe, like=x), or pass the one cast returned)"
        )
    if tuple(history.amax.shape) != (recipe.amax_history_len,):
        raise ShapeError(
            f"history has shape {tuple(history.amax.shape)}; this DelayedScaling keeps "
            f"{recipe.amax_history_len} amaxes (amax_history_len)"
        )
    return history


def _dequantize_arrays(backend: Backend, st: ScaledTensor, dtype_name: str) -> Any:
    def shared() -> Any:
        return _shared_dequantize_arrays(backend, st, dtype_name)

    return fused_dequantize(backend, st, dtype_name, shared)


def _shared_dequantize_arrays(backend: Backend, st: ScaledTensor, dtype_name: str) -> Any:
    xp = backend.xp
    recipe, fmt = st.recipe, st.recipe.element_format
    shape = st.shape or (1,)
    codes = backend.to_codes(st.data, fmt)
    codes = xp.reshape(codes, (*shape[:-1], packed_length(shape[-1]) if fmt.packed else shape[-1]))
    if fmt.packed:
        codes = unpack_nibbles(xp, codes, shape[-1])
    values = backend.decode(codes, fmt)
    blocking = _Blocking(shape, st.layout)
    scale = decode_scale(backend, xp.reshape(st.scale, blocking.grid), recipe.scale_format)
    if st.global_scale is not None:
        global_scale = backend.astype(st.global_scale, "float32")
        scale = scale / global_scale if recipe.global_scale_divides else scale * global_scale
    zero_point = None if st.zero_point is None else backend.astype(st.zero_point, "float32")
    if blocking.padded == blocking.shape:  # whole blocks: a reshape, the scale broadcasts
        def per_element(a: Any) -> Any:
            return blocking.expand(xp, a)

        values = blocking.split(backend, values)
    else:  # edge blocks: the scale spread over the elements (no padded copy of the data)
        def per_element(a: Any) -> Any:
            return blocking.spread(backend, xp.reshape(a, blocking.grid))

    sb = per_element(scale)
    kind = recipe.zero_point_kind
    if kind is None:
        yb = values * sb
    else:
        zb = per_element(zero_point)
        if kind == "int":
            yb = (values - zb) * sb
        else:
            yb = _float_zero_point(backend, values + float(2 ** (fmt.bits - 1)), sb, zb, st.scale)
    y = blocking.merge(xp, yb) if blocking.padded == blocking.shape else yb
    y = backend.astype(y, dtype_name)
    return xp.reshape(y, st.shape)


def _float_zero_point(backend: Backend, q_u: Any, s: Any, zp: Any, stored_scale: Any) -> Any:
    """``q_u * s + zp`` rounded as MLX's affine dequantize rounds it: in the stored scale's dtype.

    float32 scales: two float32 roundings (no FMA). bfloat16/float16 scales: the product and then the
    sum are each rounded to that dtype (``q_u * s`` is exact in float32, so this is one rounding each).
    """
    half = backend.dtype_name(stored_scale)
    if half not in _HALF_DTYPES:
        return backend.multiply_add(q_u, s, zp)
    return backend.round_to(backend.round_to(q_u * s, half) + zp, half)


def dequantize(st: ScaledTensor, dtype: Any = None) -> Any:
    """The values ``st`` stands for, as an array of ``st``'s framework and device.

    ``dtype`` defaults to ``st.dtype`` (the dtype the tensor was cast from); float32, bfloat16,
    float16 or float64 in any framework's spelling: ``"bfloat16"``, ``np.float32``,
    ``ml_dtypes.bfloat16``, ``jnp.bfloat16``, ``torch.float16``, ``mx.bfloat16``, or Python's
    ``float`` (float64, as in numpy). Anything else raises DTypeError.
    """
    if not isinstance(st, ScaledTensor):
        raise DTypeError(f"dequantize needs a ScaledTensor; got {type(st).__name__}")
    from .backends import get_backend

    backend = get_backend(st.framework)
    dtype_name = st.dtype_name if dtype is None else float_dtype_name(dtype)
    if _runs_eagerly(backend, st.data) or backend.is_traced(st.data):
        return _dequantize_arrays(backend, st, dtype_name)
    present = tuple(a is not None for a in st.arrays)

    def run(*arrays: Any) -> Any:
        given = iter(arrays)
        return _dequantize_arrays(
            backend, st.replace_arrays(*(next(given) if p else None for p in present)), dtype_name
        )

    key = ("dequantize", st.recipe, st.layout, st.shape, dtype_name, present)
    return backend.compile(key, run)(*(a for a in st.arrays if a is not None))


def requantize(
    st: ScaledTensor, recipe: Recipe, layout: Layout | None = None, *, history: AmaxHistory | None = None
) -> ScaledTensor:
    """``st`` under another recipe: dequantized in float32 and cast again, keeping ``st.dtype``.

    The error this adds is that of a fresh cast of the dequantized values; nothing else changes.
    ``history`` is as in :func:`cast` (DelayedScaling's scale comes from it).
    """
    recipe = _check_recipe(recipe)
    values = dequantize(st, "float32")
    return cast(values, recipe, layout, history=history).replace(dtype_name=st.dtype_name)


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
    recipe = _check_recipe(recipe)
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
        data=data, scale=scale, recipe=recipe, layout=layout, shape=logical, dtype_name=dtype_name,
        framework=backend.name, global_scale=global_scale, zero_point=zero_point,
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
