"""Subcommands of the ``breccia`` CLI beyond ``demo``; each module exposes ``register(subparsers)``.

A registrar adds its parser with ``set_defaults(run=fn)`` where ``fn(args) -> int``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import convert, inspect

REGISTRARS: list[Callable[[Any], None]] = [inspect.register, convert.register]
