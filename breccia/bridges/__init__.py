"""Bridges: move ScaledTensors between frameworks and the formats the ecosystem ships.

Each bridge module imports its peer lazily, so ``breccia.bridges`` imports without any peer installed;
calling a bridge whose peer is missing raises an ImportError naming the pip extra.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "from_dlpack",
    "to_dlpack",
    "from_transformer_engine",
    "to_transformer_engine",
    "from_torchao",
    "to_torchao",
    "from_torchao_state_dict",
    "to_torchao_state_dict",
    "is_torchao",
    "save_safetensors",
    "load_safetensors",
    "load_plain_safetensors",
    "open_safetensors",
    "from_mlx_quantized",
    "to_mlx_quantized",
    "requantize_to_mlx",
    "mlx_recipe",
    "MLXQuantized",
    # MLX's modes and the error measure that breccia.mlx and the mlx-lm convention share
    "MLX_MODES",
    "resolve_mode",
    "added_error",
    "from_deepseek_v3",
    "to_deepseek_v3",
    "load_deepseek_v3",
    "DeepSeekV3Checkpoint",
    "SCALE_SUFFIX",
    "deepseek_recipe",
    "save_gguf",
    "open_gguf",
    "GGML_RECIPES",
    # the safetensors container's pieces that the checkpoint layer builds on
    "scaled_parts",
    "stored_array",
    "fspath",
]

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    "from_torchao": "_torchao",
    "to_torchao": "_torchao",
    "from_torchao_state_dict": "_torchao",
    "to_torchao_state_dict": "_torchao",
    "is_torchao": "_torchao",
    "to_dlpack": "_dlpack",
    "from_dlpack": "_dlpack",
    "from_transformer_engine": "_transformer_engine",
    "to_transformer_engine": "_transformer_engine",
    "save_safetensors": "_huggingface",
    "load_safetensors": "_huggingface",
    "load_plain_safetensors": "_huggingface",
    "open_safetensors": "_huggingface",
    "scaled_parts": "_huggingface",
    "stored_array": "_huggingface",
    "fspath": "_safetensors_format",
    "from_mlx_quantized": "_mlx",
    "to_mlx_quantized": "_mlx",
    "requantize_to_mlx": "_mlx",
    "mlx_recipe": "_mlx",
    "MLXQuantized": "_mlx",
    "MLX_MODES": "_mlx",
    "resolve_mode": "_mlx",
    "added_error": "_mlx",
    "from_deepseek_v3": "_deepseek",
    "to_deepseek_v3": "_deepseek",
    "load_deepseek_v3": "_deepseek",
    "DeepSeekV3Checkpoint": "_deepseek",
    "SCALE_SUFFIX": "_deepseek",
    "deepseek_recipe": "_deepseek",
    "save_gguf": "_gguf",
    "open_gguf": "_gguf",
    "GGML_RECIPES": "_gguf",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'breccia.bridges' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
