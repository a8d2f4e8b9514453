"""JAX on CUDA: the fused cast and dequantize kernels, in Pallas (Triton lowering; see :mod:`._cast_plan`).

The same kernels as :mod:`.torch_cast`, step for step: one program loads a ``[tile_rows, width]``
tile once, reduces each block's finite amax and NaN flag, applies the scale rule, encodes, and stores
data and scales. Divisions are ``div.rn.f32`` in inline PTX (the Triton lowering of ``/`` is the
approximate ``div.full.f32``), except the ``deepseek`` rule's, which are DeepSeek's own
``div.full.f32`` (see :mod:`.torch_cast`); ``floor(log2)`` and ``2**e`` are exponent-bit arithmetic; FP8
encodes clamp and convert with RNE; E2M1 rounds on the float32 bits. ``interpret=True`` runs the same
kernel bodies through Pallas' interpreter on any device (dividing as :class:`JaxBackend` does
there), which is how the CPU test suite checks their logic. A per-tensor cast's passes write per-tile
amaxes; the steps between them (their maximum, the scale rule, the next history) are
:mod:`breccia.scaling`'s rule on small arrays, which XLA compiles into the caller's program beside the
kernels (torch's kernels do them with atomics instead, to save launches and their host time).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from ..formats import E2M1, E8M0, FLOAT32, LN2_F32, SUBNORMAL_SHIFT, encode_constants
from ..scaling import DEEPSEEK_AMAX_FLOOR, BlockStats, KernelRule, Scales, block_scales, ceil_log2
from ._cast_plan import CastPlan

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = ["launch_cast", "launch_dequantize", "launch_per_tensor"]

_FLT_MAX = FLOAT32.max_value
_MANTISSA_BITS = FLOAT32.mantissa_bits  # float32's
_EXPONENT_MASK = (1 << FLOAT32.exponent_bits) - 1
_MANTISSA_MASK = (1 << _MANTISSA_BITS) - 1
_SUBNORMAL_BIAS = _MANTISSA_BITS - FLOAT32.e_min  # 2**e is bit e + 149 of a subnormal's pattern
_E2M1 = encode_constants(E2M1)
_FP8 = {"E4M3": jnp.float8_e4m3fn, "E5M2": jnp.float8_e5m2}
_OUT = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _bits(a: Any) -> Any:
    return lax.bitcast_convert_type(a, jnp.int32)


def _float(bits: Any) -> Any:
    return lax.bitcast_convert_type(bits, jnp.float32)


class _Ops:
    """The scalar arithmetic of the kernels, with the division chosen for where they run: on CUDA
    ``div.rn.f32``; under the interpreter, ``backend``'s exact division (JAX's, on the CPU)."""

    def __init__(self, backend: Backend, interpret: bool) -> None:
        self.backend = backend
        self.interpret = interpret

    def div(self, a: Any, b: Any) -> Any:
        """IEEE float32 ``a / b``, correctly rounded."""
        a = jnp.broadcast_to(jnp.asarray(a, jnp.float32), jnp.shape(b))
        b = jnp.broadcast_to(b, a.shape)
        if self.interpret:  # XLA's CPU would turn a division by a constant into a multiply
            return self.backend.divide(a, b)
        return self._asm("div.rn.f32", a, b)

    def div_deepseek(self, a: Any, b: Any) -> Any:
        """DeepSeek's ``a / b``: ``div.full.f32`` (``a * rcp.approx(b)``, one rounding) on CUDA, as its
        Triton kernel compiles it; under the interpreter, the shared code's ``a * fl32(1 / b)``."""
        a = jnp.broadcast_to(jnp.asarray(a, jnp.float32), jnp.shape(b))
        b = jnp.broadcast_to(b, a.shape)
        if self.interpret:
            return a * self.backend.divide(jnp.ones_like(b), b)
        return self._asm("div.full.f32", a, b)

    @staticmethod
    def _asm(instruction: str, a: Any, b: Any) -> Any:
        [q] = pltriton.elementwise_inline_asm(
            f"{instruction} $0, $1, $2;", args=[a, b], constraints="=r,r,r", pack=1,
            result_shape_dtypes=[jax.ShapeDtypeStruct(a.shape, jnp.float32)],
        )
        return q

    @staticmethod
    def floor_log2(a: Any) -> Any:
        """Exact ``floor(log2 a)`` (int32) of positive finite float32 ``a``, from its exponent field
        (the math: :func:`breccia.formats.floor_log2`; ``docs/numerics.md``)."""
        tiny = a < 2.0**FLOAT32.e_min
        a = jnp.where(tiny, a * 2.0**SUBNORMAL_SHIFT, a)
        e = ((_bits(a) >> _MANTISSA_BITS) & _EXPONENT_MASK) - FLOAT32.bias
        return jnp.where(tiny, e - SUBNORMAL_SHIFT, e)

    @staticmethod
    def pow2(e: Any) -> Any:
        """Exact float32 ``2**e`` for int32 ``e`` in [-149, 127], written into the float32 fields."""
        normal = _float((e + FLOAT32.bias) << _MANTISSA_BITS)
        sub = _float(jnp.left_shift(1, jnp.clip(e + _SUBNORMAL_BIAS, 0, _MANTISSA_BITS - 1)))
        return jnp.where(e >= FLOAT32.e_min, normal, sub)

    def ceil_log2(self, v: Any) -> Any:
        """:func:`breccia.scaling.ceil_log2` with this exponent-field ``floor_log2``."""
        return ceil_log2(jnp, self.pow2, v, self.floor_log2)

    def ceil_f32_log2(self, s: Any) -> Any:
        """``ceil(fl32(log2 s))`` of normal float32 ``s``, with ``k`` and ``i`` read from the fields
        (the math: :func:`breccia.scaling.ceil_f32_log2`)."""
        k = self.floor_log2(s)
        i = (_bits(s) & _MANTISSA_MASK).astype(jnp.float32)  # s is normal
        a = jnp.maximum(jnp.abs(k), 1)
        j = self.floor_log2(a.astype(jnp.float32))
        half_ulp = _MANTISSA_BITS + 1  # h = 2**(j - 24)
        h = self.pow2(jnp.where((k < 0) & (jnp.left_shift(1, j) == a), j - (half_ulp + 1), j - half_ulp))
        keep = (i == 0) | ((k != 0) & (i * jnp.float32(2.0**-_MANTISSA_BITS) < h * jnp.float32(LN2_F32)))
        return jnp.where(keep, k, k + 1)

    def scale_rule(self, plan: CastPlan, amax: Any) -> tuple[Any, Any]:
        """(stored scale, encode factor) per block; the factor divides for deepseek, else multiplies."""
        if plan.rule == KernelRule.TE:
            a = jnp.maximum(amax, plan.eps) if plan.eps > 0 else amax
            ok = (a > 0) & (a <= _FLT_MAX)
            q = self.div(plan.fmax, jnp.where(ok, a, 1.0))
            q = jnp.where(q > _FLT_MAX, _FLT_MAX, q)
            q = jnp.where(ok, q, 1.0)
            if plan.power_2:
                q = self.pow2(self.floor_log2(q))
            return self.div(1.0, q), q
        if plan.rule == KernelRule.DEEPSEEK:
            floored = jnp.maximum(amax, jnp.float32(DEEPSEEK_AMAX_FLOOR))
            s = self.div_deepseek(floored, jnp.full(amax.shape, plan.fmax, jnp.float32))
            if plan.power_2:
                s = self.pow2(self.ceil_f32_log2(s))
            return s, s
        positive = amax > 0
        am = jnp.where(positive, amax, 1.0)
        if plan.rule == KernelRule.MX_FLOOR:
            e = self.floor_log2(am) - plan.emax_elem
        else:
            e = self.ceil_log2(self.div(am, jnp.full(am.shape, plan.fmax, jnp.float32)))
        e = jnp.clip(jnp.where(positive, e, 0), -E8M0.bias, E8M0.bias - plan.emax_elem)  # max * 2**e finite
        return (e + E8M0.bias).astype(jnp.uint8), self.pow2(-e)

    @staticmethod
    def encode(plan: CastPlan, y: Any) -> Any:
        """uint8 codes of float32 ``y`` (no NaN): RNE, saturating."""
        if plan.fmt == E2M1:
            sign = (_bits(y) >> (FLOAT32.bits - E2M1.bits)) & (1 << _E2M1.sign_shift)
            return (e2m1_magnitude(jnp.minimum(jnp.abs(y), _E2M1.max_value)) | sign).astype(jnp.uint8)
        y = jnp.clip(y, -plan.fmax, plan.fmax)
        return lax.bitcast_convert_type(y.astype(_FP8[plan.fmt.name]), jnp.uint8)


