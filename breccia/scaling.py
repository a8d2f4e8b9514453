"""Scale rules: from a block's statistics to the stored scale and the encode step, once per recipe.

Every rule is written against an array-API namespace and works on arrays in "split" form: the tensor
reshaped so that each block's elements lie on the odd axes (see ``blockwise._Blocking``), and block
statistics kept with ``keepdims``. The math of each rule is stated in its recipe's docstring
(``recipes.py``); the comments here say only how it is computed exactly.

Non-finite input (the rule documented in ``docs/numerics.md``): ``amax``, ``lo`` and ``hi`` are taken
over the finite elements of a block; ``blockwise.py`` marks a block holding NaN by storing a NaN scale.

Finite input decodes finite, up to float32's largest value ``FLT_MAX``: every rule keeps
``max|code| * scale`` within float32. The MX rules cap the exponent at ``127 - e_max`` (so
``max * 2**e <= FLT_MAX``; only the ceil rule can reach past it, for amax above ``max * 2**(127 -
e_max)``); the integer rules cap the scale at :func:`largest_scale` of the largest code magnitude
the decode can meet, and where ``hi - lo`` overflows float32 an asymmetric block takes the largest
scale for which its codes still decode finite (values outside that window saturate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import formats
from .choices import Choice, RecipeConvention, ScaleFormat
from .errors import RecipeError
from .formats import E2M1, E4M3, FLOAT32, LN2_F32, NVFP4_GLOBAL_DIVISOR, SUBNORMAL_SHIFT
from .recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    Int4Scaling,
    Int8Scaling,
    MXFP4BlockScaling,
    MXFP8BlockScaling,
    MXRecipe,
    NVFP4BlockScaling,
    Recipe,
    _IntRecipe,
)

if TYPE_CHECKING:
    from .backends import Backend

__all__ = [
    "BlockStats",
    "Scales",
    "KernelRule",
    "RuleEntry",
    "RULES",
    "rule_for",
    "kernel_rule",
    "block_scales",
    "ceil_log2",
    "ceil_f32_log2",
    "ggml_floor_log2",
    "FLT_MAX",
    "FLT_EPS",
]

FLT_MAX = FLOAT32.max_value
FLT_EPS = float(np.finfo(np.float32).eps)
DEEPSEEK_AMAX_FLOOR = 1e-4


def deepseek_reciprocal(fmax: float) -> float:
    """``fl32(1 / fmax)``, the factor of DeepSeek's ``amax / 448.``: its Triton kernel compiles that
    division to ``div.full.f32`` (``amax * rcp.approx(448)``), and ``rcp.approx`` of 448 and of 57344
    (both ``1.75 * 2**k``) is the correctly rounded reciprocal, measured on an H200."""
    return float(np.float32(1.0) / np.float32(fmax))


def largest_scale(q: float) -> float:
    """The largest float32 ``s`` whose float32 product ``q * s`` is finite (``q > 0``): a block scale
    at most this decodes every code of magnitude at most ``q`` to a finite value."""
    q32 = np.float32(q)
    s = np.float32(FLT_MAX) / q32
    with np.errstate(over="ignore"):
        while not np.isfinite(q32 * s):
            s = np.nextafter(s, np.float32(0))
    return float(s)


def _cap(xp: Any, s: Any, q: float) -> Any:
    """``min(s, largest_scale(q))``: the same ``s`` except within a few ulps of float32's limit."""
    return xp.minimum(s, largest_scale(q))


def _cap_asymmetric(xp: Any, s: Any, span: Any, fmt: Any) -> Any:
    """An asymmetric integer scale made safe: where ``hi - lo`` overflowed float32 (``span`` is Inf)
    the largest scale that keeps the codes of one sign, ``|q - zp| <= -min_value``, finite (the
    zero point then centres the window, since ``lo / s >= min_value``); elsewhere ``s`` capped so
    that ``|q - zp| <= max_value - min_value`` decodes finite."""
    return xp.where(
        xp.isinf(span), largest_scale(-fmt.min_value), _cap(xp, s, fmt.max_value - fmt.min_value)
    )
MLX_AFFINE_EPS = float(np.float32(1e-7))  # the smallest |scale| mx.quantize gives an affine group


@dataclass
class BlockStats:
    """Per-block statistics over finite elements, in split form with keepdims."""

    amax: Any
    lo: Any = None  # min over the block (asymmetric recipes only)
    hi: Any = None  # max over the block (asymmetric recipes only)
    tensor_amax: Any = None  # amax of the whole tensor (NVFP4's global scale)
    signed_max: Any = None  # the block's first element of largest magnitude, signed (ggml's Q4_0)
    input_dtype: str = "float32"  # dtype name of the tensor being cast (torchao computes scales in it)


