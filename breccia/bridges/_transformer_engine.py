"""TransformerEngine 2.x: its quantized tensors <-> ScaledTensor, bits unchanged.

TransformerEngine (TE) keeps FP8/FP4 codes as ``uint8`` buffers beside their dequantization
multipliers (``scale_inv``), padded and sometimes reordered for cuBLAS. What each class holds, and
what breccia reads (``M = prod(shape[:-1])``, ``K = shape[-1]``, row-wise buffers)::

    Float8Tensor            _data [*shape] u8, _scale_inv (1,) f32            -> PerTensor()
    MXFP8Tensor             _rowwise_scale_inv u8 E8M0 (ru(M,128), ru(K/32,4)) -> PerBlockK(32)
    Float8BlockwiseQTensor  1x128:   _rowwise_scale_inv f32 (ceil(K/128), ru(M,4)), transposed
                            128x128: _rowwise_scale_inv f32 (ceil(M/128), ru(ceil(K/128),4))
    NVFP4Tensor             _rowwise_data (M, K/2) u8, element 2i in the low nibble,
                            _rowwise_scale_inv u8 E4M3 (ru(M,128), ru(K/16,4)), _amax_rowwise (1,) f32

(``ru(n, m)`` rounds ``n`` up to a multiple of ``m``.) breccia drops the padding and undoes the
transpose; when ``_with_gemm_swizzled_scales`` is set (MXFP8, NVFP4), it also undoes cuBLAS's
128x4 scale swizzle: inside each tile of 128 rows x 4 scale columns, compact entry ``(r, c)`` sits at
byte ``(r % 32) * 16 + (r // 32) * 4 + c``, tiles in row-major order.

Dequantization is the same arithmetic on both sides, so values agree bit for bit::

    FP8, MXFP8, blockwise:  x = fp32(code) * scale_inv            (rounded once, then cast)
    NVFP4 (TE):             x = fp32(code) * (e4m3 * amax * (1 / 2688))

NVFP4 is the exception: breccia stores ``global_scale = amax / 2688`` (``2688 = 6 * 448``) and
computes ``fp32(code) * (e4m3 * global_scale)``, which rounds in another order, so the two agree to
a few float32 roundings (relative ``2**-20``), not bit for bit; and ``amax`` comes back from
``global_scale * 2688`` within one float32 ulp.

TE exists only on Linux with an NVIDIA GPU and CUDA. Without it, both functions raise an
ImportError with install instructions; importing this module never imports TE or torch.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import LayoutError, MissingDependencyError, RecipeError, ShapeError
from ..formats import NVFP4_GLOBAL_DIVISOR
from ..layouts import PerBlock2D, PerBlockK, PerTensor
from ..quantize import from_buffer
from ..recipes import (
    DelayedScaling,
    Float8BlockScaling,
    Float8CurrentScaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
)
from ..tensor import ScaledTensor

__all__ = ["from_transformer_engine", "to_transformer_engine"]

_TE_RECIPES = (
    "DelayedScaling or Float8CurrentScaling with PerTensor() (Float8Tensor), MXFP8BlockScaling "
    "(MXFP8Tensor), Float8BlockScaling with block_k=128 and block_m 1 or 128 (Float8BlockwiseQTensor), "
    "NVFP4BlockScaling (NVFP4Tensor)"
)
_INSTALL = (
    "TransformerEngine is not installed; it needs Linux, an NVIDIA GPU and CUDA. Install it with: "
    "pip install 'breccia[te]' (its PyTorch extension builds from source against your torch: "
    "pip install --no-build-isolation 'transformer_engine[pytorch]'). "
    "docs/bridges/transformer_engine.md gives an offline route"
)


def _import_te() -> Any:
    """``transformer_engine_torch`` (tex), after ``transformer_engine.pytorch`` (import order matters)."""
    try:
        import transformer_engine.pytorch  # noqa: F401
        import transformer_engine_torch as tex
    except (ImportError, AttributeError, OSError, RuntimeError) as exc:
        # a partial or CPU-only install fails inside TE's import (AttributeError, a missing CUDA library)
        raise MissingDependencyError(f"{_INSTALL} ({type(exc).__name__}: {exc})") from exc
    return tex


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _ceil_div(a, b) * b


def _class_names(t: Any) -> set[str]:
    return {k.__name__ for k in type(t).__mro__}


def _fp8_format(te_dtype: Any) -> str:
    """"E4M3" / "E5M2" from TE's ``DType`` (either enum TE uses)."""
    name = getattr(te_dtype, "name", str(te_dtype)).rsplit(".", 1)[-1]
    formats = {"kFloat8E4M3": "E4M3", "kFloat8E5M2": "E5M2"}
    if name not in formats:
        raise RecipeError(f"TransformerEngine FP8 dtype must be kFloat8E4M3 or kFloat8E5M2; got {name}")
    return formats[name]


