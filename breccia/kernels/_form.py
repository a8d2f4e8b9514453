"""The GEMM form of FP8 operands: ``Y[M, N] = A[M, K] @ B[N, K].T`` with the scale kind of each side.

A native FP8 GEMM can fold a scale into its accumulator only when the scale is constant along K inside
each K-tile. For FP8 ScaledTensors that means:

======================  ================================  =======================================
kind                    left side A ``[M, K]``             right side B ``[N, K]``
======================  ================================  =======================================
``"tensor"``            ``PerTensor()``                    ``PerTensor()``
``"row"``               ``PerRow()`` (one scale per M)     ``PerRow()`` of ``w`` (one per N)
``"1x128"``             ``PerBlockK(128)``                 ``PerBlockK(128)`` of ``w``
``"128x128"``           (not used)                         ``PerBlock2D(128, 128)`` of ``w`` or ``b``
======================  ================================  =======================================

``matmul``'s ``b`` is ``[K, N]``: its blocks run along N, so only per-tensor and 128x128 scales are
constant along K; everything else takes the reference path. The ``*_kind`` functions read only
metadata (no array operations), so callers can choose a path before touching the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends import Backend
from ..choices import ScaleFormat
from ..layouts import PerBlock2D, PerBlockK, PerRow, PerTensor
from ..tensor import ScaledTensor

__all__ = ["Side", "left_kind", "right_kind", "left_side", "right_side", "FP8_NAMES"]

FP8_NAMES = ("E4M3", "E5M2")
BLOCK = 128


@dataclass
class Side:
    """One operand in GEMM form: ``data`` is ``[rows, K]`` (native fp8); ``scale`` float32 (see kinds)."""

    data: Any
    kind: str
    scale: Any
    fmt: str
    rows: int
    k: int


def _fp8(st: Any) -> bool:
    return (
        isinstance(st, ScaledTensor)
        and st.recipe.element_format.name in FP8_NAMES
        and st.recipe.scale_format == ScaleFormat.F32
        and st.zero_point is None
        and st.global_scale is None
    )


def left_kind(st: Any) -> str | None:
    """The kind of A (``[..., M, K]`` or ``[K]``), or None if no fast kernel takes it."""
    if not _fp8(st) or not st.shape:
        return None
    layout, k = st.layout, st.shape[-1]
    if isinstance(layout, PerTensor):
        return "tensor"
    if isinstance(layout, PerRow):
        return "row"
    if layout == PerBlockK(BLOCK) and k % BLOCK == 0:
        return "1x128"
    return None


def right_kind(st: Any, transpose_b: bool) -> str | None:
    """The kind of B: ``w`` ``[N, K]`` when ``transpose_b`` (linear), else ``b`` ``[K, N]`` (matmul)."""
    if not _fp8(st) or len(st.shape) != 2:
        return None
    layout = st.layout
    n, k = st.shape if transpose_b else st.shape[::-1]
    if isinstance(layout, PerTensor):
        return "tensor"
    if layout == PerBlock2D(BLOCK, BLOCK) and k % BLOCK == 0 and n % BLOCK == 0:
        return "128x128"
    if not transpose_b:
        return None
    if isinstance(layout, PerRow):
        return "row"
    if layout == PerBlockK(BLOCK) and k % BLOCK == 0:
        return "1x128"
    return None


def left_side(st: ScaledTensor, backend: Backend) -> Side | None:
    """A in GEMM form, batch axes folded into M; None if no fast kind."""
    kind = left_kind(st)
    if kind is None:
        return None
    xp = backend.xp
    k = st.shape[-1]
    m = st.size // k if k else 0
    scale = backend.astype(st.scale, "float32")
    shape = {"tensor": (), "row": (m,), "1x128": (m, k // BLOCK)}[kind]
    data = st.data if st.data.ndim == 2 else xp.reshape(st.data, (m, k))
    return Side(data, kind, xp.reshape(scale, shape), st.recipe.element_format.name, m, k)


def right_side(st: ScaledTensor, backend: Backend, transpose_b: bool) -> Side | None:
    """B in GEMM form (``[N, K]``); None if no fast kind."""
    kind = right_kind(st, transpose_b)
    if kind is None:
        return None
    scale = backend.astype(st.scale, "float32")
    n, k = st.shape if transpose_b else st.shape[::-1]
    data = st.data if transpose_b else st.data.T
    if kind in ("tensor", "row"):
        scale = backend.xp.reshape(scale, () if kind == "tensor" else (n,))
    elif not transpose_b:
        scale = scale.T
    return Side(data, kind, scale, st.recipe.element_format.name, n, k)
