"""PyTorch on CUDA: the fused cast and dequantize kernels, in Triton (see :mod:`._cast_plan`).

One program loads a ``[tile_rows, tile_blocks * block_pad]`` tile once, reduces each block's amax
over its finite elements (and whether it holds NaN), applies the recipe's scale rule to the amaxes,
encodes and stores data and scales. Exactness, operation by operation against :mod:`breccia.scaling`:

- divisions are ``div.rn.f32`` (inline PTX: Triton's ``/`` is the approximate ``div.full.f32``, and
  libdevice's ``div_rn`` flushes subnormals under Triton's FTZ reflection), except the ``deepseek``
  rule's two, which are DeepSeek's own ``div.full.f32`` (``a * rcp.approx(b)``): its scale equals
  the shared code's ``amax * fl32(1/max)``, and its codes may differ from the shared code's ``x *
  fl32(1/s)`` where ``rcp.approx(s)`` is not the correctly rounded reciprocal and the quotient lies
  on an FP8 rounding boundary (``docs/conformance.md`` counts them);
- ``floor(log2 a)`` and ``2**e`` are read from and written into the exponent bits (subnormals
  scaled by ``2**64`` first), as the reference's corrected ``log2`` computes them;
- FP8 encodes clamp to ``+-max`` and convert with round-to-nearest-even (``cvt.rn.satfinite``);
  E2M1 rounds ``min(|y|, 6)`` on its float32 bits (``e2m1_magnitude``) and writes the sign bit
  (``-0`` included);
- there is no multiply-add to contract (and FP fusion is off in every launch).

A per-tensor cast (:func:`launch_per_tensor`) reduces its amax across programs with atomics: each
program takes the max of its tile's finite ``|x|`` and ``atomic_max``es its float32 bits as an int32
(for non-negative floats the two orders agree), and likewise a NaN flag. Current scaling is then an
amax pass and an encode pass whose every program applies the scale rule to the one amax; the encode
pass visits the tiles in reverse order, so it starts on those the amax pass read last, still in L2.
DelayedScaling is one pass, in which every program applies the rule to the history, encodes and
records its amax, then a one-program kernel writes the scale and the next history. The maximum does
not depend on the order of the atomics, so the bits are deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import triton
import triton.language as tl

from ..formats import E2M1, E8M0, FLOAT32, LN2_F32, SUBNORMAL_SHIFT, encode_constants
from ..scaling import DEEPSEEK_AMAX_FLOOR, KernelRule
from ._cast_plan import CastPlan

if TYPE_CHECKING:
    from ..backends import Backend

__all__ = ["launch_cast", "launch_dequantize", "launch_per_tensor"]

# the rules the kernels branch on (their RULE constant), numbered by breccia.scaling.KernelRule
_TE = tl.constexpr(KernelRule.TE.code)
_DEEPSEEK = tl.constexpr(KernelRule.DEEPSEEK.code)
_MX_FLOOR = tl.constexpr(KernelRule.MX_FLOOR.code)
_MX_CEIL = tl.constexpr(KernelRule.MX_CEIL.code)
_PER_TENSOR = tl.constexpr(KernelRule.PER_TENSOR.code)
# breccia.formats' constants, as the globals a Triton kernel may read: float32's fields
_F32_MANTISSA = tl.constexpr(FLOAT32.mantissa_bits)  # 23
_F32_MANTISSA_MASK = tl.constexpr((1 << FLOAT32.mantissa_bits) - 1)
_F32_EXPONENT_MASK = tl.constexpr((1 << FLOAT32.exponent_bits) - 1)
_F32_BIAS = tl.constexpr(FLOAT32.bias)  # 127
_F32_E_MIN = tl.constexpr(FLOAT32.e_min)  # -126
_F32_MIN_NORMAL = tl.constexpr(2.0**FLOAT32.e_min)
_F32_SUBNORMAL_BIAS = tl.constexpr(FLOAT32.mantissa_bits - FLOAT32.e_min)  # 2**e is bit e + 149
_F32_HALF_ULP = tl.constexpr(FLOAT32.mantissa_bits + 1)  # half the spacing above 2**j is 2**(j - 24)
_F32_ULP_1 = tl.constexpr(2.0**-FLOAT32.mantissa_bits)
_F32_TWO_MANTISSA = tl.constexpr(2.0**FLOAT32.mantissa_bits)
_FLT_MAX = tl.constexpr(FLOAT32.max_value)
_LN2 = tl.constexpr(LN2_F32)
_SHIFT = tl.constexpr(SUBNORMAL_SHIFT)
_SHIFT_SCALE = tl.constexpr(2.0**SUBNORMAL_SHIFT)
# E8M0's bias, DeepSeek's amax floor, and E2M1's encode (breccia.formats.encode_constants)
_E8M0_BIAS = tl.constexpr(E8M0.bias)
_DEEPSEEK_FLOOR = tl.constexpr(DEEPSEEK_AMAX_FLOOR)
_E2M1 = encode_constants(E2M1)
_E2M1_MAX = tl.constexpr(_E2M1.max_value)
_E2M1_MIN_NORMAL = tl.constexpr(_E2M1.min_normal)
_E2M1_SHIFT = tl.constexpr(_E2M1.shift)
_E2M1_HALF = tl.constexpr((1 << (_E2M1.shift - 1)) - 1)
_E2M1_REBIAS = tl.constexpr(_E2M1.rebias)
_E2M1_SUBNORMAL_SCALE = tl.constexpr(_E2M1.subnormal_scale)
_E2M1_SMALL_MASK = tl.constexpr((2 << E2M1.mantissa_bits) - 1)  # the codes up to the first normal
_E2M1_SIGN_SHIFT = tl.constexpr(FLOAT32.bits - E2M1.bits)  # float32's sign bit to E2M1's
_E2M1_SIGN = tl.constexpr(1 << _E2M1.sign_shift)
_FORMATS = {"E4M3": 0, "E5M2": 1, "E2M1": 2}
_OUT = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PAIRS = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}  # how a word holds a pair


@triton.jit
def _div_rn(a, b):
    """IEEE float32 ``a / b``, correctly rounded (subnormals kept)."""
    return tl.inline_asm_elementwise(
        "div.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def _div_full(a, b):
    """``div.full.f32``: ``a * rcp.approx(b)`` rounded once, what Triton compiles ``a / b`` to (the
    division of DeepSeek's ``act_quant``, reproduced here by the same instruction)."""
    return tl.inline_asm_elementwise(
        "div.full.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True, pack=1
    )


@triton.jit
def floor_log2(a):
    """Exact ``floor(log2 a)`` (int32) of positive finite float32 ``a``, from its exponent field
    (the math: :func:`breccia.formats.floor_log2`; ``docs/numerics.md``)."""
    tiny = a < _F32_MIN_NORMAL
    a = tl.where(tiny, a * _SHIFT_SCALE, a)
    e = ((a.to(tl.int32, bitcast=True) >> _F32_MANTISSA) & _F32_EXPONENT_MASK) - _F32_BIAS
    return tl.where(tiny, e - _SHIFT, e)


@triton.jit
def pow2(e):
    """Exact float32 ``2**e`` for int32 ``e`` in [-149, 127], written into the float32 fields."""
    normal = ((e + _F32_BIAS) << _F32_MANTISSA).to(tl.float32, bitcast=True)
    bit = tl.minimum(tl.maximum(e + _F32_SUBNORMAL_BIAS, 0), _F32_MANTISSA - 1)
    sub = (1 << bit).to(tl.float32, bitcast=True)
    return tl.where(e >= _F32_E_MIN, normal, sub)


@triton.jit
def ceil_log2(v):
    """Exact ``ceil(log2 v)`` (the math: :func:`breccia.scaling.ceil_log2`)."""
    e = floor_log2(v)
    return tl.where(pow2(e) < v, e + 1, e)


@triton.jit
def ceil_f32_log2(s):
    """``ceil(fl32(log2 s))`` of normal float32 ``s``, with ``k`` and ``i`` read from the fields
    (the math: :func:`breccia.scaling.ceil_f32_log2`)."""
    k = floor_log2(s)
    i = (s.to(tl.int32, bitcast=True) & _F32_MANTISSA_MASK).to(tl.float32)  # s is normal
    a = tl.maximum(tl.abs(k), 1)
    j = floor_log2(a.to(tl.float32))
    h = pow2(tl.where((k < 0) & ((1 << j) == a), j - (_F32_HALF_ULP + 1), j - _F32_HALF_ULP))
    keep = (i == 0) | ((k != 0) & (i * _F32_ULP_1 < h * _LN2))
    return tl.where(keep, k, k + 1)


@triton.jit
def _scale_rule(amax, RULE: tl.constexpr, FMAX: tl.constexpr, EPS: tl.constexpr, POW2: tl.constexpr,
                EMAX: tl.constexpr):
    """(stored scale, encode factor) of each block; the factor multiplies, or divides for deepseek."""
    if RULE == _TE:  # q = max / max(amax, eps)
        if EPS > 0:
            a = tl.maximum(amax, EPS)
        else:
            a = amax
        ok = (a > 0) & (a <= _FLT_MAX)
        q = _div_rn(tl.full(a.shape, FMAX, tl.float32), tl.where(ok, a, 1.0))
        q = tl.where(q > _FLT_MAX, _FLT_MAX, q)
        q = tl.where(ok, q, 1.0)
        if POW2:
            q = pow2(floor_log2(q))
        return _div_rn(tl.full(q.shape, 1.0, tl.float32), q), q
    elif RULE == _DEEPSEEK:  # s = max(amax, 1e-4) / max, divided as DeepSeek's kernel divides
        s = _div_full(tl.maximum(amax, _DEEPSEEK_FLOOR), tl.full(amax.shape, FMAX, tl.float32))
        if POW2:
            s = pow2(ceil_f32_log2(s))
        return s, s
    else:  # MX: e = floor(log2 amax) - emax_elem, or ceil(log2(amax / max))
        positive = amax > 0
        am = tl.where(positive, amax, 1.0)
        if RULE == _MX_FLOOR:
            e = floor_log2(am) - EMAX
        else:
            e = ceil_log2(_div_rn(am, tl.full(am.shape, FMAX, tl.float32)))
        # clipped to E8M0's range, and to 127 - e_max so that max * 2**e stays finite
        e = tl.minimum(tl.maximum(tl.where(positive, e, 0), -_E8M0_BIAS), _E8M0_BIAS - EMAX)
        return (e + _E8M0_BIAS).to(tl.uint8), pow2(-e)


@triton.jit
def e2m1_magnitude(a):
    """E2M1 code (0..7) of ``a`` in [0, 6], rounded to nearest even, from its float32 bits.

    At or above 1 the code is the exponent and top mantissa bit of ``a`` rounded at bit 22 (round
    half to even on the bits), less 252 (the bits of 1.0 shifted right by 22 are 254, code 2). Below
    1 the code is ``2a`` rounded to an integer, read from the low bits of ``2a + 2**23`` (an exact
    ``2a``, then one RNE addition). About a dozen operations, where counting the seven RNE
    thresholds takes twenty (the MXFP4 cast is bound by arithmetic, not by memory). The math is
    :func:`breccia.formats.encode`'s, the constants :func:`breccia.formats.encode_constants` (E2M1);
    the same function in Pallas: :func:`breccia.kernels.jax_cast.e2m1_magnitude`."""
    b = a.to(tl.int32, bitcast=True)
    normal = ((b + _E2M1_HALF + ((b >> _E2M1_SHIFT) & 1)) >> _E2M1_SHIFT) - _E2M1_REBIAS
    small = (a * _E2M1_SUBNORMAL_SCALE + _F32_TWO_MANTISSA).to(tl.int32, bitcast=True) & _E2M1_SMALL_MASK
    return tl.where(a < _E2M1_MIN_NORMAL, small, normal)


@triton.jit
def _encode(y, FMT: tl.constexpr, FMAX: tl.constexpr):
    """uint8 codes of float32 ``y`` (no NaN): RNE, saturating."""
    if FMT == 2:  # E2M1: see e2m1_magnitude
        sign = (y.to(tl.int32, bitcast=True) >> _E2M1_SIGN_SHIFT) & _E2M1_SIGN
        return (e2m1_magnitude(tl.minimum(tl.abs(y), _E2M1_MAX)) | sign).to(tl.uint8)
    y = tl.minimum(tl.maximum(y, -FMAX), FMAX)
    if FMT == 0:
        return y.to(tl.float8e4nv, fp_downcast_rounding="rtne").to(tl.uint8, bitcast=True)
    return y.to(tl.float8e5, fp_downcast_rounding="rtne").to(tl.uint8, bitcast=True)


@triton.jit
def _finite_abs(x):
    m = tl.abs(x)
    return tl.where(m <= _FLT_MAX, m, 0.0)  # NaN and +-Inf count as 0


@triton.jit
def _pair_halves(w, PAIRS: tl.constexpr):
    """float32 values of elements ``2i`` and ``2i + 1`` from the word holding both (little-endian:
    the even element in the low half). Every conversion is exact."""
    if PAIRS == 1:  # bfloat16 pair in an int32: a bfloat16 is the top half of its float32
        return (w << 16).to(tl.float32, bitcast=True), (w & -65536).to(tl.float32, bitcast=True)
    elif PAIRS == 2:  # float16 pair in an int32
        lo = w.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        return lo, (w >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:  # float32 pair in an int64
        lo = w.to(tl.int32).to(tl.float32, bitcast=True)
        return lo, (w >> 32).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _block_max(v, R: tl.constexpr, B: tl.constexpr, P: tl.constexpr):
    """``[R, B * P] -> [R, B]``: the max of each row's ``B`` runs of ``P``."""
    return tl.max(tl.reshape(v, (R, B, P)), axis=2)


@triton.jit
def _tile_max(v):
    """``[R, W] -> [1, 1]``: the max of the whole tile."""
    return tl.max(tl.max(v, axis=1, keep_dims=True), axis=0, keep_dims=True)


@triton.jit
def _store_scale(scale_ptr, stored, nans, pm, pk, scale_rows, scale_cols, RULE: tl.constexpr,
                 TILE_ROWS: tl.constexpr, BLOCK_ROWS: tl.constexpr, TILE_BLOCKS: tl.constexpr):
    """Store the tile's block scales (E8M0 255 or a NaN scale for blocks that held NaN)."""
    if (RULE == _MX_FLOOR) | (RULE == _MX_CEIL):  # E8M0 scales
        stored = tl.where(nans > 0, 255, stored).to(tl.uint8)
    else:
        nan = tl.full(stored.shape, 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)
        stored = tl.where(nans > 0, nan, stored)
    GROUPS: tl.constexpr = TILE_ROWS // BLOCK_ROWS
    g = pm * GROUPS + tl.arange(0, GROUPS)
    b = pk * TILE_BLOCKS + tl.arange(0, TILE_BLOCKS)
    tl.store(scale_ptr + g[:, None] * scale_cols + b[None, :], stored,
             mask=(g[:, None] < scale_rows) & (b[None, :] < scale_cols))


@triton.jit
def _load_tile(x_ptr, rows, cols, pm, col0, TILE_ROWS: tl.constexpr, WIDTH: tl.constexpr):
    """``(x as float32, whether each element is NaN, offsets, mask)`` of a tile: rows
    ``pm * TILE_ROWS`` on, columns ``col0`` on (ragged edges masked, read as zeros)."""
    r = pm * TILE_ROWS + tl.arange(0, TILE_ROWS)
    c = col0 + tl.arange(0, WIDTH)
    mask = (r[:, None] < rows) & (c[None, :] < cols)
    offsets = r[:, None].to(tl.int64) * cols + c[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return x, x != x, offsets, mask


@triton.jit
def _cast_kernel(x_ptr, data_ptr, scale_ptr, rows, cols, scale_rows, scale_cols,
                 BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_PAD: tl.constexpr,
                 TILE_ROWS: tl.constexpr, TILE_BLOCKS: tl.constexpr, RULE: tl.constexpr,
                 FMT: tl.constexpr, FMAX: tl.constexpr, EPS: tl.constexpr, POW2: tl.constexpr,
                 EMAX: tl.constexpr):
    WIDTH: tl.constexpr = TILE_BLOCKS * BLOCK_PAD
    pm = tl.program_id(0)
    pk = tl.program_id(1)
    # BLOCK_PAD > BLOCK_COLS only for a single block
    col0 = pk * (TILE_BLOCKS * BLOCK_COLS)
    x, isnan, offsets, mask = _load_tile(x_ptr, rows, cols, pm, col0, TILE_ROWS, WIDTH)
    if BLOCK_ROWS > 1:  # one block per tile
        amax = _tile_max(_finite_abs(x))
        nans = _tile_max(isnan.to(tl.int32))
    else:
        amax = _block_max(_finite_abs(x), TILE_ROWS, TILE_BLOCKS, BLOCK_PAD)
        nans = _block_max(isnan.to(tl.int32), TILE_ROWS, TILE_BLOCKS, BLOCK_PAD)
    x = tl.where(isnan, 0.0, x)
    stored, factor = _scale_rule(amax, RULE, FMAX, EPS, POW2, EMAX)
    if BLOCK_ROWS > 1:
        if RULE == _DEEPSEEK:
            y = _div_full(x, tl.broadcast_to(factor, x.shape))
        else:
            y = x * factor
        codes = _encode(y, FMT, FMAX)
    else:
        x3 = tl.reshape(x, (TILE_ROWS, TILE_BLOCKS, BLOCK_PAD))
        if RULE == _DEEPSEEK:
            y3 = _div_full(x3, tl.broadcast_to(factor[:, :, None], x3.shape))
        else:
            y3 = x3 * factor[:, :, None]
        codes = tl.reshape(_encode(y3, FMT, FMAX), (TILE_ROWS, WIDTH))
    tl.store(data_ptr + offsets, codes, mask=mask)
    _store_scale(scale_ptr, stored, nans, pm, pk, scale_rows, scale_cols, RULE, TILE_ROWS, BLOCK_ROWS,
                 TILE_BLOCKS)


@triton.jit
def _nan_f32():
    return tl.full((1, 1), 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _record_amax(x, isnan, work_ptr):
    """``atomic_max`` the tile's finite amax into ``work[0]`` (its float32 bits as an int32: for
    non-negative floats the orders agree) and, if it holds NaN, 1 into ``work[1]``. Relaxed: a later
    launch reads them. Scalar atomics are issued by one thread of the program."""
    amax = tl.max(tl.max(_finite_abs(x), axis=1), axis=0)
    tl.atomic_max(work_ptr, amax.to(tl.int32, bitcast=True), sem="relaxed")
    if tl.max(tl.max(isnan.to(tl.int32), axis=1), axis=0) > 0:
        tl.atomic_max(work_ptr + 1, 1, sem="relaxed")


@triton.jit
def _tensor_amax_kernel(x_ptr, work_ptr, rows, cols, TILE_ROWS: tl.constexpr, WIDTH: tl.constexpr):
    """Current scaling's first pass: the tensor's finite amax and NaN flag into ``work``."""
    pm, pk = tl.program_id(0), tl.program_id(1)
    x, isnan, _, _ = _load_tile(x_ptr, rows, cols, pm, pk * WIDTH, TILE_ROWS, WIDTH)
    _record_amax(x, isnan, work_ptr)


@triton.jit
def _tensor_encode_kernel(x_ptr, data_ptr, scale_ptr, work_ptr, rows, cols,
                          TILE_ROWS: tl.constexpr, WIDTH: tl.constexpr, FMT: tl.constexpr, FMAX: tl.constexpr,
                          EPS: tl.constexpr, POW2: tl.constexpr):
    """Current scaling's second pass: every program applies TransformerEngine's rule to the amax in
    ``work`` and encodes its tile; program 0 stores the scale (NaN if a tile held NaN). The tiles go
    in the reverse of the first pass's order, so the first ones read are those the first pass read
    last, still in L2."""
    first = tl.zeros((1, 1), tl.int32)
    pm = tl.num_programs(0) - 1 - tl.program_id(0)
    pk = tl.num_programs(1) - 1 - tl.program_id(1)
    x, isnan, offsets, mask = _load_tile(x_ptr, rows, cols, pm, pk * WIDTH, TILE_ROWS, WIDTH)
    stored, q = _scale_rule(tl.load(work_ptr + first).to(tl.float32, bitcast=True), _TE, FMAX, EPS, POW2, 0)
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        tl.store(scale_ptr + first, tl.where(tl.load(work_ptr + 1 + first) > 0, _nan_f32(), stored))
    tl.store(data_ptr + offsets, _encode(tl.where(isnan, 0.0, x) * q, FMT, FMAX), mask=mask)


@triton.jit
def _history_rule(history_ptr, length, FMAX: tl.constexpr, MOST_RECENT: tl.constexpr, MARGIN: tl.constexpr,
                  CHUNK: tl.constexpr):
    """DelayedScaling's ``(stored scale, multiplier)`` (``[1, 1]``) from its amax history: the largest
    amax (NaN if one is) or the newest, times ``2**margin``, by TransformerEngine's rule."""
    if MOST_RECENT:
        amax = tl.load(history_ptr + tl.zeros((1, 1), tl.int32))
    else:
        amaxes = tl.zeros((1, CHUNK), tl.float32)
        nans = tl.zeros((1, CHUNK), tl.int32)
        for start in range(0, length, CHUNK):
            i = start + tl.arange(0, CHUNK)[None, :]
            h = tl.load(history_ptr + i, mask=i < length, other=0.0)
            amaxes = tl.maximum(amaxes, h)
            nans = tl.maximum(nans, (h != h).to(tl.int32))
        any_nan = tl.max(nans, axis=1, keep_dims=True) > 0
        amax = tl.where(any_nan, _nan_f32(), tl.max(amaxes, axis=1, keep_dims=True))
    return _scale_rule(amax * MARGIN, _TE, FMAX, 0.0, False, 0)


@triton.jit
def _delayed_cast_kernel(x_ptr, data_ptr, work_ptr, history_ptr, rows, cols, length,
                         TILE_ROWS: tl.constexpr, WIDTH: tl.constexpr, FMT: tl.constexpr, FMAX: tl.constexpr,
                         MOST_RECENT: tl.constexpr, MARGIN: tl.constexpr, CHUNK: tl.constexpr):
    """A DelayedScaling cast's one pass: every program applies the rule to the history (read from
    L2 by each program: 4 KB at the default length of 1024), encodes its tile and records its amax
    into ``work``."""
    pm, pk = tl.program_id(0), tl.program_id(1)
    x, isnan, offsets, mask = _load_tile(x_ptr, rows, cols, pm, pk * WIDTH, TILE_ROWS, WIDTH)
    _, q = _history_rule(history_ptr, length, FMAX, MOST_RECENT, MARGIN, CHUNK)
    tl.store(data_ptr + offsets, _encode(tl.where(isnan, 0.0, x) * q, FMT, FMAX), mask=mask)
    _record_amax(x, isnan, work_ptr)


@triton.jit
def _delayed_finish_kernel(work_ptr, history_ptr, scale_ptr, next_ptr, length, FMAX: tl.constexpr,
                           MOST_RECENT: tl.constexpr, MARGIN: tl.constexpr, CHUNK: tl.constexpr):
    """One program after the pass: the scale (NaN if a tile held NaN) and the next history,
    ``[amax, history[:-1]]``. A separate launch, not a last-program counter in the pass: the counter
    costs each program an acquire-release fence that waits for its stores (RESULTS.md measures both)."""
    first = tl.zeros((1, 1), tl.int32)
    stored, _ = _history_rule(history_ptr, length, FMAX, MOST_RECENT, MARGIN, CHUNK)
    tl.store(scale_ptr + first, tl.where(tl.load(work_ptr + 1 + first) > 0, _nan_f32(), stored))
    tl.store(next_ptr + first, tl.load(work_ptr + first).to(tl.float32, bitcast=True))
    for start in range(0, length - 1, CHUNK):
        i = start + tl.arange(0, CHUNK)[None, :]
        tl.store(next_ptr + 1 + i, tl.load(history_ptr + i, mask=i < length - 1), mask=i < length - 1)


@triton.jit
def _cast_pairs_kernel(w_ptr, data_ptr, scale_ptr, rows, cols, scale_rows, scale_cols,
                       BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_PAD: tl.constexpr,
                       TILE_ROWS: tl.constexpr, TILE_BLOCKS: tl.constexpr, RULE: tl.constexpr,
                       FMT: tl.constexpr, FMAX: tl.constexpr, EPS: tl.constexpr, POW2: tl.constexpr,
                       EMAX: tl.constexpr, PAIRS: tl.constexpr):
    """:func:`_cast_kernel` for a packed (4-bit) format: the tile is read as words that each hold
    the two elements of one output byte, so both codes of a byte are in one thread's registers and
    the byte is ``low | high << 4`` (pairing them out of a ``[rows, width]`` tile costs a layout
    conversion). Packed formats come with the MX rules only, which multiply by the block's factor."""
    HALF: tl.constexpr = TILE_BLOCKS * BLOCK_PAD // 2
    pm = tl.program_id(0)
    pk = tl.program_id(1)
    r = pm * TILE_ROWS + tl.arange(0, TILE_ROWS)
    h = pk * (TILE_BLOCKS * BLOCK_COLS // 2) + tl.arange(0, HALF)
    mask = (r[:, None] < rows) & (h[None, :] < cols // 2)
    offsets = r[:, None].to(tl.int64) * (cols // 2) + h[None, :]
    lo, hi = _pair_halves(tl.load(w_ptr + offsets, mask=mask, other=0), PAIRS)
    nan_lo = lo != lo
    nan_hi = hi != hi
    amax = _block_max(tl.maximum(_finite_abs(lo), _finite_abs(hi)), TILE_ROWS, TILE_BLOCKS, BLOCK_PAD // 2)
    nans = _block_max((nan_lo | nan_hi).to(tl.int32), TILE_ROWS, TILE_BLOCKS, BLOCK_PAD // 2)
    stored, factor = _scale_rule(amax, RULE, FMAX, EPS, POW2, EMAX)
    f3 = factor[:, :, None]
    code_lo = _encode(tl.reshape(tl.where(nan_lo, 0.0, lo), (TILE_ROWS, TILE_BLOCKS, BLOCK_PAD // 2)) * f3,
                      FMT, FMAX)
    code_hi = _encode(tl.reshape(tl.where(nan_hi, 0.0, hi), (TILE_ROWS, TILE_BLOCKS, BLOCK_PAD // 2)) * f3,
                      FMT, FMAX)
    packed = tl.reshape(code_lo | (code_hi << 4), (TILE_ROWS, HALF))
    tl.store(data_ptr + offsets, packed, mask=mask)
    _store_scale(scale_ptr, stored, nans, pm, pk, scale_rows, scale_cols, RULE, TILE_ROWS, BLOCK_ROWS,
                 TILE_BLOCKS)


@triton.jit
def _dequantize_kernel(data_ptr, scale_ptr, out_ptr, rows, cols, scale_rows, scale_cols,
                       BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_PAD: tl.constexpr,
                       TILE_ROWS: tl.constexpr, TILE_BLOCKS: tl.constexpr, RULE: tl.constexpr,
                       FMT: tl.constexpr, E8M0: tl.constexpr, OUT_F32: tl.constexpr):
    WIDTH: tl.constexpr = TILE_BLOCKS * BLOCK_PAD
    pm = tl.program_id(0)
    pk = tl.program_id(1)
    r = pm * TILE_ROWS + tl.arange(0, TILE_ROWS)
    c = pk * (TILE_BLOCKS * BLOCK_COLS) + tl.arange(0, WIDTH)
    mask = (r[:, None] < rows) & (c[None, :] < cols)
    offsets = r[:, None].to(tl.int64) * cols + c[None, :]
    codes = tl.load(data_ptr + offsets, mask=mask, other=0)
    if FMT == 0:
        v = codes.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        v = codes.to(tl.float8e5, bitcast=True).to(tl.float32)
    if RULE == _PER_TENSOR:
        y = v * tl.load(scale_ptr).to(tl.float32)
    else:
        GROUPS: tl.constexpr = TILE_ROWS // BLOCK_ROWS
        g = pm * GROUPS + tl.arange(0, GROUPS)
        b = pk * TILE_BLOCKS + tl.arange(0, TILE_BLOCKS)
        smask = (g[:, None] < scale_rows) & (b[None, :] < scale_cols)
        s = tl.load(scale_ptr + g[:, None] * scale_cols + b[None, :], mask=smask, other=1)
        if E8M0:
            s = s.to(tl.int32)
            bits = tl.where(s == 0, 0x00400000, s << 23)
            s = tl.where(s == 255, 0x7FC00000, bits).to(tl.float32, bitcast=True)
        else:
            s = s.to(tl.float32)
        if BLOCK_ROWS > 1:  # one block per tile: s is [1, 1]
            y = v * s
        else:
            v3 = tl.reshape(v, (TILE_ROWS, TILE_BLOCKS, BLOCK_PAD))
            y = tl.reshape(v3 * s[:, :, None], (TILE_ROWS, WIDTH))
    if OUT_F32:
        tl.store(out_ptr + offsets, y, mask=mask)
    else:
        tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)


def _constants(plan: CastPlan) -> dict[str, Any]:
    return dict(BLOCK_ROWS=plan.block_rows, BLOCK_COLS=plan.block_cols, BLOCK_PAD=plan.block_pad,
                TILE_ROWS=plan.tile_rows, TILE_BLOCKS=plan.tile_blocks, RULE=plan.rule.code,
                FMT=_FORMATS[plan.fmt.name], num_warps=plan.num_warps, enable_fp_fusion=False)


def launch_cast(backend: Backend, plan: CastPlan, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the cast kernel of a per-block plan on ``x`` (any shape of ``plan.rows * plan.cols``
    elements): ``(data [rows, cols or cols/2] uint8, scale [scale_rows, scale_cols] float32 or uint8
    E8M0 codes)``. ``backend`` (torch's) is the launchers' common first argument (see
    :mod:`._fused`); these kernels need nothing of it."""
    x = x.contiguous()
    device = x.device
    width = plan.cols // 2 if plan.packed else plan.cols
    data = torch.empty((plan.rows, width), dtype=torch.uint8, device=device)
    scale_dtype = torch.uint8 if plan.scale_e8m0 else torch.float32
    scale = torch.empty((plan.scale_rows, plan.scale_cols), dtype=scale_dtype, device=device)
    constants = dict(FMAX=plan.fmax, EPS=plan.eps, POW2=plan.power_2, EMAX=plan.emax_elem, **_constants(plan))
    sizes = (plan.rows, plan.cols, plan.scale_rows, plan.scale_cols)
    if plan.packed:
        words = x.view(torch.int64 if x.dtype == torch.float32 else torch.int32)
        _cast_pairs_kernel[plan.grid](words, data, scale, *sizes, PAIRS=_PAIRS[x.dtype], **constants)
    else:
        _cast_kernel[plan.grid](x, data, scale, *sizes, **constants)
    return data, scale


def launch_per_tensor(
    backend: Backend, plan: CastPlan, recipe: Any, x: torch.Tensor, history: torch.Tensor | None = None
):
    """A per-tensor cast of ``x`` by a ``given``-rule plan: ``(data [rows, cols] uint8, scale [1, 1]
    float32, next history or None)``. Current scaling (``history`` None) is the amax pass and the
    encode pass; DelayedScaling is one pass and a one-program finish."""
    x = x.contiguous()
    device = x.device
    data = torch.empty((plan.rows, plan.cols), dtype=torch.uint8, device=device)
    scale = torch.empty((1, 1), dtype=torch.float32, device=device)
    work = torch.zeros((2,), dtype=torch.int32, device=device)  # amax bits, NaN flag
    tile = dict(TILE_ROWS=plan.tile_rows, WIDTH=plan.tile_blocks * plan.block_pad, num_warps=plan.num_warps)
    encode = dict(FMT=_FORMATS[plan.fmt.name], FMAX=plan.fmax, enable_fp_fusion=False, **tile)
    if history is None:
        _tensor_amax_kernel[plan.grid](x, work, plan.rows, plan.cols, **tile)
        _tensor_encode_kernel[plan.grid](x, data, scale, work, plan.rows, plan.cols, EPS=plan.eps,
                                         POW2=plan.power_2, **encode)
        return data, scale, None
    history = history.contiguous()
    next_history = torch.empty_like(history)
    rule = dict(FMAX=plan.fmax, MOST_RECENT=recipe.amax_compute_algo == "most_recent",
                MARGIN=float(2**recipe.margin), CHUNK=min(1024, triton.next_power_of_2(history.numel())))
    _delayed_cast_kernel[plan.grid](x, data, work, history, plan.rows, plan.cols, history.numel(),
                                    **{**encode, **rule})
    _delayed_finish_kernel[(1,)](work, history, scale, next_history, history.numel(), num_warps=4,
                                 enable_fp_fusion=False, **rule)
    return data, scale, next_history


def launch_dequantize(
    backend: Backend, plan: CastPlan, data: torch.Tensor, scale: torch.Tensor, dtype_name: str
) -> torch.Tensor:
    """``decode(data) * scale`` in float32, rounded to ``dtype_name``: a ``[rows, cols]`` tensor."""
    out = torch.empty((plan.rows, plan.cols), dtype=_OUT[dtype_name], device=data.device)
    codes = data.contiguous().view(torch.uint8)
    scale = scale.contiguous()
    if plan.scale_e8m0:
        scale = scale.view(torch.uint8)
    _dequantize_kernel[plan.grid](
        codes, scale, out, plan.rows, plan.cols, plan.scale_rows, plan.scale_cols,
        E8M0=plan.scale_e8m0, OUT_F32=dtype_name == "float32", **_constants(plan),
    )
    return out
