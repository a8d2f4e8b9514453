"""MLX: ``mx.quantized_matmul`` on weights in MLX's own packed modes.

MLX packs its quantized weights LSB-first into uint32 words; breccia packs 4-bit codes two per byte,
element ``2i`` in the low nibble, and 8-bit codes one per byte. On a little-endian machine both are the
same bytes, so a uint32 view of breccia's data is MLX's ``w`` without a copy. The modes:

=========================================  ======  =====  ==========  =============================
breccia weight                             mode    bits   group       scales / biases
=========================================  ======  =====  ==========  =============================
``MXFP4BlockScaling``, ``PerBlockK(32)``   mxfp4   4      32          E8M0 bytes
``MXFP8BlockScaling("E4M3")``              mxfp8   8      32          E8M0 bytes
``NVFP4BlockScaling``, ``PerBlockK(16)``   nvfp4   4      16          E4M3 bytes; ``global_scale``
                                                                      multiplies the product
``Int4Scaling/Int8Scaling(convention=      affine  4, 8   32/64/128   fp32 scales, ``zero_point``
"mlx")``                                                              as biases; codes are stored
                                                                      signed, MLX's unsigned:
                                                                      ``q_u = q + 2**(bits-1)``
                                                                      (flip each code's top bit)
=========================================  ======  =====  ==========  =============================

MLX dequantizes the weight in the input's dtype (float32 here: the left operand is dequantized or cast
to float32 first) and accumulates in float32, so the error bound is the reference path's, plus one
rounding of the NVFP4 global scale (MLX applies it after the product).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from ..choices import FP8Format, RecipeConvention
from ..formats import offset_binary_flip
from ..layouts import PerBlockK
from ..recipes import Int4Scaling, Int8Scaling, MXFP4BlockScaling, MXFP8BlockScaling, NVFP4BlockScaling
from ..tensor import ScaledTensor

__all__ = ["fast_matmul", "mlx_weight"]

_AFFINE_GROUPS = (32, 64, 128)


def mlx_weight(st: ScaledTensor) -> tuple[Any, Any, Any, str, int, int] | None:
    """``(w, scales, biases, mode, group_size, bits)`` for ``mx.quantized_matmul``, or None."""
    recipe, layout = st.recipe, st.layout
    if len(st.shape) != 2 or not isinstance(layout, PerBlockK):
        return None
    g = layout.k
    data = st.data
    if isinstance(recipe, MXFP4BlockScaling) and g == 32:
        mode, bits = "mxfp4", 4
    elif isinstance(recipe, MXFP8BlockScaling) and recipe.fp8_format == FP8Format.E4M3 and g == 32:
        mode, bits = "mxfp8", 8
    elif isinstance(recipe, NVFP4BlockScaling) and not recipe.global_scale_divides and g == 16:
        mode, bits = "nvfp4", 4
    elif isinstance(recipe, (Int4Scaling, Int8Scaling)) and recipe.convention == RecipeConvention.MLX:
        mode = "affine"
        bits = recipe.element_format.bits
        data = data.view(mx.uint8) ^ offset_binary_flip(bits)
    else:
        return None
    if (mode == "affine" and g not in _AFFINE_GROUPS) or data.shape[-1] % 4 or st.shape[-1] % g:
        return None
    return data.view(mx.uint32), st.scale, st.zero_point, mode, g, bits


def fast_matmul(a: Any, b: Any, out_dtype: str, transpose_b: bool) -> Any | None:
    """``a @ w.T`` (or ``a @ b``) with the weight in an MLX quantized mode, else None."""
    sb = b.scaled
    if sb is None:
        return None
    packed = mlx_weight(sb)
    if packed is None:
        return None
    w, scales, biases, mode, group, bits = packed
    x = a.float32()
    y = mx.quantized_matmul(
        x, w, scales, biases, transpose=transpose_b, group_size=group, bits=bits, mode=mode
    )
    if sb.global_scale is not None:
        y = y * sb.global_scale
    return y.astype(getattr(mx, out_dtype))
