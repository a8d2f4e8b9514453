"""MLX layers that run a ScaledTensor weight.

* :class:`QuantizedLinear` runs a weight MLX can hold (MXFP8, MXFP4, NVFP4, INT4/INT8) in
  ``mx.quantized_matmul``, straight from the packed arrays: ``y = x @ W.T (* g) + bias``.
* :class:`Float8Linear` runs FP8 weights MLX has no mode for (per-tensor, 1x128, 128x128) from their
  fp8 bits: ``W = mx.from_fp8(data) * scale`` (scale broadcast over its block), then ``x @ W.T``.

The layers hold MLX's own arrays; the packing arithmetic (ScaledTensor <-> MLX's quantized form) is the
MLX bridge's (:func:`breccia.bridges.to_mlx_quantized`, :func:`breccia.bridges.from_mlx_quantized`).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..bridges import MLXQuantized, from_mlx_quantized, to_mlx_quantized
from ..errors import RecipeError
from ..formats import NVFP4_GLOBAL_DIVISOR
from ..tensor import ScaledTensor

__all__ = ["QuantizedLinear", "Float8Linear"]

_FLOAT8_RECIPES = ("Float8CurrentScaling", "DelayedScaling", "Float8BlockScaling")


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is a ScaledTensor MLX can hold, run by ``mx.quantized_matmul``.

    Its parameters are MLX's arrays under mlx-lm's names (``weight`` uint32, ``scales``, ``biases``
    for affine, ``global_scale`` for NVFP4 with a second level, ``bias``), so ``save_weights`` writes
    what ``mlx.nn.QuantizedLinear`` loads. :attr:`weight` gives the ScaledTensor back (a view).
    NVFP4's global scale, which ``mx.quantized_matmul`` does not take, multiplies the output once
    (``y * fl32(g / 2688)``, ``g`` being MLX's ``global_scale``).
    """

    def __init__(self, weight: ScaledTensor, bias: Any = None) -> None:
        super().__init__()
        q = weight if isinstance(weight, MLXQuantized) else to_mlx_quantized(weight)
        self.group_size, self.bits, self.mode = q.group_size, q.bits, q.mode
        self._dtype_name = weight.dtype_name if isinstance(weight, ScaledTensor) else None
        self["weight"] = q.weight
        self["scales"] = q.scales
        if q.biases is not None:
            self["biases"] = q.biases
        if q.global_scale is not None:
            self["global_scale"] = q.global_scale
        if bias is not None:
            self["bias"] = bias
        self.freeze()

    @property
    def weight(self) -> ScaledTensor:
        """The weight as a ScaledTensor over this layer's arrays."""
        return from_mlx_quantized(
            self["weight"],
            self["scales"],
            self.get("biases"),
            mode=self.mode,
            group_size=self.group_size,
            bits=self.bits,
            global_scale=self.get("global_scale"),
            dtype=self._dtype_name,
        )

    @property
    def quantized(self) -> MLXQuantized:
        """The weight in MLX's quantized form."""
        return MLXQuantized(
            self["weight"],
            self["scales"],
            self.get("biases"),
            self.mode,
            self.group_size,
            self.bits,
            self.get("global_scale"),
        )

    def __call__(self, x: Any) -> Any:
        y = mx.quantized_matmul(
            x,
            self["weight"],
            scales=self["scales"],
            biases=self.get("biases"),
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )
        if "global_scale" in self:  # MLX's g: dequantization multiplies by fl32(g / 2688)
            y = (y * (self["global_scale"] / NVFP4_GLOBAL_DIVISOR)).astype(y.dtype)
        if "bias" in self:
            y = y + self["bias"]
        return y

    def _extra_repr(self) -> str:
        out_dims, words = self["weight"].shape
        return (
            f"input_dims={words * 32 // self.bits}, output_dims={out_dims}, bias={'bias' in self}, "
            f"group_size={self.group_size}, bits={self.bits}, mode={self.mode}"
        )


class Float8Linear(nn.Module):
    """A linear layer over an FP8 ScaledTensor (per-tensor, row-wise, 1x128 or 128x128 scales).

    MLX has no fp8 dtype and no fp8 quantization mode, so the weight stays in its fp8 bits (uint8) and
    fp32 scales; each call decodes it, ``W = from_fp8(data) * scale`` in float32 (one rounding, the
    same as ``bc.dequantize``; E4M3 through ``mx.from_fp8``), and computes ``x @ W.T (+ bias)`` in
    ``x``'s dtype. To move the weight into an MLX mode instead, use :func:`requantize_to_mlx`.
    """

    def __init__(self, weight: ScaledTensor, bias: Any = None) -> None:
        super().__init__()
        if not isinstance(weight, ScaledTensor) or type(weight.recipe).__name__ not in _FLOAT8_RECIPES:
            raise RecipeError(
                "Float8Linear takes an FP8 ScaledTensor (Float8CurrentScaling, DelayedScaling, "
                f"Float8BlockScaling); got {getattr(weight, 'recipe', type(weight).__name__)!r}. "
                "Use QuantizedLinear for MX, NVFP4 and int weights"
            )
        if len(weight.shape) != 2:
            raise RecipeError(f"Float8Linear needs a 2-D [out, in] weight; got shape {weight.shape}")
        st = weight.to("mlx")
        self._st = st
        self["weight"] = st.data
        self["scale"] = st.scale
        if bias is not None:
            self["bias"] = bias
        self.freeze()

    @property
    def weight(self) -> ScaledTensor:
        """The weight as a ScaledTensor over this layer's arrays."""
        return self._st.replace_arrays(self["weight"], self["scale"])

    def dequantized_weight(self) -> Any:
        """The weight dequantized to float32 (``decode(data) * scale`` per block: :func:`dequantize`)."""
        from ..quantize import dequantize

        return dequantize(self.weight, "float32")

    def __call__(self, x: Any) -> Any:
        w = self.dequantized_weight().astype(x.dtype)
        y = x @ w.T
        if "bias" in self:
            y = y + self["bias"]
        return y
