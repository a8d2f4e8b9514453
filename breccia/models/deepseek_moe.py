"""One DeepSeek-V3 block in FP8, tensor- and expert-parallel over a JAX mesh, loaded tile by tile.

**Loading** (:func:`load_sharded`). Each tensor of the block gets a ``PartitionSpec`` from a plan
(:data:`DEFAULT_PLAN`) and is built with ``jax.make_array_from_callback``: the callback for a device
receives that device's index (row and column ranges, and for the stacked routed experts an expert
range) and copies exactly those elements out of the memory-mapped checkpoint file, so each device
reads only the 128x128 tiles (and the scales) it owns and no host copy of a whole tensor is made. The
weight and its ``weight_scale_inv`` are split by the same spec on tile boundaries only
(:func:`breccia.sharding.check_block_split`): a mesh axis that does not divide a tensor's tile grid is a
ShapeError naming the tensor. Ragged tensors (576-row ``kv_a_proj_with_mqa``: 4.5 tiles) stay unsplit,
as in DeepSeek's own inference code.

**The plan** follows DeepSeek's ``inference/model.py`` with a mesh of axes ``("ep", "tp")``:

==========================================  ======================  =====================================
tensors                                     spec                    parallelism
==========================================  ======================  =====================================
``q_proj`` or ``q_b_proj``, ``kv_b_proj``   ``("tp", None)``        column-parallel (heads split)
``o_proj``                                  ``(None, "tp")``        row-parallel (XLA all-reduces)
``q_a_proj``, ``kv_a_proj_with_mqa``        replicated              (as DeepSeek's ``Linear``)
norms, router ``gate.weight`` (bf16)        replicated
shared expert ``gate_proj``, ``up_proj``    ``("tp", None)``        column-parallel
shared expert ``down_proj``                 ``(None, "tp")``        row-parallel
routed experts, stacked ``[E, out, in]``    ``("ep", None, None)``  expert-parallel (XLA all-reduces)
==========================================  ======================  =====================================

**The block** (:func:`moe_block`, run under ``jax.jit``), ``x`` ``[T, hidden]`` float32 tokens::

    h  = rmsnorm(x) ;  q = h Wq^T, or rmsnorm(h Wq_a^T) Wq_b^T  -> [T, H, nope + rope]
    kv = h Wkv_a^T -> (c [T, R], k_pe [T, rope])
    kv_b = rmsnorm(c) Wkv_b^T -> (k_nope, v) [T, H, nope | v]
    a  = softmax_causal((q_nope . k_nope + q_pe . k_pe) / sqrt(nope + rope)) v ;  x1 = x + a Wo^T
    h2 = rmsnorm(x1) ;  s = sigmoid(bf16(h2) bf16(Wg)^T) ;  top_k(s + bias) -> weights w (renormalized)
    y  = x1 + expert_shared(h2) + sum_e w[:, e] expert_e(h2),   expert(h) = down(silu(gate(h)) * up(h))

Every FP8 linear is ``bc.linear(bc.cast(h, act), W)`` with DeepSeek's 1x128 activation recipe. This
is the block's arithmetic, not a language model: the positions carry no rotary embedding, there is
no KV cache, and the router takes its top-k over all experts (DeepSeek-V3's group-limited choice,
``n_group``/``topk_group``, is not applied). No collective is written by hand: XLA's SPMD
partitioner chooses them from the shardings (the row-parallel products and the expert sum become
all-reduces).

**Sharded vs one device.** The activation codes and scales and each device's dequantized weight tiles
are bit for bit the single-device ones (a 1x128 group never crosses a device; a tile dequantizes from
its own scale). A column-parallel product sums the same K terms per output, but XLA's CPU dot orders
its sum by the output's shape and the surrounding fusion (measured: sometimes bit for bit, sometimes
one ulp apart), so it agrees to float32 accumulation, ``|d| <= K * 2**-24 * (|x| @ |W|^T)``; a
row-parallel product and the expert sum add per-device partial sums, another order, same bound.
Downstream, such a one-ulp difference can move an activation across an E4M3 rounding boundary, so
the block output agrees within the FP8 bound: no further from the single-device output than one
E4M3 rounding (relative ``2**-4``) of what the block adds to its input (``tests/test_sharded_moe.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..bridges import SCALE_SUFFIX, DeepSeekV3Checkpoint, deepseek_recipe, load_deepseek_v3
from ..errors import FileFormatError, ShapeError
from ..matmul import linear as scaled_linear
from ..quantize import cast, dequantize
from ..sharding import check_block_split
from ..tensor import ScaledTensor

__all__ = ["DEFAULT_PLAN", "MoEBlockConfig", "block_config", "load_sharded", "moe_block", "to_bfloat16"]

#: role -> checkpoint name under ``model.layers.{layer}.`` (``{e}``: a routed expert, stacked). Queries
#: come from ``q_proj`` (``q_lora_rank`` null, as DeepSeek-V2-Lite) or from ``q_a_proj``, its norm and
#: ``q_b_proj`` (DeepSeek-V3: ``q_lora_rank`` 1536); a checkpoint holds one or the other.
TENSORS: dict[str, str] = {
    "input_norm": "input_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight",
    "q_a_proj": "self_attn.q_a_proj.weight",
    "q_a_norm": "self_attn.q_a_layernorm.weight",
    "q_b_proj": "self_attn.q_b_proj.weight",
    "kv_a_proj": "self_attn.kv_a_proj_with_mqa.weight",
    "kv_a_norm": "self_attn.kv_a_layernorm.weight",
    "kv_b_proj": "self_attn.kv_b_proj.weight",
    "o_proj": "self_attn.o_proj.weight",
    "post_norm": "post_attention_layernorm.weight",
    "router": "mlp.gate.weight",
    "router_bias": "mlp.gate.e_score_correction_bias",
    "shared_gate": "mlp.shared_experts.gate_proj.weight",
    "shared_up": "mlp.shared_experts.up_proj.weight",
    "shared_down": "mlp.shared_experts.down_proj.weight",
    "experts_gate": "mlp.experts.{e}.gate_proj.weight",
    "experts_up": "mlp.experts.{e}.up_proj.weight",
    "experts_down": "mlp.experts.{e}.down_proj.weight",
}

#: role -> PartitionSpec entries over a mesh of axes ("ep", "tp"); roles not named are replicated
DEFAULT_PLAN: dict[str, tuple[Any, ...]] = {
    "q_proj": ("tp", None),
    "q_b_proj": ("tp", None),
    "kv_b_proj": ("tp", None),
    "o_proj": (None, "tp"),
    "shared_gate": ("tp", None),
    "shared_up": ("tp", None),
    "shared_down": (None, "tp"),
    "experts_gate": ("ep", None, None),
    "experts_up": ("ep", None, None),
    "experts_down": ("ep", None, None),
}


@dataclass(frozen=True)
class MoEBlockConfig:
    """The hyper-parameters of one block, as ``config.json`` names them (see :func:`block_config`)."""

    hidden: int
    n_heads: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    kv_lora_rank: int
    n_routed_experts: int
    top_k: int
    routed_scaling_factor: float
    rms_norm_eps: float = 1e-6


_CONFIG_KEYS = {
    "hidden": "hidden_size",
    "n_heads": "num_attention_heads",
    "qk_nope_head_dim": "qk_nope_head_dim",
    "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim",
    "kv_lora_rank": "kv_lora_rank",
    "n_routed_experts": "n_routed_experts",
    "top_k": "num_experts_per_tok",
    "routed_scaling_factor": "routed_scaling_factor",
    "rms_norm_eps": "rms_norm_eps",
}


def block_config(config: Mapping[str, Any], where: str = "config.json") -> MoEBlockConfig:
    """The block's hyper-parameters from a DeepSeek-V3 ``config.json`` (a parsed mapping); a missing
    key is a FileFormatError naming it."""
    missing = [key for field, key in _CONFIG_KEYS.items() if key not in config and field != "rms_norm_eps"]
    if missing:
        raise FileFormatError(f"{where}: has no {', '.join(missing)}; a DeepSeek-V3 block needs them")
    values = {field: config[key] for field, key in _CONFIG_KEYS.items() if key in config}
    return MoEBlockConfig(**values)


_LOW_RANK_QUERY = ("q_a_proj", "q_a_norm", "q_b_proj")


# --- loading: each device reads its own tiles --------------------------------------------------------


def _bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` per axis of a device's index (JAX hands ``slice(None)`` for a whole axis)."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(s.indices(n)[:2] for s, n in zip(index, shape))


class _TileReader:
    """Copies one device's part of stored arrays (memory-mapped numpy) and reports what it read."""

    def __init__(self, on_read: Callable[[str, tuple[tuple[int, int], ...], int], None] | None) -> None:
        self.on_read = on_read

    def part(self, name: str, host: Any, bounds: tuple[tuple[int, int], ...]) -> Any:
        """``host[bounds]`` as a fresh array: only those bytes of the file are touched."""
        import numpy as np

        part = np.array(host[tuple(slice(a, b) for a, b in bounds)], copy=True)
        if self.on_read is not None:
            self.on_read(name, bounds, int(part.nbytes))
        return part

    def array(self, names: list[str], hosts: list[Any], sharding: Any, stacked: bool) -> Any:
        """A global jax.Array over ``hosts`` (one array, or ``len(names)`` stacked along a new first
        axis), each device's shard read by its own callback."""
        import jax
        import numpy as np

        shape = ((len(hosts),) if stacked else ()) + tuple(int(d) for d in hosts[0].shape)

        def read(index: tuple[slice, ...]) -> Any:
            bounds = _bounds(index, shape)
            if not stacked:
                return self.part(names[0], hosts[0], bounds)
            (first, last), rest = bounds[0], bounds[1:]
            return np.stack([self.part(names[e], hosts[e], rest) for e in range(first, last)])

        return jax.make_array_from_callback(shape, sharding, read)


