"""Layouts: which elements share one scale.

A layout is a block shape over the trailing axes of a tensor. The scale array has the data's rank;
along each axis it has ``ceil(dim / block)`` entries. Edge blocks are partial: their amax is taken over
the real elements only, which is the same as DeepSeek's "zero-pad to 128" (zeros never raise an amax).
Leading (batch) axes always have block size 1.

==============  =======================  ==========================================
layout          block over the last axes  scale shape for data ``[..., M, K]``
==============  =======================  ==========================================
PerTensor()     the whole tensor          ``[1, ..., 1]`` (``[]`` for a 0-d tensor)
PerRow()        ``1 x K``                 ``[..., M, 1]``
PerBlockK(k)    ``1 x k``                 ``[..., M, ceil(K/k)]``
PerBlock2D(m,k) ``m x k``                 ``[..., ceil(M/m), ceil(K/k)]``
==============  =======================  ==========================================

A new layout is one small class with :meth:`Layout.block_shape`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .errors import LayoutError

__all__ = [
    "Layout",
    "PerTensor",
    "PerRow",
    "PerBlockK",
    "PerBlock2D",
    "layout_from_dict",
    "oversized_axes",
    "scale_shape",
]

#: how far a block may run past its axis in a layout read from a file (see :func:`oversized_axes`)
MAX_OVERHANG = 2**16


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Layout:
    """Base class: a block shape over the trailing axes."""

    min_ndim: ClassVar[int] = 0

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Block size along every axis of a tensor of ``shape`` (1 on batch axes)."""
        raise NotImplementedError

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise LayoutError if a tensor of ``shape`` cannot use this layout."""
        if len(shape) < self.min_ndim:
            raise LayoutError(
                f"{self!r} needs a tensor of at least {self.min_ndim} dimension(s); got shape "
                f"{tuple(shape)}. Use PerBlockK or PerTensor for lower-rank tensors."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: ``{"name": ..., **fields}``."""
        return {"name": type(self).__name__, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class PerTensor(Layout):
    """One scale for the whole tensor."""

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(max(d, 1) for d in shape)

    def __repr__(self) -> str:
        return "PerTensor()"


@dataclass(frozen=True)
class PerRow(Layout):
    """One scale per row: blocks of ``1 x K`` over the last axis (a 1-D tensor is one row)."""

    min_ndim: ClassVar[int] = 1

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self.check_shape(shape)
        return (*(1,) * (len(shape) - 1), max(shape[-1], 1))

    def __repr__(self) -> str:
        return "PerRow()"


@dataclass(frozen=True)
class PerBlockK(Layout):
    """One scale per ``k`` consecutive elements of the last axis (MX, NVFP4, 1x128, int groups)."""

    k: int
    min_ndim: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_block_size("PerBlockK", "k", self.k)

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self.check_shape(shape)
        return (*(1,) * (len(shape) - 1), self.k)

    def __repr__(self) -> str:
        return f"PerBlockK({self.k})"


@dataclass(frozen=True)
class PerBlock2D(Layout):
    """One scale per ``m x k`` tile over the last two axes (DeepSeek-V3 and TE 128x128 weights)."""

    m: int
    k: int
    min_ndim: ClassVar[int] = 2

    def __post_init__(self) -> None:
        _check_block_size("PerBlock2D", "m", self.m)
        _check_block_size("PerBlock2D", "k", self.k)

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        self.check_shape(shape)
        return (*(1,) * (len(shape) - 2), self.m, self.k)

    def __repr__(self) -> str:
        return f"PerBlock2D({self.m}, {self.k})"


def _check_block_size(cls: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LayoutError(f"{cls}.{field} must be a positive int; got {value!r}")


_LAYOUTS: dict[str, type[Layout]] = {
    c.__name__: c for c in (PerTensor, PerRow, PerBlockK, PerBlock2D)
}


def layout_from_dict(d: Any) -> Layout:
    """Rebuild a layout from :meth:`Layout.to_dict`; unknown names or fields raise LayoutError."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise LayoutError(f"a layout must be a JSON object with a 'name'; got {d!r}")
    cls = _LAYOUTS.get(d["name"])
    if cls is None:
        raise LayoutError(f"unknown layout {d['name']!r}; valid layouts are {', '.join(_LAYOUTS)}")
    fields = {k: v for k, v in d.items() if k != "name"}
    allowed = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    unknown = set(fields) - allowed
    if unknown:
        raise LayoutError(f"{d['name']} has no field(s) {sorted(unknown)}; it takes {sorted(allowed)}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise LayoutError(f"bad fields for {d['name']}: {exc}") from None


def scale_shape(layout: Layout, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the scale array for a tensor of logical ``shape``: ``ceil(dim / block)`` per axis."""
    return tuple(_ceil_div(d, b) for d, b in zip(shape, layout.block_shape(tuple(shape))))


def oversized_axes(layout: Layout, shape: tuple[int, ...], limit: int = MAX_OVERHANG) -> list[int]:
    """The axes along which ``layout``'s block is longer than both the axis and ``limit``.

    A block may run past its axis (a short axis is one partial edge block: ``PerBlockK(32)`` on a
    16-long bias), but a block of ``2**27`` over 8 elements describes no tensor a writer made; a
    reader refuses such a layout (:class:`~breccia.errors.FileFormatError`). Memory never depends on
    it: quantize clamps every block to its axis before splitting a tensor into blocks.
    """
    return [a for a, (n, b) in enumerate(zip(shape, layout.block_shape(tuple(shape)))) if b > max(n, limit)]