def e2m1_magnitude(a: Any) -> Any:
    """E2M1 code (0..7) of ``a`` in [0, 6], rounded to nearest even, from its float32 bits: at or
    above 1 the exponent and top mantissa bit rounded at bit 22 (half to even), less 252; below 1,
    ``2a`` rounded to an integer, read from the low bits of ``2a + 2**23``. The math is
    :func:`breccia.formats.encode`'s, the constants :func:`breccia.formats.encode_constants` (E2M1);
    the same function in Triton: :func:`breccia.kernels.torch_cast.e2m1_magnitude`."""
    b = _bits(a)
    half = (1 << (_E2M1.shift - 1)) - 1
    normal = ((b + half + ((b >> _E2M1.shift) & 1)) >> _E2M1.shift) - _E2M1.rebias
    small = _bits(a * _E2M1.subnormal_scale + 2.0**_MANTISSA_BITS) & ((2 << E2M1.mantissa_bits) - 1)
    return jnp.where(a < _E2M1.min_normal, small, normal)


def _tile(plan: CastPlan, reverse: bool = False) -> tuple[Any, Any, Any, Any]:
    """Row and column slices of this program's tile, its mask, and the tile's block row and column
    (``reverse``: the tiles in the reverse of the launch order)."""
    pm, pk = pl.program_id(0), pl.program_id(1)
    if reverse:
        pm, pk = pl.num_programs(0) - 1 - pm, pl.num_programs(1) - 1 - pk
    width = plan.tile_blocks * plan.block_pad
    col0 = pk * (plan.tile_blocks * plan.block_cols)
    r = pm * plan.tile_rows + lax.broadcasted_iota(jnp.int32, (plan.tile_rows, width), 0)
    c = col0 + lax.broadcasted_iota(jnp.int32, (plan.tile_rows, width), 1)
    mask = (r < plan.rows) & (c < plan.cols)
    return (pl.ds(pm * plan.tile_rows, plan.tile_rows), pl.ds(col0, width)), mask, pm, pk


