"""matmul and linear with ScaledTensor operands.

The reference path dequantizes each ScaledTensor operand to float32 and multiplies in float32 with
the framework's own matmul, then casts to the result dtype (the wider of the operands' logical
dtypes). Per-backend fast paths that keep data in low precision and fold scales into the
accumulator plug in here (see ``benchmarks/bench_matmul.py``).
"""

from __future__ import annotations

from typing import Any

from .backends import backend_for, get_backend
from .errors import ShapeError
from .tensor import ScaledTensor

__all__ = ["matmul", "linear"]

_RANK = {"float16": 0, "bfloat16": 0, "float32": 1, "float64": 2}


def _operand(x: Any, what: str) -> tuple[Any, Any, str]:
    """(backend, float32 array, logical dtype name) of a matmul operand."""
    if isinstance(x, ScaledTensor):
        backend = get_backend(x.framework)
        return backend, x.dequantize("float32"), x.dtype_name
    backend = backend_for(x, what)
    name = backend.check_float_input(x)
    return backend, backend.astype(x, "float32"), name


def _result_dtype(a: str, b: str) -> str:
    if a == b:
        return a
    return a if _RANK[a] > _RANK[b] else b if _RANK[b] > _RANK[a] else "float32"


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` where either side may be a ScaledTensor; both in one framework."""
    ba, xa, da = _operand(a, "matmul's a")
    bb, xb, db = _operand(b, "matmul's b")
    if ba.name != bb.name:
        raise ShapeError(f"matmul operands live in different frameworks ({ba.name}, {bb.name}); move one with .to()")
    if len(xa.shape) < 1 or len(xb.shape) < 1 or xa.shape[-1] != xb.shape[-2 if len(xb.shape) > 1 else 0]:
        raise ShapeError(f"matmul shapes do not fit: {tuple(xa.shape)} @ {tuple(xb.shape)}")
    return ba.astype(ba.xp.matmul(xa, xb), _result_dtype(da, db))


def linear(x: Any, w: Any) -> Any:
    """``x @ w.T`` with ``w`` of shape ``[out, in]`` (the torch and DeepSeek weight convention)."""
    bw, ww, dw = _operand(w, "linear's w")
    if len(ww.shape) != 2:
        raise ShapeError(f"linear's weight must be 2-D [out, in]; got shape {tuple(ww.shape)}")
    bx, xx, dx = _operand(x, "linear's x")
    if bx.name != bw.name:
        raise ShapeError(f"linear operands live in different frameworks ({bx.name}, {bw.name}); move one with .to()")
    if xx.shape[-1] != ww.shape[-1]:
        raise ShapeError(f"linear: x has {xx.shape[-1]} features but w is {tuple(ww.shape)} ([out, in])")
    return bx.astype(bx.xp.matmul(xx, bx.xp.permute_dims(ww, (1, 0))), _result_dtype(dx, dw))