def _logical_dtype(t: Any) -> Any:
    return getattr(t, "_dtype", None) or t.dtype


def _unswizzle(swizzled: Any, rows: int, cols: int) -> Any:
    """Compact ``(rows, cols)`` scales from cuBLAS's 128x4-tile swizzle (rows % 128 == cols % 4 == 0).

    Swizzled byte ``((tm * T + tk) * 32 + r) * 16 + a * 4 + c`` holds compact entry
    ``(tm * 128 + a * 32 + r, tk * 4 + c)``; the permutation (0, 3, 2, 1, 4) is its own inverse.
    """
    if swizzled.numel() != rows * cols:
        raise ShapeError(f"swizzled scales hold {swizzled.numel()} bytes; expected {rows} x {cols}")
    tiles = swizzled.reshape(rows // 128, cols // 4, 32, 4, 4)
    return tiles.permute(0, 3, 2, 1, 4).reshape(rows, cols)



def _padded_rowwise_scales(t: Any, rows: int, cols: int, block: int, what: str) -> Any:
    """The compact ``(rows, cols)`` scales of an MXFP8/NVFP4 tensor (padding dropped, unswizzled)."""
    scale = t._rowwise_scale_inv
    padded = (_round_up(rows, 128), _round_up(cols, 4))
    if getattr(t, "_with_gemm_swizzled_scales", False):
        scale = _unswizzle(scale, *padded)
    elif tuple(scale.shape) != padded:
        raise ShapeError(
            f"{what} row-wise scales have shape {tuple(scale.shape)}; a tensor of {rows} rows and "
            f"{cols * block} columns needs {padded}"
        )
    return scale[:rows, :cols]


def _needs_rowwise(t: Any, what: str) -> Any:
    data = getattr(t, "_rowwise_data", None)
    if data is None:
        raise LayoutError(
            f"this {what} holds only column-wise data (blocks down the columns), which breccia's "
            f"{what} recipe does not describe; quantize with rowwise=True"
        )
    return data


def _from_float8(t: Any) -> tuple[Any, Any, Recipe, Any, tuple[int, ...], dict]:
    shape = tuple(int(d) for d in t.size())
    data = t._data
    if data is None:
        if t._transpose is None or t._transpose_invalid:
            raise LayoutError("this Float8Tensor holds neither row-wise data nor a valid transpose")
        data = t._transpose.movedim(0, -1).contiguous() if len(shape) > 1 else t._transpose
    fmt = _fp8_format(t._fp8_dtype)
    quantizer = type(getattr(t, "_quantizer", None)).__name__
    if quantizer == "Float8Quantizer":
        recipe: Recipe = DelayedScaling(fp8_format=fmt)
    elif quantizer == "Float8CurrentScalingQuantizer":
        q = t._quantizer
        recipe = Float8CurrentScaling(
            fp8_format=fmt, power_2_scale=bool(q.force_pow_2_scales), amax_epsilon=float(q.amax_epsilon)
        )
    else:
        recipe = Float8CurrentScaling(fp8_format=fmt)
    scale = t._scale_inv.reshape((1,) * len(shape))
    return data, scale, recipe, PerTensor(), shape, {}


def _from_mxfp8(t: Any) -> tuple[Any, Any, Recipe, Any, tuple[int, ...], dict]:
    shape = tuple(int(d) for d in t.size())
    data = _needs_rowwise(t, "MXFP8Tensor")
    k = shape[-1]
    if k % 32:
        raise ShapeError(f"an MXFP8Tensor's last axis must be a multiple of 32; got shape {shape}")
    rows = math.prod(shape[:-1])
    scale = _padded_rowwise_scales(t, rows, k // 32, 32, "MXFP8Tensor")
    recipe = MXFP8BlockScaling(fp8_format=_fp8_format(t._fp8_dtype), scale_rounding="ceil")
    return data, scale.reshape(*shape[:-1], k // 32), recipe, PerBlockK(32), shape, {}


def _from_blockwise(t: Any) -> tuple[Any, Any, Recipe, Any, tuple[int, ...], dict]:
    shape = tuple(int(d) for d in t.size())
    if len(shape) < 1:
        raise ShapeError("a Float8BlockwiseQTensor must have at least one dimension")
    fmt = _fp8_format(t._fp8_dtype)
    q = getattr(t, "_quantizer", None)
    settings = {
        "fp8_format": fmt,
        "power_2_scale": bool(getattr(q, "force_pow_2_scales", False)),
        "amax_epsilon": float(getattr(q, "amax_epsilon", 0.0)),
    }
    rows, k = math.prod(shape[:-1]), shape[-1]
    two_d = bool(t._is_2D_scaled)
    if two_d:
        _check_2d_rows(shape)
    if t._rowwise_data is not None:
        data, s = t._rowwise_data, t._rowwise_scale_inv
        if two_d:  # (ceil(M/128), ru(ceil(K/128), 4)), row-major
            scale = s[: _ceil_div(rows, 128), : _ceil_div(k, 128)]
            recipe, layout = Float8BlockScaling(block_k=128, block_m=128, **settings), PerBlock2D(128, 128)
            return data, _grid_2d(scale, shape), recipe, layout, shape, {}
        scale = s[:, :rows].transpose(0, 1)  # (ceil(K/128), ru(M, 4)) -> (M, ceil(K/128))
        recipe = Float8BlockScaling(block_k=128, block_m=1, **settings)
        return data, scale.reshape(*shape[:-1], _ceil_div(k, 128)), recipe, PerBlockK(128), shape, {}
    if t._columnwise_data is None:
        raise LayoutError("this Float8BlockwiseQTensor holds neither row-wise nor column-wise data")
    # Column-wise data is the transpose: (K, *shape[:-1]); scales index (block of M, k) or tiles.
    data = t._columnwise_data.movedim(0, -1).contiguous() if len(shape) > 1 else t._columnwise_data
    s = t._columnwise_scale_inv
    if two_d:  # (ceil(K/128), ru(ceil(M/128), 4)) -> (ceil(M/128), ceil(K/128))
        scale = s[: _ceil_div(k, 128), : _ceil_div(rows, 128)].transpose(0, 1)
        recipe, layout = Float8BlockScaling(block_k=128, block_m=128, **settings), PerBlock2D(128, 128)
        return data, _grid_2d(scale, shape), recipe, layout, shape, {}
    # 1x128 blocks of the transpose are 128x1 blocks of the tensor: (ceil(M/128), ru(K, 4)).
    if len(shape) != 2:
        raise ShapeError(
            f"a column-wise-only 1x128 Float8BlockwiseQTensor of shape {shape} has 128x1 blocks that run "
            "across its leading axes; view it as 2-D first"
        )
    scale = s[:, :k]
    recipe = Float8BlockScaling(block_k=1, block_m=128, **settings)
    return data, scale, recipe, PerBlock2D(128, 1), shape, {}


def _check_2d_rows(shape: tuple[int, ...]) -> None:
    """TE tiles the flattened ``(M, K)`` view; breccia tiles the last two axes: equal when tiles don't
    run across a leading axis, i.e. for 2-D tensors or when ``shape[-2]`` is a multiple of 128."""
    if len(shape) > 2 and shape[-2] % 128:
        raise ShapeError(
            f"TE's 128x128 tiles of a tensor of shape {shape} run across its leading axes "
            f"(shape[-2] = {shape[-2]} is not a multiple of 128); view it as 2-D first"
        )
    if len(shape) < 2:
        raise ShapeError(f"128x128 tiles need a tensor of at least 2 dimensions; got shape {shape}")


def _grid_2d(scale: Any, shape: tuple[int, ...]) -> Any:
    return scale.reshape(*shape[:-2], _ceil_div(shape[-2], 128), _ceil_div(shape[-1], 128))


def _from_nvfp4(t: Any) -> tuple[Any, Any, Recipe, Any, tuple[int, ...], dict]:
    shape = tuple(int(d) for d in t.size())
    data = _needs_rowwise(t, "NVFP4Tensor")
    if getattr(t, "_row_scaled_nvfp4", False) or getattr(t, "_nvfp4_use_4over6", False):
        raise RecipeError(
            "this NVFP4Tensor uses a per-row amax or 4over6 block selection; breccia's "
            "NVFP4BlockScaling holds one amax per tensor and the 448-bounded E4M3 scale"
        )
    k = shape[-1]
    if k % 16:
        raise ShapeError(f"an NVFP4Tensor's last axis must be a multiple of 16; got shape {shape}")
    rows = math.prod(shape[:-1])
    scale = _padded_rowwise_scales(t, rows, k // 16, 16, "NVFP4Tensor")
    global_scale = (t._amax_rowwise.reshape(()).float() / NVFP4_GLOBAL_DIVISOR).contiguous()
    return (
        data,
        scale.reshape(*shape[:-1], k // 16),
        NVFP4BlockScaling(),
        PerBlockK(16),
        shape,
        {"global_scale": global_scale},
    )


_READERS = {
    "Float8TensorStorage": _from_float8,
    "MXFP8TensorStorage": _from_mxfp8,
    "Float8BlockwiseQTensorStorage": _from_blockwise,
    "NVFP4TensorStorage": _from_nvfp4,
}


def from_transformer_engine(t: Any, *, recipe: Recipe | None = None) -> ScaledTensor:
    """A TE ``Float8Tensor``, ``MXFP8Tensor``, ``Float8BlockwiseQTensor`` or ``NVFP4Tensor`` (or its
    ``*Storage`` form) as a torch ScaledTensor on the same device.

    The data buffer is shared (viewed as ``float8_*``); scales are views where TE stores them
    unpadded, otherwise small copies with the padding dropped, the transpose undone and the GEMM
    swizzle undone. The recipe comes from the tensor's quantizer (``Float8Quantizer`` ->
    ``DelayedScaling``; ``Float8CurrentScalingQuantizer`` -> ``Float8CurrentScaling`` with its
    ``power_2_scale``/``amax_epsilon``; MXFP8 -> ``MXFP8BlockScaling(scale_rounding="ceil")``, TE's
    rule); ``recipe=`` overrides it with another recipe of the same element and scale formats.
    """
    _import_te()
    names = _class_names(t)
    reader = next((fn for name, fn in _READERS.items() if name in names), None)
    if reader is None:
        raise RecipeError(
            f"from_transformer_engine takes a TE Float8Tensor, MXFP8Tensor, Float8BlockwiseQTensor or "
            f"NVFP4Tensor; got {type(t).__module__}.{type(t).__qualname__}"
        )
    data, scale, found, layout, shape, extra = reader(t)
    if recipe is not None:
        _check_override(recipe, found)
        found = recipe
    return from_buffer(data, scale, found, layout, shape=shape, dtype=_logical_dtype(t), **extra)


def _check_override(recipe: Recipe, found: Recipe) -> None:
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"recipe must be a breccia recipe; got {type(recipe).__name__}")
    if (recipe.element_format, recipe.scale_format) != (found.element_format, found.scale_format):
        raise RecipeError(
            f"recipe={recipe!r} stores {recipe.element_format} with {recipe.scale_format} scales, but "
            f"this TE tensor holds {found.element_format} with {found.scale_format} scales ({found!r})"
        )


# --- breccia -> TE ---------------------------------------------------------------------------------


def to_transformer_engine(st: ScaledTensor) -> Any:
    """``st`` as the TE tensor class that holds its recipe, on ``st``'s device (moved to torch first).

    ``DelayedScaling`` / ``Float8CurrentScaling`` with ``PerTensor()`` -> ``Float8Tensor`` (with a
    ``Float8Quantizer`` / ``Float8CurrentScalingQuantizer``); ``MXFP8BlockScaling`` ->
    ``MXFP8Tensor`` (compact scales, padded to TE's ``(ru(M,128), ru(K/32,4))``);
    ``Float8BlockScaling(block_k=128, block_m=1 | 128)`` -> ``Float8BlockwiseQTensor`` (TE's
    transposed / padded scale layouts); ``NVFP4BlockScaling`` -> ``NVFP4Tensor`` with
    ``amax = global_scale * 2688``. Only row-wise buffers are written; padding bytes are 0. Any other
    recipe or layout raises a RecipeError naming what TE can hold.
    """
    tex = _import_te()
    import torch

    if not isinstance(st, ScaledTensor):
        raise RecipeError(f"to_transformer_engine needs a ScaledTensor; got {type(st).__name__}")
    st = st.to("torch")
    recipe = st.recipe
    if isinstance(recipe, (DelayedScaling, Float8CurrentScaling)) and st.layout == PerTensor():
        return _to_float8(st, tex, torch)
    if isinstance(recipe, MXFP8BlockScaling):
        return _to_mxfp8(st, tex, torch)
    if isinstance(recipe, Float8BlockScaling) and st.layout in (PerBlockK(128), PerBlock2D(128, 128)):
        return _to_blockwise(st, tex, torch)
    if isinstance(recipe, NVFP4BlockScaling) and not recipe.global_scale_divides:
        return _to_nvfp4(st, tex, torch)
    raise RecipeError(f"TransformerEngine cannot hold {recipe!r} with {st.layout!r}; it holds {_TE_RECIPES}")


def _codes(st: ScaledTensor) -> Any:
    from ..backends import get_backend

    return get_backend("torch").to_codes(st.data, st.recipe.element_format).contiguous()


def _te_fp8_dtype(tex: Any, st: ScaledTensor) -> Any:
    return getattr(tex.DType, f"kFloat8{st.recipe.element_format.name}")


def _to_float8(st: ScaledTensor, tex: Any, torch: Any) -> Any:
    from transformer_engine.pytorch.tensor.float8_tensor import (
        Float8CurrentScalingQuantizer,
        Float8Quantizer,
        Float8Tensor,
    )

    data = _codes(st)
    scale_inv = st.scale.reshape(1).to(torch.float32).contiguous()
    fp8_dtype = _te_fp8_dtype(tex, st)
    if isinstance(st.recipe, DelayedScaling):
        quantizer: Any = Float8Quantizer(
            scale=torch.reciprocal(scale_inv),
            amax=torch.zeros(1, dtype=torch.float32, device=data.device),
            fp8_dtype=fp8_dtype,
            rowwise=True,
            columnwise=False,
        )
    else:
        quantizer = Float8CurrentScalingQuantizer(
            fp8_dtype,
            data.device,
            rowwise=True,
            columnwise=False,
            force_pow_2_scales=st.recipe.power_2_scale,
            amax_epsilon=float(st.recipe.amax_epsilon),
        )
    return Float8Tensor(
        shape=st.shape,
        dtype=st.dtype,
        data=data,
        fp8_scale_inv=scale_inv,
        fp8_dtype=fp8_dtype,
        quantizer=quantizer,
        device=data.device,
    )


def _padded(torch: Any, compact: Any, shape: tuple[int, int]) -> Any:
    out = torch.zeros(shape, dtype=compact.dtype, device=compact.device)
    out[: compact.shape[0], : compact.shape[1]] = compact
    return out


def _rows_cols(st: ScaledTensor, block: int) -> tuple[int, int]:
    if not st.shape:
        raise ShapeError(f"TE's {st.recipe.name} tensors need at least one dimension")
    k = st.shape[-1]
    if k % block:
        raise ShapeError(
            f"TE's {st.recipe.name} tensors need a last axis that is a multiple of {block}; "
            f"got shape {st.shape}"
        )
    return math.prod(st.shape[:-1]), k // block


def _to_mxfp8(st: ScaledTensor, tex: Any, torch: Any) -> Any:
    from transformer_engine.pytorch.tensor.mxfp8_tensor import MXFP8Quantizer, MXFP8Tensor

    rows, cols = _rows_cols(st, 32)
    data = _codes(st)
    scale = st.scale.reshape(rows, cols).view(torch.uint8)
    fp8_dtype = _te_fp8_dtype(tex, st)
    return MXFP8Tensor(
        shape=st.shape,
        dtype=st.dtype,
        rowwise_data=data,
        rowwise_scale_inv=_padded(torch, scale, (_round_up(rows, 128), _round_up(cols, 4))),
        columnwise_data=None,
        columnwise_scale_inv=None,
        fp8_dtype=fp8_dtype,
        quantizer=MXFP8Quantizer(fp8_dtype, rowwise=True, columnwise=False),
        with_gemm_swizzled_scales=False,
        device=data.device,
    )


def _to_blockwise(st: ScaledTensor, tex: Any, torch: Any) -> Any:
    from transformer_engine.pytorch.tensor.float8_blockwise_tensor import (
        Float8BlockQuantizer,
        Float8BlockwiseQTensor,
    )

    recipe: Float8BlockScaling = st.recipe  # type: ignore[assignment]
    shape = st.shape
    rows, k = math.prod(shape[:-1]), shape[-1]
    scale = st.scale.to(torch.float32)
    two_d = recipe.block_m == 128
    if two_d:
        _check_2d_rows(shape)
        mb, kb = _ceil_div(rows, 128), _ceil_div(k, 128)
        te_scale = _padded(torch, scale.reshape(mb, kb), (mb, _round_up(kb, 4)))
    else:
        kb = _ceil_div(k, 128)
        te_scale = _padded(torch, scale.reshape(rows, kb).transpose(0, 1), (kb, _round_up(rows, 4)))
    fp8_dtype = _te_fp8_dtype(tex, st)
    quantizer = Float8BlockQuantizer(
        fp8_dtype,
        rowwise=True,
        columnwise=False,
        amax_epsilon=float(recipe.amax_epsilon),
        force_pow_2_scales=recipe.power_2_scale,
        block_scaling_dim=2 if two_d else 1,
    )
    data = _codes(st)
    return Float8BlockwiseQTensor(
        shape=shape,
        dtype=st.dtype,
        rowwise_data=data,
        rowwise_scale_inv=te_scale,
        columnwise_data=None,
        columnwise_scale_inv=None,
        fp8_dtype=fp8_dtype,
        quantizer=quantizer,
        is_2D_scaled=two_d,
        device=data.device,
    )


def _to_nvfp4(st: ScaledTensor, tex: Any, torch: Any) -> Any:
    from transformer_engine.pytorch.tensor.nvfp4_tensor import NVFP4Quantizer, NVFP4Tensor

    rows, cols = _rows_cols(st, 16)
    data = _codes(st)
    scale = st.scale.reshape(rows, cols).view(torch.uint8)
    amax = (st.global_scale.to(torch.float32) * NVFP4_GLOBAL_DIVISOR).reshape(1)
    return NVFP4Tensor(
        shape=st.shape,
        dtype=st.dtype,
        rowwise_data=data,
        rowwise_scale_inv=_padded(torch, scale, (_round_up(rows, 128), _round_up(cols, 4))),
        columnwise_data=None,
        columnwise_scale_inv=None,
        amax_rowwise=amax,
        amax_columnwise=None,
        fp4_dtype=tex.DType.kFloat4E2M1,
        quantizer=NVFP4Quantizer(rowwise=True, columnwise=False),
        with_gemm_swizzled_scales=False,
        device=data.device,
    )
