"""Bridges: move ScaledTensors between frameworks and the formats the ecosystem ships.

Each bridge module imports its peer lazily, so ``breccia.bridges`` imports without any peer installed;
calling a bridge whose peer is missing raises an ImportError naming the pip extra.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["from_dlpack", "to_dlpack"]

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    "to_dlpack": "_dlpack",
    "from_dlpack": "_dlpack",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'breccia.bridges' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