@dataclass
class Scales:
    """What a rule produces. The encode step is
    ``y = ((x - pre_offset) * multiplier  or  / divisor)``, then ``y = round(y) + post_offset`` for
    integer zero points, then the element format's encode."""

    stored: Any  # the block scale as stored: float32 values, or E8M0/E4M3 codes (uint8)
    multiplier: Any = None
    divisor: Any = None
    pre_offset: Any = None
    post_offset: Any = None
    zero_point: Any = None  # float32, stored beside the scale
    global_scale: Any = None  # float32 0-d (NVFP4)
    product_dtype: str | None = None  # round ``x * multiplier`` to this dtype before encoding (torchao)


def _safe_reciprocal_rule(backend: Backend, amax: Any, fmax: float, eps: float, power_2: bool) -> Any:
    """TransformerEngine's ``compute_scale_from_amax``: the encode multiplier ``q = max / amax``."""
    xp, pow2 = backend.xp, backend.pow2
    a = xp.maximum(amax, eps) if eps > 0 else amax
    ok = (a > 0) & xp.isfinite(a)
    q = backend.divide(fmax, xp.where(ok, a, 1.0))
    q = xp.where(xp.isinf(q), FLT_MAX, q)
    q = xp.where(ok, q, 1.0)
    if power_2:
        q = pow2(formats.floor_log2(xp, pow2, q))
    return q


def ceil_log2(xp: Any, pow2: Any, v: Any, floor_log2: Callable[[Any], Any] | None = None) -> Any:
    """Exact ``ceil(log2 v)`` for positive finite ``v``: ``e = floor(log2 v)``, plus one where ``2**e < v``.

    ``floor_log2`` defaults to :func:`breccia.formats.floor_log2` over ``xp`` (float exponents); the
    Pallas kernels pass their exponent-field one (int32 exponents), so this is their code too.
    """
    e = formats.floor_log2(xp, pow2, v) if floor_log2 is None else floor_log2(v)
    return xp.where(pow2(e) < v, e + 1, e)


_MANTISSA_BITS = FLOAT32.mantissa_bits


def ceil_f32_log2(xp: Any, pow2: Any, s: Any) -> Any:
    """``ceil(fl32(log2 s))`` for positive float32 ``s`` down to ``2**-127``, with a correctly rounded
    float32 ``log2`` (what torch's ``log2`` gives torchao's RCEIL on the CPU, and what DeepSeek's
    kernel computes for its UE8M0 scales, measured on an H200). ``s = 2**k * (1 + i * 2**-23)`` just
    above a power of two gets ``k``, not ``k + 1``, when ``log2(1 + i * 2**-23)`` is below half the
    float32 spacing ``h`` next to ``k`` on the side of ``k + log2 m`` (``2**(j - 24)``, ``j =
    floor(log2 |k|)``, halved again below a negative power of two; for ``k = 0`` no ``i > 0``).
    ``log2(1 + i * 2**-23) < h`` is decided as ``i * 2**-23 < h * fl32(ln 2)``, both sides exact: no
    integer ``i`` lies between the two thresholds, which differ by a relative ``h ln2 / 2 < 2**-18``.
    Below ``2**-127`` the result is at most -127, which every caller clamps to. This is the one
    definition; the kernels' copies (Triton, Pallas, numba: ``ceil_f32_log2``) read ``k`` and ``i``
    from the float32 fields.
    """
    k = formats.floor_log2(xp, pow2, s)
    # the mantissa field, exactly (2**-k is a normal float32 for k >= -127)
    i = (s * pow2(-xp.maximum(k, -float(FLOAT32.bias))) - 1.0) * 2.0**_MANTISSA_BITS
    a = xp.maximum(xp.abs(k), 1.0)
    j = formats.floor_log2(xp, pow2, a)
    half_ulp = float(_MANTISSA_BITS + 1)  # h = 2**(j - 24)
    h = pow2(xp.where((k < 0) & (pow2(j) == a), j - (half_ulp + 1.0), j - half_ulp))
    keep = (i == 0) | ((k != 0) & (i * 2.0**-_MANTISSA_BITS < h * LN2_F32))
    return xp.where(keep, k, k + 1.0)