def _finite_abs(x: Any) -> Any:
    m = jnp.abs(x)
    return jnp.where(m <= _FLT_MAX, m, 0.0)  # NaN and +-Inf count as 0


def _tile_max(v: Any) -> Any:
    """``[R, W] -> [1, 1]``: the max of the whole tile."""
    return jnp.max(jnp.max(v, axis=1, keepdims=True), axis=0, keepdims=True)


def _cast_body(plan: CastPlan, ops: _Ops, encode: bool, x_ref, *refs, reverse: bool = False):
    rows_cols, mask, pm, pk = _tile(plan, reverse)
    shape3 = (plan.tile_rows, plan.tile_blocks, plan.block_pad)
    whole = plan.block_rows > 1 or plan.rule == KernelRule.GIVEN  # one block (or one partial amax) per tile
    x = pltriton.load(x_ref.at[rows_cols], mask=mask, other=0.0).astype(jnp.float32)
    isnan = jnp.isnan(x)
    magnitude = _finite_abs(x)
    if whole:
        amax, nans = _tile_max(magnitude), _tile_max(isnan.astype(jnp.int32))
    else:
        amax = jnp.max(magnitude.reshape(shape3), axis=2)
        nans = jnp.max(isnan.astype(jnp.int32).reshape(shape3), axis=2)
    x = jnp.where(isnan, 0.0, x)
    if plan.rule == KernelRule.GIVEN:
        given_ref, data_ref, amax_ref, nan_ref = refs
        at = (pl.ds(pm, 1), pl.ds(pk, 1))
        pltriton.store(amax_ref.at[at], amax)
        pltriton.store(nan_ref.at[at], nans)
        if encode:
            y = x * pltriton.load(given_ref.at[pl.ds(0, 1)]).reshape(1, 1)
            pltriton.store(data_ref.at[rows_cols], ops.encode(plan, y), mask=mask)
        return
    data_ref, scale_ref = refs
    stored, factor = ops.scale_rule(plan, amax)
    divide = plan.rule == KernelRule.DEEPSEEK
    if whole:
        y = ops.div_deepseek(x, jnp.broadcast_to(factor, x.shape)) if divide else x * factor
        codes = ops.encode(plan, y)
    else:
        x3 = x.reshape(shape3)
        f3 = jnp.broadcast_to(factor[:, :, None], shape3)
        y3 = ops.div_deepseek(x3, f3) if divide else x3 * f3
        codes = ops.encode(plan, y3).reshape(x.shape)
    if plan.packed:
        _store_packed(plan, data_ref, rows_cols, codes, pm, pk)
    else:
        pltriton.store(data_ref.at[rows_cols], codes, mask=mask)
    _store_scales(plan, scale_ref, stored, nans, pm, pk)


