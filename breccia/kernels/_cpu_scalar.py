"""The per-element and per-block arithmetic of the CPU kernels, as numba scalar functions.

Each function computes exactly what :mod:`breccia.formats` and :mod:`breccia.scaling` compute on
arrays, for one value, mostly on float32 bit patterns (integer operations are exact, and integer
``max`` reductions vectorize where float ones, under IEEE rules, do not):

- the input arrives as its bits: float32 as uint32, bfloat16 as uint16, float16 as int16 (the
  dtype selects the widening at compile time, :func:`widen`);
- a magnitude's bit pattern is monotonic in its value, so the largest finite magnitude of a block is
  the integer maximum of the magnitude patterns below Inf's; patterns above it are NaN. 16-bit
  inputs are reduced on their own patterns and only the block's amax is widened (exactly);
- ``floor(log2 a)`` of a positive float32 is its exponent field minus 127 (normal ``a``), or
  ``bit_length(mantissa) - 150`` (subnormal ``a``);
- the element encode is round-to-nearest-even after clamping to the format's largest value
  (:func:`breccia.formats.encode`): from the format's smallest normal ``2**e_min`` up, the float32
  pattern rounded to ``m`` mantissa bits (add ``2**(22 - m) - 1`` plus the lowest kept bit, shift)
  and re-biased; below it, ``a * 2**(m - e_min)`` (exact) rounded to an integer by adding ``2**23``
  in float32 (RNE, as the hardware rounds), which is the subnormal code itself.

Every float operation is float32 (numba keeps float32 operands in float32, and the constants are
float32), with no fused multiply-add (numba does not contract without ``fastmath``). Integer
operations are wrapped in ``uint32`` (numba widens small integers to 64 bits otherwise, which halves
the vector width).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ..formats import E8M0, FLOAT32, LN2_F32
from ..scaling import DEEPSEEK_AMAX_FLOOR

u32 = np.uint32
# breccia.formats' float32 fields, as the numba globals (compile-time constants) the functions read
_MANTISSA = FLOAT32.mantissa_bits  # 23
_BIAS = FLOAT32.bias  # 127
_E_MIN = FLOAT32.e_min  # -126
_INF_BITS = u32(((1 << FLOAT32.exponent_bits) - 1) << _MANTISSA)
_MAGNITUDE = u32((1 << (FLOAT32.bits - 1)) - 1)
_MANTISSA_MASK = u32((1 << _MANTISSA) - 1)
_TWO_23 = np.float32(2.0**_MANTISSA)
_TWO_23_BITS = u32(_TWO_23.view(np.uint32))
_FLT_MAX = np.float32(FLOAT32.max_value)
_DEEPSEEK_FLOOR = np.float32(DEEPSEEK_AMAX_FLOOR)  # the float32 the rule compares with
_F16_SCALE = np.float32(2.0**112)
#: E8M0's bias: exponents run over [-E8M0_BIAS, E8M0_BIAS] and are stored as e + E8M0_BIAS
E8M0_BIAS = E8M0.bias


@intrinsic
def as_float(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None
    sig = types.float32(bits)

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif bits.bitwidth < 32:
            value = builder.zext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return sig, codegen


@intrinsic
def as_bits(typingctx, value):
    """The bit pattern (uint32) of the float32 ``value``."""
    if value != types.float32:
        return None
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


def patterns(h):
    """(magnitude mask, Inf pattern) of the input element type of ``h``."""


@overload(patterns)
def _patterns(h):
    if h == types.uint32:
        return lambda h: (_MAGNITUDE, _INF_BITS)
    if h == types.uint16:  # bfloat16
        return lambda h: (u32(0x7FFF), u32(0x7F80))
    if h == types.int16:  # float16
        return lambda h: (u32(0x7FFF), u32(0x7C00))
    return None


def widen(h):
    """The float32 bit pattern (uint32) of the input element ``h``, exactly."""


@overload(widen)
def _widen(h):
    if h == types.uint32:
        return lambda h: h
    if h == types.uint16:  # bfloat16 is float32's top half
        return lambda h: u32(u32(h) << u32(16))

    if h == types.int16:
        def from_float16(h):
            # the magnitude shifted into float32's fields reads as 2**-112 times the value (normal
            # and subnormal alike: the fields line up), so a multiply by 2**112 (exact) gives it;
            # Inf and NaN take float32's all-ones exponent instead
            u = u32(h) & u32(0xFFFF)
            sign = u32((u & u32(0x8000)) << u32(16))
            mag = u32((u & u32(0x7FFF)) << u32(13))
            special = u32(mag | _INF_BITS)
            finite = as_bits(as_float(mag) * _F16_SCALE)
            return u32(sign | (special if mag >= u32(0x7C00 << 13) else finite))

        return from_float16
    return None


def widen_as(m, h):
    """:func:`widen` of the magnitude pattern ``m`` (uint32) read as an element of ``h``'s type."""


@overload(widen_as)
def _widen_as(m, h):
    if h == types.uint32:
        return lambda m, h: widen(u32(m))
    if h == types.uint16:
        return lambda m, h: widen(np.uint16(m))
    if h == types.int16:
        return lambda m, h: widen(np.int16(m))
    return None