#: float32 sqrt(2) rounded down (0x3FB504F3); the next float32 lies above sqrt(2)
_SQRT2_BELOW = float(np.float32(np.sqrt(2.0)))
_UNDERFLOW_SHIFT = float(SUBNORMAL_SHIFT)
_SMALLEST_NORMAL_F32 = 2.0**FLOAT32.e_min


def _nearest_log2(xp: Any, pow2: Any, s: Any) -> Any:
    """``round(log2 s)`` for float32 ``s >= 0``, exactly: ``k + (s > sqrt(2) * 2**k)``, ``k = floor(log2 s)``.

    ``s / 2**k`` is a float32 in [1, 2) and ``fl32(sqrt(2)) < sqrt(2) <`` the next float32, so
    ``s > fl32(sqrt(2)) * 2**k`` (an exact product) decides it; no float lies on the tie. ``s`` below
    ``2**-64`` (subnormal, or 0 from an underflowed quotient) is scaled by ``2**64`` first, which keeps
    every product exact; 0 gives a very negative ``e`` that the caller's clip takes to -127.
    """
    tiny = s < 2.0**-_UNDERFLOW_SHIFT
    t = xp.where(tiny, s, 0.0) * 2.0**_UNDERFLOW_SHIFT + xp.where(tiny, 0.0, s)
    t = xp.maximum(t, _SMALLEST_NORMAL_F32)
    k = formats.floor_log2(xp, pow2, t)
    e = xp.where(t > pow2(k) * _SQRT2_BELOW, k + 1.0, k)
    return xp.where(tiny, e - _UNDERFLOW_SHIFT, e)


def _te_rule(backend: Backend, recipe: Recipe, stats: BlockStats, history: Any) -> Scales:
    """TransformerEngine's current (and block) scaling: ``q = max / max(amax, eps)``, scale ``1 / q``."""
    fmax = recipe.element_format.max_value
    q = _safe_reciprocal_rule(backend, stats.amax, fmax, recipe.amax_epsilon, recipe.power_2_scale)
    return Scales(stored=backend.divide(1.0, q), multiplier=q)


def _delayed_rule(backend: Backend, recipe: DelayedScaling, stats: BlockStats, history: Any) -> Scales:
    """TransformerEngine's delayed scaling: the ``te`` rule on the history's amax times ``2**margin``."""
    xp = backend.xp
    amax = xp.max(history) if recipe.amax_compute_algo == "max" else history[0]
    amax = xp.reshape(amax * float(2**recipe.margin), (1,) * stats.amax.ndim)
    q = _safe_reciprocal_rule(backend, amax, recipe.element_format.max_value, 0.0, False)
    return Scales(stored=backend.divide(1.0, q), multiplier=q)


def _deepseek_rule(backend: Backend, recipe: Float8BlockScaling, stats: BlockStats, history: Any) -> Scales:
    """DeepSeek-V3's ``act_quant``: ``s = max(amax, 1e-4) * fl32(1 / max)`` (V3.1's ``ue8m0``:
    ``2**ceil(fl32(log2 s))``), codes ``x * fl32(1 / s)``."""
    xp, pow2 = backend.xp, backend.pow2
    s = xp.maximum(stats.amax, DEEPSEEK_AMAX_FLOOR) * deepseek_reciprocal(recipe.element_format.max_value)
    if recipe.power_2_scale:
        s = pow2(ceil_f32_log2(xp, pow2, s))
    return Scales(stored=s, multiplier=backend.divide(1.0, s))


#: ggml's ``floorf(log2f(amax))``: ``log2`` rounded to float32 reaches ``k + 1`` for the top ``n``
#: float32 mantissas of ``[2**k, 2**(k + 1))`` (``|k + 1| >= 3``), so the floor moves up by one there.
#: ``(k_lo, k_hi, n)``: ``n`` is the number of float32 values ``a < 2**(k + 1)`` whose correctly
#: rounded float32 ``log2`` is ``k + 1`` (half the float32 spacing below ``k + 1`` exceeds
#: ``log2(2**(k + 1) / a)``); the tests recompute the table and check it against numpy's float32 log2.
GGML_LOG2_BUMPS = (
    (-149, -129, 88),
    (-128, -65, 44),
    (-64, -33, 22),
    (-32, -17, 11),
    (-16, -9, 5),
    (-8, -5, 2),
    (-4, -3, 1),
    (2, 3, 1),
    (4, 7, 2),
    (8, 15, 5),
    (16, 31, 11),
    (32, 63, 22),
    (64, 127, 44),
)


