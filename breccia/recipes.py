"""Recipes: what a quantized tensor is made of (element format, scale format, scale rule).

Each recipe is a frozen dataclass whose fields are validated on construction (a bad field raises
:class:`~breccia.errors.RecipeError`, never an ``assert``). The scale arithmetic of every recipe lives
in :mod:`breccia.scaling`; this module only describes.

Notation: ``amax`` is the largest finite ``|x|`` of a block, ``max`` the element format's largest
finite value, and ``scale`` the stored dequantization multiplier (``x ~ decode(data) * scale``).

``to_dict``/``recipe_from_dict`` give a versioned JSON form for file metadata. ``recipe_from_dict``
only looks names up in a fixed table and checks every field; nothing in a file is evaluated.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .choices import FP8Format, RecipeConvention, ScaleFormat
from .errors import LayoutError, RecipeError
from .formats import E2M1, INT4, INT8, ElementFormat
from .layouts import Layout, PerBlock2D, PerBlockK, PerRow, PerTensor
from .scale_rules import E8M0_ROUNDINGS

__all__ = [
    "Recipe",
    "Float8CurrentScaling",
    "DelayedScaling",
    "Float8BlockScaling",
    "MXFP8BlockScaling",
    "MXFP4BlockScaling",
    "MXRecipe",
    "NVFP4BlockScaling",
    "Int8Scaling",
    "Int4Scaling",
    "RECIPES",
    "recipe_from_dict",
    "RECIPE_SCHEMA_VERSION",
]

RECIPE_SCHEMA_VERSION = 1


def _choice(recipe: str, field: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if not isinstance(value, type(allowed[0])) or value not in allowed:
        raise RecipeError(f"{recipe}.{field} must be one of {allowed}; got {value!r}")


def _positive_int(recipe: str, field: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        kind = "None or a positive int" if optional else "a positive int"
        raise RecipeError(f"{recipe}.{field} must be {kind}; got {value!r}")


def _nonnegative_number(recipe: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise RecipeError(f"{recipe}.{field} must be a non-negative number; got {value!r}")


def _flag(recipe: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise RecipeError(f"{recipe}.{field} must be True or False; got {value!r}")


def _set(recipe: Recipe, field: str, value: Any) -> None:
    """Store the coerced ``value`` in the frozen ``recipe``'s ``field``."""
    object.__setattr__(recipe, field, value)


def _fp8_format(recipe: Recipe) -> None:
    """Coerce ``recipe.fp8_format`` (a string or an :class:`FP8Format`) to its member."""
    _set(recipe, "fp8_format", FP8Format.coerce(f"{recipe.name}.fp8_format", recipe.fp8_format))


def _convention(recipe: Recipe, *allowed: RecipeConvention) -> None:
    """Coerce ``recipe.convention`` to its member among ``allowed`` (else a RecipeError)."""
    where = f"{recipe.name}.convention"
    _set(recipe, "convention", RecipeConvention.coerce(where, recipe.convention, allowed))


_C = RecipeConvention


