"""Print what XLA runs for breccia's JAX casts and dequantizations on this GPU (optimized HLO ops).

    python scripts/jax_cast_hlo.py

For each case: the instructions of the optimized entry computation other than parameters, tuples and
bitcasts (a fused cast should be one kernel call; a copy or convert beside it costs a pass over the
data), and the device time of the jitted call (10 calls back to back).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import jax
import jax.numpy as jnp
from _timing import median_seconds

import breccia as bc

SHAPE = (16384, 7168)
SKIP = re.compile(r"\b(parameter|tuple|get-tuple-element|bitcast|constant)\(")


def _ops(compiled) -> list[str]:
    text = compiled.as_text()
    entry = text[text.index("ENTRY") :]
    ops = []
    for line in entry.splitlines()[1:]:
        if line.strip() == "}":
            break
        if SKIP.search(line):
            continue
        m = re.search(r"= (\S+) (\S+?)\(", line)
        target = re.search(r'custom_call_target="([^"]+)"', line)
        ops.append(f"{m[2] if m else '?'} -> {m[1] if m else '?'}" + (f" [{target[1]}]" if target else ""))
    return ops


def main() -> None:
    x = jax.random.normal(jax.random.key(0), SHAPE, jnp.bfloat16)
    weight = bc.cast(x, bc.Float8BlockScaling(block_m=128, convention="deepseek"))
    cases = {
        "act_quant 1x128 deepseek": (lambda x: bc.cast(x, bc.Float8BlockScaling(convention="deepseek")), x),
        "cast 1x128 te": (lambda x: bc.cast(x, bc.Float8BlockScaling()), x),
        "MXFP8": (lambda x: bc.cast(x, bc.MXFP8BlockScaling()), x),
        "dequant 128x128 -> bf16": (lambda st: bc.dequantize(st, "bfloat16"), weight),
    }
    for name, (fn, arg) in cases.items():
        jitted = jax.jit(fn)
        compiled = jitted.lower(arg).compile()
        seconds = median_seconds(lambda f=jitted, a=arg: f(a), sync=jax.block_until_ready, batch=10)
        print(f"{name}: {seconds * 1e6:.0f} us per call")
        for op in _ops(compiled):
            print(f"    {op}")


if __name__ == "__main__":
    main()