#: the smallest amax for which ggml's MXFP4 byte is 253 (log2 rounds up to 128): there ``4 * d`` and
#: ``6 * d`` overflow float32 in ggml's encoder, so ``cast`` refuses such input
GGML_MXFP4_LIMIT = (2.0 - GGML_LOG2_BUMPS[-1][2] * 2.0**-23) * 2.0**127


def ggml_floor_log2(backend: Backend, a: Any) -> Any:
    """``floor(fl32(log2 a))`` for positive finite float32 ``a`` (subnormals included), exactly: the
    exact ``k = floor(log2 a)``, plus one where ``a``'s mantissa ``a / 2**k`` is among the top
    ``n`` of its binade (:data:`GGML_LOG2_BUMPS`). Subnormal ``a`` is scaled by ``2**64`` first, so
    every power of two used is a normal float32 and every product exact."""
    xp, pow2 = backend.xp, backend.pow2
    tiny = a < _SMALLEST_NORMAL_F32
    t = xp.where(tiny, a, 0.0) * 2.0**_UNDERFLOW_SHIFT + xp.where(tiny, 0.0, a)
    k = formats.floor_log2(xp, pow2, t)
    mantissa = backend.divide(t, pow2(k))
    k = xp.where(tiny, k - _UNDERFLOW_SHIFT, k)
    threshold = k * 0.0 + 2.0  # 2: no mantissa reaches it
    for low, high, n in GGML_LOG2_BUMPS:
        inside = xp.logical_and(k >= float(low), k <= float(high))
        threshold = xp.where(inside, 2.0 - n * 2.0**-23, threshold)
    return xp.where(mantissa >= threshold, k + 1.0, k)


def _ggml_mxfp4_rule(backend: Backend, recipe: MXRecipe, stats: BlockStats, history: Any) -> Scales:
    """ggml's ``quantize_row_mxfp4_ref``: byte ``floor(fl32(log2 amax)) - 2 + 127``, wrapped mod 256
    below 0 (its float -> uint8 cast), 0 for a zero block; the elements are divided by the byte's
    scale (E2M1 ties toward zero come from the recipe's ``fp4_ties_toward_zero``)."""
    xp, pow2 = backend.xp, backend.pow2
    positive = stats.amax > 0
    byte = ggml_floor_log2(backend, xp.where(positive, stats.amax, 1.0)) + 125.0
    byte = xp.where(positive, xp.where(byte < 0.0, byte + 256.0, byte), 0.0)
    # a wrapped byte (232..255) holds a block below 2**-125: its elements times 2**-126 encode to 0
    multiplier = pow2(xp.maximum(127.0 - byte, -126.0))
    return Scales(stored=xp.astype(byte, xp.uint8), multiplier=multiplier)


def _even_log2(xp: Any, pow2: Any, amax: Any, mantissa_bits: int) -> Any:
    """``floor(log2 amax')`` where ``amax'`` is ``amax`` with its mantissa rounded to ``mantissa_bits``
    bits, half up (torchao's EVEN: ``(bits + 2**(22 - m)) & sign_exponent_mask``): ``k + 1`` where the
    mantissa of ``amax = 2**k * f`` reaches ``f >= 2 - 2**-(m + 1)`` (the carry into the exponent),
    else ``k``. The product ``2**k * (2 - 2**-(m + 1))`` is exact. A subnormal ``amax`` can only get a
    smaller exponent than the clamp at -127 allows either way."""
    k = formats.floor_log2(xp, pow2, amax)
    return xp.where(amax >= pow2(k) * (2.0 - 2.0 ** -(mantissa_bits + 1)), k + 1.0, k)


#: The E8M0 exponent of a block (before the clip) by each ``scale_rounding`` of
#: :data:`breccia.scale_rules.E8M0_ROUNDINGS`, from ``(backend, element format, positive amax)``.
MX_EXPONENTS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "floor": lambda b, fmt, amax: formats.floor_log2(b.xp, b.pow2, amax) - float(fmt.e_max),
    "even": lambda b, fmt, amax: _even_log2(b.xp, b.pow2, amax, fmt.mantissa_bits) - float(fmt.e_max),
    "ceil": lambda b, fmt, amax: ceil_log2(b.xp, b.pow2, b.divide(amax, fmt.max_value)),
    "ceil_f32_log2": lambda b, fmt, amax: ceil_f32_log2(b.xp, b.pow2, b.divide(amax, fmt.max_value)),
    "nearest": lambda b, fmt, amax: _nearest_log2(b.xp, b.pow2, b.divide(amax, fmt.max_value)),
}