@dataclass(frozen=True)
class Recipe:
    """Base class of every recipe."""

    #: how the block scale is stored
    scale_format: ClassVar[ScaleFormat] = ScaleFormat.F32
    #: True where a float32 per-tensor scale multiplies every block scale (NVFP4's two levels)
    has_global_scale: ClassVar[bool] = False
    #: whose rule the recipe follows: a field of the recipes that offer a choice, else fixed (None
    #: for none); not annotated, so that it is no dataclass field of its own
    convention = None

    @property
    def scale_element_format(self) -> ElementFormat | None:
        """The element format the block scales are stored in (E8M0, E4M3), or None for float32."""
        return self.scale_format.element_format

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def element_format(self) -> ElementFormat:
        raise NotImplementedError

    @property
    def fp4_ties_toward_zero(self) -> bool:
        """Whether E2M1 elements round ties toward zero and never write -0 (MLX's rule) instead of
        rounding to nearest even (every other format and peer)."""
        return False

    @property
    def zero_point_kind(self) -> str | None:
        """``None`` (symmetric), ``"int"`` (``(q - zp) * s``) or ``"float"`` (``q_u * s + zp``)."""
        return None

    @property
    def integer_rounding(self) -> str:
        """How integer codes are rounded: ``"even"`` (round half to even: every recipe but ggml's),
        ``"away"`` (ggml's Q8_0) or ``"ggml_q4_0"`` (see :func:`breccia.formats.round_integers`)."""
        return "even"

    @property
    def finite_input_only(self) -> bool:
        """Whether a cast refuses NaN and Inf input (ggml's quantizers have no rule for them)."""
        return False

    def default_layout(self) -> Layout:
        raise NotImplementedError

    def fits(self, layout: Layout) -> bool:
        """Whether this recipe can use ``layout`` (by default only its own default)."""
        return layout == self.default_layout()

    def check_layout(self, layout: Layout | None) -> Layout:
        """``layout`` if it fits this recipe (``None`` means the default), else a LayoutError."""
        if layout is None:
            return self.default_layout()
        if not isinstance(layout, Layout):
            raise LayoutError(
                f"layout must be a breccia layout (PerTensor, PerRow, PerBlockK, PerBlock2D); "
                f"got {type(layout).__name__}"
            )
        if not self.fits(layout):
            raise LayoutError(
                f"{self!r} cannot use {layout!r}; its layout is {self.default_layout()!r}"
                + self._other_layouts_hint()
            )
        return layout

    def _other_layouts_hint(self) -> str:
        return ""

    def label(self) -> str:
        """``Name(field=value, ...)`` naming only the fields that differ from the defaults."""
        defaults = type(self)()
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        ]
        return f"{self.name}({', '.join(changed)})"

    def to_dict(self) -> dict[str, Any]:
        """Versioned JSON-ready form: ``{"version": 1, "name": ..., "fields": {...}}``."""
        return {
            "version": RECIPE_SCHEMA_VERSION,
            "name": self.name,
            "fields": {f.name: _plain(getattr(self, f.name)) for f in fields(self)},
        }

    @classmethod
    def from_dict(cls, d: Any) -> Recipe:
        """Same as :func:`recipe_from_dict`, checking that the result is a ``cls``."""
        recipe = recipe_from_dict(d)
        if not isinstance(recipe, cls):
            raise RecipeError(f"expected a {cls.__name__} recipe; got {recipe.name}")
        return recipe


@dataclass(frozen=True)
class Float8CurrentScaling(Recipe):
    """FP8 with a scale from the current tensor's amax (TransformerEngine's current scaling).

    ``convention="te"`` (TransformerEngine's ``compute_scale_from_amax``)::

        a     = max(amax, amax_epsilon)
        q     = max / a          (fp32, round to nearest; 1 if a is 0 or inf; FLT_MAX if it overflows)
        q     = 2**floor(log2 q) if power_2_scale
        data  = encode(x * q)    scale = 1 / q

    ``convention="torchao"`` (torchao's ``Float8Tensor``): ``scale = amax / max`` (1 for a zero
    amax) and ``data = encode(x / scale)``.
    Any layout works: ``PerTensor()`` (default), ``PerRow()`` (row-wise), ``PerBlockK``, ``PerBlock2D``.
    """

    fp8_format: FP8Format = FP8Format.E4M3
    power_2_scale: bool = False
    amax_epsilon: float = 0.0
    convention: RecipeConvention = _C.TE

    def __post_init__(self) -> None:
        _fp8_format(self)
        _flag(self.name, "power_2_scale", self.power_2_scale)
        _nonnegative_number(self.name, "amax_epsilon", self.amax_epsilon)
        _convention(self, _C.TE, _C.TORCHAO)

    @property
    def element_format(self) -> ElementFormat:
        return self.fp8_format.element_format

    def default_layout(self) -> Layout:
        return PerTensor()

    def fits(self, layout: Layout) -> bool:
        return True