@njit
def floor_log2(a):
    """``floor(log2 a)`` of a positive finite float32 ``a``, exactly, as an int: its exponent field
    less the bias, or for a subnormal the bit length of its mantissa less 150 (the math:
    :func:`breccia.formats.floor_log2`; ``docs/numerics.md``)."""
    bits = as_bits(a)
    exponent = np.int32(bits >> u32(_MANTISSA))
    if exponent > 0:
        return exponent - _BIAS
    mantissa = bits & _MANTISSA_MASK
    length = 0
    while mantissa:
        mantissa >>= u32(1)
        length += 1
    return length - (_MANTISSA - _E_MIN + 1)


@njit
def pow2(e):
    """``2**e`` as float32 for an integer ``e`` in [-126, 127] (exact: the exponent field)."""
    return as_float(u32(u32(e + _BIAS) << u32(_MANTISSA)))


@njit
def ceil_log2(v):
    """Exact ``ceil(log2 v)`` of a positive float32 ``v`` (subnormal included), as an int (the math:
    :func:`breccia.scaling.ceil_log2`)."""
    e = floor_log2(v)
    exact = v == (pow2(e) if e >= _E_MIN else np.float32(2.0**e))
    return e if exact else e + 1


_LN2 = np.float64(LN2_F32)
_HALF_ULP = _MANTISSA + 1  # half the float32 spacing above 2**j is 2**(j - 24)


@njit
def ceil_f32_log2(s):
    """``ceil(fl32(log2 s))`` of a normal float32 ``s``, as an int, with ``k`` and ``i`` read from the
    fields (the math: :func:`breccia.scaling.ceil_f32_log2`).

    There ``k = floor(log2 s)`` and ``i`` is ``s``'s mantissa field; ``s`` keeps ``2**k`` when ``i``
    is 0 or when ``i * 2**-23 < h * fl32(ln 2)`` (``k != 0``), with ``h = 2**(j - 24)``,
    ``j = floor(log2 max(|k|, 1))``, halved once more for a negative ``k`` that is a power of two.
    Both sides are exact float32 values, compared here in float64 (the same comparison).
    """
    bits = as_bits(s)
    k = np.int32(bits >> u32(_MANTISSA)) - _BIAS
    i = np.float64(bits & _MANTISSA_MASK)
    a = max(abs(k), 1)
    j = floor_log2(np.float32(a))
    h = 2.0 ** (j - (_HALF_ULP + 1) if k < 0 and (1 << j) == a else j - _HALF_ULP)
    keep = i == 0.0 or (k != 0 and i * 2.0**-_MANTISSA < h * _LN2)
    return k if keep else k + 1


@njit
def encode(y, f):
    """The code of float32 ``y`` (not NaN) in a float element format: saturating RNE.

    ``f`` (uint32): the float32 patterns of the format's largest value and of ``2**e_min``,
    ``23 - m``, ``(127 - bias) << m``, the pattern of ``2**(m - e_min)``, ``bits - 1``."""
    bits = as_bits(y)
    sign = u32((bits >> u32(31)) << f[5])
    a = u32(min(u32(bits & _MAGNITUDE), f[0]))
    kept = u32((a >> f[2]) & u32(1))
    half = u32((u32(1) << u32(f[2] - u32(1))) - u32(1))
    normal = u32(u32(u32(a + half + kept) >> f[2]) - f[3])
    subnormal = u32(as_bits(as_float(a) * as_float(f[4]) + _TWO_23) - _TWO_23_BITS)
    return u32(sign | (normal if a >= f[1] else subnormal))


@njit
def te_multiplier(amax, fmax, eps, power_2):
    """TransformerEngine's ``q = max / max(amax, eps)`` (1 where that is 0; FLT_MAX where it
    overflows), floored to a power of two if ``power_2`` (``q`` is normal: ``q >= max / FLT_MAX``)."""
    a = max(amax, eps) if eps > np.float32(0.0) else amax
    if not a > np.float32(0.0):
        return np.float32(1.0)
    q = fmax / a
    if as_bits(q) == _INF_BITS:
        q = _FLT_MAX
    if power_2:
        q = as_float(u32(as_bits(q) & _INF_BITS))
    return q


@njit
def deepseek_scale(amax, reciprocal, power_2):
    """DeepSeek's ``s = max(amax, 1e-4) * fl32(1 / max)``, rounded up to a power of two by the float32
    ``ceil(log2 s)`` (:func:`ceil_f32_log2`) if ``power_2`` (``s`` is normal)."""
    s = max(amax, _DEEPSEEK_FLOOR) * reciprocal
    if not power_2:
        return s
    return pow2(ceil_f32_log2(s))


@njit
def mx_exponent(amax, fmax, emax_elem, ceil):
    """The E8M0 exponent of an MX block: ``floor(log2 amax) - e_max`` (OCP) or
    ``ceil(log2(fl32(amax / max)))`` (``ceil``), 0 for a zero block, clipped to [-127, 127 - e_max]."""
    if not amax > np.float32(0.0):
        return 0
    if ceil:
        v = amax / fmax
        if not v > np.float32(0.0):  # amax / max underflowed: below every E8M0 value
            return -E8M0_BIAS
        e = ceil_log2(v)
    else:
        e = floor_log2(amax) - emax_elem
    return min(max(e, -E8M0_BIAS), E8M0_BIAS - emax_elem)
