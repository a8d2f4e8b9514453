"""Model directories: read any checkpoint convention breccia knows, convert between them.

The layer above containers and below commands (see ``docs/architecture.md``). One module per
convention registers how to ``detect`` it, read it lazily, and (where it can be written) its targets:

============  =================================================  ===========================================
convention    what it is                                         targets
============  =================================================  ===========================================
hf            plain float safetensors (the fallback)             ``bf16``, ``float16``, ``float32``
breccia       breccia's own ScaledTensor files                   a recipe: ``MXFP8BlockScaling``, ...
deepseek-fp8  FP8 + 128x128 ``weight_scale_inv`` (V3, V3.1,      ``deepseek-fp8``, ``deepseek-fp8-ue8m0``
              FineGrainedFP8, Qwen FP8)
mlx-lm        MLX's quantized layers, as ``mlx_lm.load`` reads   ``mlx-affine{2,3,4,5,6,8}``, ``mlx-mxfp4``,
                                                                 ``mlx-mxfp8``, ``mlx-nvfp4`` (``-g<group>``)
============  =================================================  ===========================================
"""

from __future__ import annotations

from ._directory import INDEX_NAME, ModelDirectory
from ._engine import convert, convert_tensors
from ._output import DEFAULT_SHARD_BYTES, OutputDirectory, ShardWriter
from ._registry import CONVENTIONS, Checkpoint, Convention, open_checkpoint, register
from ._targets import ConversionReport, Target, parse_target, target_names

__all__ = [
    "CONVENTIONS",
    "DEFAULT_SHARD_BYTES",
    "INDEX_NAME",
    "Checkpoint",
    "Convention",
    "ConversionReport",
    "ModelDirectory",
    "OutputDirectory",
    "ShardWriter",
    "Target",
    "convert",
    "convert_tensors",
    "open_checkpoint",
    "parse_target",
    "register",
    "target_names",
]