@dataclass(frozen=True)
class DelayedScaling(Recipe):
    """FP8 with a per-tensor scale from an amax history (TransformerEngine's delayed scaling).

    ``cast`` takes and returns an :class:`~breccia.AmaxHistory`; the scale comes from the
    history *before* this tensor is recorded::

        a     = max(history) if amax_compute_algo == "max" else history[0]
        q     = max / a / 2**margin   (1 when a is 0 or non-finite)
        data  = encode(x * q)         scale = 1 / q
        history' = [amax(x), history[0], ..., history[-2]]
    """

    fp8_format: FP8Format = FP8Format.E4M3
    margin: int = 0
    amax_history_len: int = 1024
    amax_compute_algo: str = "max"
    convention = _C.TE

    def __post_init__(self) -> None:
        _fp8_format(self)
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise RecipeError(f"DelayedScaling.margin must be an int >= 0; got {self.margin!r}")
        _positive_int(self.name, "amax_history_len", self.amax_history_len)
        _choice(self.name, "amax_compute_algo", self.amax_compute_algo, ("max", "most_recent"))

    @property
    def element_format(self) -> ElementFormat:
        return self.fp8_format.element_format

    def default_layout(self) -> Layout:
        return PerTensor()


@dataclass(frozen=True)
class Float8BlockScaling(Recipe):
    """FP8 with one fp32 scale per ``block_m x block_k`` block (TE block scaling, DeepSeek-V3).

    ``convention="te"``: per block, the Float8CurrentScaling ``te`` rule (``q = max / amax``,
    ``data = encode(x * q)``, ``scale = 1 / q``; ``power_2_scale`` rounds ``q`` down to a power of two).

    ``convention="deepseek"`` (DeepSeek-V3's ``act_quant``, as its Triton kernel computes it)::

        s    = max(amax, 1e-4) * fl32(1/448)           # the kernel's ``amax / 448.``: div.full.f32
        s    = 2**ceil(fl32(log2 s)) if power_2_scale  # V3.1's "ue8m0" scales
        data = encode(x * fl32(1/s))     scale = s     # CUDA: div.full.f32, ``x * rcp.approx(s)``

    The scales are the kernel's on every backend. The codes are the kernel's on CUDA (the same
    instruction); elsewhere ``rcp.approx`` (not defined bit for bit by PTX) is replaced by the correctly
    rounded reciprocal, which moves a code by one step where the quotient lies on an E4M3 rounding
    boundary (4 of 117,440,512 codes at 16384x7168 on an H200; ``docs/bridges/deepseek.md``).

    Layout: ``PerBlockK(block_k)`` when ``block_m == 1`` (1x128 activations), else
    ``PerBlock2D(block_m, block_k)`` (128x128 weights).
    """

    block_k: int = 128
    block_m: int = 1
    fp8_format: FP8Format = FP8Format.E4M3
    power_2_scale: bool = False
    amax_epsilon: float = 0.0
    convention: RecipeConvention = _C.TE

    def __post_init__(self) -> None:
        _positive_int(self.name, "block_k", self.block_k)
        _positive_int(self.name, "block_m", self.block_m)
        _fp8_format(self)
        _flag(self.name, "power_2_scale", self.power_2_scale)
        _nonnegative_number(self.name, "amax_epsilon", self.amax_epsilon)
        _convention(self, _C.TE, _C.DEEPSEEK)

    @property
    def element_format(self) -> ElementFormat:
        return self.fp8_format.element_format

    def default_layout(self) -> Layout:
        if self.block_m == 1:
            return PerBlockK(self.block_k)
        return PerBlock2D(self.block_m, self.block_k)