def _mx_rule(backend: Backend, recipe: MXRecipe, stats: BlockStats, history: Any) -> Scales:
    xp, pow2 = backend.xp, backend.pow2
    fmt = recipe.element_format
    positive = stats.amax > 0
    e = MX_EXPONENTS[recipe.scale_rounding](backend, fmt, xp.where(positive, stats.amax, 1.0))
    # the top exponent 127 - e_max keeps max * 2**e <= FLT_MAX (max < 2**(e_max + 1)): finite decode
    e = xp.clip(xp.where(positive, e, 0.0), -127.0, float(127 - fmt.e_max))
    # x / 2**e == x * 2**-e exactly; -e >= -126 always holds for a float32 amax (see tests).
    return Scales(stored=formats.encode_e8m0(xp, e), multiplier=pow2(-e))


#: E4M3's smallest subnormal, 2**-9 (the floor of an NVFP4 block scale), and its eps, 2**-3 (torch's
#: ``finfo(float8_e4m3fn).eps``, compressed-tensors' block scale where one rounds to 0)
_E4M3_SMALLEST = 2.0 ** (E4M3.e_min - E4M3.mantissa_bits)
_E4M3_EPS = 2.0**-E4M3.mantissa_bits


def _nvfp4_rule(backend: Backend, recipe: NVFP4BlockScaling, stats: BlockStats, history: Any) -> Scales:
    """torchao's and NVIDIA's two-level NVFP4 rule (``NVFP4BlockScaling``'s docstring)."""
    xp = backend.xp
    t = stats.tensor_amax
    global_scale = xp.where(t > 0, backend.divide(t, NVFP4_GLOBAL_DIVISOR), 1.0)
    block = backend.divide(backend.divide(stats.amax, E2M1.max_value), global_scale)
    codes = backend.encode(xp.clip(block, _E4M3_SMALLEST, E4M3.max_value), E4M3)
    # the encode multiplier (1 / global_scale) / s_b, as torchao and NVIDIA's kernels compute it
    multiplier = backend.divide(backend.divide(1.0, global_scale), backend.decode(codes, E4M3))
    return Scales(stored=codes, multiplier=multiplier, global_scale=global_scale)


def _nvfp4_mlx_rule(backend: Backend, recipe: NVFP4BlockScaling, stats: BlockStats, history: Any) -> Scales:
    """MLX's one-level nvfp4 (``mx.quantize`` without a global scale): ``s_b = e4m3(min(amax_b / 6,
    448))``, elements divided by it (by 1 where it rounded to 0, which leaves only values that encode
    to 0); the global scale is exactly 1."""
    xp = backend.xp
    codes = backend.encode(xp.minimum(backend.divide(stats.amax, E2M1.max_value), E4M3.max_value), E4M3)
    s = backend.decode(codes, E4M3)
    one = stats.tensor_amax * 0.0 + 1.0  # float32 1 of the backend (the amax is finite)
    return Scales(stored=codes, divisor=xp.where(s > 0, s, 1.0), global_scale=one)


def _nvfp4_divisor_rule(
    backend: Backend, recipe: NVFP4BlockScaling, stats: BlockStats, history: Any
) -> Scales:
    """compressed-tensors' NVFP4 (``generate_gparam``, ``calculate_qparams``, ``quantize``), in float32:
    the global scale is a divisor, a block scale that rounds to 0 in E4M3 becomes 0.125 (its eps).
    ``generate_gparam``'s ``2688 / amax`` is torch's ``amax.reciprocal() * 2688`` (a Python number over
    a tensor), so ``g = fl32(fl32(1 / amax) * 2688)``: one ulp from ``fl32(2688 / amax)`` for about a
    quarter of amaxes."""
    xp = backend.xp
    t = stats.tensor_amax
    g = backend.divide(1.0, xp.where(t > 0, t, 1.0)) * NVFP4_GLOBAL_DIVISOR
    global_scale = xp.where(xp.isfinite(g) & (t > 0), g, 1.0)
    block = xp.minimum(global_scale * backend.divide(stats.amax, E2M1.max_value), E4M3.max_value)
    rounds_to_zero = backend.decode(backend.encode(block, E4M3), E4M3) == 0
    codes = backend.encode(xp.where(rounds_to_zero, _E4M3_EPS, block), E4M3)
    divisor = backend.divide(backend.decode(codes, E4M3), global_scale)
    return Scales(stored=codes, divisor=divisor, global_scale=global_scale)