def load_sharded(
    checkpoint: str | os.PathLike[str] | DeepSeekV3Checkpoint,
    mesh: Any,
    plan: Mapping[str, Any] | None = None,
    *,
    layer: int = 0,
    on_read: Callable[[str, tuple[tuple[int, int], ...], int], None] | None = None,
) -> dict[str, Any]:
    """The tensors of block ``layer`` placed on ``mesh``, each device holding only its own tiles.

    ``checkpoint`` is a DeepSeek-V3 FP8 directory (or index, or file) or a mapping opened with
    :func:`breccia.bridges.load_deepseek_v3` (numpy framework). ``plan`` maps a role (a key of
    :data:`TENSORS`) to ``PartitionSpec`` entries; roles it omits are replicated. Default:
    :data:`DEFAULT_PLAN` over mesh axes ``("ep", "tp")``. Returns ``{role: ScaledTensor | jax.Array}``
    for :func:`moe_block`; the routed experts are stacked ``[E, out, in]`` ScaledTensors.

    Each device's shard is read by its own ``jax.make_array_from_callback`` callback from the
    checkpoint's memory map (see the module docstring). ``on_read(name, bounds, nbytes)``, if given, is
    called for every such read with the stored tensor's name (``*_scale_inv`` for scales), the
    ``(start, stop)`` range read along each axis, and the bytes copied.

    Every tensor is looked up and every spec checked before anything is read: ShapeError when a spec
    does not split a tensor into whole 128x128 tiles per device (or the experts into equal groups),
    names a mesh axis the mesh lacks, or has more entries than the tensor has axes; ShapeError for a
    role that is not a tensor of the block; FileFormatError when the checkpoint lacks one of the
    block's tensors.
    """
    from jax.sharding import NamedSharding, PartitionSpec

    plan = DEFAULT_PLAN if plan is None else plan
    unknown = sorted(set(plan) - set(TENSORS))
    if unknown:
        raise ShapeError(
            f"the plan names {unknown}, which are not tensors of the block; roles: {sorted(TENSORS)}"
        )
    opened = not isinstance(checkpoint, DeepSeekV3Checkpoint)
    source = load_deepseek_v3(checkpoint, "numpy") if opened else checkpoint
    reader = _TileReader(on_read)
    prefix = f"model.layers.{layer}."
    try:
        n_experts = 0
        while f"{prefix}{TENSORS['experts_gate'].format(e=n_experts)}" in source:
            n_experts += 1
        if n_experts == 0:
            raise FileFormatError(f"{source.path}: has no routed experts ({prefix}{TENSORS['experts_gate']})")
        low_rank = f"{prefix}{TENSORS['q_a_proj']}" in source
        skipped = ("q_proj",) if low_rank else _LOW_RANK_QUERY
        planned = []
        for role, pattern in TENSORS.items():  # every tensor found and every spec checked before a read
            if role in skipped:
                continue
            stacked = "{e}" in pattern
            names = [prefix + pattern.format(e=e) for e in range(n_experts if stacked else 1)]
            values = [_stored(source, name) for name in names]
            spec = PartitionSpec(*plan.get(role, ()))
            _check_split(names, values, stacked, spec, mesh)
            planned.append((role, names, values, NamedSharding(mesh, spec), stacked))
        return {
            role: _place(reader, names, values, sharding, stacked)
            for role, names, values, sharding, stacked in planned
        }
    finally:
        if opened:
            source.close()