#: How an MX recipe rounds its E8M0 exponent (see :class:`MXFP8BlockScaling` and :mod:`.scale_rules`).
_E8M0_ROUNDINGS = E8M0_ROUNDINGS


@dataclass(frozen=True)
class MXRecipe(Recipe):
    """OCP Microscaling: 32 elements share one E8M0 (power-of-two) scale.

    ``scale_rounding="floor"`` is the OCP MX v1.0 rule, ``"ceil"`` what TransformerEngine, torchao's
    RCEIL and MLX (CUDA always; CPU and Metal from 0.32.2) produce, ``"nearest"`` what MLX's CPU and
    Metal backends produced up to 0.32.1, ``"even"`` torchao's EVEN (:mod:`breccia.scale_rules` lists
    every rule with the peers and versions that use it)::

        floor:   e = floor(log2 amax) - emax_elem  (emax_elem: 8 for E4M3, 15 for E5M2, 2 for E2M1)
        ceil:    e = ceil(log2 s)                  (s = amax / max rounded to nearest in fp32)
        nearest: e = round(log2 s)                 (the same s, rounded to nearest in log2:
                                                    e = k + 1 if s > sqrt(2) * 2**k else k, k = floor(log2 s);
                                                    exact, as sqrt(2) * 2**k is never a float)
        even:    e = floor(log2 amax) + c - emax_elem  (c = 1 where amax's mantissa, rounded half up
                                                    to the element's m bits, carries:
                                                    amax >= 2**k * (2 - 2**-(m + 1)), k = floor(log2 amax))
        e    = clip(e, -127, 127); a zero block gets e = 0 (scale 1)
        data = encode(x / 2**e)    scale = 2**e (E8M0)

    ``floor`` may push the block's largest values past ``max``, and ``nearest`` does so whenever it
    rounds down (about half the blocks); they saturate.
    """

    scale_format: ClassVar[ScaleFormat] = ScaleFormat.E8M0
    scale_rounding: str = "floor"
    convention = _C.OCP

    def default_layout(self) -> Layout:
        return PerBlockK(32)


@dataclass(frozen=True)
class MXFP8BlockScaling(MXRecipe):
    __doc__ = MXRecipe.__doc__
    fp8_format: FP8Format = FP8Format.E4M3
    scale_rounding: str = "floor"

    def __post_init__(self) -> None:
        _fp8_format(self)
        _choice(self.name, "scale_rounding", self.scale_rounding, _E8M0_ROUNDINGS)

    @property
    def element_format(self) -> ElementFormat:
        return self.fp8_format.element_format


@dataclass(frozen=True)
class MXFP4BlockScaling(MXRecipe):
    __doc__ = (MXRecipe.__doc__ or "") + """
    ``convention="mlx"`` rounds the E2M1 elements as ``mx.quantize`` does: ties toward zero, and a
    value that rounds to zero is written +0 (``"ocp"``: round to nearest even, sign kept).

    ``convention="ggml"`` is ggml's ``quantize_row_mxfp4_ref`` (and gguf-py's ``MXFP4``), the
    quantizer behind GGUF's MXFP4 blocks; with ``scale_rounding="floor"`` only::

        e    = floor(fl32(log2 amax)) - 2           (log2 rounded to float32 first, then floored)
        byte = e + 127, wrapped mod 256 when negative (ggml's float -> uint8 cast); 0 for a zero block
        data = the E2M1 code nearest x / 2**(byte - 127): ties toward zero, values that round to zero
               written +0 (the first of ggml's table that minimizes |k * d - x|)

    Rounding ``log2`` to float32 moves the floor up by one for amax just below a power of two
    ``2**(k + 1)`` with ``|k + 1| >= 3`` (for ``k + 1 = 3`` only the float below 8; more floats for
    larger ``|k + 1|``), as ggml's ``floorf(log2f(amax))`` and gguf-py's ``np.floor(np.log2(d))`` do.
    Blocks with amax below ``2**-125`` get ggml's wrapped bytes 232..255 and all-zero codes (they
    decode to 0 as ggml's do; byte 255, from amax in ``[2**-126, 2**-125)``, reads as NaN in breccia
    and is refused by ``save_gguf``). NaN and Inf input are refused, and so is amax within 44
    floats of float32's largest (ggml's byte 253, where its encoder's ``4 * d`` overflows).
    """
    scale_rounding: str = "floor"
    convention: RecipeConvention = _C.OCP

    def __post_init__(self) -> None:
        _choice(self.name, "scale_rounding", self.scale_rounding, _E8M0_ROUNDINGS)
        _convention(self, _C.OCP, _C.MLX, _C.GGML)
        if self.convention == _C.GGML and self.scale_rounding != "floor":
            raise RecipeError(
                f"{self.name}(convention='ggml') is ggml's MXFP4 quantizer, whose exponent rule is its "
                f"own floor; scale_rounding must be 'floor', got {self.scale_rounding!r}"
            )

    @property
    def fp4_ties_toward_zero(self) -> bool:
        return self.convention in (_C.MLX, _C.GGML)

    @property
    def finite_input_only(self) -> bool:
        return self.convention == _C.GGML

    @property
    def element_format(self) -> ElementFormat:
        return E2M1


