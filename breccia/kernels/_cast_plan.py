"""Which casts and dequantizations the fused GPU kernels take, and how they tile the tensor.

The kernels (:mod:`.torch_cast` in Triton, :mod:`.jax_cast` in Pallas) read each element once: a
program loads a tile, reduces its blocks' amaxes, applies the recipe's scale rule to them, encodes and
stores data and scales. The rule comes from :data:`breccia.scaling.RULES`, the one registry of
scale rules (:func:`breccia.scaling.kernel_rule`). They compute exactly what :mod:`breccia.blockwise`
and :mod:`breccia.scaling` compute (same float32 operations in the same order, divisions correctly
rounded, RNE saturating encodes); the cross-backend bits tests prove it on the GPU. What they take:

=====================================  ============================  ===============================
recipe                                 layouts                       rule in the kernel
=====================================  ============================  ===============================
Float8CurrentScaling (``te``)          PerRow, PerBlockK, PerBlock2D  ``te``: ``q = max / amax``
Float8BlockScaling (``te``)            PerBlockK, PerBlock2D          ``te``
Float8BlockScaling (``deepseek``)      PerBlockK, PerBlock2D          ``deepseek``: ``x / s``
MXFP8/MXFP4BlockScaling                PerBlockK(32)                  ``mx_floor`` / ``mx_ceil``
Float8CurrentScaling (``te``)          PerTensor                      two passes (amax, then encode)
DelayedScaling                         PerTensor                      ``given``: scale from history
=====================================  ============================  ===============================

The tensor is seen as a 2-D ``[rows, cols]`` array (batch axes folded into rows; a 2-D block needs
the row count of each batch to be a multiple of its height). A program's tile is
``[tile_rows, tile_blocks, block_pad]``: ``tile_blocks`` blocks of ``block_cols`` columns (padded to
the power of two ``block_pad``, the padding masked off) in each of ``tile_rows`` rows. A 2-D block
is the whole tile (``tile_rows = block_rows``, one block). Block sizes must be powers of two (Triton
tiles are), but for PerRow; ragged edges are masked and read as zeros, which never change an amax
(the reference's zero padding). Everything else (integers, NVFP4, torchao conventions, float64
input, odd block sizes, ggml's conventions) takes the shared path.

The same plan chooses the one-pass CPU casts (:mod:`._host`, numba) for a host array of any
framework: they take every ``te``, ``deepseek``, ``mx_floor``/``mx_ceil`` plan and the current
per-tensor one (DelayedScaling, which carries a history, stays on the shared path), and use only
its rule and its 2-D view; the tile fields are the GPU's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..choices import ScaleFormat
from ..formats import ElementFormat
from ..layouts import Layout, PerBlock2D, PerBlockK, PerRow, PerTensor
from ..recipes import Recipe
from ..scaling import KernelRule, kernel_rule

__all__ = ["CastPlan", "cast_plan", "dequantize_plan", "INPUT_DTYPES"]

INPUT_DTYPES = ("float32", "bfloat16", "float16")
_MAX_TILE = 16384  # elements one program holds
_MIN_ROW_SEGMENT = 256  # contiguous columns a program reads per row (coalescing)
_TARGET_TILE = 4096
_PER_TENSOR_WIDTH = 1024  # a per-tensor cast sees a flat tensor as rows of this many columns


@dataclass(frozen=True)
class CastPlan:
    """The geometry and the rule of one fused kernel launch."""

    rule: KernelRule  # from breccia.scaling's registry (GIVEN: the multiplier from memory)
    fmt: ElementFormat
    rows: int
    cols: int
    block_rows: int  # 1, or the height of a 2-D block
    block_cols: int
    block_pad: int  # block_cols rounded up to a power of two
    tile_rows: int
    tile_blocks: int
    fmax: float = 0.0
    eps: float = 0.0
    power_2: bool = False
    emax_elem: int = 0
    scale_e8m0: bool = False
    num_warps: int = 4

    @property
    def scale_rows(self) -> int:
        return -(-self.rows // self.block_rows)

    @property
    def scale_cols(self) -> int:
        return -(-self.cols // self.block_cols)

    @property
    def grid(self) -> tuple[int, int]:
        return (-(-self.rows // self.tile_rows), -(-self.scale_cols // self.tile_blocks))

    @property
    def packed(self) -> bool:
        return self.fmt.packed


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


_MX_RULES = (KernelRule.MX_FLOOR, KernelRule.MX_CEIL)


def _rule(recipe: Recipe) -> dict | None:
    """The fused kernels' per-block rule for ``recipe`` (:func:`breccia.scaling.kernel_rule`) and its
    constants, or None where only the shared code has one (E8M0 rules other than floor and ceil,
    MLX's and ggml's fp4 tie rule and ggml's MXFP4 exponent, every NVFP4 and integer recipe)."""
    rule = kernel_rule(recipe)
    fmt = recipe.element_format
    if rule in _MX_RULES:
        return dict(rule=rule, fmt=fmt, fmax=fmt.max_value, emax_elem=fmt.e_max, scale_e8m0=True)
    if rule in (KernelRule.TE, KernelRule.DEEPSEEK):
        return dict(rule=rule, fmt=fmt, fmax=fmt.max_value, eps=float(recipe.amax_epsilon),
                    power_2=recipe.power_2_scale)
    return None


def _view(shape: tuple[int, ...], layout: Layout) -> tuple[int, int, int, int] | None:
    """(rows, cols, block_rows, block_cols) of the 2-D view, or None if blocks would cross batches."""
    if len(shape) == 0:
        return None
    cols = shape[-1]
    rows = math.prod(shape[:-1])
    if isinstance(layout, PerRow):
        return rows, cols, 1, cols
    if isinstance(layout, PerBlockK):
        return rows, cols, 1, layout.k
    if isinstance(layout, PerBlock2D):
        if len(shape) < 2 or (len(shape) > 2 and shape[-2] % layout.m):
            return None
        return rows, cols, layout.m, layout.k
    return None


def _geometry(rows: int, cols: int, block_rows: int, block_cols: int) -> dict | None:
    """The plan's geometry fields for ``block_rows x block_cols`` blocks of a ``[rows, cols]`` view."""
    pad = _next_pow2(block_cols)
    if block_rows > 1:
        if not (_pow2(block_rows) and _pow2(block_cols)) or block_rows * block_cols > _MAX_TILE:
            return None
        tile_rows, tile_blocks = block_rows, 1
    elif pad > _MAX_TILE:
        return None
    else:
        tile_blocks = min(max(1, _MIN_ROW_SEGMENT // pad), _next_pow2(-(-cols // block_cols)))
        tile_rows = min(max(1, _TARGET_TILE // (pad * tile_blocks)), _next_pow2(rows))
    elements = tile_rows * tile_blocks * pad
    num_warps = 16 if block_rows > 1 and elements >= 16384 else 8 if elements >= 8192 else 4
    return dict(rows=rows, cols=cols, block_rows=block_rows, block_cols=block_cols, block_pad=pad,
                tile_rows=tile_rows, tile_blocks=tile_blocks, num_warps=num_warps)


def _block_geometry(shape: tuple[int, ...], layout: Layout) -> dict | None:
    if isinstance(layout, PerBlockK) and not _pow2(layout.k):
        return None
    view = _view(shape, layout)
    return None if view is None else _geometry(*view)


def _per_tensor_geometry(shape: tuple[int, ...]) -> dict:
    """A per-tensor pass sees the flat tensor as rows of 1024 columns (else its own 2-D view), in
    chunks of 256 columns (these "blocks" only tile the work; the scale is one)."""
    size = math.prod(shape)
    if size % _PER_TENSOR_WIDTH == 0:
        rows, cols = size // _PER_TENSOR_WIDTH, _PER_TENSOR_WIDTH
    else:
        rows, cols = size // shape[-1], shape[-1]
    return _geometry(rows, cols, 1, _MIN_ROW_SEGMENT)


@functools.lru_cache(maxsize=256)
def cast_plan(recipe: Recipe, layout: Layout, shape: tuple[int, ...], dtype_name: str) -> CastPlan | None:
    """The fused kernel for casting a tensor of ``shape`` and dtype, or None (shared path)."""
    if dtype_name not in INPUT_DTYPES or math.prod(shape) == 0 or not shape:
        return None
    if isinstance(layout, PerTensor):
        rule = kernel_rule(recipe)
        if rule not in (KernelRule.TE, KernelRule.GIVEN):  # the te rule on the tensor, or a history
            return None
        fmt = recipe.element_format
        te = {}
        if rule == KernelRule.TE:
            te = dict(eps=float(recipe.amax_epsilon), power_2=recipe.power_2_scale)
        geometry = _per_tensor_geometry(shape)
        return CastPlan(rule=KernelRule.GIVEN, fmt=fmt, fmax=fmt.max_value, **te, **geometry)
    rule = _rule(recipe)
    if rule is None or (rule["fmt"].packed and shape[-1] % 2):
        return None
    geometry = _block_geometry(shape, layout)
    return None if geometry is None else CastPlan(**rule, **geometry)


@functools.lru_cache(maxsize=256)
def dequantize_plan(
    recipe: Recipe, layout: Layout, shape: tuple[int, ...], dtype_name: str
) -> CastPlan | None:
    """The fused dequantize to ``dtype_name`` of a ScaledTensor of ``recipe``, ``layout`` and logical
    ``shape``: FP8 data with float32 or E8M0 scales (rule ``PER_TENSOR`` or ``BLOCKS``), or None
    (shared path)."""
    fmt = recipe.element_format
    if fmt.name not in ("E4M3", "E5M2") or recipe.has_global_scale or recipe.zero_point_kind is not None:
        return None
    if dtype_name not in INPUT_DTYPES or math.prod(shape) == 0 or not shape:
        return None
    if isinstance(layout, PerTensor):
        return CastPlan(rule=KernelRule.PER_TENSOR, fmt=fmt, **_per_tensor_geometry(shape))
    geometry = _block_geometry(shape, layout)
    if geometry is None:
        return None
    scale_e8m0 = recipe.scale_format == ScaleFormat.E8M0
    return CastPlan(rule=KernelRule.BLOCKS, fmt=fmt, scale_e8m0=scale_e8m0, **geometry)
