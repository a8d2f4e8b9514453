"""Demo section "deepseek": a tiny DeepSeek-V3 FP8 checkpoint, loaded in JAX, one MoE block run.

:func:`write_checkpoint` writes a synthetic checkpoint in the exact DeepSeek-V3 layout: three shards
and ``model.safetensors.index.json``, FP8 ``weight`` + float32 ``weight_scale_inv`` (each scale in
another shard than its weight), a ragged MLA projection (``kv_a_proj_with_mqa``, 576 rows: a 5-row
scale grid), routed and shared MoE experts, bf16 norms/embeddings/router ``gate.weight`` and a
float32 ``e_score_correction_bias``; with ``attention=True`` also MLA's ``q_proj`` (or, with
``q_lora_rank``, ``q_a_proj``, its norm and ``q_b_proj``), ``kv_b_proj`` and ``o_proj``.
:func:`moe_block` is DeepSeek-V3's MoE MLP (sigmoid router with the correction bias for the choice
only, top-k weights renormalized and scaled, SwiGLU experts) with every expert linear run as DeepSeek
runs it: activations 1x128-quantized by ``act_quant``'s rule, weights FP8, through ``bc.linear``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from ..bridges._deepseek import SCALE_SUFFIX, deepseek_recipe, to_deepseek_v3
from ..bridges._huggingface import INDEX_NAME
from ..quantize import cast


@dataclass(frozen=True)
class TinyV3Config:
    """DeepSeek-V3's shape at toy size (the real one: hidden 7168, 256 experts, top 8, rank 512)."""

    hidden: int = 256
    moe_intermediate: int = 192  # ragged: 1.5 blocks of 128
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    top_k: int = 2
    routed_scaling_factor: float = 2.5
    kv_lora_rank: int = 512
    qk_rope_head_dim: int = 64  # kv_a_proj_with_mqa: 512 + 64 = 576 rows, like the real one
    #: also write MLA's query, ``kv_b_proj`` and ``o_proj`` weights (what :mod:`breccia.models` runs);
    #: off by default, so the demo and the conversion tests keep the checkpoint without them
    attention: bool = False
    n_heads: int = 4  # MLA: q_proj 4 x (64 + 64) rows, kv_b_proj 4 x (64 + 64), o_proj from 4 x 64
    qk_nope_head_dim: int = 64
    v_head_dim: int = 64
    q_lora_rank: int | None = None  # None: one q_proj (DeepSeek-V2-Lite); else q_a_proj + q_b_proj (V3)
    vocab: int = 64
    rms_norm_eps: float = 1e-6


def _expert_names(prefix: str) -> list[str]:
    return [f"{prefix}.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")]


