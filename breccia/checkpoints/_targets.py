"""Conversion targets (``--to``): how a name becomes a writer, and the report every writer fills.

A convention that can be written registers a *target parser*: a function from the ``--to`` text to a
:class:`Target` (or None when the text is not its), plus the target names it offers (for help and for
"did you mean" suggestions). A :class:`Target` writes a source :class:`Checkpoint` into an
:class:`OutputDirectory`: its weights (streaming, through ``ShardWriter``) and ``config.json`` the way
its loader expects; the engine copies the side files.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecipeError

__all__ = ["ConversionReport", "Target", "TargetParser", "TARGET_PARSERS", "parse_target", "register_target"]


@dataclass
class ConversionReport:
    """What a conversion did with each tensor, counted by action, and the worst error it added.

    Actions: ``repacked`` (bits moved without arithmetic), ``quantized`` (a float tensor cast with the
    target's recipe), ``requantized`` (a quantized tensor the target cannot hold exactly: dequantized and
    cast again; its relative error is recorded), ``dequantized`` (a quantized tensor written as float),
    ``copied`` (written as it was stored), ``cast`` (a float tensor written in another float dtype).
    """

    source_format: str = ""
    target: str = ""
    actions: dict[str, str] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def record(self, name: str, action: str, error: float | None = None) -> None:
        self.actions[name] = action
        if error is not None:
            self.errors[name] = error

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions.values() if a == action)

    @property
    def worst(self) -> tuple[str, float] | None:
        """(tensor, relative error) of the requantized tensor with the largest added error."""
        if not self.errors:
            return None
        name = max(self.errors, key=lambda n: self.errors[n])
        return name, self.errors[name]

    def __str__(self) -> str:
        order = ("repacked", "quantized", "requantized", "dequantized", "cast", "copied")
        parts = [f"{self.count(a)} {a}" for a in order if self.count(a)]
        text = f"{len(self.actions)} tensors ({', '.join(parts) or 'none'})"
        worst = self.worst
        if worst is not None:
            text += f"; worst relative error of a requantized tensor: {worst[1]:.3e} ({worst[0]})"
        return f"{self.source_format} -> {self.target}: {text}"


@dataclass(frozen=True)
class Target:
    """A parsed ``--to``: ``write(source, out, report, options)`` writes weights and config."""

    name: str
    convention: str
    write: Callable[..., None]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetParser:
    """``parse(text) -> Target | None`` and the target names it offers."""

    parse: Callable[[str], Target | None]
    names: tuple[str, ...]


TARGET_PARSERS: list[TargetParser] = []


def register_target(parser: TargetParser) -> TargetParser:
    TARGET_PARSERS.append(parser)
    return parser


def target_names() -> list[str]:
    from . import _builtin  # noqa: F401 (registers the targets)

    return [name for parser in TARGET_PARSERS for name in parser.names]


def parse_target(text: str) -> Target:
    """The :class:`Target` named by ``text``; an error listing the valid ones (and the nearest) if none."""
    from . import _builtin  # noqa: F401 (registers the targets)

    if not isinstance(text, str) or not text.strip():
        raise RecipeError(f"a conversion target must be a non-empty string; got {text!r}")
    text = text.strip()
    for parser in TARGET_PARSERS:
        target = parser.parse(text)
        if target is not None:
            return target
    names = target_names()
    close = difflib.get_close_matches(text.lower(), names, n=1, cutoff=0.5)
    close = close or [n for n in names if n.endswith("-" + text.lower())][:1]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RecipeError(f"unknown conversion target {text!r}{hint}; valid targets: {', '.join(names)}")
