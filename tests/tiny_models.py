"""Tiny model directories with random weights, written the way their makers store them: used by the
tests and by ``benchmarks/bench_convert.py`` (which puts ``tests/`` on its path). Nothing here is
downloaded."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

import breccia as bc


def deepseek_v4_config(block: int = 128) -> dict[str, Any]:
    """config.json of a DeepSeek-V4 checkpoint: FP8 linears with E8M0 ``block x block`` scales and FP4
    experts."""
    return {
        "model_type": "deepseek_v4",
        "torch_dtype": "bfloat16",
        "expert_dtype": "fp4",
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "scale_fmt": "ue8m0",
            "weight_block_size": [block, block],
        },
    }


def deepseek_v4_tensors(
    rng: np.random.Generator,
    linears: dict[str, tuple[int, int]],
    experts: dict[str, tuple[int, int]],
    *,
    block: int = 128,
    std: float = 1.0,
) -> dict[str, np.ndarray]:
    """DeepSeek-V4's stored arrays for FP8 ``linears`` (``name.weight`` float8_e4m3fn codes,
    ``name.scale`` E8M0 per ``block x block`` tile) and FP4 ``experts`` (``name.weight`` int8 bytes of
    two E2M1 codes, ``name.scale`` E8M0 per 32), cast by breccia from normal values times ``std``."""
    from breccia.checkpoints.deepseek_v4 import FP4_RECIPE, fp8_recipe

    stored: dict[str, np.ndarray] = {}
    for name, shape in linears.items():
        st = bc.cast(rng.standard_normal(shape, np.float32) * np.float32(std), fp8_recipe(block))
        stored[f"{name}.weight"] = np.asarray(st.data)
        stored[f"{name}.scale"] = np.asarray(st.scale).astype(ml_dtypes.float8_e8m0fnu)
    for name, shape in experts.items():
        st = bc.cast(rng.standard_normal(shape, np.float32) * np.float32(std), FP4_RECIPE)
        stored[f"{name}.weight"] = np.asarray(st.data).view(np.int8)
        stored[f"{name}.scale"] = np.asarray(st.scale).view(ml_dtypes.float8_e8m0fnu)
    return stored
