"""Quantize throughput: every recipe on every backend, beside each framework's bare FP8 cast.

GB/s counts bytes read plus bytes written (input, then data and scales). The anchors are the
frameworks' own casts, which compute no amax and no scale: ``astype(ml_dtypes.float8_e4m3fn)``,
``torch .to(float8_e4m3fn)``, jitted ``jnp.astype``, ``mx.to_fp8``, and MLX's ``mx.quantize`` for the
MX modes. Ratios are breccia / anchor (higher is better), each anchor timed in samples alternating
with the recipe's (``_timing.paired_median_seconds``), so both see the same machine state. On CUDA a
sample is ``GPU_BATCH`` calls back to back and one synchronize (the device's throughput, the host's
dispatch overlapped), for both sides.

    python benchmarks/bench_quantize.py                 # 4096x4096 float32 on the CPU
    python benchmarks/bench_quantize.py --device cuda   # bf16 16384x8192 on a CUDA GPU (torch, jax)
    python benchmarks/bench_quantize.py --quick         # small, to smoke-test the script
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from typing import Any

import numpy as np
from _timing import GPU_BATCH, paired_median_seconds

import breccia as bc
from breccia.backends import get_backend
from breccia.demo.core import DEMO_RECIPES, installed_frameworks

RECIPES = DEMO_RECIPES


def _caster(recipe: bc.Recipe, x: Any) -> Callable[[], bc.ScaledTensor]:
    """One cast of ``x``; DelayedScaling's is its second step, scaled from the history that a first
    step recorded (one pass over ``x``, where current per-tensor scaling needs two)."""
    if isinstance(recipe, bc.DelayedScaling):
        _, history = bc.cast_with_history(x, recipe)
        return lambda: bc.cast(x, recipe, history=history)
    return lambda: bc.cast(x, recipe)


def _sync(framework: str) -> Callable[[Any], None]:
    if framework == "jax":
        return lambda out: [a.block_until_ready() for a in _leaves(out)]
    if framework == "mlx":
        import mlx.core as mx

        return lambda out: mx.eval(*_leaves(out))
    if framework == "torch":
        import torch

        return lambda out: torch.cuda.synchronize() if torch.cuda.is_available() else None
    return lambda out: None


def _leaves(out: Any) -> list[Any]:
    if isinstance(out, bc.ScaledTensor):
        return [a for a in out.arrays if a is not None]
    return [out]


def bare_cast(framework: str, x: Any) -> tuple[str, Callable[[], Any]]:
    """The framework's own FP8 cast of ``x`` (no scaling), as the speed anchor."""
    if framework == "numpy":
        import ml_dtypes

        return "astype(float8_e4m3fn)", lambda: x.astype(ml_dtypes.float8_e4m3fn)
    if framework == "torch":
        import torch

        return "tensor.to(float8_e4m3fn)", lambda: x.to(torch.float8_e4m3fn)
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        cast = jax.jit(lambda a: a.astype(jnp.float8_e4m3fn))
        return "jit(astype(float8_e4m3fn))", lambda: cast(x)
    import mlx.core as mx

    return "mx.to_fp8", lambda: mx.to_fp8(x)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small input, few repeats")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--framework", action="append", help="only this framework (repeatable)")
    args = parser.parse_args()

    if args.device == "cuda":
        shape, dtype = ((1024, 1024) if args.quick else (16384, 8192)), "bfloat16"
        frameworks = ["torch", "jax"]
    else:
        shape, dtype = ((512, 512) if args.quick else (4096, 4096)), "float32"
        frameworks = installed_frameworks()
    frameworks = [f for f in frameworks if not args.framework or f in args.framework]
    repeat = 3 if args.quick else args.repeat
    rng = np.random.default_rng(0)
    host = rng.standard_normal(shape).astype(np.float32)
    machine = platform.processor() or platform.machine()
    print(f"quantize {shape[0]}x{shape[1]} {dtype} on {args.device} ({machine})")
    print(f"{'framework':<8} {'recipe':<44} {'GB/s':>8} {'anchor':<28} {'GB/s':>8} {'ratio':>6}")
    for framework in frameworks:
        backend = get_backend(framework)
        device = _device(framework, args.device)
        x = backend.astype(backend.from_numpy(host, device=device), dtype)
        in_bytes = host.size * (2 if dtype == "bfloat16" else 4)
        sync = _sync(framework)
        anchors = {None: (*bare_cast(framework, x), in_bytes + host.size)}
        if framework == "mlx":
            anchors.update(_mlx_quantize_anchors(x, in_bytes))
        batch = GPU_BATCH if args.device == "cuda" else 1  # GPU: device throughput, dispatch overlapped
        for recipe in RECIPES:
            cast = _caster(recipe, x)
            result = cast()
            name, anchor, anchor_bytes = anchors.get(_mlx_mode(recipe), anchors[None])
            timing = dict(sync=sync, repeat=repeat, batch=batch)
            seconds, anchor_seconds = paired_median_seconds(cast, anchor, **timing)
            gbs = (in_bytes + result.nbytes) / seconds / 1e9
            ref = anchor_bytes / anchor_seconds / 1e9
            print(
                f"{framework:<8} {recipe.label():<44} {gbs:>8.2f} {name:<28} {ref:>8.2f} {gbs / ref:>5.2f}x"
            )


def _device(framework: str, device: str) -> Any:
    if device == "cpu":
        return None
    if framework == "jax":
        import jax

        return jax.devices("gpu")[0]
    return "cuda"


def _mlx_mode(recipe: bc.Recipe) -> str | None:
    if isinstance(recipe, bc.MXFP8BlockScaling):
        return "mxfp8"
    if isinstance(recipe, bc.MXFP4BlockScaling):
        return "mxfp4"
    if isinstance(recipe, bc.NVFP4BlockScaling):
        return "nvfp4"
    return None


def _mlx_quantize_anchors(x: Any, in_bytes: int) -> dict:
    """``mx.quantize`` of ``x`` in each MLX mode: ``mode -> (name, call, bytes read + written)``."""
    import mlx.core as mx

    anchors = {}
    for mode, group, bits in (("mxfp8", 32, 8), ("mxfp4", 32, 4), ("nvfp4", 16, 4)):

        def run(mode=mode, group=group, bits=bits):
            return [a for a in mx.quantize(x, group_size=group, bits=bits, mode=mode) if a is not None]

        anchors[mode] = (f"mx.quantize(mode={mode})", run, in_bytes + sum(a.nbytes for a in run()))
    return anchors


if __name__ == "__main__":
    main()