def _mlx_affine_rule(backend: Backend, recipe: _IntRecipe, stats: BlockStats, history: Any) -> Scales:
    """MLX's ``affine`` mode (``mx.quantize``, MLX 0.32), step for step in float32.

    The group's edge value of larger magnitude is made exactly representable: its code is
    ``q0 = round(edge / s)`` and, unless that is 0, ``s = edge / q0`` with bias ``edge``; the scale is
    negative whenever ``|max| >= |min|`` (about half the groups). The stored code is ``q_u - 2**(bits-1)``.
    """
    xp, fmt = backend.xp, recipe.element_format
    n_bins = float(2**fmt.bits - 1)
    mask = xp.abs(stats.lo) > xp.abs(stats.hi)
    span = stats.hi - stats.lo
    cap = largest_scale(n_bins)  # |q_u * s| <= FLT_MAX for every code q_u in [0, n_bins]
    s = xp.where(xp.isinf(span), cap, xp.maximum(backend.divide(span, n_bins), MLX_AFFINE_EPS))
    s = xp.where(mask, s, -s)
    edge = xp.where(mask, stats.lo, stats.hi)
    q0 = xp.round(backend.divide(edge, s))
    nonzero = q0 != 0
    s = xp.where(nonzero, backend.divide(edge, xp.where(nonzero, q0, 1.0)), s)
    s = xp.clip(s, -cap, cap)
    bias = xp.where(nonzero, edge, 0.0)
    offset = -float(2 ** (fmt.bits - 1))
    return Scales(stored=s, divisor=s, pre_offset=bias, post_offset=offset, zero_point=bias)


#: the divisor of ggml's scale rule: Q8_0's ``d = amax / 127``, Q4_0's ``d = max / -8``
GGML_DIVISORS = {8: 127.0, 4: -8.0}


def _ggml_int_rule(backend: Backend, recipe: _IntRecipe, stats: BlockStats, history: Any) -> Scales:
    """ggml's ``quantize_row_q8_0_ref`` / ``quantize_row_q4_0_ref``: ``d = fl32(amax / 127)`` (INT8)
    or ``d = fl32(max / -8)`` with ``max`` the block's first element of largest magnitude, signed
    (INT4); the encode multiplier is ``1 / d`` of that float32 ``d`` (0 where ``d`` is 0) and the
    stored scale ``fp16(d)``, the value the GGUF block holds. The recipe's ``integer_rounding`` rounds
    the codes as ggml does."""
    xp, fmt = backend.xp, recipe.element_format
    edge = stats.amax if fmt.bits == 8 else stats.signed_max
    d = backend.divide(edge, GGML_DIVISORS[fmt.bits])
    # 1 / d overflows float32 exactly where 0 < |d| <= 2**-128; ggml then multiplies by Inf, which
    # a NaN multiplier stands for (round_integers maps every non-finite product the same way)
    overflows = xp.logical_and(d != 0, xp.abs(d) <= 2.0**-128)
    regular = xp.logical_and(d != 0, xp.logical_not(overflows))
    multiplier = xp.where(regular, backend.divide(1.0, xp.where(regular, d, 1.0)), 0.0)
    multiplier = xp.where(overflows, math.nan, multiplier)
    return Scales(stored=backend.round_to(d, "float16"), multiplier=multiplier)


def _breccia_int_rule(backend: Backend, recipe: _IntRecipe, stats: BlockStats, history: Any) -> Scales:
    """breccia's integer rule: ``s = amax / qmax`` (symmetric), or the ``(lo, hi)`` range over the
    codes with an integer zero point (asymmetric); ``_IntRecipe``'s docstring."""
    xp = backend.xp
    fmt = recipe.element_format
    if recipe.symmetric:
        s = backend.divide(stats.amax, fmt.max_value)
        s = _cap(xp, xp.where(s > 0, s, 1.0), -fmt.min_value)
        return Scales(stored=s, divisor=s)
    lo = xp.minimum(stats.lo, 0.0)
    hi = xp.maximum(stats.hi, 0.0)
    span = hi - lo
    s = xp.maximum(backend.divide(span, fmt.max_value - fmt.min_value), FLT_EPS)
    s = _cap_asymmetric(xp, s, span, fmt)
    zp = xp.clip(fmt.min_value - xp.round(backend.divide(lo, s)), fmt.min_value, fmt.max_value)
    return Scales(stored=s, divisor=s, post_offset=zp, zero_point=zp)


_HALF_DTYPES = ("bfloat16", "float16")
_SMALLEST_NORMAL = {"bfloat16": _SMALLEST_NORMAL_F32, "float16": 2.0**-14, "float32": _SMALLEST_NORMAL_F32}