def _stored(checkpoint: DeepSeekV3Checkpoint, name: str) -> Any:
    """The checkpoint's value for ``name`` over its memory-mapped file (nothing copied yet)."""
    if name not in checkpoint:
        raise FileFormatError(f"{checkpoint.path}: has no tensor {name!r}, which the DeepSeek block needs")
    return checkpoint[name]


def _check_split(names: list[str], values: list[Any], stacked: bool, spec: Any, mesh: Any) -> None:
    """ShapeError unless ``spec`` splits the tensor (the experts stacked) into whole tiles per device."""
    first = values[0]
    lead = (len(values),) if stacked else ()
    what = f"{names[0]} (and the other experts, stacked)" if stacked else names[0]
    for name, value in zip(names[1:], values[1:]):
        same = type(value) is type(first) and tuple(value.shape) == tuple(first.shape)
        if not same or (isinstance(first, ScaledTensor) and value.recipe != first.recipe):
            raise FileFormatError(
                f"{name} differs from {names[0]} in type, shape or recipe; the routed experts are stacked "
                "into one tensor, so they must match"
            )
    if isinstance(first, ScaledTensor):
        shape, block = lead + first.shape, (1,) * len(lead) + first.layout.block_shape(first.shape)
    else:
        shape = lead + tuple(int(d) for d in first.shape)
        block = (1,) * len(shape)
    check_block_split(shape, block, spec, mesh.shape, what)