@dataclass(frozen=True)
class NVFP4BlockScaling(Recipe):
    """NVFP4: E2M1 elements, one E4M3 scale per 16, and an fp32 global scale (two levels)::

        global_scale = amax(tensor) / (448 * 6)            (1 when the tensor's amax is 0)
        s_b          = e4m3(clip(amax_b / 6 / global_scale, 2**-9, 448))
        data         = encode(x * ((1 / global_scale) / s_b))
        x ~ decode(data) * (s_b * global_scale)

    This is torchao's and NVIDIA's reference two-level rule, down to the encode multiplier (a
    reciprocal, computed per block, rather than a division of every element); ModelOpt stores this
    ``global_scale`` as ``weight_scale_2``.

    ``convention="compressed-tensors"`` (``nvfp4-pack-quantized``): the stored global scale is the
    reciprocal, a *divisor*, and decoding divides by it (``compress``/``decompress`` of
    compressed-tensors 0.20, with ``calculate_qparams``/``generate_gparam`` in float32)::

        global_scale = fl32(fl32(1 / amax(tensor)) * 2688)   (1 when not finite: amax 0; torch's 2688 / t)
        s_b          = e4m3(min(global_scale * (amax_b / 6), 448))   (0.125 where that rounds to 0)
        data         = encode(x / (s_b / global_scale))
        x ~ decode(data) * (s_b / global_scale)

    ``s_b / g`` and ``s_b * fl32(1 / g)`` differ by an ulp for a share of block scales, so the two
    conventions are distinct recipes: translating one global scale into the other is exact only
    where the products agree (see ``docs/checkpoints.md``).

    ``convention="mlx"``: ``mx.quantize(w, mode="nvfp4")`` without a global scale (what mlx-lm's
    nvfp4 layers hold), one level; the global scale is stored as exactly 1::

        s_b  = e4m3(min(amax_b / 6, 448))          (0 when amax_b / 6 rounds to 0: the block is 0)
        data = encode_mlx(x / s_b)                 (x / 1 where s_b is 0; ties toward zero, no -0)
        x ~ decode(data) * s_b
    """

    scale_format: ClassVar[ScaleFormat] = ScaleFormat.E4M3
    has_global_scale: ClassVar[bool] = True
    convention: RecipeConvention = _C.NVIDIA

    def __post_init__(self) -> None:
        _convention(self, _C.NVIDIA, _C.COMPRESSED_TENSORS, _C.MLX)

    @property
    def fp4_ties_toward_zero(self) -> bool:
        return self.convention == _C.MLX

    @property
    def global_scale_divides(self) -> bool:
        """Whether decoding divides by ``global_scale`` (compressed-tensors) instead of multiplying."""
        return self.convention == _C.COMPRESSED_TENSORS

    @property
    def element_format(self) -> ElementFormat:
        return E2M1

    def default_layout(self) -> Layout:
        return PerBlockK(16)


