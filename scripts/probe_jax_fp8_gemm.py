"""Which XLA pattern gives JAX's FP8 GEMM its speed on this GPU? (a probe for bench_matmul's JAX rows)

Times 8192^3 FP8 GEMMs written several ways under ``jax.jit`` (10 calls back to back per sample) and
prints, for each, TFLOP/s and what XLA made of it: the cuBLASLt custom call's result type and the
fusions around it. ``torch._scaled_mm`` on the same data is the anchor. Run it on the GPU machine:

    python scripts/probe_jax_fp8_gemm.py            # every variant, this process's XLA flags
    XLA_FLAGS=... python scripts/probe_jax_fp8_gemm.py --only pattern-bf16
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import jax
import jax.numpy as jnp
from _timing import median_seconds

N = 8192
NT = (((1,), (1,)), ((), ()))


def _variants(a8, b8, sa, sb):
    f32, bf16 = jnp.float32, jnp.bfloat16

    def deq(x, s):
        return x.astype(f32) * s

    def dot(a, b, out, precision=None):
        return jax.lax.dot_general(a, b, NT, precision=precision, preferred_element_type=out)

    return {
        # what breccia writes today: fp32 dequantize, fp32 dot, convert to bf16
        "pattern-f32-then-bf16": lambda: dot(deq(a8, sa), deq(b8, sb), f32).astype(bf16),
        "pattern-f32-out": lambda: dot(deq(a8, sa), deq(b8, sb), f32),
        "pattern-bf16-out": lambda: dot(deq(a8, sa), deq(b8, sb), bf16),
        "pattern-highest": lambda: dot(deq(a8, sa), deq(b8, sb), f32, jax.lax.Precision.HIGHEST).astype(bf16),
        "pattern-bf16-dequant": lambda: dot(
            a8.astype(bf16) * sa.astype(bf16), b8.astype(bf16) * sb.astype(bf16), f32
        ).astype(bf16),
        "fp8-dot-f32": lambda: dot(a8, b8, f32) * (sa * sb),
        "fp8-dot-bf16": lambda: (dot(a8, b8, f32) * (sa * sb)).astype(bf16),
    }


def _describe(compiled, name: str) -> str:
    """The GEMM custom calls (target -> result type) and the number of fusions; full HLO to $OUT."""
    text = compiled.as_text()
    out = os.environ.get("OUT")
    if out:
        Path(out, f"{name}.hlo.txt").write_text(text)
    gemms = []
    for line in text.splitlines():
        target = re.search(r'custom_call_target="([^"]+)"', line)
        if target and ("matmul" in target[1] or "gemm" in target[1]):
            result = re.search(r"= (.*?) custom-call\(", line)
            gemms.append(f"{target[1]} -> {result[1] if result else '?'}")
    fusions = len(re.findall(r"^\s*\S+ = \S+ fusion\(", text, re.M))
    return f"{'; '.join(gemms) or 'no GEMM custom call'} | fusions {fusions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run one variant")
    parser.add_argument("--no-triton-gemm", action="store_true", help="compile with triton gemm off")
    args = parser.parse_args()
    ka, kb = jax.random.split(jax.random.key(0))
    a8 = (jax.random.normal(ka, (N, N), jnp.float32)).astype(jnp.float8_e4m3fn)
    b8 = (jax.random.normal(kb, (N, N), jnp.float32)).astype(jnp.float8_e4m3fn)
    sa, sb = jnp.float32(0.5), jnp.float32(0.25)
    options = {"xla_gpu_enable_triton_gemm": False} if args.no_triton_gemm else None
    flop = 2.0 * N**3
    for name, fn in _variants(a8, b8, sa, sb).items():
        if args.only and name != args.only:
            continue
        jitted = jax.jit(fn, compiler_options=options)
        compiled = jitted.lower().compile()
        seconds = median_seconds(jitted, sync=jax.block_until_ready, repeat=15, warmup=3, batch=10)
        print(f"{name:24s} {flop / seconds / 1e12:7.0f} TFLOP/s  {_describe(compiled, name)}", flush=True)
    try:
        import torch
    except ImportError:
        return
    ta = torch.from_dlpack(a8.view(jnp.uint8)).view(torch.float8_e4m3fn)
    tb = torch.from_dlpack(b8.view(jnp.uint8)).view(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    for fast in (False, True):
        def run(fast=fast):
            return torch._scaled_mm(ta, tb.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                    use_fast_accum=fast)
        seconds = median_seconds(run, sync=lambda r: torch.cuda.synchronize(), repeat=15, warmup=3, batch=10)
        print(f"torch._scaled_mm fast_accum={fast!s:5s} {flop / seconds / 1e12:7.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
