"""Imports every built-in convention module, each of which registers itself (reader and targets).

Detection asks conventions in this order; ``hf`` is the fallback and is asked last whatever its place.
"""

from __future__ import annotations

from . import (
    breccia_format,  # noqa: F401
    deepseek_fp8,  # noqa: F401
    hf,  # noqa: F401
    mlx_lm,  # noqa: F401
)