@dataclass(frozen=True)
class _IntRecipe(Recipe):
    """Integer quantization with an fp32 scale per group.

    Symmetric, ``convention="breccia"``: ``s = amax / qmax`` (1 for a zero block),
    ``q = clip(round(x / s), -qmax, qmax)``.

    Symmetric, ``convention="torchao"`` (torchao's ``choose_qparams_affine``)::

        s = max(amax / ((qmax - qmin) / 2), eps_f32)     # amax/127.5 (int8), amax/7.5 (int4)
        q = clip(round(x * (1 / s)), qmin, qmax)

    Asymmetric (``symmetric=False``), ``"breccia"`` and ``"torchao"`` (integer zero point)::

        lo, hi = min(min_b, 0), max(max_b, 0)
        s  = max((hi - lo) / (qmax - qmin), eps_f32)
        zp = clip(qmin - round(lo / s), qmin, qmax)
        q  = clip(round(x / s) + zp, qmin, qmax)          (torchao: x * (1 / s))
        x ~ (q - zp) * s

    Asymmetric ``convention="mlx"`` (MLX's ``affine`` mode, float zero point): ``q_u = q + 2**(bits-1)``
    is the unsigned code and ``x ~ q_u * s + zp`` (MLX's ``biases``), computed as ``mx.quantize`` does::

        s    = max((max_b - min_b) / (2**bits - 1), 1e-7)
        edge = min_b if |min_b| > |max_b| else max_b;  s = s if |min_b| > |max_b| else -s
        q0   = round(edge / s)
        s, zp = (edge / q0, edge) if q0 != 0 else (s, 0)
        q_u  = clip(round((x - zp) / s), 0, 2**bits - 1)

    so the larger-magnitude edge is exact and ``s`` is negative in about half the groups. A bfloat16
    or float16 input stores ``s`` and ``zp`` in its own dtype (as MLX does) and dequantizes in it.

    Symmetric ``convention="ggml"``: ggml's own quantizers (``quantize_row_q8_0_ref``,
    ``quantize_row_q4_0_ref``; gguf-py's ``Q8_0``/``Q4_0``), the stored scale being the fp16 value
    the GGUF block holds (``save_gguf`` writes them byte for byte)::

        INT8 (Q8_0):  d = fl32(amax / 127);  q = roundf(x * (1 / d))     (half away from zero)
        INT4 (Q4_0):  m = the block's first element of largest magnitude, with its sign
                      d = fl32(m / -8);      q = min(15, trunc(fl32(x * (1 / d)) + 8.5)) - 8
        1 / d is 0 where d is 0;  scale = fp16(d) (round to nearest even; -0 kept)

    The codes use ``1 / d`` of the unrounded float32 ``d`` while the scale is ``fp16(d)``, as in
    ggml. Q4_0's scale is negative when ``m`` is positive. NaN and Inf input are refused, and so is
    a tensor whose ``d`` overflows float16 (amax above ~8.3e6 for INT8, ~5.2e5 for INT4), which ggml
    would store as an infinite scale.
    """

    group_size: int | None = None
    symmetric: bool = True
    convention: RecipeConvention = _C.BRECCIA

    def __post_init__(self) -> None:
        _positive_int(self.name, "group_size", self.group_size, optional=True)
        _flag(self.name, "symmetric", self.symmetric)
        _convention(self, _C.BRECCIA, _C.TORCHAO, _C.MLX, _C.GGML)
        if self.convention == _C.MLX and self.symmetric:
            raise RecipeError(
                f"{self.name}(convention='mlx') is MLX's affine mode, which is asymmetric; "
                "pass symmetric=False"
            )
        if self.convention == _C.GGML and not self.symmetric:
            raise RecipeError(
                f"{self.name}(convention='ggml') is ggml's Q8_0/Q4_0 quantizer, which is symmetric; "
                "drop symmetric=False (ggml's Q4_1 has no breccia cast)"
            )

    @property
    def integer_rounding(self) -> str:
        if self.convention != _C.GGML:
            return "even"
        return "away" if self.element_format.bits == 8 else "ggml_q4_0"

    @property
    def finite_input_only(self) -> bool:
        return self.convention == _C.GGML

    @property
    def zero_point_kind(self) -> str | None:
        if self.symmetric:
            return None
        return "float" if self.convention == _C.MLX else "int"

    def default_layout(self) -> Layout:
        return PerRow() if self.group_size is None else PerBlockK(self.group_size)

    def fits(self, layout: Layout) -> bool:
        if self.group_size is None:
            return isinstance(layout, (PerRow, PerTensor))
        return layout == PerBlockK(self.group_size)

    def _other_layouts_hint(self) -> str:
        if self.group_size is None:
            return " or PerTensor()"
        return " (set group_size=None for PerRow()/PerTensor())"


