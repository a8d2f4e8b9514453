"""On the device machine: CUDA casts (torch Triton and JAX Pallas fused kernels) of blocks at
float32's limit (+-FLT_MAX, the edge blocks of tests/test_hostile.py) against the CPU's bits, for the
MX recipes whose exponent cap the fused kernels share with the CPU code. Prints one line per case."""

from __future__ import annotations

import numpy as np

import breccia as bc

FLT_MAX = np.finfo(np.float32).max


def edge_blocks() -> np.ndarray:
    rows = np.zeros((64, 256), np.float32)
    rows[0] = FLT_MAX
    rows[1] = -FLT_MAX
    rows[2, :2] = FLT_MAX, -FLT_MAX
    rows[3, :2] = -FLT_MAX, 1.0
    rows[4] = np.linspace(FLT_MAX / 2, FLT_MAX, 256, dtype=np.float32)
    rows[5:] = np.random.default_rng(0).standard_normal((59, 256)).astype(np.float32)
    return rows


def main() -> int:
    import jax.numpy as jnp
    import torch

    x = edge_blocks()
    bad = 0
    for recipe in (bc.MXFP8BlockScaling(scale_rounding="ceil"), bc.MXFP4BlockScaling(scale_rounding="ceil"),
                   bc.MXFP8BlockScaling(), bc.MXFP4BlockScaling()):
        cpu = bc.cast(x, recipe)
        ref = [np.ascontiguousarray(a).view(np.uint8) for a in (cpu.data, cpu.scale)]
        for name, arr in (("torch", torch.from_numpy(x).cuda()), ("jax", jnp.asarray(x))):
            st = bc.cast(arr, recipe)
            host = st.to("numpy")
            got = [np.ascontiguousarray(a).view(np.uint8) for a in (host.data, host.scale)]
            same = all(np.array_equal(a, b) for a, b in zip(got, ref))
            finite = bool(np.isfinite(np.asarray(bc.dequantize(host))).all())
            bad += not (same and finite)
            print(f"{name:5} {recipe!r}: bits equal CPU {same}, decodes finite {finite}")
    return bad


if __name__ == "__main__":
    raise SystemExit(main())