def _in_input_dtype(backend: Backend, v: Any, stats: BlockStats) -> Any:
    """float32 ``v`` rounded once to the input's dtype: torch's bf16/fp16 arithmetic (computed in
    float32, then rounded) on values that are already of that dtype. Identity for float32 input."""
    if stats.input_dtype in _HALF_DTYPES:
        return backend.round_to(v, stats.input_dtype)
    return v


def _torchao_float8_rule(backend: Backend, recipe: Recipe, stats: BlockStats, history: Any) -> Scales:
    """torchao's ``_choose_scale_float8`` + ``_quantize_affine_float8``: ``s = amax / max`` computed in
    the input's dtype, stored as float32; ``data = encode(float32(x) / s)``. An all-zero block gets
    ``s = 1`` (torchao divides 0 by 0 there and stores NaN codes)."""
    xp = backend.xp
    s = _in_input_dtype(backend, backend.divide(stats.amax, recipe.element_format.max_value), stats)
    s = xp.where(s > 0, s, 1.0)
    return Scales(stored=s, divisor=s)


def _torchao_int_rule(backend: Backend, recipe: _IntRecipe, stats: BlockStats, history: Any) -> Scales:
    """torchao's ``choose_qparams_affine`` + ``quantize_affine``, op for op in the input's dtype.

    INT8 reproduces ``Int8Tensor`` (scale floor ``eps_f32``, scale then stored as float32, encode in
    float32); INT4 reproduces ``IntxUnpackedToInt8Tensor`` (scale floor: the input dtype's smallest
    normal; the scale stays in the input dtype, so ``1 / s`` and ``x * (1 / s)`` are rounded to it).
    """
    xp = backend.xp
    fmt = recipe.element_format

    def r(v: Any) -> Any:
        return _in_input_dtype(backend, v, stats)

    intx = fmt.bits < 8
    eps = _SMALLEST_NORMAL.get(stats.input_dtype, _SMALLEST_NORMAL_F32) if intx else FLT_EPS
    if recipe.symmetric:
        s = xp.maximum(r(backend.divide(stats.amax, (fmt.max_value - fmt.min_value) / 2.0)), eps)
        s = _cap(xp, s, -fmt.min_value)
        zp = None
    else:
        lo = xp.minimum(stats.lo, 0.0)
        hi = xp.maximum(stats.hi, 0.0)
        span = r(hi - lo)
        # where the group's range overflows the half dtype, torchao's scale is +inf and its group
        # decodes to NaN; the float32 range keeps the scale finite there (and changes nothing else)
        span = xp.where(xp.isinf(span), hi - lo, span)
        s = xp.maximum(r(backend.divide(span, fmt.max_value - fmt.min_value)), eps)
        s = _cap_asymmetric(xp, s, hi - lo, fmt)
        zp = xp.clip(fmt.min_value - xp.round(r(backend.divide(lo, s))), fmt.min_value, fmt.max_value)
    multiplier = backend.divide(1.0, s)
    product_dtype = None
    if intx and stats.input_dtype in _HALF_DTYPES:
        multiplier, product_dtype = r(multiplier), stats.input_dtype
    return Scales(stored=s, multiplier=multiplier, post_offset=zp, zero_point=zp, product_dtype=product_dtype)


class KernelRule(Choice):
    """The rules the fused kernels compute (Triton and Pallas on CUDA, numba on the CPU), as
    :class:`breccia.kernels._cast_plan.CastPlan` names them. The kernels branch on :attr:`code`: Triton
    and numba on the numbers, Pallas on the members, all taken from here."""

    TE = "te"  # q = max / max(amax, eps) per block, scale 1 / q (_te_rule)
    DEEPSEEK = "deepseek"  # s = max(amax, 1e-4) * fl32(1 / max), codes x / s (_deepseek_rule)
    MX_FLOOR = "mx_floor"  # E8M0 e = floor(log2 amax) - e_max (MX_EXPONENTS["floor"])
    MX_CEIL = "mx_ceil"  # E8M0 e = ceil(log2(amax / max)) (MX_EXPONENTS["ceil"])
    GIVEN = "given"  # one multiplier for the tensor: the te rule on its amax, or on a history
    PER_TENSOR = "per_tensor"  # dequantize by one scale
    BLOCKS = "blocks"  # dequantize by a scale per block

    @property
    def code(self) -> int:
        """The rule's number in the kernels (its place in this enum)."""
        return _KERNEL_CODES[self]


