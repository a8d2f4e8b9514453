"""One DeepSeek-V3 block (MLA projections, router, shared + routed experts) in FP8, sharded with JAX.

    python benchmarks/bench_sharded.py                          # the devices JAX has (GPUs: 1, 2, 4, 8)
    python benchmarks/bench_sharded.py --cpu-devices 8 --size tiny   # 8 simulated CPU devices

For each device count n in 1, 2, 4, 8 (those ``jax.devices()`` has), the block's weights are loaded
tile by tile onto a mesh of n devices (``breccia.models.load_sharded``: each device reads only its
own 128x128 tiles of the checkpoint) and :func:`breccia.models.moe_block` runs under ``jax.jit`` with
FP8 weights and 1x128 FP8 activations, then the same block with the weights in bf16
(``to_bfloat16``: dequantized where they live), both timed in turn (``_timing.interleaved_median_
seconds``), for a decode-shaped batch (few tokens) and a prefill-shaped one (many).

Layout: when n divides the expert count, DeepSeek's own (``inference/model.py``): attention heads,
the shared expert's columns/rows and the routed experts all split over the same n devices (mesh
``(ep=1, tp=n)``, experts on ``tp``); otherwise experts over ``ep = gcd(n, E)`` and heads over
``tp = n / ep``. Columns: the block's time ("per layer": one block is one transformer layer),
tokens/s, speed-up and scaling efficiency against one device (``t1 / (n * tn)``, fixed problem), the
bf16 block's time and ``bf16 / fp8`` (above 1: FP8 faster). ``max |fp8 n - fp8 1|`` checks each
sharded result against one device's. Simulated CPU devices share the host's cores: their times show
that the code runs, not how it scales.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Any

#: TinyV3Config fields: every split tile grid divides by the tp of 1, 2, 4 and 8 devices; "tiny" has
#: one q_proj (DeepSeek-V2-Lite's queries), the others DeepSeek-V3's q_a_proj + q_b_proj
SIZES = {
    "tiny": dict(hidden=256, moe_intermediate=512, n_routed_experts=4, kv_lora_rank=512, n_heads=8),
    "small": dict(
        hidden=1024,
        moe_intermediate=1024,
        n_routed_experts=8,
        kv_lora_rank=512,
        n_heads=16,
        qk_nope_head_dim=128,
        v_head_dim=128,
        q_lora_rank=512,
    ),
    "medium": dict(
        hidden=2048,
        moe_intermediate=2048,
        n_routed_experts=8,
        kv_lora_rank=512,
        n_heads=16,
        qk_nope_head_dim=128,
        v_head_dim=128,
        q_lora_rank=1536,
    ),
}


def layout(n: int, experts: int) -> tuple[tuple[int, int], dict[str, tuple[Any, ...]], str]:
    """``(mesh shape (ep, tp), plan, description)`` for ``n`` devices (see the module docstring)."""
    from breccia.models import DEFAULT_PLAN

    if experts % n == 0:
        plan = {role: tuple("tp" if a == "ep" else a for a in spec) for role, spec in DEFAULT_PLAN.items()}
        return (1, n), plan, f"heads and experts over {n}"
    ep = math.gcd(n, experts)
    return (ep, n // ep), dict(DEFAULT_PLAN), f"experts over {ep}, heads over {n // ep}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--cpu-devices", type=int, default=0, help="simulate this many CPU devices")
    parser.add_argument("--decode", type=int, default=8, help="tokens of the decode-shaped batch")
    parser.add_argument("--prefill", type=int, default=1024, help="tokens of the prefill-shaped batch")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.cpu_devices:  # before JAX starts
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.cpu_devices}"
        os.environ["JAX_PLATFORMS"] = "cpu"

    import jax
    import jax.numpy as jnp
    import numpy as np
    from _timing import interleaved_median_seconds
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from breccia.checkpoints import ModelDirectory
    from breccia.demo.deepseek import TinyV3Config, write_checkpoint
    from breccia.models import block_config, load_sharded, moe_block, to_bfloat16

    devices = jax.devices()
    counts = [n for n in (1, 2, 4, 8) if n <= len(devices)]
    print(
        f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), jax {jax.__version__}, "
        f"size {args.size}: {SIZES[args.size]}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-sharded-") as tmp:
        write_checkpoint(tmp, TinyV3Config(attention=True, **SIZES[args.size]))
        config = block_config(ModelDirectory(tmp).config)
        block = jax.jit(lambda p, x: moe_block(p, x, config))
        rng = np.random.default_rng(0)
        for shape_name, tokens in (("decode", args.decode), ("prefill", args.prefill)):
            x_host = rng.standard_normal((tokens, config.hidden)).astype(np.float32)
            print(f"\n{shape_name}: {tokens} tokens x hidden {config.hidden}")
            print(
                f"{'devices':>7} {'layout':<30} {'fp8 ms':>9} {'tokens/s':>10} {'speed-up':>8} "
                f"{'effic.':>6} {'bf16 ms':>9} {'bf16/fp8':>8} {'max |fp8 n - fp8 1|':>20}"
            )
            base = reference = None
            for n in counts:
                mesh_shape, plan, described = layout(n, config.n_routed_experts)
                mesh = Mesh(np.array(devices[:n]).reshape(mesh_shape), ("ep", "tp"))
                fp8 = load_sharded(tmp, mesh, plan)
                bf16 = to_bfloat16(fp8)
                x = jax.device_put(jnp.asarray(x_host), NamedSharding(mesh, PartitionSpec()))
                y = np.asarray(block(fp8, x))
                reference = y if reference is None else reference
                t8, t16 = interleaved_median_seconds(
                    lambda fp8=fp8, x=x: block(fp8, x),
                    lambda bf16=bf16, x=x: block(bf16, x),
                    repeat=args.repeat,
                    sync=lambda r: r.block_until_ready(),
                )
                base = t8 if base is None else base
                print(
                    f"{n:>7} {described:<30} {t8 * 1e3:>9.3f} {tokens / t8:>10.0f} {base / t8:>8.2f} "
                    f"{base / (n * t8):>6.2f} {t16 * 1e3:>9.3f} {t16 / t8:>8.2f} "
                    f"{float(np.max(np.abs(y - reference))):>20.3g}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
