"""PyTorch on CUDA: FP8 ScaledTensors through cuBLASLt's scaled GEMMs.

``torch.nn.functional.scaled_mm`` (``torch._scaled_mm`` on older torch) computes
``Y = (A_q * s_A) @ (B_q * s_B).T`` with FP8 data on the tensor cores and the scales folded in:

==================  ===========================  =============================================
A x B               PyTorch scaling               scale arrays passed
==================  ===========================  =============================================
tensor x tensor     TensorWise x TensorWise       fp32 scalars
row/tensor mixes    RowWise x RowWise             ``[M, 1]`` and ``[1, N]`` (a per-tensor side
                                                  is broadcast: the same value in every row)
1x128 x 128x128     BlockWise1x128 x 128x128      ``[M, K/128]`` K-major ("outer-dim-major");
                                                  ``[L4, N/128]`` (K/128 padded to a multiple of 4)
1x128 x 1x128       BlockWise1x128 x 1x128        ``[M, K/128]`` and ``[N, K/128]``, K-major
==================  ===========================  =============================================

Error: cuBLASLt accumulates FP8 products in fp32 (``use_fast_accum=False``: Hopper's reduced-precision
tensor-core accumulator is flushed into fp32 every few K steps), then scales and rounds once to the
output dtype. Row-wise scaling outputs bf16 only; for other output dtypes the GEMM runs with unit scales
into fp32 and the scales are applied after it (two more fp32 roundings). E5M2 x E5M2 and block-wise
E5M2 have no cuBLAS kernel and take the reference path, as do shapes the kernels cannot tile (K or N
not a multiple of 16; K, and N for 128x128 weights, not multiples of 128).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._form import Side, left_side, right_side

__all__ = ["fast_matmul", "scaled_gemm"]

_OUT = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "float64": torch.float32,
}


def _scaled_mm(a: Any, b: Any, sa: Any, ra: str, sb: Any, rb: str, out: torch.dtype) -> Any:
    """``F.scaled_mm`` with the named scaling kinds; ``b`` is ``[K, N]`` column-major."""
    if hasattr(F, "scaled_mm"):
        kinds = F.ScalingType
        return F.scaled_mm(a, b, sa, getattr(kinds, ra), sb, getattr(kinds, rb), output_dtype=out)
    return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=out)


def _k_major(s: Any) -> Any:
    """The same ``[rows, K/128]`` values stored K-major (stride ``(1, rows)``), as cuBLASLt reads them.
    Copied into a fresh ``[K/128, rows]`` buffer: ``s.t().contiguous()`` would keep a one-row scale's
    strides ``(1, K/128)``, which ``scaled_mm`` refuses."""
    out = torch.empty(tuple(s.shape[::-1]), dtype=s.dtype, device=s.device).t()
    out.copy_(s)
    return out


#: cuBLASLt's block-wise FP8 GEMMs take ``M`` in multiples of this many rows (one row, as at decode,
#: gets CUBLAS_STATUS_NOT_SUPPORTED on an H200): a smaller ``M`` is padded with zero rows of scale 1.
_BLOCKWISE_ROWS = 16


def _pad_rows(data: Any, scale: Any) -> tuple[Any, Any]:
    """``data [M, K]`` and its 1x128 ``scale [M, K/128]`` grown to ``M`` rounded up to
    :data:`_BLOCKWISE_ROWS` (zero codes, unit scales: the extra output rows are 0 and are dropped)."""
    pad = -data.shape[0] % _BLOCKWISE_ROWS
    if not pad:
        return data, scale
    rows = data.shape[0]
    grown = data.new_zeros((rows + pad, data.shape[1]))
    grown[:rows] = data
    grown_scale = scale.new_ones((rows + pad, scale.shape[1]))
    grown_scale[:rows] = scale
    return grown, grown_scale


def _pad_128x128(s: Any) -> Any:
    """``[N/128, K/128]`` -> ``[L4, N/128]`` view of a K-padded copy (L4 = K/128 rounded up to 4)."""
    n, k = s.shape
    padded = torch.zeros((n, -(-k // 4) * 4), dtype=torch.float32, device=s.device)
    padded[:, :k] = s
    return padded.t()


def scaled_gemm(a: Side, b: Side, out_dtype: str) -> Any | None:
    """``[M, N]`` product of two FP8 sides in GEMM form, or None if no cuBLAS kernel fits them."""
    formats = {a.fmt, b.fmt}
    if formats == {"E5M2"} or a.k % 16 or b.rows % 16 or a.rows == 0 or b.rows == 0 or a.k == 0:
        return None
    mat_a = a.data.contiguous()
    mat_b = b.data.contiguous().t()  # [K, N], column-major
    out = _OUT[out_dtype]
    kinds = (a.kind, b.kind)
    if kinds == ("tensor", "tensor"):
        return _scaled_mm(mat_a, mat_b, a.scale, "TensorWise", b.scale, "TensorWise", out)
    if set(kinds) <= {"tensor", "row"}:
        sa = a.scale.expand(a.rows).reshape(a.rows, 1).contiguous()
        sb = b.scale.expand(b.rows).reshape(1, b.rows).contiguous()
        if out == torch.bfloat16:
            return _scaled_mm(mat_a, mat_b, sa, "RowWise", sb, "RowWise", out)
        one = torch.ones((), dtype=torch.float32, device=sa.device)
        y = _scaled_mm(mat_a, mat_b, one, "TensorWise", one, "TensorWise", torch.float32)
        return (y * sa * sb).to(out)
    if a.kind != "1x128" or b.kind not in ("1x128", "128x128") or formats != {"E4M3"}:
        return None
    if b.kind == "128x128":
        sb, rb = _pad_128x128(b.scale), "BlockWise128x128"
    else:
        sb, rb = _k_major(b.scale), "BlockWise1x128"
    mat_a, scale_a = _pad_rows(mat_a, a.scale)
    y = _scaled_mm(mat_a, mat_b, _k_major(scale_a), "BlockWise1x128", sb, rb, out)
    return y[: a.rows]


def fast_matmul(a: Any, b: Any, out_dtype: str, transpose_b: bool) -> Any | None:
    """The product of two FP8 ScaledTensors on CUDA through ``scaled_mm``, else None."""
    sa, sb = a.scaled, b.scaled
    if sa is None or sb is None or sa.data.device.type != "cuda":
        return None
    left = left_side(sa, a.backend)
    right = right_side(sb, b.backend, transpose_b)
    if left is None or right is None:
        return None
    y = scaled_gemm(left, right, out_dtype)
    if y is None:
        return None
    y = y.reshape(*sa.shape[:-1], right.rows)
    return y.to(torch.float64) if out_dtype == "float64" else y
