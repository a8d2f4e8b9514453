"""Imports every built-in convention module, each of which registers itself (reader and targets).

Detection asks conventions in this order; ``hf`` is the fallback and is asked last whatever its place.
"""

from __future__ import annotations

from . import deepseek_v4  # noqa: F401 (asked before deepseek_fp8: both say quant_method "fp8")

# isort: split
from . import (
    breccia_format,  # noqa: F401
    compressed_tensors,  # noqa: F401
    deepseek_fp8,  # noqa: F401
    gguf,  # noqa: F401
    gpt_oss,  # noqa: F401
    hf,  # noqa: F401
    mlx_lm,  # noqa: F401
    modelopt,  # noqa: F401
)
