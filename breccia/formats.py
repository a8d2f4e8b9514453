"""Element formats: how one number is written in a few bits, encoded and decoded once for every framework.

The formats are E4M3 and E5M2 (FP8, OCP "fn"/IEEE-like), E2M1 (FP4), E8M0 (a power-of-two scale),
INT8 and INT4. Encoding and decoding are written once against an array-API namespace ``xp`` (numpy,
jax.numpy, array-api-compat's torch, or breccia's small MLX shim), so every framework runs the same
arithmetic; a backend may swap in a native cast only where a test proves the bits identical.

Float encoding (E4M3, E5M2, E2M1) is round-to-nearest-even with saturation. For a magnitude ``a``
already clamped to the format's largest finite value ``max``::

    e    = max(floor(log2(a)), e_min)           # e_min = 1 - bias: subnormals share e_min's quantum
    m    = round_half_even(a / 2**(e - mbits))  # exact division by a power of two
    code = (e - e_min) * 2**mbits + m           # m == 2**(mbits+1) carries into the next exponent

which is exact because every step is either a power-of-two division or a rounding on an integer grid.
``+inf`` saturates to ``max`` (the format's largest finite value); NaN must be removed by the caller
(breccia stores NaN elements as code 0 and marks their block's scale NaN, see ``blockwise.py``). The
sign is written from ``signbit``, so ``-0.0`` and negative values that round to zero become ``-0``.

Integers (INT8, INT4) are two's complement; encoding is ``clip(round_half_even(x), qmin, qmax)``.
E8M0 stores an exponent ``e`` in ``[-127, 127]`` as ``e + 127``; code 255 is NaN.

4-bit codes are packed two per byte along the last axis, element ``2i`` in the low nibble (the
convention of torch, TransformerEngine, torchao, MLX and JAX); an odd last axis is padded with a zero
nibble.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .errors import RecipeError

__all__ = [
    "ElementFormat",
    "E4M3",
    "E5M2",
    "E2M1",
    "E8M0",
    "INT8",
    "INT4",
    "FORMATS",
    "NVFP4_GLOBAL_DIVISOR",
    "FLOAT32",
    "SUBNORMAL_SHIFT",
    "LN2_F32",
    "EncodeConstants",
    "encode_constants",
    "offset_binary_flip",
    "format_by_name",
    "encode",
    "decode",
    "decode_table",
    "pack_nibbles",
    "unpack_nibbles",
    "packed_length",
    "floor_log2",
    "encode_e8m0",
]


@dataclass(frozen=True)
class ElementFormat:
    """One element format.

    ``kind`` is ``"float"`` (sign, exponent, mantissa), ``"int"`` (two's complement) or ``"exponent"``
    (E8M0: an unsigned biased exponent, the MX scale). ``max_value`` is the largest finite magnitude.
    """

    name: str
    bits: int
    kind: str
    exponent_bits: int = 0
    mantissa_bits: int = 0
    bias: int = 0
    max_value: float = 0.0
    min_value: float = 0.0  # most negative value (ints); -max_value for floats
    nan_code: int | None = None
    safetensors_dtype: str = "U8"

    @property
    def packed(self) -> bool:
        """True for 4-bit formats, stored two per byte."""
        return self.bits == 4

    @property
    def e_min(self) -> int:
        """Exponent of the smallest normal value (floats)."""
        return 1 - self.bias

    @property
    def e_max(self) -> int:
        """Exponent of the largest finite value (floats), as OCP MX calls emax_elem."""
        return math.floor(math.log2(self.max_value))

    @property
    def qmin(self) -> int:
        return int(self.min_value)

    @property
    def qmax(self) -> int:
        return int(self.max_value)

    def __repr__(self) -> str:
        return self.name


E4M3 = ElementFormat("E4M3", 8, "float", 4, 3, 7, 448.0, -448.0, 0x7F, "F8_E4M3")
E5M2 = ElementFormat("E5M2", 8, "float", 5, 2, 15, 57344.0, -57344.0, 0x7F, "F8_E5M2")
E2M1 = ElementFormat("E2M1", 4, "float", 2, 1, 1, 6.0, -6.0, None, "U8")
E8M0 = ElementFormat("E8M0", 8, "exponent", 8, 0, 127, 2.0**127, 2.0**-127, 0xFF, "F8_E8M0")
INT8 = ElementFormat("INT8", 8, "int", max_value=127, min_value=-128, safetensors_dtype="I8")
INT4 = ElementFormat("INT4", 4, "int", max_value=7, min_value=-8, safetensors_dtype="U8")

FORMATS: dict[str, ElementFormat] = {f.name: f for f in (E4M3, E5M2, E2M1, E8M0, INT8, INT4)}

#: float32's own layout (bias 127, 23 mantissa bits, smallest normal ``2**e_min = 2**-126``, largest
#: ``FLT_MAX``): the fields that the exact ``floor(log2)`` and ``2**e`` of every kernel language read
#: and write (``docs/numerics.md``, "Exact log2 and powers of two"). Not a format breccia stores, so
#: not in :data:`FORMATS`.
_FLT_MAX = float(np.finfo(np.float32).max)
FLOAT32 = ElementFormat("FLOAT32", 32, "float", 8, 23, 127, _FLT_MAX, -_FLT_MAX, None, "F32")

#: A subnormal float32 times ``2**SUBNORMAL_SHIFT`` is normal (and exact): the exact ``floor(log2)``
#: scales one up by it before reading its exponent, and takes the shift off again.
SUBNORMAL_SHIFT = 64

#: ``fl32(ln 2)``, the constant of the exact ``ceil(fl32(log2 s))`` (``scaling.ceil_f32_log2``).
LN2_F32 = float(np.float32(math.log(2.0)))

#: NVFP4's second level: ``global_scale = amax / 2688`` (E4M3 max * E2M1 max), so the largest block
#: scale is E4M3's max and the largest element E2M1's.
NVFP4_GLOBAL_DIVISOR = E4M3.max_value * E2M1.max_value


def offset_binary_flip(bits: int) -> int:
    """The byte to XOR a byte of two's-complement codes with to get offset-binary ones (``u = q +
    2**(bits - 1)``) and back: the top bit of each code, ``0x88`` for two 4-bit codes, ``0x80`` for
    one 8-bit code. MLX's affine codes and ggml's Q4_0 nibbles are offset binary; breccia's are
    two's complement."""
    if bits not in (4, 8):
        raise RecipeError(f"offset-binary codes of {bits} bits: breccia holds 4- and 8-bit integers")
    return 0x88 if bits == 4 else 0x80


