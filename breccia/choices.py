"""The named values of recipe fields: FP8 element formats, scale formats and conventions.

Each is a ``str``-valued enum, so a recipe field holds a member and still equals (and hashes as) its
string: ``Float8BlockScaling(convention="deepseek").convention == RecipeConvention.DEEPSEEK == "deepseek"``.
Recipes take either spelling and store the member (:meth:`Choice.coerce`); an unknown string raises a
:class:`~breccia.errors.RecipeError` that lists the valid ones. A member's ``repr`` and ``str`` are its
string's, so a recipe's ``repr`` reads as it is typed.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from .errors import RecipeError
from .formats import E4M3, E5M2, E8M0, ElementFormat

__all__ = ["Choice", "FP8Format", "ScaleFormat", "RecipeConvention"]

_C = TypeVar("_C", bound="Choice")


class Choice(str, enum.Enum):
    """A ``str`` enum whose members equal, hash and print as their strings."""

    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return repr(self.value)

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls: type[_C], where: str, value: Any, allowed: tuple[_C, ...] | None = None) -> _C:
        """The member ``value`` names (a member or its string) among ``allowed`` (default: every
        member), or a RecipeError naming ``where`` (``"Recipe.field"``) and the valid strings."""
        allowed = tuple(cls) if allowed is None else allowed
        if isinstance(value, str) and value in allowed:
            return cls(value)
        raise RecipeError(f"{where} must be one of {allowed}; got {value!r}")


class FP8Format(Choice):
    """The FP8 element format of a recipe's ``fp8_format``."""

    E4M3 = "E4M3"
    E5M2 = "E5M2"

    @property
    def element_format(self) -> ElementFormat:
        return E4M3 if self is FP8Format.E4M3 else E5M2


class ScaleFormat(Choice):
    """How a recipe stores its block scales: float32, E8M0 (MX) or E4M3 (NVFP4)."""

    F32 = "F32"
    E8M0 = "E8M0"
    E4M3 = "E4M3"

    @property
    def element_format(self) -> ElementFormat | None:
        """The element format of the stored scales, or None for float32."""
        return _SCALE_ELEMENTS[self]


_SCALE_ELEMENTS = {ScaleFormat.F32: None, ScaleFormat.E8M0: E8M0, ScaleFormat.E4M3: E4M3}


class RecipeConvention(Choice):
    """Whose rule a recipe follows (its ``convention`` field); each recipe takes a few of these:

    ``Float8CurrentScaling``: ``te``, ``torchao``; ``Float8BlockScaling``: ``te``, ``deepseek``;
    ``MXFP4BlockScaling``: ``ocp``, ``mlx``, ``ggml``; ``NVFP4BlockScaling``: ``nvidia``,
    ``compressed-tensors``, ``mlx``; ``Int8Scaling``/``Int4Scaling``: ``breccia``, ``torchao``,
    ``mlx``, ``ggml``. ``DelayedScaling`` is TransformerEngine's (``te``) and ``MXFP8BlockScaling``
    OCP's (``ocp``), without a field to choose.
    """

    TE = "te"
    TORCHAO = "torchao"
    DEEPSEEK = "deepseek"
    OCP = "ocp"
    MLX = "mlx"
    GGML = "ggml"
    NVIDIA = "nvidia"
    COMPRESSED_TENSORS = "compressed-tensors"
    BRECCIA = "breccia"
