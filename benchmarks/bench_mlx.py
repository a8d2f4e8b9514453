"""MLX bridge: repacking a ScaledTensor into MLX's form, and breccia's MLX-mode casts, next to mx.quantize.

    python benchmarks/bench_mlx.py [--quick]

Table 1 (``to_mlx_quantized``): time to hand MLX a 4096x4096 weight that breccia already holds,
against ``mx.quantize`` of the same float32 weight; ``ratio`` = to_mlx / mx.quantize (target <= 0.3:
a repack, never a requantization). Table 2 (cast): ``bc.cast(x, mlx_recipe(mode))`` on MLX against
``mx.quantize(x, mode=mode)``; ``x peer`` = mx.quantize time / breccia time (target >= 1 for MX).
Every timed call ends in ``mx.eval`` of all outputs.
"""

from __future__ import annotations

import argparse
from typing import Any

import mlx.core as mx
import numpy as np
from _timing import median_seconds

import breccia as bc
from breccia.bridges import mlx_recipe, to_mlx_quantized

MODES = [("mxfp8", 32, 8), ("mxfp4", 32, 4), ("nvfp4", 16, 4), ("affine", 64, 4), ("affine", 64, 8)]


def _arrays(out: Any) -> list[Any]:
    if isinstance(out, bc.ScaledTensor):
        return [a for a in out.arrays if a is not None]
    if hasattr(out, "weight"):
        return [a for a in (out.weight, out.scales, out.biases, out.global_scale) if a is not None]
    return [a for a in out if a is not None]


def _evaluate(out: Any) -> None:
    """Make MLX compute ``out`` (it is lazy), inside the timed region."""
    mx.eval(*_arrays(out))


def label(mode: str, bits: int) -> str:
    return f"{mode}{bits}" if mode == "affine" else mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512x512 instead of 4096x4096")
    args = parser.parse_args()
    n = 512 if args.quick else 4096
    rng = np.random.default_rng(0)
    x = mx.array(rng.standard_normal((n, n)).astype(np.float32))
    mx.eval(x)
    print(f"weight {n}x{n} float32, MLX {mx.__version__} on {mx.default_device()}")
    print(f"\n{'mode':<9} {'to_mlx_quantized':>17} {'mx.quantize':>12} {'ratio':>7}")
    casts = []
    for mode, group, bits in MODES:
        recipe = mlx_recipe(mode, group, bits)
        st = bc.cast(x, recipe)
        mx.eval(*_arrays(st))
        t_repack = median_seconds(lambda st=st: to_mlx_quantized(st, exact=False), sync=_evaluate)
        t_peer = median_seconds(
            lambda m=mode, g=group, b=bits: mx.quantize(x, group_size=g, bits=b, mode=m), sync=_evaluate
        )
        ratio = t_repack / t_peer
        print(f"{label(mode, bits):<9} {t_repack * 1e3:>14.2f} ms {t_peer * 1e3:>9.2f} ms {ratio:>7.3f}")
        t_cast = median_seconds(lambda r=recipe: bc.cast(x, r), sync=_evaluate)
        casts.append((label(mode, bits), t_cast, t_peer))
    print(f"\n{'mode':<9} {'bc.cast':>12} {'mx.quantize':>12} {'x peer':>7}")
    for name, t_cast, t_peer in casts:
        print(f"{name:<9} {t_cast * 1e3:>9.2f} ms {t_peer * 1e3:>9.2f} ms {t_peer / t_cast:>7.2f}")


if __name__ == "__main__":
    main()