class EncodeConstants(NamedTuple):
    """The constants of a float format's encode computed on float32 bit patterns (the kernels'
    encode; the math is :func:`encode`'s): from the format's smallest normal ``2**e_min`` up, the
    magnitude's pattern rounded half to even at bit ``shift`` (add ``2**(shift - 1) - 1`` plus the
    lowest kept bit, shift right) less ``rebias``; below it, ``a * subnormal_scale`` (exact) rounded
    to an integer by adding ``2**23`` in float32, the subnormal code itself (at most ``2**m``, the
    first normal code, where it rounds up)."""

    max_value: float  # the format's largest value: magnitudes are clamped to it first
    min_normal: float  # 2**e_min
    shift: int  # 23 - m: the float32 mantissa bits that rounding drops
    rebias: int  # (127 - bias) << m: float32's exponent bias less the format's, in code units
    subnormal_scale: float  # 2**(m - e_min)
    sign_shift: int  # bits - 1: where the code's sign bit goes


def encode_constants(fmt: ElementFormat) -> EncodeConstants:
    """:class:`EncodeConstants` of the float format ``fmt`` (E4M3, E5M2, E2M1)."""
    m = fmt.mantissa_bits
    shift, rebias = FLOAT32.mantissa_bits - m, (FLOAT32.bias - fmt.bias) << m
    return EncodeConstants(fmt.max_value, 2.0**fmt.e_min, shift, rebias, 2.0 ** (m - fmt.e_min), fmt.bits - 1)


def format_by_name(name: str) -> ElementFormat:
    """The format called ``name`` ("E4M3", "E5M2", ...), or a RecipeError listing the valid names."""
    try:
        return FORMATS[name.upper()]
    except (KeyError, AttributeError):
        raise RecipeError(
            f"unknown element format {name!r}; valid formats are {', '.join(FORMATS)}"
        ) from None