def master_weights(config: TinyV3Config = TinyV3Config(), seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights of the tiny model (what the FP8 checkpoint was quantized from)."""
    rng = np.random.default_rng(seed)
    c = config
    layer = "model.layers.0"

    def linear(out: int, inp: int) -> np.ndarray:
        w = rng.standard_normal((out, inp)).astype(np.float32) / np.float32(np.sqrt(inp))
        return w * (2.0 ** rng.uniform(-2, 2, (out, 1))).astype(np.float32)

    def vector(n: int, mean: float, std: float) -> np.ndarray:
        return (mean + std * rng.standard_normal(n)).astype(np.float32)

    weights = {
        "model.embed_tokens.weight": rng.standard_normal((c.vocab, c.hidden)).astype(np.float32),
        f"{layer}.input_layernorm.weight": vector(c.hidden, 1.0, 0.1),
        f"{layer}.self_attn.kv_a_proj_with_mqa.weight": linear(c.kv_lora_rank + c.qk_rope_head_dim, c.hidden),
        f"{layer}.self_attn.kv_a_layernorm.weight": vector(c.kv_lora_rank, 1.0, 0.1),
        f"{layer}.post_attention_layernorm.weight": vector(c.hidden, 1.0, 0.1),
        f"{layer}.mlp.gate.weight": linear(c.n_routed_experts, c.hidden),
        f"{layer}.mlp.gate.e_score_correction_bias": vector(c.n_routed_experts, 0.0, 0.1),
        "model.norm.weight": np.ones(c.hidden, np.float32),
        "lm_head.weight": linear(c.vocab, c.hidden),
    }
    experts = [(f"{layer}.mlp.experts.{e}", c.moe_intermediate) for e in range(c.n_routed_experts)]
    experts.append((f"{layer}.mlp.shared_experts", c.moe_intermediate * c.n_shared_experts))
    for prefix, inter in experts:
        gate, up, down = _expert_names(prefix)
        weights[gate] = linear(inter, c.hidden)
        weights[up] = linear(inter, c.hidden)
        weights[down] = linear(c.hidden, inter)
    if not c.attention:
        return weights
    # MLA's other projections, after the rest so that the tensors above keep their values per seed
    attention = f"{layer}.self_attn"
    q_rows = c.n_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim)
    kv_rows = c.n_heads * (c.qk_nope_head_dim + c.v_head_dim)
    if c.q_lora_rank is None:
        weights[f"{attention}.q_proj.weight"] = linear(q_rows, c.hidden)
    else:
        weights[f"{attention}.q_a_proj.weight"] = linear(c.q_lora_rank, c.hidden)
        weights[f"{attention}.q_a_layernorm.weight"] = vector(c.q_lora_rank, 1.0, 0.1)
        weights[f"{attention}.q_b_proj.weight"] = linear(q_rows, c.q_lora_rank)
    weights[f"{attention}.kv_b_proj.weight"] = linear(kv_rows, c.kv_lora_rank)
    weights[f"{attention}.o_proj.weight"] = linear(c.hidden, c.n_heads * c.v_head_dim)
    return weights


def is_fp8_in_deepseek(name: str) -> bool:
    """Which tensors DeepSeek-V3 stores in FP8: the linear layers' weights inside the decoder layers."""
    return name.endswith("_proj.weight") or name.endswith("_proj_with_mqa.weight")


def write_checkpoint(
    path: str, config: TinyV3Config = TinyV3Config(), seed: int = 0, n_shards: int = 3
) -> dict[str, np.ndarray]:
    """Write the tiny FP8 checkpoint into directory ``path``; return the float32 master weights.

    FP8 weights are cast with DeepSeek's weight rule (``deepseek_recipe("weight")``, 128x128 tiles);
    a weight's ``weight_scale_inv`` goes to the next shard round-robin, so none sits with its weight.
    """
    import ml_dtypes

    from ..bridges._huggingface import save_safetensors

    masters = master_weights(config, seed)
    os.makedirs(path, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{} for _ in range(n_shards)]
    for i, (name, w) in enumerate(masters.items()):
        home = i % n_shards
        if is_fp8_in_deepseek(name):
            data, scale = to_deepseek_v3(cast(w, deepseek_recipe("weight")))
            shards[home][name] = data
            shards[(home + 1) % n_shards][name + SCALE_SUFFIX] = scale
        elif name.endswith("e_score_correction_bias"):
            shards[home][name] = w
        else:
            shards[home][name] = w.astype(ml_dtypes.bfloat16)
    files = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    weight_map, total = {}, 0
    for file, tensors in zip(files, shards):
        save_safetensors(tensors, os.path.join(path, file), {"format": "pt"})
        for name, array in tensors.items():
            weight_map[name] = file
            total += array.nbytes
    with open(os.path.join(path, INDEX_NAME), "w", encoding="utf-8") as f:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        json.dump(index, f, indent=2)
    quant = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8"}
    quant["weight_block_size"] = [128, 128]
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "architectures": ["DeepseekV3ForCausalLM"],
                "hidden_size": config.hidden,
                "moe_intermediate_size": config.moe_intermediate,
                "n_routed_experts": config.n_routed_experts,
                "n_shared_experts": config.n_shared_experts,
                "num_experts_per_tok": config.top_k,
                "routed_scaling_factor": config.routed_scaling_factor,
                "kv_lora_rank": config.kv_lora_rank,
                "q_lora_rank": config.q_lora_rank,
                "qk_rope_head_dim": config.qk_rope_head_dim,
                "qk_nope_head_dim": config.qk_nope_head_dim,
                "v_head_dim": config.v_head_dim,
                "num_attention_heads": config.n_heads,
                "rms_norm_eps": config.rms_norm_eps,
                "vocab_size": config.vocab,
                "torch_dtype": "bfloat16",
                "quantization_config": quant,
            },
            f,
            indent=2,
        )
    return masters


# --- the MoE block in JAX ---------------------------------------------------------------------------


def moe_params(weights: Any, layer: int = 0) -> dict[str, Any]:
    """The tensors one MoE MLP block needs, by short name, from a loaded checkpoint (or masters)."""
    prefix = f"model.layers.{layer}"
    names = {
        "norm": f"{prefix}.post_attention_layernorm.weight",
        "gate": f"{prefix}.mlp.gate.weight",
        "bias": f"{prefix}.mlp.gate.e_score_correction_bias",
    }
    params = {key: weights[name] for key, name in names.items()}
    experts = []
    e = 0
    while f"{prefix}.mlp.experts.{e}.gate_proj.weight" in weights:
        experts.append(tuple(weights[n] for n in _expert_names(f"{prefix}.mlp.experts.{e}")))
        e += 1
    params["experts"] = experts
    params["shared"] = tuple(weights[n] for n in _expert_names(f"{prefix}.mlp.shared_experts"))
    return params


