"""matmul and linear with ScaledTensor operands, on every backend.

``matmul(a, b)`` is ``a @ b`` and ``linear(x, w)`` is ``x @ w.T`` (``w`` is ``[out, in]``, the torch and
DeepSeek convention); either operand may be a ScaledTensor of any recipe and layout, or a plain array
of the same framework. The result has the wider of the operands' logical dtypes (float16 and bfloat16
together give float32) and equals the float64 product of the dequantized operands within the
accumulation error of the path taken:

* **fast paths** keep the data in low precision and fold the scales into the GEMM. They need the
  scales constant along K inside each K-tile of the GEMM (per-tensor, per-row of the output side,
  1x128 and 128x128 blocks) or a kernel that dequantizes tiles on the fly:

  - PyTorch on CUDA: ``torch._scaled_mm`` (per-tensor, row-wise) and PyTorch's block-wise scaled GEMM
    (DeepSeek's 1x128 activations x 128x128 or 1x128 weights), see :mod:`breccia.kernels.torch_gemm`;
  - JAX on a GPU: the dequantize-then-dot pattern that XLA rewrites into a cuBLASLt FP8 GEMM, see
    :mod:`breccia.kernels.jax_gemm`;
  - MLX: ``mx.quantized_matmul`` for MXFP4, MXFP8, NVFP4 and MLX-affine int4/int8 weights, see
    :mod:`breccia.kernels.mlx_gemm`.

* **the reference path** (everything else, and every CPU backend): the left operand is dequantized to
  float32; the right operand (the weight) is dequantized one tile row at a time (a run of whole scale
  blocks along its first axis, :data:`TILE_ROWS` rows or one block row if larger) and multiplied in
  float32, so no more than one tile row of the weight exists in float32 at once. Its error is that of
  float32 accumulation, ``|y - y64| <= K * 2**-24 * (|A| @ |B|)``, plus one rounding to the result dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .backends import Backend, backend_for, get_backend, torch_compiling
from .errors import FrameworkError, ShapeError
from .tensor import ScaledTensor

__all__ = ["matmul", "linear", "TILE_ROWS"]

#: Rows of a weight dequantized at once on the reference path (rounded up to whole scale blocks).
TILE_ROWS = 256

_RANK = {"float16": 0, "bfloat16": 0, "float32": 1, "float64": 2}


@dataclass
class Operand:
    """One side of a product: a ScaledTensor or a plain float array of ``backend``'s framework."""

    backend: Backend
    value: Any  # the ScaledTensor or the array
    dtype_name: str  # logical dtype
    shape: tuple[int, ...]

    @property
    def scaled(self) -> ScaledTensor | None:
        return self.value if isinstance(self.value, ScaledTensor) else None

    def float32(self) -> Any:
        """The whole operand as a float32 array."""
        if self.scaled is not None:
            return self.scaled.dequantize("float32")
        return self.backend.astype(self.value, "float32")


def _operand(x: Any, what: str) -> Operand:
    if isinstance(x, ScaledTensor):
        return Operand(get_backend(x.framework), x, x.dtype_name, x.shape)
    backend = backend_for(x, what)
    return Operand(backend, x, backend.check_float_input(x), tuple(int(d) for d in x.shape))


def _traced_by_torch(a: Any, b: Any) -> bool:
    """Whether torch.compile traces this product: then one custom op runs the eager path
    (:mod:`breccia.torch_ops`), as Dynamo cannot trace the backend lookup or the kernel choice."""
    return any(torch_compiling(v.data if isinstance(v, ScaledTensor) else v) for v in (a, b))


def result_dtype(a: str, b: str) -> str:
    """The wider logical dtype; float16 with bfloat16 gives float32 (neither holds the other)."""
    if a == b:
        return a
    return a if _RANK[a] > _RANK[b] else b if _RANK[b] > _RANK[a] else "float32"


def _same_framework(a: Operand, b: Operand, op: str) -> None:
    if a.backend.name != b.backend.name:
        raise FrameworkError(
            f"{op} operands live in different frameworks ({a.backend.name}, {b.backend.name}); "
            "move one with .to(framework)"
        )


