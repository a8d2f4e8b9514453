"""The shared cast and dequantize, block by block, written once against an array namespace.

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
block decodes to NaN and no other block changes; +-Inf saturates to the block's largest code.

:func:`cast_arrays` and :func:`dequantize_arrays` are what :mod:`breccia.quantize` runs, eagerly
(on a CPU in cache-sized slabs, :class:`_Slabs`) or inside a framework's compiled function, where no
fused or one-pass kernel takes the cast; the kernels give the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .backends import Backend
from .choices import ScaleFormat
from .formats import (
    ElementFormat,
    fp4_ties_toward_zero,
    packed_length,
    round_integers,
    unpack_nibbles,
)
from .layouts import Layout
from .recipes import Recipe
from .scaling import BlockStats, Scales, block_scales, decode_scale

if TYPE_CHECKING:
    from .tensor import ScaledTensor

__all__ = ["HALF_DTYPES", "as_float32", "cast_arrays", "dequantize_arrays"]


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
            return as_float32(backend, backend.abs_max(xb, axes))
        parts = [as_float32(backend, backend.abs_max(xb[index], axes)) for index in self]
        if self.axis == 0:
            return backend.xp.concat(parts, axis=0)
        out = parts[0]  # slabs inside one block row: the block's amax is the largest slab's
        for p in parts[1:]:
            out = backend.xp.maximum(out, p)
        return out


def as_float32(backend: Backend, x: Any) -> Any:
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
        magnitude = xp.abs(as_float32(backend, xb))
        amax = xp.max(xp.where(magnitude < math.inf, magnitude, 0.0), axis=axes, keepdims=True)
        return amax, xp.any(xp.isnan(xb), axis=axes, keepdims=True)

    def stats_and_scales(xb: Any, amax: Any, nan_blocks: Any) -> tuple[BlockStats, Scales]:
        stats = BlockStats(amax=amax, input_dtype=input_dtype)
        if recipe.zero_point_kind is not None:
            finite_x = xb if nan_blocks is None else xp.where(xp.abs(xb) < math.inf, xb, 0.0)
            stats.lo = as_float32(backend, xp.min(finite_x, axis=axes, keepdims=True))
            stats.hi = as_float32(backend, xp.max(finite_x, axis=axes, keepdims=True))
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
            as_float32(backend, backend.abs_max(xb, axes)),
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
    at_max = xp.abs(as_float32(backend, xb)) == amax
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


def cast_arrays(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any, eager: bool):
    """The arrays of a cast, ``(data, scale, global_scale, zero_point, next_history)``, by the shared
    array-API code. ``eager``: ``x``'s values are at hand (not traced by a compiler), so a CPU cast
    goes in slabs and looks at the block amaxes before taking the non-finite path."""
    xp = backend.xp
    fmt = recipe.element_format
    shape = tuple(x.shape)
    blocking = _Blocking(shape, layout)
    slabs = _Slabs(backend, x, blocking.split_shape, eager)
    # bfloat16/float16 go to float32 where they are used (exactly: min/max commute with it): slab by
    # slab when there are slabs, and inside the compiled loops (XLA's CPU reductions would otherwise
    # read a materialized float32 copy); a whole eager cast converts once
    keep_half = not (eager and slabs.whole) and backend.dtype_name(x) in HALF_DTYPES
    xb = blocking.split(backend, x if keep_half else as_float32(backend, x))
    stats, scales, xb, nan_blocks = _block_scales(
        backend, xb, blocking, recipe, eager, slabs, backend.dtype_name(x), history
    )
    codes = blocking.merge(
        xp,
        _encode_blocks(backend, xb, scales, fmt, slabs, recipe.fp4_ties_toward_zero, recipe.integer_rounding),
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
    if recipe.zero_point_kind == "float" and backend.dtype_name(x) in HALF_DTYPES:
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
        y = _step(backend, as_float32(backend, xb), scales)
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


HALF_DTYPES = ("bfloat16", "float16")


def dequantize_arrays(backend: Backend, st: ScaledTensor, dtype_name: str) -> Any:
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
    if half not in HALF_DTYPES:
        return backend.multiply_add(q_u, s, zp)
    return backend.round_to(backend.round_to(q_u * s, half) + zp, half)
