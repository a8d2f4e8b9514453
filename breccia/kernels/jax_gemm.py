"""JAX on a GPU: FP8 ScaledTensors through XLA's cuBLASLt FP8 GEMM rewrite.

XLA's GEMM rewriter turns ``dot(convert(a_fp8) * s_a, convert(b_fp8) * s_b)`` with scalar ``s_a``,
``s_b`` into one ``__cublas$lt$matmul$f8`` call that reads the FP8 data and folds both scales into the
epilogue (a plain ``jnp.dot`` of fp8 arrays does not reach the FP8 tensor cores at full rate). So the
fast path writes exactly that pattern, in float32, under ``jax.jit``:

* per-tensor x per-tensor: the pattern with both scales; one rounding to the output dtype;
* row-wise (either side ``PerRow``, the other per-tensor or row-wise): the pattern with unit scales
  into float32, then ``y * s_A[:, None] * s_B[None, :]`` (two more fp32 roundings).

cuBLASLt accumulates in fp32 as for PyTorch (see :mod:`.torch_gemm`). Block-wise scales (1x128,
128x128) have no XLA rewrite on Hopper and take the reference path; CPUs take the reference path too.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jax
import jax.numpy as jnp

from ..backends import get_backend
from ..tensor import ScaledTensor
from ._form import left_kind, left_side, right_kind, right_side

__all__ = ["fast_matmul", "on_gpu", "product"]

# XLA's own Triton GEMM emitter would otherwise claim the fused dequantize-dot before the cuBLASLt FP8
# rewrite sees it. Inside a caller's jax.jit these options do not apply: set
# XLA_FLAGS=--xla_gpu_enable_triton_gemm=false there.
_NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}


def on_gpu(x: Any) -> bool:
    """Whether ``x`` lives on a GPU (for a tracer: whether JAX's default backend is a GPU)."""
    if isinstance(x, jax.core.Tracer):
        return jax.default_backend() == "gpu"
    return all(d.platform == "gpu" for d in x.devices())


def _dot_nt(a: Any, b: Any, out: Any) -> Any:
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32).astype(out)


def _fits(a_kind: str, b_kind: str, a: ScaledTensor, b: ScaledTensor, transpose_b: bool) -> bool:
    n, k = b.shape if transpose_b else b.shape[::-1]
    m = a.size // k if k else 0
    return (
        {a_kind, b_kind} <= {"tensor", "row"}
        and {a.recipe.element_format.name, b.recipe.element_format.name} != {"E5M2"}
        and k % 16 == 0
        and n % 16 == 0
        and min(m, n, k) > 0
    )


def product(a: ScaledTensor, b: ScaledTensor, out_dtype: str, transpose_b: bool) -> Any:
    """The FP8 product in the cuBLASLt pattern (traceable; the caller has checked :func:`_fits`)."""
    backend = get_backend("jax")
    left, right = left_side(a, backend), right_side(b, backend, transpose_b)
    out = jnp.dtype("float32" if out_dtype == "float64" else out_dtype)
    if (left.kind, right.kind) == ("tensor", "tensor"):
        a32 = left.data.astype(jnp.float32) * left.scale
        y = _dot_nt(a32, right.data.astype(jnp.float32) * right.scale, out)
    else:
        y = _dot_nt(left.data.astype(jnp.float32), right.data.astype(jnp.float32), jnp.float32)
        sa = jnp.broadcast_to(left.scale, (left.rows,))[:, None]
        sb = jnp.broadcast_to(right.scale, (right.rows,))[None, :]
        y = (y * sa * sb).astype(out)
    y = jnp.reshape(y, (*a.shape[:-1], right.rows))
    return y.astype(jnp.float64) if out_dtype == "float64" else y


@cache
def _compiled(out_dtype: str, transpose_b: bool):
    def run(a: ScaledTensor, b: ScaledTensor) -> Any:
        return product(a, b, out_dtype, transpose_b)

    return jax.jit(run, compiler_options=_NO_TRITON_GEMM)


def fast_matmul(a: Any, b: Any, out_dtype: str, transpose_b: bool) -> Any | None:
    """The product of two FP8 ScaledTensors on a GPU through cuBLASLt FP8, else None.

    Eagerly, one jitted function (cached per output dtype and form; JAX re-traces per shape and
    recipe) does the whole product, so no eager array operation precedes the GEMM.
    """
    sa, sb = a.scaled, b.scaled
    if sa is None or sb is None:
        return None
    kinds = left_kind(sa), right_kind(sb, transpose_b)
    if None in kinds or not _fits(*kinds, sa, sb, transpose_b) or not on_gpu(sa.data):
        return None
    if isinstance(sa.data, jax.core.Tracer) or isinstance(sb.data, jax.core.Tracer):
        return product(sa, sb, out_dtype, transpose_b)
    return _compiled(out_dtype, transpose_b)(sa, sb)
