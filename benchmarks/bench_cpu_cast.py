"""CPU casts: breccia's one-pass kernels (numba) beside each framework's own casts, in one run.

For every installed framework (numpy, torch, JAX, MLX) and every recipe the CPU kernels take, one
row: the time of ``bc.cast`` (the kernel), of the same cast by the shared array-API code (what ran
before the kernels), and of the anchors, with ratios ``anchor time / breccia time`` (higher is
better; 1.0 means as fast as the anchor). Anchors: the framework's bare fp8 cast (no amax, no
scale: ``tensor.to(float8_e4m3fn)``, jitted ``astype``, ``mx.to_fp8``), ml_dtypes'
``astype(float8_e4m3fn)`` on the same values (numpy's bare cast), and for the MX recipes
``mx.quantize`` in the same mode. Each pair of calls is timed in alternating samples
(``_timing.paired_median_seconds``).

    python benchmarks/bench_cpu_cast.py                    # 4096x4096 float32
    python benchmarks/bench_cpu_cast.py --dtype bfloat16
    python benchmarks/bench_cpu_cast.py --quick            # small, to smoke-test the script
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any

import numpy as np
from _timing import paired_median_seconds
from bench_quantize import _sync, bare_cast

import breccia as bc
import breccia.quantize as quantize
from breccia.backends import get_backend
from breccia.demo.core import installed_frameworks
from breccia.layouts import PerRow, PerTensor

RECIPES = [
    ("current per-row", bc.Float8CurrentScaling(), PerRow()),
    ("current per-tensor (2 passes)", bc.Float8CurrentScaling(), PerTensor()),
    ("block 1x128 te", bc.Float8BlockScaling(), None),
    ("block 128x128 te", bc.Float8BlockScaling(block_m=128), None),
    ("deepseek 1x128", bc.Float8BlockScaling(convention="deepseek"), None),
    ("deepseek 128x128", bc.Float8BlockScaling(convention="deepseek", block_m=128), None),
    ("MXFP8 floor", bc.MXFP8BlockScaling(), None),
    ("MXFP8 ceil", bc.MXFP8BlockScaling(scale_rounding="ceil"), None),
    ("MXFP4 floor", bc.MXFP4BlockScaling(), None),
]


def _shared_cast(x: Any, recipe: bc.Recipe, layout: Any) -> bc.ScaledTensor:
    """``bc.cast`` by the shared array-API code (the CPU kernel declined)."""
    kernel = quantize.host_cast
    quantize.host_cast = lambda *args: None
    try:
        return bc.cast(x, recipe, layout)
    finally:
        quantize.host_cast = kernel


def _mx_quantize(x: Any, recipe: bc.Recipe) -> Any:
    import mlx.core as mx

    mode = "mxfp8" if isinstance(recipe, bc.MXFP8BlockScaling) else "mxfp4"
    bits = 8 if mode == "mxfp8" else 4
    return lambda: [a for a in mx.quantize(x, group_size=32, bits=bits, mode=mode) if a is not None]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small input, few repeats")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--framework", action="append", help="only this framework (repeatable)")
    args = parser.parse_args()
    shape = (512, 512) if args.quick else (4096, 4096)
    repeat = 3 if args.quick else args.repeat
    host = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    import ml_dtypes
    import numba

    machine = platform.processor() or platform.machine()
    print(f"CPU cast {shape[0]}x{shape[1]} {args.dtype} ({machine}, {os.cpu_count()} CPUs, "
          f"numba {numba.__version__} on {numba.config.NUMBA_NUM_THREADS} threads, "
          f"ml_dtypes {ml_dtypes.__version__}, load average {os.getloadavg()[0]:.2f}); "
          "ms, ratio = anchor / breccia")
    print(f"{'framework':<7} {'recipe':<30} {'kernel':>7} {'shared':>7} {'speedup':>7} "
          f"{'bare':>6} {'ratio':>6} {'ml_dtypes':>9} {'ratio':>6} {'mx.quantize':>11} {'ratio':>6}")
    frameworks = [f for f in installed_frameworks() if not args.framework or f in args.framework]
    numpy_x = get_backend("numpy").astype(host, args.dtype)
    numpy_bare = bare_cast("numpy", numpy_x)[1]
    for framework in frameworks:
        backend = get_backend(framework)
        x = backend.astype(backend.from_numpy(host), args.dtype)
        framework_sync = _sync(framework)

        def sync(out, framework_sync=framework_sync):  # the ml_dtypes anchor returns numpy
            return None if isinstance(out, np.ndarray) else framework_sync(out)

        bare = bare_cast(framework, x)[1]
        for name, recipe, layout in RECIPES:
            def kernel(x=x, recipe=recipe, layout=layout):
                return bc.cast(x, recipe, layout)

            def shared(x=x, recipe=recipe, layout=layout):
                return _shared_cast(x, recipe, layout)

            timing = dict(sync=sync, repeat=repeat)
            k_s, shared_s = paired_median_seconds(kernel, shared, **timing)
            k2_s, bare_s = paired_median_seconds(kernel, bare, **timing)
            k3_s, ml_s = paired_median_seconds(kernel, numpy_bare, **timing)
            mxq = ""
            if framework == "mlx" and name.startswith("MX"):
                k4_s, mxq_s = paired_median_seconds(kernel, _mx_quantize(x, recipe), **timing)
                mxq = f"{mxq_s * 1e3:>11.1f} {mxq_s / k4_s:>5.2f}x"
            print(f"{framework:<7} {name:<30} {k_s * 1e3:>7.1f} {shared_s * 1e3:>7.1f} "
                  f"{shared_s / k_s:>6.2f}x {bare_s * 1e3:>6.1f} {bare_s / k2_s:>5.2f}x "
                  f"{ml_s * 1e3:>9.1f} {ml_s / k3_s:>5.2f}x {mxq}")


if __name__ == "__main__":
    main()