def matmul(a: Any, b: Any) -> Any:
    """``a @ b`` where either side may be a ScaledTensor; both in one framework.

    Shapes follow the array API's ``matmul``: ``a`` is ``[..., M, K]`` or ``[K]``, ``b`` is
    ``[..., K, N]`` or ``[K]``. See the module docstring for the paths and their error bounds.
    """
    if _traced_by_torch(a, b):
        from .torch_ops import compiled_matmul

        return compiled_matmul(a, b, transpose_b=False)
    oa, ob = _operand(a, "matmul's a"), _operand(b, "matmul's b")
    _same_framework(oa, ob, "matmul")
    if not oa.shape or not ob.shape:
        raise ShapeError(f"matmul needs operands of rank >= 1; got shapes {oa.shape} and {ob.shape}")
    k_b = ob.shape[-2] if len(ob.shape) > 1 else ob.shape[0]
    if oa.shape[-1] != k_b:
        raise ShapeError(
            f"matmul shapes do not fit: {oa.shape} @ {ob.shape} (inner sizes {oa.shape[-1]} != {k_b})"
        )
    out = result_dtype(oa.dtype_name, ob.dtype_name)
    from .kernels import fast_matmul

    fast = fast_matmul(oa, ob, out, transpose_b=False)
    if fast is not None:
        return fast
    backend = oa.backend
    xa = oa.float32()
    if ob.scaled is not None and len(ob.shape) == 2:
        y = _tiled_matmul(backend, xa, ob.scaled)
    else:
        y = xa @ ob.float32()
    return backend.astype(y, out)


def linear(x: Any, w: Any) -> Any:
    """``x @ w.T`` with ``w`` of shape ``[out, in]`` (the torch and DeepSeek weight convention).

    ``x`` is ``[..., in]``; the result is ``[..., out]``. See the module docstring for the paths.
    """
    if _traced_by_torch(x, w):
        from .torch_ops import compiled_matmul

        return compiled_matmul(x, w, transpose_b=True)
    ow = _operand(w, "linear's w")
    if len(ow.shape) != 2:
        raise ShapeError(f"linear's weight must be 2-D [out, in]; got shape {ow.shape}")
    ox = _operand(x, "linear's x")
    _same_framework(ox, ow, "linear")
    if not ox.shape or ox.shape[-1] != ow.shape[-1]:
        got = ox.shape[-1] if ox.shape else "no"
        raise ShapeError(f"linear: x of shape {ox.shape} has {got} features but w is {ow.shape} ([out, in])")
    out = result_dtype(ox.dtype_name, ow.dtype_name)
    from .kernels import fast_matmul

    fast = fast_matmul(ox, ow, out, transpose_b=True)
    if fast is not None:
        return fast
    backend = ox.backend
    xx = ox.float32()
    if ow.scaled is not None:
        y = _tiled_linear(backend, xx, ow.scaled)
    else:
        y = xx @ ow.float32().T
    return backend.astype(y, out)


# --- the reference path: one weight tile row at a time ----------------------------------------------


def tile_rows(st: ScaledTensor) -> int:
    """Rows per tile of a 2-D ScaledTensor: whole block rows, at least :data:`TILE_ROWS` rows."""
    return st.block_rows * max(1, math.ceil(TILE_ROWS / st.block_rows))


def _tiles(st: ScaledTensor):
    """``(start, stop, rows start:stop of st in float32)``, a tile of :func:`tile_rows` rows at a time."""
    for start, stop, rows in st.row_blocks(tile_rows(st) * max(1, st.shape[1])):
        yield start, stop, rows.dequantize("float32")


def _tiled_linear(backend: Backend, x: Any, w: ScaledTensor) -> Any:
    """``x @ w.T`` with ``w`` dequantized one tile of output rows at a time (no accumulation across tiles)."""
    if w.shape[0] == 0:
        return x @ w.dequantize("float32").T
    parts = [x @ tile.T for _, _, tile in _tiles(w)]
    return parts[0] if len(parts) == 1 else backend.xp.concat(parts, axis=-1)


def _tiled_matmul(backend: Backend, a: Any, b: ScaledTensor) -> Any:
    """``a @ b`` with ``b`` ([K, N]) dequantized one tile of K rows at a time, summed in float32."""
    if b.shape[0] == 0:
        return a @ b.dequantize("float32")
    y = None
    for start, stop, tile in _tiles(b):
        part = a[..., start:stop] @ tile
        y = part if y is None else y + part
    return y
