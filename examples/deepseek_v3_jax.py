"""Run a DeepSeek-V3 FP8 MoE block in JAX straight from the checkpoint's FP8 weights.

    python examples/deepseek_v3_jax.py              # writes a tiny synthetic checkpoint first
    python examples/deepseek_v3_jax.py --devices 8  # and shards the experts' weights over 8 CPU devices

What happens:
1. ``write_checkpoint`` writes the exact DeepSeek-V3 layout at toy size: three shards, an index,
   FP8 ``weight`` + float32 ``weight_scale_inv`` (in another shard than the weight), a ragged MLA
   projection (576 rows -> 5 tile rows), routed + shared experts, bf16 norms and router.
2. ``load_deepseek_v3(path, framework="jax")`` opens it lazily: FP8 weights come back as breccia
   ScaledTensors (a JAX pytree), everything else as jax arrays.
3. The MoE block runs under ``jax.jit`` with FP8 weights and 1x128 FP8 activations (DeepSeek's
   ``act_quant`` rule) and is compared with float32.
4. With ``--devices N``, each expert weight is split over a mesh by output rows (whole 128-row
   tiles per device, scales split the same way) and the block runs again under SPMD.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1, help="simulated CPU devices for sharding")
    args = parser.parse_args()
    if args.devices > 1:  # must be set before JAX starts
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, PartitionSpec

    import breccia as bc
    from breccia.bridges import load_deepseek_v3
    from breccia.demo.deepseek import TinyV3Config, moe_block, moe_params, write_checkpoint
    from breccia.sharding import shard_jax

    config = TinyV3Config()
    with tempfile.TemporaryDirectory() as tmp:
        masters = write_checkpoint(tmp, config)
        model = load_deepseek_v3(tmp, framework="jax")
        print(model)
        kv = model["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]
        print("MLA projection:", kv)

        params = moe_params(model)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((8, config.hidden)).astype(np.float32))
        block = jax.jit(lambda p, x: moe_block(p, x, config))
        y8 = block(params, x)
        y32 = moe_block(moe_params(masters), x, config)
        err = float(jnp.linalg.norm(y8 - y32) / jnp.linalg.norm(y32))
        print(f"MoE block, FP8 weights and activations vs float32: relative error {err:.3e}")

        if args.devices > 1:
            mesh = Mesh(np.array(jax.devices()), ("tp",))
            spec = PartitionSpec("tp", None)

            def place(w):
                if isinstance(w, bc.ScaledTensor) and w.shape[0] % (128 * args.devices) == 0:
                    return shard_jax(w, mesh, spec)
                return w

            sharded = jax.tree_util.tree_map(place, params, is_leaf=lambda w: isinstance(w, bc.ScaledTensor))
            ys = block(sharded, x)
            diff = float(jnp.max(jnp.abs(ys - y8)))
            print(f"sharded over {args.devices} devices: max |difference| from one device {diff:.2e}")
        model.close()
    return 0 if err < 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