def _place(reader: _TileReader, names: list[str], values: list[Any], sharding: Any, stacked: bool) -> Any:
    """One role's tensor on the mesh: a ScaledTensor (data and scale read tile by tile) or an array."""
    first = values[0]
    if not isinstance(first, ScaledTensor):
        return reader.array(names, values, sharding, stacked)
    shape = ((len(values),) if stacked else ()) + first.shape
    scale_names = [name + SCALE_SUFFIX for name in names]
    data = reader.array(names, [v.data for v in values], sharding, stacked)
    scale = reader.array(scale_names, [v.scale for v in values], sharding, stacked)
    return first.replace(data=data, scale=scale, shape=shape, framework="jax")


# --- the block ---------------------------------------------------------------------------------------


def _activation(h: Any, w: Any) -> Any:
    """``h`` as the input of linears with weights like ``w``: 1x128 FP8 by DeepSeek's ``act_quant``
    rule where ``w`` is FP8 (cast once for every linear that reads ``h``: the same codes each would
    make), else ``h`` in ``w``'s dtype (the bf16 baseline)."""
    if isinstance(w, ScaledTensor):
        return cast(h, deepseek_recipe("activation"))
    return h.astype(w.dtype)


def _linear(h: Any, w: Any) -> Any:
    """``h @ w.T`` in float32 for an input made by :func:`_activation`: ``bc.linear`` for FP8, a
    plain matmul with float32 accumulation for bf16."""
    import jax.numpy as jnp

    if isinstance(w, ScaledTensor):
        return scaled_linear(h, w)
    return jnp.matmul(h, w.T, preferred_element_type=jnp.float32)


def _experts(h: Any, gate: Any, up: Any, down: Any) -> Any:
    """Every routed expert on every token, ``[E, T, hidden]``, ``h`` from :func:`_activation`:
    ``jax.vmap`` over the stacked weights' expert axis, so an expert-parallel split of that axis
    splits the work (each step is 2-D linears)."""
    import jax

    def unstack(w: Any, arrays: tuple[Any, Any]) -> Any:
        if not isinstance(w, ScaledTensor):
            return arrays[0]
        return w.replace(data=arrays[0], scale=arrays[1], shape=w.shape[1:])

    def one(arrays: tuple[Any, ...]) -> Any:
        g, u, d = (unstack(w, arrays[2 * i : 2 * i + 2]) for i, w in enumerate((gate, up, down)))
        return _linear(_activation(jax.nn.silu(_linear(h, g)) * _linear(h, u), d), d)

    def leaves(w: Any) -> tuple[Any, Any]:
        return (w.data, w.scale) if isinstance(w, ScaledTensor) else (w, w)

    return jax.vmap(one)((*leaves(gate), *leaves(up), *leaves(down)))


def _rmsnorm(x: Any, weight: Any, eps: float) -> Any:
    import jax
    import jax.numpy as jnp

    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * weight.astype(jnp.float32)


