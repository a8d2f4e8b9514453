"""A minimal array-API namespace over ``mlx.core`` (array-api-compat does not cover MLX).

Only the functions breccia's shared numerics call are here; each maps to the MLX function of the same
meaning.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

float32 = mx.float32
float16 = mx.float16
bfloat16 = mx.bfloat16
uint8 = mx.uint8
int8 = mx.int8
int32 = mx.int32
uint32 = mx.uint32
bool = mx.bool_  # noqa: A001 - array-API name

abs = mx.abs  # noqa: A001
maximum = mx.maximum
minimum = mx.minimum
floor = mx.floor
ceil = mx.ceil
log2 = mx.log2
round = mx.round  # noqa: A001 - half to even, like the array API
isnan = mx.isnan
isinf = mx.isinf
where = mx.where
reshape = mx.reshape
stack = mx.stack
concat = mx.concatenate
zeros = mx.zeros
logical_not = mx.logical_not
logical_and = mx.logical_and
logical_or = mx.logical_or


def astype(x: Any, dtype: Any, copy: bool = True) -> Any:
    return x if not copy and x.dtype == dtype else x.astype(dtype)


def asarray(x: Any, dtype: Any = None) -> Any:
    return mx.array(x, dtype=dtype) if dtype is not None else mx.array(x)


def max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    return mx.max(x, axis=axis, keepdims=keepdims)


def min(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    return mx.min(x, axis=axis, keepdims=keepdims)


def any(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    return mx.any(x, axis=axis, keepdims=keepdims)


def clip(x: Any, min: Any = None, max: Any = None) -> Any:  # noqa: A002
    return mx.clip(x, min, max)


def pow(x1: Any, x2: Any) -> Any:  # noqa: A001
    return mx.power(x1, x2)


def isfinite(x: Any) -> Any:
    return mx.logical_not(mx.logical_or(mx.isnan(x), mx.isinf(x)))


def signbit(x: Any) -> Any:
    """True for negative values and -0.0 (MLX has no signbit: -0.0 is told apart by 1/x)."""
    return mx.logical_or(x < 0, mx.logical_and(x == 0, mx.reciprocal(x) < 0))


def take(x: Any, indices: Any, axis: Any = None) -> Any:
    return mx.take(x, indices, axis=axis)


def all(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    return mx.all(x, axis=axis, keepdims=keepdims)


def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    return mx.sum(x, axis=axis, keepdims=keepdims)