_KERNEL_CODES = {rule: code for code, rule in enumerate(KernelRule)}

#: the signature of a rule: ``(backend, recipe, stats, history) -> Scales``
RuleFunction = Callable[[Any, Any, BlockStats, Any], Scales]


@dataclass(frozen=True)
class RuleEntry:
    """One recipe's scale rule: the shared code's function and the fused kernels' rule.

    ``kernel`` is None where only the shared code computes the rule, or, for the MX recipes, a
    mapping from ``scale_rounding`` to the kernel rule (roundings it lacks: shared code only)."""

    compute: RuleFunction
    kernel: KernelRule | Mapping[str, KernelRule] | None = None


_MX_KERNELS = {"floor": KernelRule.MX_FLOOR, "ceil": KernelRule.MX_CEIL}
_V = RecipeConvention

#: The one registry: ``(recipe type, convention) -> RuleEntry``. A recipe's rule is found by its
#: type (or the nearest base class listed) and its ``convention``. MXFP4's ``mlx`` convention has no
#: kernel: its E2M1 ties go toward zero, which the kernels' RNE encode does not do.
RULES: dict[tuple[type[Recipe], RecipeConvention], RuleEntry] = {
    (Float8CurrentScaling, _V.TE): RuleEntry(_te_rule, KernelRule.TE),
    (Float8CurrentScaling, _V.TORCHAO): RuleEntry(_torchao_float8_rule),
    (DelayedScaling, _V.TE): RuleEntry(_delayed_rule, KernelRule.GIVEN),
    (Float8BlockScaling, _V.TE): RuleEntry(_te_rule, KernelRule.TE),
    (Float8BlockScaling, _V.DEEPSEEK): RuleEntry(_deepseek_rule, KernelRule.DEEPSEEK),
    (MXFP8BlockScaling, _V.OCP): RuleEntry(_mx_rule, _MX_KERNELS),
    (MXFP4BlockScaling, _V.OCP): RuleEntry(_mx_rule, _MX_KERNELS),
    (MXFP4BlockScaling, _V.MLX): RuleEntry(_mx_rule),
    (MXFP4BlockScaling, _V.GGML): RuleEntry(_ggml_mxfp4_rule),
    (NVFP4BlockScaling, _V.NVIDIA): RuleEntry(_nvfp4_rule),
    (NVFP4BlockScaling, _V.COMPRESSED_TENSORS): RuleEntry(_nvfp4_divisor_rule),
    (NVFP4BlockScaling, _V.MLX): RuleEntry(_nvfp4_mlx_rule),
    **{(cls, _V.BRECCIA): RuleEntry(_breccia_int_rule) for cls in (Int8Scaling, Int4Scaling)},
    **{(cls, _V.TORCHAO): RuleEntry(_torchao_int_rule) for cls in (Int8Scaling, Int4Scaling)},
    **{(cls, _V.MLX): RuleEntry(_mlx_affine_rule) for cls in (Int8Scaling, Int4Scaling)},
    **{(cls, _V.GGML): RuleEntry(_ggml_int_rule) for cls in (Int8Scaling, Int4Scaling)},
}


def rule_for(recipe: Recipe) -> RuleEntry:
    """``recipe``'s entry of :data:`RULES`, or a RecipeError where none is registered."""
    for cls in type(recipe).__mro__:
        entry = RULES.get((cls, recipe.convention))
        if entry is not None:
            return entry
    raise RecipeError(
        f"no scale rule for {type(recipe).__name__} with convention {recipe.convention!r}; "
        "register one in breccia.scaling.RULES"
    )


def kernel_rule(recipe: Recipe) -> KernelRule | None:
    """The fused kernels' rule for ``recipe``, or None where only the shared code has it."""
    kernel = rule_for(recipe).kernel
    if isinstance(kernel, Mapping):
        return kernel.get(recipe.scale_rounding)
    return kernel


def block_scales(backend: Backend, recipe: Recipe, stats: BlockStats, history: Any = None) -> Scales:
    """The scales of every block of one tensor under ``recipe`` (its rule in :data:`RULES`)."""
    return rule_for(recipe).compute(backend, recipe, stats, history)


def decode_scale(backend: Backend, scale: Any, scale_format: ScaleFormat) -> Any:
    """float32 value of a stored scale array."""
    fmt = ScaleFormat(scale_format).element_format
    if fmt is None:
        return backend.astype(scale, "float32")
    return backend.decode(backend.to_codes(scale, fmt), fmt)