def _decode_code(fmt: ElementFormat, code: int) -> float:
    """The value of one code, from the format's definition (used to build decode tables)."""
    if fmt.kind == "exponent":
        return math.nan if code == 0xFF else 2.0 ** (code - 127)
    if fmt.kind == "int":
        return float(code - (1 << fmt.bits) if code >= 1 << (fmt.bits - 1) else code)
    sign = -1.0 if code >> (fmt.bits - 1) else 1.0
    mag = code & ((1 << (fmt.bits - 1)) - 1)
    exp_field = mag >> fmt.mantissa_bits
    mant = mag & ((1 << fmt.mantissa_bits) - 1)
    if fmt.name == "E5M2" and exp_field == 0x1F:  # IEEE-like: all-ones exponent is inf or NaN
        return sign * math.inf if mant == 0 else math.nan
    if fmt.nan_code is not None and mag == fmt.nan_code:
        return math.nan
    if exp_field == 0:
        return sign * mant * 2.0 ** (fmt.e_min - fmt.mantissa_bits)
    return sign * (1 + mant / 2**fmt.mantissa_bits) * 2.0 ** (exp_field - fmt.bias)


_TABLES: dict[str, np.ndarray] = {}


def decode_table(fmt: ElementFormat) -> np.ndarray:
    """float32 value of every code of ``fmt`` (256 entries for 8-bit, 16 for 4-bit formats)."""
    table = _TABLES.get(fmt.name)
    if table is None:
        table = np.array([_decode_code(fmt, c) for c in range(1 << fmt.bits)], dtype=np.float32)
        table.flags.writeable = False
        _TABLES[fmt.name] = table
    return table


def floor_log2(xp: Any, pow2: Any, a: Any) -> Any:
    """Exact ``floor(log2(a))`` as float32 for positive finite ``a``.

    ``log2`` is only faithfully rounded in some libraries, so the estimate is corrected by comparing
    with exact powers of two (``pow2`` is the backend's exact ``2**e``). This is the one definition;
    the kernels' copies read the exponent field instead (``docs/numerics.md``, "Exact log2 and powers
    of two").
    """
    e = xp.floor(xp.log2(a))
    e = xp.where(pow2(e) > a, e - 1, e)
    return xp.where(pow2(e + 1) <= a, e + 1, e)


def _encode_float(xp: Any, pow2: Any, x: Any, fmt: ElementFormat) -> Any:
    negative = xp.signbit(x)
    a = xp.minimum(xp.abs(x), fmt.max_value)
    e = floor_log2(xp, pow2, xp.maximum(a, 2.0**fmt.e_min))
    m = xp.round(a / pow2(e - fmt.mantissa_bits))
    magnitude = xp.astype((e - fmt.e_min) * float(1 << fmt.mantissa_bits) + m, xp.uint8)
    sign = xp.astype(negative, xp.uint8) << (fmt.bits - 1)
    return magnitude | sign


def _encode_int(xp: Any, x: Any, fmt: ElementFormat) -> Any:
    q = xp.astype(xp.clip(xp.round(x), fmt.min_value, fmt.max_value), xp.int8)
    if fmt.packed:
        return xp.astype(q, xp.uint8) & 0x0F
    return q


def encode(xp: Any, pow2: Any, x: Any, fmt: ElementFormat) -> Any:
    """Encode float32 ``x`` (already divided by its scale, no NaN) into ``fmt``'s codes.

    Returns uint8 codes for float formats and packed-width ints (INT4 as its 4-bit two's-complement
    nibble in a uint8), int8 for INT8. ``pow2`` is the backend's exact power of two.
    """
    if fmt.kind == "float":
        return _encode_float(xp, pow2, x, fmt)
    if fmt.kind == "int":
        return _encode_int(xp, x, fmt)
    raise RecipeError(f"{fmt.name} is a scale format; encode scales with encode_e8m0")


#: E2M1's rounding ties (midpoints of neighbouring values) and a factor that moves each below its midpoint
_E2M1_TIES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_BELOW_TIE = 0.9