def moe_block(params: dict[str, Any], x: Any, config: TinyV3Config = TinyV3Config()) -> Any:
    """DeepSeek-V3's MoE MLP on tokens ``x`` ``[T, hidden]`` (float32, JAX), after its RMSNorm.

    Router (float32): ``s = sigmoid(h @ gate.T)``; experts chosen by ``top_k(s + bias)``; weights
    ``s[chosen] / sum * routed_scaling_factor``. Expert: ``down(silu(gate(h)) * up(h))``. A
    ScaledTensor weight runs as DeepSeek runs it: ``h`` cast by ``act_quant``'s rule, then
    ``bc.linear`` (float32 accumulation); a plain array weight runs in float32.
    """
    import jax
    import jax.numpy as jnp

    from ..matmul import linear as bc_linear
    from ..tensor import ScaledTensor

    act = deepseek_recipe("activation")

    def linear(h: Any, w: Any) -> Any:
        if isinstance(w, ScaledTensor):
            return bc_linear(cast(h, act), w)
        return h @ jnp.asarray(w, jnp.float32).T

    def expert(h: Any, ws: tuple[Any, Any, Any]) -> Any:
        gate, up, down = ws
        return linear(jax.nn.silu(linear(h, gate)) * linear(h, up), down)

    norm = jnp.asarray(params["norm"], jnp.float32)
    h = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + config.rms_norm_eps) * norm
    scores = jax.nn.sigmoid(h @ jnp.asarray(params["gate"], jnp.float32).T)
    _, chosen = jax.lax.top_k(scores + jnp.asarray(params["bias"], jnp.float32), config.top_k)
    picked = jnp.take_along_axis(scores, chosen, axis=-1)
    picked = picked / jnp.sum(picked, axis=-1, keepdims=True) * config.routed_scaling_factor
    n = len(params["experts"])
    weights = jnp.sum(jax.nn.one_hot(chosen, n, dtype=jnp.float32) * picked[..., None], axis=-2)  # [T, E]
    y = expert(h, params["shared"])
    for e, ws in enumerate(params["experts"]):
        y = y + weights[:, e : e + 1] * expert(h, ws)
    return y


def _relative_error(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run(out: IO[str]) -> bool:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        print("JAX is not installed; skipping (pip install 'breccia[jax]')", file=out)
        return True
    from ..bridges._deepseek import load_deepseek_v3
    from ..checkpoints import convert
    from ..quantize import dequantize

    config = TinyV3Config()
    ok = True
    with tempfile.TemporaryDirectory(prefix="breccia-deepseek-") as tmp:
        src = os.path.join(tmp, "fp8")
        masters = write_checkpoint(src, config)
        with open(os.path.join(src, INDEX_NAME), encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        scales = [n for n in weight_map if n.endswith(SCALE_SUFFIX)]
        apart = sum(weight_map[n] != weight_map[n[: -len(SCALE_SUFFIX)]] for n in scales)
        print(f"wrote {len(set(weight_map.values()))} shards, {len(weight_map)} stored tensors; "
              f"{apart} scales sit in another shard than their weight", file=out)
        model = load_deepseek_v3(src, framework="jax")
        print(repr(model), file=out)

        kv = model["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]
        data = np.asarray(model.raw("model.layers.0.self_attn.kv_a_proj_with_mqa.weight")).astype(np.float32)
        scale = np.asarray(model.raw("model.layers.0.self_attn.kv_a_proj_with_mqa.weight" + SCALE_SUFFIX))
        expected = data * np.repeat(np.repeat(scale, 128, 0), 128, 1)[: data.shape[0], : data.shape[1]]
        exact = np.array_equal(np.asarray(dequantize(kv)).view(np.uint32), expected.view(np.uint32))
        ok &= exact
        print(f"ragged MLA projection {kv.shape[0]}x{kv.shape[1]}, scale {tuple(kv.scale.shape)}: "
              f"dequantize == fp32(W) * S[i//128, j//128] bit for bit: {'yes' if exact else 'NO'}", file=out)

        x = jnp.asarray(np.random.default_rng(1).standard_normal((32, config.hidden)).astype(np.float32))
        fp8_params = moe_params(model)
        ref_params = moe_params(masters)
        y8 = jax.jit(lambda p, x: moe_block(p, x, config))(fp8_params, x)
        y32 = moe_block(ref_params, x, config)
        err = _relative_error(y8, y32)
        ok &= err < 0.1
        print(f"MoE block ({config.n_routed_experts} experts, top {config.top_k}, 1 shared) under jax.jit, "
              f"FP8 weights + 1x128 FP8 activations vs float32 reference: rel. error {err:.2e} "
              f"({'ok' if err < 0.1 else 'TOO LARGE'})", file=out)

        dst = os.path.join(tmp, "bf16")
        convert(src, dst, to="bf16")
        converted = load_deepseek_v3(dst, framework="numpy")
        same = all(
            np.array_equal(
                np.asarray(converted[name]).view(np.uint16),
                np.asarray(dequantize(model[name], "bfloat16")).view(np.uint16),
            )
            for name in model
            if model.is_quantized(name)
        )
        ok &= same
        print(f"breccia convert --to bf16: {len(converted)} tensors, no *_scale_inv left, "
              f"FP8 -> bf16 equals the reference dequantization bit for bit: {'yes' if same else 'NO'}",
              file=out)
        converted.close()
        model.close()
    return ok
