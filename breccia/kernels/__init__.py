"""Fast paths of breccia's compute, one module per framework, each imported only when needed.

``fast_matmul`` is the one entry point :mod:`breccia.matmul` calls: it returns the product through a
native low-precision kernel when the operands and the device allow one, else ``None`` (the caller then
takes the reference path). Nothing here changes what is computed beyond the error bound stated in
each module; tests check every path against the float64 product of the dequantized operands.

- :mod:`.torch_gemm`: ``torch._scaled_mm`` / ``torch.nn.functional.scaled_mm`` on CUDA.
- :mod:`.jax_gemm`: XLA's dequantize-then-dot rewrite into cuBLASLt FP8 GEMMs on GPUs.
- :mod:`.mlx_gemm`: ``mx.quantized_matmul`` for MX, NVFP4 and affine weights.

The fused one-pass casts and dequantizations on NVIDIA GPUs (same bits as the shared code) are
planned in :mod:`._cast_plan`, chosen by :func:`fused_cast` and :func:`fused_dequantize` (a launcher
or None, which :mod:`breccia.quantize` asks for and runs), and written in :mod:`.torch_cast` (Triton)
and :mod:`.jax_cast` (Pallas). :func:`host_cast` is the one-pass CPU cast of a host array
(:mod:`._host`, numba), chosen by the same plan.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._fused import FusedCast, FusedDequantize, fused_cast, fused_dequantize
from ._host import host_cast

__all__ = ["FusedCast", "FusedDequantize", "fast_matmul", "fused_cast", "fused_dequantize", "host_cast"]

_MODULES = {"torch": "torch_gemm", "jax": "jax_gemm", "mlx": "mlx_gemm"}


def fast_matmul(a: Any, b: Any, out_dtype: str, transpose_b: bool) -> Any:
    """``a @ b`` (``a @ b.T`` when ``transpose_b``) through a native kernel, or None if none applies.

    ``a`` and ``b`` are :class:`breccia.matmul.Operand`; ``out_dtype`` is the result's dtype name.
    """
    module = _MODULES.get(a.backend.name)
    if module is None:
        return None
    return import_module(f"{__name__}.{module}").fast_matmul(a, b, out_dtype, transpose_b)
