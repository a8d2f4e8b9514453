"""MLX's own quantized arrays (``mx.quantize`` / ``mx.dequantize`` / ``mx.quantized_matmul``).

MLX 0.32 packs a quantized matrix ``[..., K]`` into ``uint32`` words ``[..., K * bits / 32]``, values
LSB first (on the little-endian machines MLX runs on, byte ``i`` of the words is breccia's byte ``i``),
with one scale per ``group_size`` elements of the last axis:

=========  ===========  =====  ====================================  ==================================
mode       group size   bits   MLX value                             breccia
=========  ===========  =====  ====================================  ==================================
``mxfp8``  32           8      ``e4m3(w) * 2**(scale - 127)``        ``MXFP8BlockScaling`` (E4M3)
``mxfp4``  32           4      ``e2m1(w) * 2**(scale - 127)``        ``MXFP4BlockScaling``
``nvfp4``  16           4      ``e2m1(w) * (e4m3(s) * (g / 2688))``  ``NVFP4BlockScaling``, global
                                                                     scale ``fl32(g / 2688)`` (1 if
                                                                     MLX's ``global_scale`` is None)
``affine`` 32, 64, 128  4, 8   ``q_u * scale + bias`` (unsigned q)   ``Int4Scaling``/``Int8Scaling``:
                                                                     ``q = q_u - 2**(bits-1)``
=========  ===========  =====  ====================================  ==================================

So FP data and E8M0/E4M3 scales are the same bytes on both sides (a view, no arithmetic), and an
affine code differs from breccia's signed code only in its top bit (``byte ^ 0x88`` for 4 bits,
``^ 0x80`` for 8). Affine bits 2, 3, 5 and 6 have no breccia format and are refused.

Bit-for-bit facts (checked against MLX 0.32.4 on CPU, see ``tests/test_mlx.py``):

* ``mx.dequantize`` of MX modes rounds once in float32 (``value * 2**e``); of ``nvfp4`` it computes
  ``value * (e4m3(s) * fl32(g / 2688))``, which is breccia's ``decode * (scale * global_scale)``; of
  ``affine`` it rounds ``q_u * scale`` and then ``+ bias`` in the scales' dtype, which breccia does for
  its MLX-convention recipes (``blockwise._float_zero_point``).
* E8M0 code 255 is NaN in OCP MX and in breccia; MLX decodes it as +inf. :func:`to_mlx_quantized`
  therefore writes code 0 into every element of a NaN block, so MLX's ``0 * inf`` gives NaN there too.
* Symmetric or integer-zero-point int tensors map to affine exactly in real arithmetic (``bias =
  -(2**(bits-1) + zp) * scale``), but MLX's two roundings of ``q_u * scale + bias`` may differ from
  breccia's ``(q - zp) * scale`` by an ulp or so; only ``convention="mlx"`` is bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import Backend, float_dtype_name
from ..choices import FP8Format
from ..errors import DTypeError, LayoutError, RecipeError, ShapeError, missing_dependency
from ..formats import NVFP4_GLOBAL_DIVISOR, offset_binary_flip
from ..layouts import PerBlockK, scale_shape
from ..recipes import (
    Int4Scaling,
    Int8Scaling,
    MXFP4BlockScaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
)
from ..tensor import ScaledTensor

__all__ = [
    "MLXQuantized",
    "MLX_MODES",
    "NVFP4_GLOBAL_DIVISOR",
    "from_mlx_quantized",
    "to_mlx_quantized",
    "requantize_to_mlx",
    "RequantizeReport",
    "mlx_recipe",
    "mlx_e8m0_rounding",
    "mlx_modes_for",
    "resolve_mode",
    "added_error",
]

#: mode -> (group sizes MLX allows, bits MLX allows, default group size, default bits)
MLX_MODES: dict[str, tuple[tuple[int, ...], tuple[int, ...], int, int]] = {
    "affine": ((32, 64, 128), (2, 3, 4, 5, 6, 8), 64, 4),
    "mxfp4": ((32,), (4,), 32, 4),
    "mxfp8": ((32,), (8,), 32, 8),
    "nvfp4": ((16,), (4,), 16, 4),
}
#: bits of the affine mode that breccia holds (INT4, INT8)
AFFINE_BITS = (4, 8)
#: MLX's nvfp4 ``global_scale`` g enters dequantization as ``g / (448 * 6)``
_E8M0_NAN = 255


def _mx() -> Any:
    try:
        import mlx.core as mx
    except ImportError as exc:
        raise missing_dependency("mlx", "mlx", str(exc)) from exc
    return mx


@dataclass(frozen=True)
class MLXQuantized:
    """One matrix in MLX's quantized form: what ``mx.quantize`` returns, plus how to read it.

    ``weight`` uint32 ``[..., K * bits / 32]``; ``scales`` ``[..., K / group_size]`` (uint8 E8M0/E4M3
    codes, or the weight dtype for affine); ``biases`` (affine only, else None); ``global_scale`` a
    float32 0-d array for ``nvfp4`` (None means MLX's default, i.e. no second level).
    """

    weight: Any
    scales: Any
    biases: Any
    mode: str
    group_size: int
    bits: int
    global_scale: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Logical shape of the matrix."""
        *lead, words = (int(d) for d in self.weight.shape)
        return (*lead, words * 32 // self.bits)

    @property
    def nbytes(self) -> int:
        """Bytes of the MLX arrays together."""
        arrays = (self.weight, self.scales, self.biases, self.global_scale)
        return sum(int(a.nbytes) for a in arrays if a is not None)

    def kwargs(self) -> dict[str, Any]:
        """``group_size``, ``bits`` and ``mode`` as keywords for ``mx.dequantize``/``mx.quantized_matmul``."""
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}

    def dequantize(self, dtype: Any = None) -> Any:
        """``mx.dequantize`` of these arrays; ``dtype`` (MLX's default if None) in any spelling
        :func:`breccia.dequantize` takes."""
        mx = _mx()
        extra = {} if self.global_scale is None else {"global_scale": self.global_scale}
        if dtype is not None:
            dtype = getattr(mx, float_dtype_name(dtype))
        return mx.dequantize(self.weight, self.scales, self.biases, dtype=dtype, **self.kwargs(), **extra)


def resolve_mode(mode: Any, group_size: int | None, bits: int | None) -> tuple[int, int]:
    """``(group_size, bits)`` for an MLX mode, MLX's defaults filling None; a BrecciaError if invalid."""
    if mode not in MLX_MODES:
        raise RecipeError(f"unknown MLX quantization mode {mode!r}; MLX's modes are {', '.join(MLX_MODES)}")
    groups, bit_choices, default_group, default_bits = MLX_MODES[mode]
    group_size = default_group if group_size is None else group_size
    bits = default_bits if bits is None else bits
    if group_size not in groups:
        raise LayoutError(f"MLX mode {mode!r} takes group_size in {groups}; got {group_size!r}")
    if bits not in bit_choices:
        raise RecipeError(f"MLX mode {mode!r} takes bits in {bit_choices}; got {bits!r}")
    if mode == "affine" and bits not in AFFINE_BITS:
        raise RecipeError(
            f"MLX affine with bits={bits} has no breccia format; breccia holds affine bits 4 "
            "(Int4Scaling) and 8 (Int8Scaling)"
        )
    return group_size, bits


#: Block maxima of the E8M0 probe, as multiples of the element format's max: ``s = amax / max`` is
#: ``1.1 * 2**-3`` (ceil -> -2; nearest and floor -> -3) and ``1.3 * 2**-3`` (nearest -> -3; ceil and
#: floor -> -2), so the two scale codes tell the three rules apart.
_PROBE_RATIOS = (1.1 / 8, 1.3 / 8)
#: E8M0 codes of the probe's two blocks under each rule (127 + e)
_PROBE_CODES = {(125, 125): "ceil", (124, 124): "nearest", (124, 125): "floor"}


@functools.cache
def mlx_e8m0_rounding(mode: str = "mxfp8") -> str:
    """How the installed MLX rounds the E8M0 scales of ``mode`` (``"mxfp8"`` or ``"mxfp4"``) on its
    default device: ``"ceil"`` or ``"nearest"`` (``scale_rounding`` of breccia's MX recipes).

    Found once per process by quantizing a two-block golden input with ``mx.quantize`` (see
    ``_PROBE_RATIOS``), not from the version number: MLX's CPU and Metal backends rounded to nearest
    in log2 up to 0.32.1 and round up from 0.32.2 (ml-explore/mlx#4353); its CUDA backend always
    rounded up. A rule breccia does not know raises RecipeError.
    """
    if mode not in ("mxfp8", "mxfp4"):
        raise RecipeError(f"only MLX's mxfp8 and mxfp4 modes have E8M0 scales; got {mode!r}")
    mx = _mx()
    fmax = 448.0 if mode == "mxfp8" else 6.0
    x = np.zeros((len(_PROBE_RATIOS), 32), dtype=np.float32)
    x[:, 0] = [r * fmax for r in _PROBE_RATIOS]
    _, scales = mx.quantize(mx.array(x), group_size=32, bits=8 if mode == "mxfp8" else 4, mode=mode)
    codes = tuple(int(c) for c in np.array(scales).reshape(-1))
    rule = _PROBE_CODES.get(codes)
    if rule not in ("ceil", "nearest"):
        raise RecipeError(
            f"MLX {mx.__version__} rounds {mode} scales by a rule breccia does not reproduce: its probe "
            f"gave E8M0 codes {codes}; ceil gives (125, 125), round-to-nearest in log2 (124, 124)"
        )
    return rule


def mlx_recipe(mode: str, group_size: int | None = None, bits: int | None = None) -> Recipe:
    """The breccia recipe whose cast reproduces (or, for fp4, nearly reproduces) ``mx.quantize`` of
    the MLX that is installed.

    ``mxfp8`` -> ``MXFP8BlockScaling(scale_rounding=r)`` and ``affine`` ->
    ``Int{4,8}Scaling(group_size, symmetric=False, convention="mlx")`` give MLX's bits exactly, where
    ``r`` is the installed MLX's E8M0 rule (:func:`mlx_e8m0_rounding`): ``"ceil"`` from MLX 0.32.2
    (and always on CUDA), ``"nearest"`` (round to nearest in log2) for CPU and Metal up to 0.32.1.
    ``mxfp4`` -> ``MXFP4BlockScaling(scale_rounding=r, convention="mlx")`` gives MLX's bits too: its
    E2M1 elements round ties toward zero and never write -0, as MLX does (bfloat16 and float32 input;
    float16 blocks whose amax is below about 1e-5 may get another scale).
    ``nvfp4`` -> ``NVFP4BlockScaling()``, whose global scale is ``amax / 2688`` (``mx.quantize`` with
    ``global_scale=amax``), up to MLX's fp4 tie rule; ``NVFP4BlockScaling(convention="mlx")`` is
    ``mx.quantize`` without a global scale (what mlx-lm's nvfp4 layers hold), bit for bit.
    """
    group_size, bits = resolve_mode(mode, group_size, bits)
    if mode == "mxfp8":
        return MXFP8BlockScaling(scale_rounding=mlx_e8m0_rounding(mode))
    if mode == "mxfp4":
        return MXFP4BlockScaling(scale_rounding=mlx_e8m0_rounding(mode), convention="mlx")
    if mode == "nvfp4":
        return NVFP4BlockScaling()
    cls = Int4Scaling if bits == 4 else Int8Scaling
    return cls(group_size=group_size, symmetric=False, convention="mlx")


def mlx_modes_for(shape: tuple[int, ...]) -> list[str]:
    """The MLX modes (with group sizes) whose groups divide the last axis of ``shape``."""
    if len(shape) < 2:
        return []
    k = shape[-1]
    fits = []
    for mode, (groups, _, _, _) in MLX_MODES.items():
        ok = [g for g in groups if k % g == 0]
        if ok:
            fits.append(f"{mode} (group {', '.join(map(str, ok))})")
    return fits


def _modes_hint(shape: tuple[int, ...]) -> str:
    fits = mlx_modes_for(shape)
    if len(shape) < 2:
        return "MLX quantizes matrices only: reshape to at least 2-D"
    if not fits:
        return f"no MLX mode fits a last axis of {shape[-1]} (MLX groups are 16, 32, 64 or 128 wide)"
    return "MLX modes that fit this shape: " + "; ".join(fits)


# --- breccia -> MLX ----------------------------------------------------------------------------------


def _mode_of(st: ScaledTensor) -> str:
    recipe = st.recipe
    if isinstance(recipe, MXFP8BlockScaling):
        if recipe.fp8_format != FP8Format.E4M3:
            raise RecipeError(
                "MLX's mxfp8 holds E4M3 elements only; this tensor is MXFP8 E5M2. Re-encode it with "
                "requantize_to_mlx(st, 'mxfp8') (it reports the error it adds)"
            )
        return "mxfp8"
    if isinstance(recipe, MXFP4BlockScaling):
        return "mxfp4"
    if isinstance(recipe, NVFP4BlockScaling):
        if recipe.global_scale_divides:
            raise RecipeError(
                f"{recipe!r} divides by its global scale and MLX multiplies: translate it first with "
                "breccia.checkpoints.modelopt.to_multiplier_convention(st)"
            )
        return "nvfp4"
    if isinstance(recipe, (Int4Scaling, Int8Scaling)):
        return "affine"
    raise RecipeError(
        f"MLX has no quantization mode for {recipe.name} ({recipe.element_format.name} with "
        f"{recipe.scale_format} scales). Run its fp8 bits with breccia.mlx.Float8Linear, or re-encode it "
        "with requantize_to_mlx(st, 'mxfp8') (it reports the error it adds). " + _modes_hint(st.shape)
    )


def _check_groups(st: ScaledTensor, mode: str, group_size: int) -> None:
    shape = st.shape
    if len(shape) < 2 or shape[-1] % group_size:
        raise ShapeError(
            f"MLX's {mode} mode needs a matrix (2-D or more) whose last axis divides into groups of "
            f"{group_size}; this tensor has shape {shape}. " + _modes_hint(shape)
        )


def _affine_group(st: ScaledTensor) -> int:
    """The MLX group size that holds an int tensor's scale grid, repeating scales where needed."""
    shape = st.shape
    if len(shape) < 2:
        raise ShapeError(f"MLX quantizes matrices only; this tensor has shape {shape}. " + _modes_hint(shape))
    block = st.layout.block_shape(shape)
    k = shape[-1]
    span = min(block[-1], k)
    for g in (128, 64, 32):
        if k % g == 0 and span % g == 0:
            return g
    raise ShapeError(
        f"MLX's affine mode needs groups of 32, 64 or 128 that divide both the last axis ({k}) and "
        f"the tensor's scale block ({block[-1]} wide, {st.layout!r}). " + _modes_hint(shape)
    )


def _expand_groups(mx: Any, s: Any, block: tuple[int, ...], shape: tuple[int, ...], group: int) -> Any:
    """A scale grid repeated to one entry per MLX group: rows stretched to each row, K to ``K/group``."""
    target = (*shape[:-1], shape[-1] // group)
    per_entry = (*block[:-1], block[-1] // group if block[-1] < shape[-1] else target[-1])
    for axis, (reps, n) in enumerate(zip(per_entry, target)):
        if s.shape[axis] == n:
            continue
        if s.shape[axis] == 1:
            s = mx.broadcast_to(s, (*s.shape[:axis], n, *s.shape[axis + 1:]))
        else:
            s = mx.repeat(s, reps, axis=axis)[(slice(None),) * axis + (slice(0, n),)]
    return mx.contiguous(s)


def _nvfp4_global(mx: Any, global_scale: Any, exact: bool) -> Any:
    """An MLX ``g`` with ``fl32(g / 2688) == global_scale`` (None for 1, MLX's default)."""
    gs = np.float32(np.asarray(global_scale, dtype=np.float32).reshape(()))
    if gs == np.float32(1.0):
        return None
    divisor = np.float32(NVFP4_GLOBAL_DIVISOR)
    g0 = np.float32(gs * divisor)
    for step in (0, 1, -1, 2, -2):
        g = np.array(g0).view(np.int32) + np.int32(step)
        g = np.array(g).view(np.float32)
        if np.float32(g / divisor) == gs:
            return mx.array(g, dtype=mx.float32)
    if exact:
        raise RecipeError(
            f"NVFP4 global_scale {float(gs)!r} has no MLX global_scale g with fl32(g / 2688) equal to it, "
            "so MLX would dequantize it one ulp off; pass exact=False to accept that"
        )
    return mx.array(g0, dtype=mx.float32)


def _mark_nan_blocks(mx: Any, codes: Any, scales: Any, group: int) -> Any:
    """Zero the codes of blocks whose E8M0 scale is NaN, so that MLX's ``0 * inf`` decodes them as NaN."""
    nan = scales == _E8M0_NAN
    if not bool(mx.any(nan).item()):
        return codes
    per_byte = group if codes.shape[-1] == scales.shape[-1] * group else group // 2
    mask = mx.repeat(nan, per_byte, axis=-1)
    return mx.where(mask, mx.zeros_like(codes), codes)


def to_mlx_quantized(st: ScaledTensor, *, exact: bool = True) -> MLXQuantized:
    """``st`` in MLX's quantized form, repacked without requantizing.

    Such that ``mx.dequantize(q.weight, q.scales, q.biases, **q.kwargs(), global_scale=q.global_scale)``
    gives ``bc.dequantize(st)``: bit for bit for MXFP8 (E4M3), MXFP4, NVFP4 and the MLX-convention
    int recipes; within MLX's own rounding of ``q_u * s + b`` for other int recipes (see the module
    docstring). ``exact=False`` lets an NVFP4 global scale that no MLX ``g`` reproduces exactly go
    through one ulp off. A tensor in another framework is copied to MLX first.

    Raises a BrecciaError naming the MLX modes that would fit when MLX cannot hold ``st``: FP8
    recipes without blocks of 32, E5M2, a last axis that the group size does not divide, 1-D tensors.
    """
    if not isinstance(st, ScaledTensor):
        raise DTypeError(f"to_mlx_quantized needs a ScaledTensor; got {type(st).__name__}")
    mx = _mx()
    mode = _mode_of(st)
    st = st.to("mlx")
    from ..backends import get_backend

    backend = get_backend("mlx")
    fmt = st.recipe.element_format
    if mode == "affine":
        return _int_to_affine(mx, backend, st)
    group_size, bits = MLX_MODES[mode][2], MLX_MODES[mode][3]
    if st.layout != PerBlockK(group_size):
        raise LayoutError(f"MLX's {mode} mode uses groups of {group_size}; this tensor uses {st.layout!r}")
    _check_groups(st, mode, group_size)
    codes = backend.to_codes(st.data, fmt)
    if mode != "nvfp4":
        codes = _mark_nan_blocks(mx, codes, st.scale, group_size)
    global_scale = _nvfp4_global(mx, st.global_scale, exact) if mode == "nvfp4" else None
    return MLXQuantized(codes.view(mx.uint32), st.scale, None, mode, group_size, bits, global_scale)


def _int_to_affine(mx: Any, backend: Backend, st: ScaledTensor) -> MLXQuantized:
    recipe = st.recipe
    bits = recipe.element_format.bits
    group = _affine_group(st)
    if bits == 4:
        codes = mx.bitwise_xor(st.data, mx.array(offset_binary_flip(4), dtype=mx.uint8))
    else:
        codes = mx.bitwise_xor(st.data.view(mx.uint8), mx.array(offset_binary_flip(8), dtype=mx.uint8))
    weight = codes.view(mx.uint32)
    block = st.layout.block_shape(st.shape)
    if recipe.zero_point_kind == "float":
        scales, biases = st.scale, st.zero_point
    else:
        # x = (q - zp) * s = q_u * s - (2**(bits-1) + zp) * s, in the scale's dtype
        s = st.scale
        offset = float(2 ** (bits - 1))
        if st.zero_point is None:
            biases = (s * -offset).astype(s.dtype)
        else:
            biases = (-(st.zero_point.astype(mx.float32) + offset) * s.astype(mx.float32)).astype(s.dtype)
        scales = s
    scales = _expand_groups(mx, scales, block, st.shape, group)
    biases = _expand_groups(mx, biases, block, st.shape, group)
    return MLXQuantized(weight, scales, biases, "affine", group, bits)


# --- MLX -> breccia ----------------------------------------------------------------------------------


def from_mlx_quantized(
    w: Any,
    scales: Any,
    biases: Any = None,
    *,
    mode: str = "affine",
    group_size: int | None = None,
    bits: int | None = None,
    global_scale: Any = None,
    dtype: Any = None,
) -> ScaledTensor:
    """A ScaledTensor (MLX framework) over MLX's quantized arrays, without requantizing.

    ``group_size``/``bits`` default to MLX's for the mode (affine: 64 and 4). ``bc.dequantize`` of the
    result equals ``mx.dequantize(w, scales, biases, group_size=, bits=, mode=, global_scale=)`` bit
    for bit, and :func:`to_mlx_quantized` gives the arrays back. The logical dtype (``dtype``) defaults
    to what ``mx.dequantize`` returns: the scales' dtype for affine, float32 for nvfp4 with a
    ``global_scale``, else bfloat16.

    MX and NVFP4 data are viewed as bytes; affine codes become breccia's signed codes
    (``byte ^ 0x88``/``^ 0x80``), a cheap elementwise pass. Affine bits other than 4 and 8 raise.
    """
    mx = _mx()
    group_size, bits = resolve_mode(mode, group_size, bits)
    for name, a in (("w", w), ("scales", scales)):
        if not isinstance(a, mx.array):
            raise DTypeError(f"from_mlx_quantized: {name} must be an mlx.core.array; got {type(a).__name__}")
    if w.dtype != mx.uint32:
        raise DTypeError(f"MLX quantized weights are uint32; got {w.dtype}")
    if w.ndim < 2:
        raise ShapeError(f"MLX quantized weights are at least 2-D; got shape {tuple(w.shape)}")
    shape = (*(int(d) for d in w.shape[:-1]), int(w.shape[-1]) * 32 // bits)
    expected = scale_shape(PerBlockK(group_size), shape)
    if tuple(scales.shape) != expected:
        raise ShapeError(
            f"scales of shape {tuple(scales.shape)} do not fit weights of shape {tuple(w.shape)} "
            f"({mode}, group_size={group_size}, bits={bits}); expected {expected}"
        )
    from ..quantize import from_buffer

    recipe = mlx_recipe(mode, group_size, bits)
    layout = PerBlockK(group_size)
    if mode == "affine":
        return _affine_from_mlx(mx, w, scales, biases, recipe, layout, shape, bits, dtype)
    if biases is not None:
        raise RecipeError(f"MLX's {mode} mode has no biases; pass biases=None")
    if global_scale is not None and mode != "nvfp4":
        raise RecipeError(f"only MLX's nvfp4 mode takes a global_scale; got one for {mode!r}")
    if scales.dtype != mx.uint8:
        raise DTypeError(f"MLX's {mode} scales are uint8 codes; got {scales.dtype}")
    data = w.view(mx.uint8)
    extra = {}
    if mode == "nvfp4":
        extra["global_scale"] = _breccia_global(mx, global_scale)
    default = "float32" if mode == "nvfp4" and global_scale is not None else "bfloat16"
    dtype = default if dtype is None else dtype
    return from_buffer(data, scales, recipe, layout, shape=shape, dtype=dtype, **extra)


def _breccia_global(mx: Any, global_scale: Any) -> Any:
    if global_scale is None:
        return mx.array(1.0, dtype=mx.float32)
    g = mx.array(global_scale) if not isinstance(global_scale, mx.array) else global_scale
    if g.size != 1:
        raise ShapeError(f"nvfp4 global_scale must be a single value; got shape {tuple(g.shape)}")
    g = g.reshape(()).astype(mx.float32)
    return g / mx.array(NVFP4_GLOBAL_DIVISOR, dtype=mx.float32)


def _affine_from_mlx(
    mx: Any, w: Any, scales: Any, biases: Any, recipe: Recipe, layout: Any, shape: tuple, bits: int,
    dtype: Any,
) -> ScaledTensor:
    from ..quantize import from_buffer

    if biases is None:
        raise RecipeError("MLX's affine mode needs biases (the third array mx.quantize returns)")
    if not isinstance(biases, mx.array) or biases.dtype != scales.dtype or biases.shape != scales.shape:
        raise DTypeError("MLX affine biases must be an mlx array of the scales' dtype and shape")
    raw = w.view(mx.uint8)
    if bits == 4:
        data = mx.bitwise_xor(raw, mx.array(offset_binary_flip(4), dtype=mx.uint8))
    else:
        data = mx.bitwise_xor(raw, mx.array(offset_binary_flip(8), dtype=mx.uint8)).view(mx.int8)
    dtype = scales.dtype if dtype is None else dtype
    return from_buffer(data, scales, recipe, layout, shape=shape, dtype=dtype, zero_point=biases)


# --- formats MLX cannot hold: explicit re-encoding ---------------------------------------------------


@dataclass(frozen=True)
class RequantizeReport:
    """The error that :func:`requantize_to_mlx` added, measured against the source's own values."""

    source: str
    target: str
    rel_error: float  # ||new - old|| / ||old|| over finite elements
    max_abs_error: float

    def __str__(self) -> str:
        return (
            f"{self.source} -> MLX {self.target}: added relative error {self.rel_error:.3e} "
            f"(max abs {self.max_abs_error:.3e})"
        )


def requantize_to_mlx(
    st: ScaledTensor, mode: str = "mxfp8", *, group_size: int | None = None, bits: int | None = None
) -> tuple[MLXQuantized, RequantizeReport]:
    """Re-encode ``st`` (e.g. per-tensor, 1x128 or 128x128 FP8) in an MLX mode, reporting the error.

    ``st`` is dequantized to float32 and cast with :func:`mlx_recipe` (for ``mxfp8``: exactly what
    ``mx.quantize(mode="mxfp8")`` writes). Never done implicitly: :func:`to_mlx_quantized` refuses
    tensors MLX cannot hold and points here.
    """
    from ..quantize import cast, dequantize

    recipe = mlx_recipe(mode, group_size, bits)
    st = st.to("mlx")
    _check_groups(st, mode, MLX_MODES[mode][2] if group_size is None else group_size)
    old = dequantize(st, "float32")
    new_st = cast(old, recipe).replace(dtype_name=st.dtype_name)
    q = to_mlx_quantized(new_st, exact=False)
    new = dequantize(new_st, "float32")
    rel = added_error(old, new)
    diff = np.abs(np.asarray(new) - np.asarray(old))
    finite = np.isfinite(diff)
    max_abs = float(np.max(diff[finite])) if finite.any() else 0.0
    return q, RequantizeReport(f"{st.recipe!r}", _mode_label(q), rel, max_abs)


def added_error(old: Any, new: Any) -> float:
    """``||new - old|| / ||old||`` over the elements where ``old`` is finite (0 for an all-zero ``old``)."""
    old_np = np.asarray(old, dtype=np.float32)
    new_np = np.asarray(new, dtype=np.float32)
    finite = np.isfinite(old_np)
    norm = float(np.linalg.norm(np.where(finite, old_np, 0.0)))
    diff = float(np.linalg.norm(np.where(finite, new_np - old_np, 0.0)))
    return diff / norm if norm > 0 else diff


def _mode_label(q: MLXQuantized) -> str:
    return f"{q.mode}" if q.mode != "affine" else f"affine (bits={q.bits}, group_size={q.group_size})"