def fp4_ties_toward_zero(xp: Any, y: Any) -> Any:
    """``y`` prepared so that E2M1's round-to-nearest-even encode gives MLX's rounding instead: ties
    go toward zero and nothing is written as -0.

    A tie ``t`` (a value midway between two E2M1 values) becomes ``0.9 * t``, which lies strictly
    between the lower neighbour and ``t`` (the lower neighbour is at least ``t - 0.5`` of a quantum
    away), so the encode picks the lower magnitude; every other value is untouched. Values of
    magnitude at most 0.25 (which round to zero) become +0.
    """
    a = xp.abs(y)
    tie = a == _E2M1_TIES[0]
    for t in _E2M1_TIES[1:]:
        tie = xp.logical_or(tie, a == t)
    y = xp.where(tie, y * _BELOW_TIE, y)
    return xp.where(a <= _E2M1_TIES[0], 0.0, y)


def round_integers(xp: Any, y: Any, rule: str) -> Any:
    """``y`` rounded to integers by ``rule``, exactly, so that the integer encode (round to nearest
    even, then clip) leaves it as it is:

    - ``"away"``: half away from zero, C's ``roundf`` (ggml's Q8_0). ``f = floor(|y|)`` and
      ``|y| - f`` are exact in float32, so ``f + (|y| - f >= 0.5)`` with ``y``'s sign is ``roundf``.
    - ``"ggml_q4_0"``: ``floor(fl32(y + 8.5)) - 8`` (ggml's Q4_0: ``(int8_t)(x * id + 8.5f)``, a
      truncation of a non-negative float32 sum, then its bias of 8 removed).

    A non-finite ``y`` (ggml's ``1 / d`` overflows for a block of amax below about ``2**-121``, Q8_0,
    or ``2**-125``, Q4_0) becomes what ggml's float -> int conversion gives it on x86 (the "integer
    indefinite" ``0x80000000``, truncated): 0, so Q8_0 code 0 and Q4_0 nibble 0 (code -8).
    """
    a = xp.abs(y)
    finite = a < math.inf
    if rule == "away":
        f = xp.floor(a)
        r = xp.where(a - f >= 0.5, f + 1.0, f)
        return xp.where(finite, xp.where(xp.signbit(y), -r, r), 0.0)
    if rule == "ggml_q4_0":
        return xp.where(finite, xp.floor(y + 8.5) - 8.0, -8.0)
    raise RecipeError(f"unknown integer rounding rule {rule!r}")


def encode_e8m0(xp: Any, exponent: Any) -> Any:
    """E8M0 codes of integer-valued float32 exponents (clamped to [-127, 127]); NaN gives 255."""
    nan = xp.isnan(exponent)
    e = xp.clip(xp.where(nan, 0.0, exponent), -127.0, 127.0)
    return xp.where(nan, xp.asarray(255, dtype=xp.uint8), xp.astype(e + 127.0, xp.uint8))


def decode(xp: Any, codes: Any, fmt: ElementFormat, table: Any) -> Any:
    """float32 values of ``codes`` by table lookup; ``table`` is ``decode_table(fmt)`` on the device."""
    flat = xp.take(table, xp.reshape(xp.astype(codes, xp.int32), (-1,)), axis=0)
    return xp.reshape(flat, codes.shape)


def packed_length(n: int) -> int:
    """Bytes along the last axis that hold ``n`` 4-bit codes."""
    return (n + 1) // 2


def pack_nibbles(xp: Any, codes: Any) -> Any:
    """Pack uint8 nibbles two per byte along the last axis, element ``2i`` in the low nibble."""
    n = codes.shape[-1]
    if n % 2:
        pad = xp.zeros((*codes.shape[:-1], 1), dtype=xp.uint8)
        codes = xp.concat([codes, pad], axis=-1)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(xp: Any, packed: Any, n: int) -> Any:
    """Inverse of :func:`pack_nibbles`: ``n`` uint8 nibbles along the last axis."""
    low = packed & 0x0F
    high = packed >> 4
    both = xp.stack([low, high], axis=-1)
    both = xp.reshape(both, (*packed.shape[:-1], 2 * packed.shape[-1]))
    return both[..., :n] if n != both.shape[-1] else both
