"""Model blocks run straight from a checkpoint's quantized tensors.

The layer of ``checkpoints/`` (``docs/architecture.md``): a model module reads a checkpoint through the
bridges and checkpoint readers below it, and runs ScaledTensors through ``bc.linear`` and ``bc.cast``.

* :mod:`breccia.models.deepseek_moe`: one DeepSeek-V3 block (MLA projections, router, shared and
  routed experts) in FP8 under ``jax.jit``, tensor- and expert-parallel over a JAX mesh, each device
  reading only its own tiles of the checkpoint.
"""

from __future__ import annotations

from .deepseek_moe import DEFAULT_PLAN, MoEBlockConfig, block_config, load_sharded, moe_block, to_bfloat16

__all__ = ["DEFAULT_PLAN", "MoEBlockConfig", "block_config", "load_sharded", "moe_block", "to_bfloat16"]