def attention(params: Mapping[str, Any], x: Any, config: MoEBlockConfig) -> Any:
    """MLA's projections and causal attention over the ``T`` tokens of ``x``; ``x + attn(x)``."""
    import jax
    import jax.numpy as jnp

    c = config
    t = x.shape[0]
    low_rank = "q_proj" not in params
    h = _activation(
        _rmsnorm(x, params["input_norm"], c.rms_norm_eps), params["q_a_proj" if low_rank else "q_proj"]
    )
    if low_rank:
        q_latent = _rmsnorm(_linear(h, params["q_a_proj"]), params["q_a_norm"], c.rms_norm_eps)
        q = _linear(_activation(q_latent, params["q_b_proj"]), params["q_b_proj"])
    else:
        q = _linear(h, params["q_proj"])
    q = q.reshape(t, c.n_heads, c.qk_nope_head_dim + c.qk_rope_head_dim)
    kv = _linear(h, params["kv_a_proj"])
    latent = _rmsnorm(kv[:, : c.kv_lora_rank], params["kv_a_norm"], c.rms_norm_eps)
    k_pe = kv[:, c.kv_lora_rank :]
    kv_b = _linear(_activation(latent, params["kv_b_proj"]), params["kv_b_proj"])
    kv_b = kv_b.reshape(t, c.n_heads, c.qk_nope_head_dim + c.v_head_dim)
    k_nope, v = kv_b[..., : c.qk_nope_head_dim], kv_b[..., c.qk_nope_head_dim :]
    scores = jnp.einsum("thd,shd->hts", q[..., : c.qk_nope_head_dim], k_nope)
    scores = scores + jnp.einsum("thd,sd->hts", q[..., c.qk_nope_head_dim :], k_pe)
    scores = scores / jnp.float32(math.sqrt(c.qk_nope_head_dim + c.qk_rope_head_dim))
    causal = jnp.tril(jnp.ones((t, t), bool))
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    out = jnp.einsum("hts,shd->thd", probs, v).reshape(t, c.n_heads * c.v_head_dim)
    return x + _linear(_activation(out, params["o_proj"]), params["o_proj"])


def moe(params: Mapping[str, Any], x: Any, config: MoEBlockConfig) -> Any:
    """DeepSeek-V3's MoE MLP with its residual: ``x + shared(h) + sum_e w_e expert_e(h)``."""
    import jax
    import jax.numpy as jnp

    c = config
    h = _rmsnorm(x, params["post_norm"], c.rms_norm_eps)
    router = params["router"]
    logits = jnp.matmul(h.astype(jnp.bfloat16), router.astype(jnp.bfloat16).T)  # bf16, as DeepSeek's Gate
    scores = jax.nn.sigmoid(logits.astype(jnp.float32))
    _, chosen = jax.lax.top_k(scores + params["router_bias"].astype(jnp.float32), c.top_k)
    picked = jnp.take_along_axis(scores, chosen, axis=-1)
    picked = picked / jnp.sum(picked, axis=-1, keepdims=True) * jnp.float32(c.routed_scaling_factor)
    weights = jnp.sum(
        jax.nn.one_hot(chosen, c.n_routed_experts, dtype=jnp.float32) * picked[..., None], axis=-2
    )
    hq = _activation(h, params["shared_gate"])
    mid = jax.nn.silu(_linear(hq, params["shared_gate"])) * _linear(hq, params["shared_up"])
    shared = _linear(_activation(mid, params["shared_down"]), params["shared_down"])
    routed = _experts(hq, params["experts_gate"], params["experts_up"], params["experts_down"])
    return x + shared + jnp.einsum("te,eth->th", weights, routed)


def moe_block(params: Mapping[str, Any], x: Any, config: MoEBlockConfig) -> Any:
    """One DeepSeek-V3 block on tokens ``x`` ``[T, hidden]`` (float32): attention, then the MoE MLP.

    ``params`` is what :func:`load_sharded` returns (FP8 ScaledTensors), or :func:`to_bfloat16` of it
    (the bf16 baseline). Run it under ``jax.jit`` with ``config`` closed over (it is static).
    """
    return moe(params, attention(params, x, config), config)


def to_bfloat16(params: Mapping[str, Any]) -> dict[str, Any]:
    """The bf16 baseline: every ScaledTensor dequantized to bf16 where its tiles live (same sharding,
    no communication), the other tensors unchanged."""
    import jax

    def widen(p: Mapping[str, Any]) -> dict[str, Any]:
        return {k: dequantize(v, "bfloat16") if isinstance(v, ScaledTensor) else v for k, v in p.items()}

    return jax.jit(widen)(dict(params))