def _store_scales(plan: CastPlan, scale_ref: Any, stored: Any, nans: Any, pm: Any, pk: Any) -> None:
    """Store the tile's block scales (E8M0 255 or a NaN scale for blocks that held NaN)."""
    if plan.scale_e8m0:
        stored = jnp.where(nans > 0, 255, stored.astype(jnp.int32)).astype(jnp.uint8)
    else:
        stored = jnp.where(nans > 0, jnp.nan, stored)
    groups = plan.tile_rows // plan.block_rows
    g = pm * groups + lax.broadcasted_iota(jnp.int32, stored.shape, 0)
    b = pk * plan.tile_blocks + lax.broadcasted_iota(jnp.int32, stored.shape, 1)
    at = (pl.ds(pm * groups, groups), pl.ds(pk * plan.tile_blocks, plan.tile_blocks))
    pltriton.store(scale_ref.at[at], stored, mask=(g < plan.scale_rows) & (b < plan.scale_cols))


def _pair_halves(w: Any, dtype: Any) -> tuple[Any, Any]:
    """float32 values of elements ``2i`` and ``2i + 1`` from the uint32 word holding both 16-bit
    elements (little-endian: the even one in the low half). Both conversions are exact."""
    if dtype == jnp.bfloat16:  # a bfloat16 is the top half of its float32
        return _float(w << 16), _float(w & jnp.uint32(0xFFFF0000))
    halves = ((w & 0xFFFF).astype(jnp.uint16), (w >> 16).astype(jnp.uint16))
    return tuple(lax.bitcast_convert_type(h, jnp.float16).astype(jnp.float32) for h in halves)


