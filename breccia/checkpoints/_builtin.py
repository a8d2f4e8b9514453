"""Imports every built-in convention module, each of which registers itself (reader and targets),
and says in which order detection asks them.

The order is explicit, not the order of imports (a module that imports another registers that one
first): formats named by their own files or config sections first, the conventions that share
``quant_method: "fp8"`` with the most specific (DeepSeek-V4's ``.scale`` tensors) before the general
one, and the plain-float ``hf`` fallback last.
"""

from __future__ import annotations

from . import (
    breccia_format,  # noqa: F401
    compressed_tensors,  # noqa: F401
    deepseek_fp8,  # noqa: F401
    deepseek_v4,  # noqa: F401
    gguf,  # noqa: F401
    gpt_oss,  # noqa: F401
    hf,  # noqa: F401
    mlx_lm,  # noqa: F401
    modelopt,  # noqa: F401
)

DETECTION_ORDER = (
    "gguf",
    "mlx-lm",
    "breccia",
    "compressed-tensors",
    "modelopt-nvfp4",
    "gpt-oss-mxfp4",
    "deepseek-v4",
    "deepseek-fp8",
    "hf",
)
