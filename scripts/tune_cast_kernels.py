"""Sweep the fused cast kernels' tile shapes and warp counts on a CUDA GPU; print TB/s of each.

    python scripts/tune_cast_kernels.py [--framework torch|jax|both] [--case MXFP4 ...]

Times the kernel launches alone (``launch_cast``, or ``launch_per_tensor`` for the per-tensor plan, on a
planned geometry; bytes read + written), then
``bc.cast`` as a user calls it, synchronized after every call and back to back (the difference is the
host's per-call overhead), and the warp counts of the 128x128 dequantize kernel. The defaults of
``breccia.kernels._cast_plan`` come from this sweep (JAX's PerRow casts of wide rows take 4 warps
whatever the plan says: ``jax_cast._cast_warps``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np

import breccia as bc
from breccia.backends import get_backend
from breccia.kernels._cast_plan import cast_plan, dequantize_plan

SHAPE = (16384, 8192)
CASES = [
    ("1x128 te", bc.Float8BlockScaling(), None),
    ("1x128 deepseek", bc.Float8BlockScaling(convention="deepseek"), None),
    ("128x128 te", bc.Float8BlockScaling(block_m=128), None),
    ("MXFP8", bc.MXFP8BlockScaling(), None),
    ("MXFP4", bc.MXFP4BlockScaling(), None),
    ("per-row", bc.Float8CurrentScaling(), bc.PerRow()),
    ("per-tensor", bc.Float8CurrentScaling(), bc.PerTensor()),
    ("per-tensor delayed", bc.DelayedScaling(amax_history_len=16), bc.PerTensor()),
]


def _variants(plan):
    if plan.block_rows > 1:
        return [dataclasses.replace(plan, num_warps=w) for w in (4, 8, 16, 32)]
    out = []
    for factor in (0.25, 0.5, 1, 2, 4):
        rows = max(1, int(plan.tile_rows * factor))
        for warps in (4, 8, 16):
            if rows * plan.tile_blocks * plan.block_pad >= warps * 32:
                out.append(dataclasses.replace(plan, tile_rows=rows, num_warps=warps))
    return out


def _timer(framework):
    if framework == "torch":
        import torch

        def run(fn, repeat=20):
            fn()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeat):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / repeat

        return run

    import jax

    def run(fn, repeat=20):
        jax.block_until_ready(fn())
        t = time.perf_counter()
        for _ in range(repeat):
            out = fn()
        jax.block_until_ready(out)
        return (time.perf_counter() - t) / repeat

    return run


def _synced(framework, fn, repeat=15):
    import jax
    import torch

    wait = torch.cuda.synchronize if framework == "torch" else None
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        wait() if wait else jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--framework", default="both", choices=["torch", "jax", "both"])
    parser.add_argument("--case", action="append", choices=[name for name, _, _ in CASES],
                        help="only this case (repeatable); default: all, and the dequantize sweep")
    args = parser.parse_args()
    host = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    frameworks = ["torch", "jax"] if args.framework == "both" else [args.framework]
    for framework in frameworks:
        if framework == "torch":
            import torch

            from breccia.kernels import torch_cast as kernels

            x = torch.from_numpy(host).cuda().to(torch.bfloat16)
        else:
            import jax
            import jax.numpy as jnp

            from breccia.kernels import jax_cast as kernels

            x = jax.device_put(host, jax.devices("gpu")[0]).astype(jnp.bfloat16)
        timer = _timer(framework)
        backend = get_backend(framework)
        for name, recipe, layout in CASES:
            if args.case and name not in args.case:
                continue
            layout = layout or recipe.default_layout()
            base = cast_plan(recipe, layout, SHAPE, "bfloat16")
            written = host.size * (0.5 if base.packed else 1)
            results = []
            history = None
            if isinstance(recipe, bc.DelayedScaling):
                ones = np.ones((16,), np.float32)
                history = torch.from_numpy(ones).cuda() if framework == "torch" else jnp.asarray(ones)
            for plan in _variants(base):
                def launch(v, p=plan, r=recipe, h=history, b=backend):  # a per-tensor plan: all its launches
                    if p.rule == "given":
                        return kernels.launch_per_tensor(b, p, r, v, h)
                    return kernels.launch_cast(b, p, v)

                if framework == "torch":
                    call = lambda x=x, f=launch: f(x)  # noqa: E731
                else:
                    jitted = jax.jit(lambda v, f=launch: f(v)[0])
                    call = lambda f=jitted, x=x: f(x)  # noqa: E731
                try:
                    seconds = timer(call)
                except Exception as exc:  # a geometry the compiler rejects: report and go on
                    where = f"{framework} {name} rows={plan.tile_rows} warps={plan.num_warps}"
                    print(f"{where}: {type(exc).__name__}")
                    continue
                results.append(((2 * host.size + written) / seconds / 1e12, plan.tile_rows, plan.num_warps))
            results.sort(reverse=True)
            best = ", ".join(f"{tb:.2f} (rows {r}, warps {w})" for tb, r, w in results[:3])
            default = next((tb for tb, r, w in results if (r, w) == (base.tile_rows, base.num_warps)), 0.0)
            full_synced = _synced(framework, lambda r=recipe, lay=layout, x=x: bc.cast(x, r, lay))
            full_queued = timer(lambda r=recipe, lay=layout, x=x: bc.cast(x, r, lay))
            in_out = 2 * host.size + written
            print(f"{framework:<6} {name:<18} default {default:.2f} TB/s | best {best} | bc.cast synced "
                  f"{in_out / full_synced / 1e12:.2f}, back to back {in_out / full_queued / 1e12:.2f}")
        if not args.case:
            _dequantize_sweep(framework, kernels, timer, x, host.size)


def _dequantize_sweep(framework, kernels, timer, x, size) -> None:
    """Warp counts of the 128x128 dequantize (DeepSeek weights -> bf16), the kernel alone."""
    st = bc.cast(x, bc.Float8BlockScaling(block_m=128, convention="deepseek"))
    base = dequantize_plan(st.recipe, st.layout, st.shape, "bfloat16")
    backend = get_backend(framework)
    results = []
    for warps in (4, 8, 16, 32):
        plan = dataclasses.replace(base, num_warps=warps)
        if framework == "torch":
            call = lambda p=plan: kernels.launch_dequantize(backend, p, st.data, st.scale, "bfloat16")  # noqa: E731
        else:
            import jax

            jitted = jax.jit(lambda d, s, p=plan: kernels.launch_dequantize(backend, p, d, s, "bfloat16"))
            call = lambda f=jitted: f(st.data, st.scale)  # noqa: E731
        results.append((3 * size / timer(call) / 1e12, warps))
    line = ", ".join(f"{tb:.2f} ({w} warps{', default' if w == base.num_warps else ''})" for tb, w in results)
    print(f"{framework:<6} dequant 128x128    {line}")


if __name__ == "__main__":
    main()