@dataclass(frozen=True)
class Int8Scaling(_IntRecipe):
    __doc__ = _IntRecipe.__doc__
    group_size: int | None = None

    @property
    def element_format(self) -> ElementFormat:
        return INT8


@dataclass(frozen=True)
class Int4Scaling(_IntRecipe):
    __doc__ = _IntRecipe.__doc__
    group_size: int | None = 128

    @property
    def element_format(self) -> ElementFormat:
        return INT4


RECIPES: dict[str, type[Recipe]] = {
    c.__name__: c
    for c in (
        Float8CurrentScaling,
        DelayedScaling,
        Float8BlockScaling,
        MXFP8BlockScaling,
        MXFP4BlockScaling,
        NVFP4BlockScaling,
        Int8Scaling,
        Int4Scaling,
    )
}

_JSON_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any) -> Any:
    """A field's JSON value: an enum member's string, any other value as it is."""
    return value.value if isinstance(value, enum.Enum) else value


def recipe_from_dict(d: Any) -> Recipe:
    """Rebuild a recipe from :meth:`Recipe.to_dict`.

    Rejects, with a RecipeError: a version newer than this breccia reads, an unknown recipe name,
    unknown fields, and field values that are not JSON scalars or fail the recipe's validation.
    """
    if not isinstance(d, dict):
        raise RecipeError(f"a recipe must be a JSON object; got {type(d).__name__}")
    version = d.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecipeError(f"recipe 'version' must be a positive int; got {version!r}")
    if version > RECIPE_SCHEMA_VERSION:
        raise RecipeError(
            f"recipe schema version {version} is newer than this breccia reads "
            f"({RECIPE_SCHEMA_VERSION}); upgrade breccia"
        )
    name = d.get("name")
    cls = RECIPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise RecipeError(f"unknown recipe {name!r}; valid recipes are {', '.join(RECIPES)}")
    extra = set(d) - {"version", "name", "fields"}
    if extra:
        raise RecipeError(f"unexpected key(s) {sorted(extra)} in recipe {name}")
    values = d.get("fields", {})
    if not isinstance(values, dict):
        raise RecipeError(f"recipe {name}: 'fields' must be a JSON object; got {values!r}")
    allowed = {f.name for f in fields(cls)}
    unknown = set(values) - allowed
    if unknown:
        raise RecipeError(f"recipe {name} has no field(s) {sorted(unknown)}; it takes {sorted(allowed)}")
    for key, value in values.items():
        if not isinstance(value, _JSON_SCALARS):
            raise RecipeError(f"recipe {name}.{key} must be a JSON scalar; got {type(value).__name__}")
    return cls(**values)