def _cast_pairs_body(plan: CastPlan, ops: _Ops, dtype: Any, words_ref, data_ref, scale_ref):
    """:func:`_cast_body` for a packed (4-bit) format and 16-bit input, read as uint32 words that
    each hold the two elements of one output byte: both codes of a byte come out in one thread's
    registers and the byte is ``low | high << 4`` (pairing them out of a ``[rows, width]`` tile costs a
    layout conversion). Packed formats come with the MX rules only, which multiply by the block's
    factor. float32 input keeps :func:`_store_packed` (a uint64 word needs JAX's x64 mode)."""
    pm, pk = pl.program_id(0), pl.program_id(1)
    half = plan.tile_blocks * plan.block_pad // 2
    col0 = pk * (plan.tile_blocks * plan.block_cols // 2)
    shape = (plan.tile_rows, half)
    r = pm * plan.tile_rows + lax.broadcasted_iota(jnp.int32, shape, 0)
    c = col0 + lax.broadcasted_iota(jnp.int32, shape, 1)
    mask = (r < plan.rows) & (c < plan.cols // 2)
    at = (pl.ds(pm * plan.tile_rows, plan.tile_rows), pl.ds(col0, half))
    lo, hi = _pair_halves(pltriton.load(words_ref.at[at], mask=mask, other=0), dtype)
    shape3 = (plan.tile_rows, plan.tile_blocks, plan.block_pad // 2)
    nan_lo, nan_hi = jnp.isnan(lo), jnp.isnan(hi)
    magnitude = jnp.maximum(_finite_abs(lo), _finite_abs(hi))
    amax = jnp.max(magnitude.reshape(shape3), axis=2)
    nans = jnp.max((nan_lo | nan_hi).astype(jnp.int32).reshape(shape3), axis=2)
    stored, factor = ops.scale_rule(plan, amax)
    codes = [
        ops.encode(plan, jnp.where(nan, 0.0, v).reshape(shape3) * factor[:, :, None]).reshape(shape)
        for v, nan in ((lo, nan_lo), (hi, nan_hi))
    ]
    pltriton.store(data_ref.at[at], codes[0] | (codes[1] << 4), mask=mask)
    _store_scales(plan, scale_ref, stored, nans, pm, pk)


def _store_packed(plan: CastPlan, data_ref: Any, rows_cols: Any, codes: Any, pm: Any, pk: Any) -> None:
    """Two 4-bit codes per byte, element 2i in the low nibble (as ``low + 16 * high``), paired out
    of a float32 tile (16-bit input takes :func:`_cast_pairs_body`)."""
    width = codes.shape[1]
    pairs = codes.astype(jnp.int32).reshape(plan.tile_rows, width // 2, 2)
    weights = 1 + 15 * lax.broadcasted_iota(jnp.int32, pairs.shape, 2)
    packed = jnp.sum(pairs * weights, axis=2).astype(jnp.uint8)
    col0 = pk * (plan.tile_blocks * plan.block_cols // 2)
    r = pm * plan.tile_rows + lax.broadcasted_iota(jnp.int32, packed.shape, 0)
    c = col0 + lax.broadcasted_iota(jnp.int32, packed.shape, 1)
    at = (rows_cols[0], pl.ds(col0, width // 2))
    pltriton.store(data_ref.at[at], packed, mask=(r < plan.rows) & (c < plan.cols // 2))


def _params(plan: CastPlan, interpret: bool, warps: int | None = None) -> dict[str, Any]:
    if interpret:
        return dict(interpret=True)
    return dict(compiler_params=pltriton.CompilerParams(num_warps=warps or plan.num_warps, num_stages=1))


def _cast_warps(plan: CastPlan) -> int:
    """The cast's warps: the plan's, but 4 where a program's tile is one wide block of one row (a
    PerRow cast of a wide tensor), where Pallas' code is faster with 4 than with the plan's 8 (torch's
    Triton kernel is fastest at the plan's; ``scripts/tune_cast_kernels.py``, RESULTS.md)."""
    wide_row = plan.tile_rows == 1 and plan.tile_blocks == 1 and plan.block_rows == 1
    return 4 if wide_row and plan.block_pad >= 4096 else plan.num_warps


def launch_cast(backend: Backend, plan: CastPlan, x: Any, interpret: bool = False) -> tuple[Any, Any]:
    """The cast kernel of a per-block plan on ``x`` (``plan.rows * plan.cols`` elements): ``(data,
    scale)`` as :func:`breccia.kernels.torch_cast.launch_cast` returns them. ``backend`` is JAX's."""
    x2 = x.reshape(plan.rows, plan.cols)
    width = plan.cols // 2 if plan.packed else plan.cols
    scale_dtype = jnp.uint8 if plan.scale_e8m0 else jnp.float32
    out_shape = [jax.ShapeDtypeStruct((plan.rows, width), jnp.uint8),
                 jax.ShapeDtypeStruct((plan.scale_rows, plan.scale_cols), scale_dtype)]
    ops = _Ops(backend, interpret)
    body = functools.partial(_cast_body, plan, ops, True)
    if plan.packed and x2.dtype.itemsize == 2:
        body = functools.partial(_cast_pairs_body, plan, ops, x2.dtype)
        x2 = lax.bitcast_convert_type(x2.reshape(plan.rows, plan.cols // 2, 2), jnp.uint32)
    params = _params(plan, interpret, _cast_warps(plan))
    data, scale = pl.pallas_call(body, out_shape=out_shape, grid=plan.grid, **params)(x2)
    return data, scale


def _given_pass(
    backend: Backend, plan: CastPlan, x: Any, given: Any, encode: bool, interpret: bool, reverse: bool = False
) -> tuple[Any, Any, Any]:
    """One pass of a per-tensor (``given``-rule) plan: ``(data or None, tile amaxes, tile NaN
    flags)``, the data encoded with the multiplier ``given`` when ``encode``; ``reverse`` visits the
    tiles in the reverse of the launch order."""
    body = functools.partial(_cast_body, plan, _Ops(backend, interpret), encode, reverse=reverse)
    tiles = [jax.ShapeDtypeStruct(plan.grid, jnp.float32), jax.ShapeDtypeStruct(plan.grid, jnp.int32)]
    if encode:
        kernel = body
        out_shape = [jax.ShapeDtypeStruct((plan.rows, plan.cols), jnp.uint8), *tiles]
    else:
        def kernel(x_ref, given_ref, amax_ref, nan_ref):
            body(x_ref, given_ref, None, amax_ref, nan_ref)

        out_shape = tiles
    params = _params(plan, interpret, _cast_warps(plan))
    call = pl.pallas_call(kernel, out_shape=out_shape, grid=plan.grid, **params)
    outs = call(x.reshape(plan.rows, plan.cols), given.reshape(1))
    return (outs[0] if encode else None), outs[-2].reshape(-1), outs[-1].reshape(-1)


def _tensor_rule(backend: Backend, recipe: Any, amax: Any, history: Any = None) -> Scales:
    return block_scales(backend, recipe, BlockStats(amax=jnp.reshape(amax, (1, 1))), history)


def _nan_if(flags: Any, stored: Any) -> Any:
    """The per-tensor scale, NaN where any tile held NaN (the NaN rule of docs/numerics.md)."""
    return jnp.where(jnp.any(flags > 0), jnp.nan, stored)


def launch_per_tensor(
    backend: Backend, plan: CastPlan, recipe: Any, x: Any, history: Any = None, interpret: bool = False
):
    """A per-tensor cast of ``x`` by a ``given``-rule plan: ``(data, scale [1, 1], next history or
    None)``. Current scaling is an amax pass, the rule on the largest tile amax, and the encode pass;
    DelayedScaling takes the rule on its history, encodes, and puts the largest tile amax of that
    same pass in front of ``history[:-1]``. The encode pass of current scaling visits the tiles in
    reverse order, so it starts on those the amax pass read last, still in L2."""
    if history is None:
        _, tiles, flags = _given_pass(backend, plan, x, jnp.ones((1,), jnp.float32), False, interpret)
        scales = _tensor_rule(backend, recipe, jnp.max(tiles))
        data, _, _ = _given_pass(backend, plan, x, scales.multiplier, True, interpret, reverse=True)
        return data, _nan_if(flags, scales.stored), None
    scales = _tensor_rule(backend, recipe, history[0], history)  # the amax placeholder: only its rank is read
    data, tiles, flags = _given_pass(backend, plan, x, scales.multiplier, True, interpret)
    next_history = jnp.concatenate([jnp.reshape(jnp.max(tiles), (1,)), history[:-1]])
    return data, _nan_if(flags, scales.stored), next_history


def _dequantize_body(plan: CastPlan, data_ref, scale_ref, out_ref):
    rows_cols, mask, pm, pk = _tile(plan)
    codes = pltriton.load(data_ref.at[rows_cols], mask=mask, other=0)
    v = lax.bitcast_convert_type(codes, _FP8[plan.fmt.name]).astype(jnp.float32)
    if plan.rule == KernelRule.PER_TENSOR:
        y = v * pltriton.load(scale_ref.at[pl.ds(0, 1)]).astype(jnp.float32).reshape(1, 1)
    else:
        groups = plan.tile_rows // plan.block_rows
        shape = (groups, plan.tile_blocks)
        g = pm * groups + lax.broadcasted_iota(jnp.int32, shape, 0)
        b = pk * plan.tile_blocks + lax.broadcasted_iota(jnp.int32, shape, 1)
        at = (pl.ds(pm * groups, groups), pl.ds(pk * plan.tile_blocks, plan.tile_blocks))
        s = pltriton.load(scale_ref.at[at], mask=(g < plan.scale_rows) & (b < plan.scale_cols), other=1)
        if plan.scale_e8m0:
            s = s.astype(jnp.int32)
            s = _float(jnp.where(s == 255, 0x7FC00000, jnp.where(s == 0, 0x00400000, s << 23)))
        else:
            s = s.astype(jnp.float32)
        if plan.block_rows > 1:  # one block per tile: s is [1, 1]
            y = v * s
        else:
            y = (v.reshape(plan.tile_rows, plan.tile_blocks, plan.block_pad) * s[:, :, None]).reshape(v.shape)
    pltriton.store(out_ref.at[rows_cols], y.astype(out_ref.dtype), mask=mask)


def launch_dequantize(
    backend: Backend, plan: CastPlan, data: Any, scale: Any, dtype_name: str, interpret: bool = False
) -> Any:
    """``decode(data) * scale`` in float32, rounded to ``dtype_name``: a ``[rows, cols]`` array
    (``backend``, JAX's, is the launchers' common first argument; this kernel needs nothing of it)."""
    codes = lax.bitcast_convert_type(data, jnp.uint8).reshape(plan.rows, plan.cols)
    if plan.scale_e8m0:
        scale = lax.bitcast_convert_type(scale, jnp.uint8)
    per_tensor = plan.rule == KernelRule.PER_TENSOR
    scale = scale.reshape(1) if per_tensor else scale.reshape(plan.scale_rows, plan.scale_cols)
    out_shape = jax.ShapeDtypeStruct((plan.rows, plan.cols), _OUT[dtype_name])
    body = functools.partial(_dequantize_body, plan)
    return pl.pallas_call(body, out_shape=out_shape, grid=plan.grid, **_params(plan, interpret))(codes, scale)
