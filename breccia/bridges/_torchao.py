"""torchao bridge: torchao's quantized tensor subclasses <-> ScaledTensor, bit for bit.

torchao 0.18 holds a quantized weight as one of these ``torch.Tensor`` subclasses; each maps onto one
breccia recipe, and the codes, scales and zero points move unchanged (views where no repacking is
needed)::

    torchao tensor                        breccia recipe                               dequantize
    Int8Tensor                            Int8Scaling(convention="torchao")           (q - zp) * s
    IntxUnpackedToInt8Tensor (int4/int8)  Int4Scaling / Int8Scaling(convention="torchao")
    Int4Tensor (symmetric only)           Int4Scaling                                  q * s
    Float8Tensor                          Float8CurrentScaling(convention="torchao")  q * s
    MXTensor (fp8 / fp4)                  MXFP8BlockScaling / MXFP4BlockScaling        q * 2**e
    NVFP4Tensor                           NVFP4BlockScaling                            q * (s_e4m3 * s_global)

torchao dequantizes in float32 and casts once to the output dtype, except that ``dequantize_affine``
subtracts the zero point in the output dtype (exact for integer zero points, checked otherwise) and
MX multiplies in the output dtype (the same single rounding for bf16/fp32, since a code times a power
of two is exact in float32). breccia's dequantize is the same sequence, so the values agree bit for bit.

The block shape is inferred from the arrays (``qdata.shape[i] // scale.shape[i]`` per axis), giving
``PerTensor()``, ``PerRow()``, ``PerBlockK(k)`` or ``PerBlock2D(m, k)``; ``recipe=`` overrides the
inferred recipe (same element and scale format). Swizzled (cuBLAS "blocked") MX/NVFP4 scales are put
back into row-major order with torchao's own ``from_blocked``.

Not representable, raising a :class:`~breccia.errors.BrecciaError` that names the class: ``NF4Tensor``
(a 16-entry lookup table), MX fp6, other integer widths, ``Int4Tensor`` with zero points (it stores
``q * s + z`` with ``z = min + 8 s`` already rounded to bf16) and the kernel-packed int4 layouts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..choices import ScaleFormat
from ..errors import BrecciaError, DTypeError, LayoutError, RecipeError, ShapeError, missing_dependency
from ..layouts import Layout, PerBlock2D, PerBlockK, PerRow, PerTensor
from ..recipes import (
    Float8CurrentScaling,
    Int4Scaling,
    Int8Scaling,
    MXFP4BlockScaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
)
from ..tensor import ScaledTensor

__all__ = [
    "from_torchao",
    "to_torchao",
    "from_torchao_state_dict",
    "to_torchao_state_dict",
    "is_torchao",
]


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise missing_dependency("torch", "torchao", str(exc)) from exc
    return torch


def _torchao() -> Any:
    _torch()
    try:
        import torchao
    except ImportError as exc:
        raise missing_dependency("torchao", "torchao", str(exc)) from exc
    return torchao


def _torch_xp() -> Any:
    from ..backends import get_backend

    return get_backend("torch").xp


# --- torchao -> breccia ----------------------------------------------------------------------------


def _layout_of(cls: str, shape: tuple[int, ...], grid: tuple[int, ...]) -> Layout:
    """The layout whose scale grid over ``shape`` is ``grid`` (torchao blocks always divide)."""
    if len(grid) != len(shape) or any(g < 1 or d % g for d, g in zip(shape, grid)):
        raise ShapeError(f"{cls}: a scale of shape {grid} does not tile data of shape {shape}")
    block = tuple(d // g for d, g in zip(shape, grid))
    if all(g == 1 for g in grid):
        return PerTensor()
    if all(b == 1 for b in block[:-1]):
        return PerRow() if block[-1] == shape[-1] else PerBlockK(block[-1])
    if len(shape) >= 2 and all(b == 1 for b in block[:-2]):
        return PerBlock2D(block[-2], block[-1])
    raise LayoutError(
        f"{cls}: blocks of shape {block} over data of shape {shape} are no breccia layout; breccia's "
        "blocks lie over the last one or two axes (PerTensor, PerRow, PerBlockK, PerBlock2D)"
    )


def _grid_scale(cls: str, t: Any, scale: Any, shape: tuple[int, ...]) -> Any:
    """``scale`` with the data's rank: torchao sometimes drops the kept dims (use ``block_size``)."""
    if scale.ndim == len(shape):
        return scale
    block = getattr(t, "block_size", None)
    if block is None or len(block) != len(shape):
        raise ShapeError(f"{cls}: scale of shape {tuple(scale.shape)} does not match data of shape {shape}")
    return scale.reshape([d // b for d, b in zip(shape, block)])


def _expand(scale: Any, shape: tuple[int, ...]) -> Any:
    """A per-block array repeated over its blocks to ``shape``."""
    for axis, (d, g) in enumerate(zip(shape, scale.shape)):
        if g != d:
            scale = scale.repeat_interleave(d // g, dim=axis)
    return scale


def _finish(
    cls: str,
    inferred: Recipe,
    layout: Layout,
    recipe: Recipe | None,
    data: Any,
    scale: Any,
    *,
    shape: tuple[int, ...],
    dtype: Any,
    zero_point: Any = None,
    global_scale: Any = None,
) -> ScaledTensor:
    """Wrap the arrays under the inferred recipe, or under ``recipe`` if it describes the same bits."""
    from ..quantize import from_buffer

    if recipe is not None:
        if not isinstance(recipe, Recipe):
            raise RecipeError(f"recipe must be a breccia recipe; got {type(recipe).__name__}")
        bits = (recipe.element_format, recipe.scale_format)
        if bits != (inferred.element_format, inferred.scale_format) or recipe.zero_point_kind == "float":
            raise RecipeError(
                f"{cls} holds {inferred!r} data; recipe={recipe!r} stores different bits "
                f"(it needs {inferred.element_format.name} elements with {inferred.scale_format} scales"
                + (" and an integer zero point)" if inferred.zero_point_kind else ")")
            )
        if inferred.zero_point_kind and not recipe.zero_point_kind:
            raise RecipeError(f"{cls} has non-zero zero points; recipe={recipe!r} must be symmetric=False")
        if recipe.zero_point_kind and zero_point is None:
            zero_point = _torch().zeros(scale.shape, dtype=_torch().float32, device=scale.device)
        if not recipe.fits(layout):
            layout = recipe.default_layout()
        inferred = recipe
    dtype_name = str(dtype).removeprefix("torch.")
    return from_buffer(
        data, scale, inferred, layout, shape=shape, dtype=dtype_name, zero_point=zero_point,
        global_scale=global_scale,
    )


def _from_int(cls: str, t: Any, q: Any, scale: Any, zp: Any, bits: int, dtype: Any, recipe: Recipe | None):
    """An integer tensor ``x = (q - zp) * s`` (``q`` int8 holding ``bits``-bit values)."""
    torch = _torch()
    shape = tuple(q.shape)
    scale = _grid_scale(cls, t, scale, shape)
    layout = _layout_of(cls, shape, tuple(scale.shape))
    if zp is not None:
        zp = _grid_scale(cls, t, zp, shape)
        if not bool(torch.any(zp != 0)):
            zp = None
        elif zp.is_floating_point():
            _check_float_zero_point(cls, q, zp, dtype)
    if bits == 4:
        if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
            raise RecipeError(f"{cls}: int4 data must lie in [-8, 7]; got [{int(q.min())}, {int(q.max())}]")
        from ..formats import pack_nibbles

        data = pack_nibbles(_torch_xp(), (q.to(torch.uint8) & 0x0F).contiguous())
    else:
        data = q
    if isinstance(layout, PerBlock2D):
        raise LayoutError(f"{cls}: integer recipes hold blocks along the last axis only; got {layout!r}")
    group = layout.k if isinstance(layout, PerBlockK) else None
    kind = Int4Scaling if bits == 4 else Int8Scaling
    inferred = kind(group_size=group, symmetric=zp is None, convention="torchao")
    zero_point = None if zp is None else zp.to(torch.float32)
    return _finish(
        cls, inferred, layout, recipe, data, scale, shape=shape, dtype=dtype, zero_point=zero_point
    )


def _check_float_zero_point(cls: str, q: Any, zp: Any, dtype: Any) -> None:
    """torchao subtracts a float zero point in the output dtype; breccia in float32. Same only if exact."""
    torch = _torch()
    if dtype == torch.float32:
        return
    zp_full = _expand(zp, tuple(q.shape))
    low = (q.to(dtype) - zp_full.to(dtype)).to(torch.float32)
    if not torch.equal(low, q.to(torch.float32) - zp_full.to(torch.float32)):
        raise RecipeError(
            f"{cls}: its float zero points make torchao round q - zero_point to {dtype} before scaling, "
            "which breccia's float32 decode does not reproduce; convert the zero points to int8 first"
        )


def _read_int8_tensor(t: Any, recipe: Recipe | None) -> ScaledTensor:
    return _from_int("Int8Tensor", t, t.qdata, t.scale, t.zero_point, 8, t.dtype, recipe)


def _read_intx(t: Any, recipe: Recipe | None) -> ScaledTensor:
    bits = {_torch().int4: 4, _torch().int8: 8}.get(t.target_dtype)
    if bits is None:
        raise RecipeError(
            f"IntxUnpackedToInt8Tensor with target_dtype={t.target_dtype}: breccia holds int4 and int8 "
            "integers only (Int4Scaling, Int8Scaling)"
        )
    return _from_int("IntxUnpackedToInt8Tensor", t, t.qdata, t.scale, t.zero_point, bits, t.dtype, recipe)


def _read_int4_tensor(t: Any, recipe: Recipe | None) -> ScaledTensor:
    """``Int4Tensor`` (mslk, CUDA): packed low nibble first, scale/zero point stored ``(K/g, N)``."""
    torch = _torch()
    if bool(torch.any(t.zero_point != 0)):
        raise RecipeError(
            "Int4Tensor with zero points: it decodes as q * scale + zero_point with zero_point = "
            "min + 8 * scale already rounded to the scale dtype, which no breccia recipe reproduces "
            "bit for bit; quantize with IntxWeightOnlyConfig(weight_dtype=torch.int4) instead"
        )
    packed = t.qdata.view(torch.uint8)
    low = (packed & 0x0F).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    q = torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    q = torch.where(q > 7, q - 16, q)
    scale = t.scale.transpose(-2, -1)
    return _from_int("Int4Tensor", t, q, scale, None, 4, t.scale.dtype, recipe)


_FP8_NAMES = {"float8_e4m3fn": "E4M3", "float8_e5m2": "E5M2"}


def _read_float8(t: Any, recipe: Recipe | None) -> ScaledTensor:
    name = str(t.qdata.dtype).removeprefix("torch.")
    fp8 = _FP8_NAMES.get(name)
    if fp8 is None:
        raise RecipeError(f"Float8Tensor with {name} data: breccia holds float8_e4m3fn and float8_e5m2")
    shape = tuple(t.qdata.shape)
    scale = _grid_scale("Float8Tensor", t, t.scale, shape)
    layout = _layout_of("Float8Tensor", shape, tuple(scale.shape))
    inferred = Float8CurrentScaling(fp8_format=fp8, convention="torchao")
    return _finish("Float8Tensor", inferred, layout, recipe, t.qdata, scale, shape=shape, dtype=t.dtype)


def _row_major_scale(cls: str, t: Any, shape: tuple[int, ...]) -> Any:
    """The block scales as ``(*lead, M, K / block)``, unswizzled when they are stored swizzled."""
    if t.qdata.ndim >= 2 and t.qdata.stride(-2) < t.qdata.stride(-1):
        raise LayoutError(f"{cls} is transposed (column-major qdata); pass its .t(), which is row-major")
    grid = (*shape[:-1], shape[-1] // t.block_size)
    if not t.is_swizzled_scales:
        return t.scale.reshape(grid)
    from torchao.prototype.mx_formats.utils import from_blocked

    rows = math.prod(shape[:-1])
    return from_blocked(t.scale, rows, grid[-1]).reshape(grid)


def _read_mx(t: Any, recipe: Recipe | None) -> ScaledTensor:
    torch = _torch()
    if t.block_size != 32:
        raise LayoutError(f"MXTensor with block_size={t.block_size}: breccia's MX recipes use blocks of 32")
    elem = t.elem_dtype
    mode = getattr(getattr(t.act_quant_kwargs, "scaling_mode", None), "name", "FLOOR")
    # RCEIL's eager and CPU rule (torch.log2 in float32; scale_rules lists both RCEIL rules)
    rounding = {"RCEIL": "ceil_f32_log2", "EVEN": "even"}.get(mode, "floor")
    if elem in (torch.float8_e4m3fn, torch.float8_e5m2):
        fp8 = _FP8_NAMES[str(elem).removeprefix("torch.")]
        inferred: Recipe = MXFP8BlockScaling(fp8_format=fp8, scale_rounding=rounding)
    elif elem == torch.float4_e2m1fn_x2:
        inferred = MXFP4BlockScaling(scale_rounding=rounding)
    else:
        raise RecipeError(f"MXTensor with elem_dtype={elem}: breccia holds MX fp8 (E4M3, E5M2) and fp4 E2M1")
    shape = tuple(t.shape)
    scale = _row_major_scale("MXTensor", t, shape)
    data = t.qdata.view(torch.uint8) if elem == torch.float4_e2m1fn_x2 else t.qdata
    return _finish("MXTensor", inferred, PerBlockK(32), recipe, data, scale, shape=shape, dtype=t.dtype)


def _read_nvfp4(t: Any, recipe: Recipe | None) -> ScaledTensor:
    torch = _torch()
    if t.block_size != 16:
        raise LayoutError(f"NVFP4Tensor with block_size={t.block_size}: NVFP4 uses blocks of 16")
    shape = tuple(t.shape)
    scale = _row_major_scale("NVFP4Tensor", t, shape)
    g = t.per_tensor_scale
    if g is None:
        g = torch.ones((), dtype=torch.float32, device=scale.device)
    elif g.ndim != 0:
        raise ShapeError(
            f"NVFP4Tensor with a per-expert scale of shape {tuple(g.shape)}: breccia's NVFP4 has one "
            "global scale per tensor; split the experts (t[i]) first"
        )
    data = t.qdata.view(torch.uint8)
    return _finish(
        "NVFP4Tensor", NVFP4BlockScaling(), PerBlockK(16), recipe, data, scale, shape=shape,
        dtype=t.dtype, global_scale=g.to(torch.float32),
    )


def _read_affine_quantized(t: Any, recipe: Recipe | None) -> ScaledTensor:
    """``AffineQuantizedTensor`` of torchao < 0.15 (plain layouts): read through ``get_plain()``."""
    torch = _torch()
    impl = getattr(t, "tensor_impl", None)
    if impl is None:
        raise RecipeError("AffineQuantizedTensor without tensor_impl: this torchao has only the empty stub")
    domain = getattr(getattr(t, "zero_point_domain", None), "name", "INT")
    q, scale, zp = impl.get_plain()
    if q.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        fp8 = _FP8_NAMES[str(q.dtype).removeprefix("torch.")]
        inferred = Float8CurrentScaling(fp8_format=fp8, convention="torchao")
        shape = tuple(q.shape)
        scale = _grid_scale("AffineQuantizedTensor", t, scale, shape)
        layout = _layout_of("AffineQuantizedTensor", shape, tuple(scale.shape))
        return _finish(
            "AffineQuantizedTensor", inferred, layout, recipe, q, scale, shape=shape, dtype=t.dtype
        )
    bounds = (t.quant_min, t.quant_max)
    if None in bounds and q.dtype == torch.int8:
        bounds = (-128, 127)  # torchao's default: the int8 range
    if domain not in ("INT", "NONE") or bounds not in ((-8, 7), (-128, 127)):
        raise RecipeError(
            f"AffineQuantizedTensor with zero_point_domain={domain} and range {list(bounds)}: breccia "
            "holds signed int4/int8 with integer zero points only"
        )
    bits = 4 if bounds[1] == 7 else 8
    zp = None if domain == "NONE" else zp
    return _from_int("AffineQuantizedTensor", t, q.to(torch.int8), scale, zp, bits, t.dtype, recipe)


_READERS = {
    "Int8Tensor": _read_int8_tensor,
    "IntxUnpackedToInt8Tensor": _read_intx,
    "Int4Tensor": _read_int4_tensor,
    "Float8Tensor": _read_float8,
    "MXTensor": _read_mx,
    "NVFP4Tensor": _read_nvfp4,
    "AffineQuantizedTensor": _read_affine_quantized,
}

_UNSUPPORTED = {
    "NF4Tensor": "NF4 codes index a 16-entry table of normal-float quantiles (high nibble first) under "
    "double-quantized scales; breccia has no NF4 element format or recipe",
    "Int4PreshuffledTensor": "its int4 codes are shuffled for an mslk kernel",
    "Int4PlainInt32Tensor": "its int4 codes are packed into int32 words for a kernel",
    "Int4TilePackedTo4dTensor": "its int4 codes are tile-packed for tinygemm",
    "IntxOpaqueTensor": "its codes are packed for an opaque CPU kernel",
}


def is_torchao(value: Any) -> bool:
    """Whether ``value`` is an instance of a torchao class (one from the ``torchao`` package in its
    MRO), known to breccia or not; imports neither torch nor torchao. A state dict's reader asks this
    before :func:`from_torchao`, which then reads the tensor or says why it cannot."""
    return any(c.__module__.startswith("torchao") for c in type(value).__mro__)


def _torchao_class(x: Any) -> str | None:
    """The name of the torchao tensor class ``x`` is (or derives from), if any."""
    for klass in type(x).__mro__:
        known = klass.__name__ in _READERS or klass.__name__ in _UNSUPPORTED
        if known and klass.__module__.startswith("torchao"):
            return klass.__name__
    return None


def from_torchao(t: Any, recipe: Recipe | None = None) -> ScaledTensor:
    """The ScaledTensor holding the same codes and scales as torchao tensor ``t``.

    ``bc.dequantize(from_torchao(t))`` equals ``t.dequantize()`` bit for bit (same dtype, ``t.dtype``).
    The recipe is inferred (see the module docstring); ``recipe=`` replaces it with one that stores
    the same bits, e.g. another ``convention`` or a ``group_size`` equal to the inferred block.
    """
    name = _torchao_class(t)
    if name is None:
        raise DTypeError(
            f"from_torchao takes a torchao tensor subclass ({', '.join(sorted(_READERS))}); "
            f"got {type(t).__module__}.{type(t).__qualname__}"
        )
    if name in _UNSUPPORTED:
        raise RecipeError(f"{name}: {_UNSUPPORTED[name]}; breccia cannot hold it bit for bit")
    return _READERS[name](t, recipe)


# --- breccia -> torchao ----------------------------------------------------------------------------


def _block_size(cls: str, st: ScaledTensor) -> list[int]:
    if not st.shape:
        raise ShapeError(f"torchao's {cls} needs a tensor of at least one dimension; got a 0-d ScaledTensor")
    block = list(st.layout.block_shape(st.shape))
    if any(d % b for d, b in zip(st.shape, block)):
        raise LayoutError(
            f"torchao's {cls} needs blocks that divide the shape; {st.layout!r} over {st.shape} leaves "
            "partial edge blocks"
        )
    return block


def _int_zero_point(st: ScaledTensor) -> Any:
    """breccia's float32 integer zero points as torchao's int8 ones (they must be whole numbers)."""
    torch = _torch()
    zp = st.zero_point
    whole = torch.equal(zp, torch.round(zp)) and bool(torch.all((zp >= -128) & (zp <= 127)))
    if not whole:
        raise RecipeError("torchao stores integer zero points as int8; these are not whole numbers in range")
    return zp.to(torch.int8)


def _to_int(st: ScaledTensor) -> Any:
    torch = _torch()
    from torchao.quantization import Int8Tensor, IntxUnpackedToInt8Tensor

    if st.recipe.zero_point_kind == "float":
        raise RecipeError(
            f"{st.recipe!r} decodes as (q + 2**(bits-1)) * s + zero_point (MLX's affine form), which no "
            "torchao tensor computes; requantize to convention='torchao' (integer zero point) first"
        )
    bits = st.recipe.element_format.bits
    cls = "Int8Tensor" if bits == 8 and st.zero_point is None else "IntxUnpackedToInt8Tensor"
    block = _block_size(cls, st)
    if cls == "Int8Tensor":
        return Int8Tensor(st.data, st.scale, block, st.dtype)
    if bits == 4:
        from ..formats import unpack_nibbles

        codes = unpack_nibbles(_torch_xp(), st.data, st.shape[-1]).to(torch.int8)
        q = torch.where(codes > 7, codes - 16, codes)
    else:
        q = st.data
    if st.zero_point is None:
        zp = torch.zeros(st.scale.shape, dtype=torch.int8, device=q.device)
    else:
        zp = _int_zero_point(st)
    target = torch.int4 if bits == 4 else torch.int8
    return IntxUnpackedToInt8Tensor(q, st.scale, zp, target, tuple(block), st.dtype, None)


def _to_float8(st: ScaledTensor) -> Any:
    from torchao.quantization import Float8Tensor

    block = _block_size("Float8Tensor", st)
    return Float8Tensor(st.data, st.scale.to(_torch().float32), block_size=block, dtype=st.dtype)


def _to_mx(st: ScaledTensor) -> Any:
    """An ``MXTensor`` with plain scales. torchao runs MX linears only with activation quantization, so
    the tensor carries MX activation kwargs (same format, the recipe's scale rounding, emulated gemm)."""
    torch = _torch()
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import MXTensor, QuantizeTensorToMXKwargs
    from torchao.quantization.quantize_.common import KernelPreference

    _block_size("MXTensor", st)
    fmt = st.recipe.element_format.name
    elem = {"E4M3": torch.float8_e4m3fn, "E5M2": torch.float8_e5m2, "E2M1": torch.float4_e2m1fn_x2}[fmt]
    modes = {"ceil": "RCEIL", "ceil_f32_log2": "RCEIL", "even": "EVEN", "floor": "FLOOR"}
    if st.recipe.scale_rounding not in modes:
        raise RecipeError(
            f"torchao's MXTensor has no {st.recipe.scale_rounding!r} E8M0 rounding (it has FLOOR, RCEIL and "
            "EVEN); requantize with scale_rounding='floor', 'ceil' or 'even' first"
        )
    mode = getattr(ScaleCalculationMode, modes[st.recipe.scale_rounding])
    act = QuantizeTensorToMXKwargs(
        elem_dtype=elem, block_size=32, scaling_mode=mode, kernel_preference=KernelPreference.EMULATED,
        is_swizzled_scales=False,
    )
    return MXTensor(st.data, st.scale, elem, 32, st.dtype, KernelPreference.EMULATED, act, False)


def _check_multiplier_convention(st: ScaledTensor) -> None:
    """Refuse compressed-tensors' NVFP4 (its global scale divides; the peer's multiplies)."""
    if st.recipe.global_scale_divides:
        raise RecipeError(
            f"{st.recipe!r} divides by its global scale, the peer multiplies: translate it first with "
            "breccia.checkpoints.modelopt.to_multiplier_convention(st)"
        )


def _to_nvfp4(st: ScaledTensor) -> Any:
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

    _block_size("NVFP4Tensor", st)
    _check_multiplier_convention(st)
    if len(st.shape) not in (2, 3):
        raise ShapeError(f"torchao's NVFP4Tensor holds 2-D or 3-D tensors; got shape {st.shape}")
    return NVFP4Tensor(st.data, st.scale, 16, st.dtype, per_tensor_scale=st.global_scale.to(_torch().float32))


def to_torchao(st: ScaledTensor) -> Any:
    """The torchao tensor holding ``st``'s codes and scales; its ``dequantize()`` equals breccia's.

    INT8 -> ``Int8Tensor`` (``IntxUnpackedToInt8Tensor`` with an int8 zero point when asymmetric:
    Int8Tensor's linear ignores zero points); INT4 -> ``IntxUnpackedToInt8Tensor``; FP8 ->
    ``Float8Tensor``; MXFP8/MXFP4 -> ``MXTensor``; NVFP4 -> ``NVFP4Tensor``. Each works as an
    ``nn.Linear`` weight where torchao supports it. A non-torch ScaledTensor moves to torch first.
    torchao needs whole blocks (every block size divides its axis) and 1-D or larger tensors.
    """
    if not isinstance(st, ScaledTensor):
        raise DTypeError(f"to_torchao needs a ScaledTensor; got {type(st).__name__}")
    _torchao()
    st = st.to("torch")
    if st.recipe.scale_format == ScaleFormat.E8M0:
        return _to_mx(st)
    if st.recipe.has_global_scale:
        return _to_nvfp4(st)
    if st.recipe.element_format.kind == "int":
        return _to_int(st)
    return _to_float8(st)


# --- whole models ----------------------------------------------------------------------------------


def from_torchao_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict with every torchao tensor replaced by its ScaledTensor; everything else unchanged.

    ``model.state_dict()`` of a ``quantize_``-d model goes in; errors name the offending key.
    """
    out: dict[str, Any] = {}
    for name, value in state_dict.items():
        if _torchao_class(value) is None:
            out[name] = value
            continue
        try:
            out[name] = from_torchao(value)
        except BrecciaError as exc:
            raise type(exc)(f"{name}: {exc}") from exc
    return out


def to_torchao_state_dict(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`from_torchao_state_dict`: ScaledTensors become torchao tensors (any
    framework), plain numpy/jax/mlx arrays become torch tensors, torch tensors pass through.

    Load the result with ``model.load_state_dict(sd, assign=True)``.
    """
    from ..backends import framework_of, get_backend, host_array

    out: dict[str, Any] = {}
    for name, value in tensors.items():
        try:
            if isinstance(value, ScaledTensor):
                out[name] = to_torchao(value)
            elif framework_of(value) is not None and not get_backend("torch").is_array(value):
                out[name] = get_backend("torch").from_host(host_array(value))
            else:
                out[name] = value
        except BrecciaError as exc:
            raise type(exc)(f"{name}: {exc}") from exc
    return out
