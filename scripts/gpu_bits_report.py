"""Where do CUDA casts differ from the CPU's bits, and why? Run on a CUDA machine.

Prints, for torch and JAX on the GPU: whether the framework's float32 division and float32 -> FP8
conversion are exact (against numpy and ml_dtypes), and for every recipe of the core test matrix the
number of data/scale bytes that differ from breccia's numpy cast of the same input.

    python scripts/gpu_bits_report.py
"""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np

sys.path.insert(0, "tests")

from conftest import bits
from test_quantize import CASES, _case_id, _fits, wide_range

import breccia as bc
from breccia import formats
from breccia.backends import get_backend


def primitive_checks() -> None:
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    a = (rng.random(1 << 20) * 2.0 ** rng.integers(-30, 30, 1 << 20)).astype(np.float32) + np.float32(1e-30)
    b = (rng.random(1 << 20) * 2.0 ** rng.integers(-30, 30, 1 << 20)).astype(np.float32) + np.float32(1e-30)
    exact = a / b
    gpu = jax.devices("gpu")[0]
    ja, jb = jax.device_put(a, gpu), jax.device_put(b, gpu)
    jx = get_backend("jax")
    print(
        "jax  a/b (jnp)           mismatches:", int(np.sum(np.asarray(jax.jit(jnp.divide)(ja, jb)) != exact))
    )
    print(
        "jax  a/b (backend.divide) mismatches:", int(np.sum(np.asarray(jax.jit(jx.divide)(ja, jb)) != exact))
    )
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    print("torch a/b                mismatches:", int(np.sum((ta / tb).cpu().numpy() != exact)))
    for fmt, native_jax, native_torch in (
        (formats.E4M3, jnp.float8_e4m3fn, torch.float8_e4m3fn),
        (formats.E5M2, jnp.float8_e5m2, torch.float8_e5m2),
    ):
        table = formats.decode_table(fmt)
        grid = np.unique(table[np.isfinite(table)])
        values = np.concatenate(
            [grid, (grid[:-1] + grid[1:]) / 2, rng.uniform(-fmt.max_value, fmt.max_value, 1 << 18)]
        )
        values = values.astype(np.float32)
        expected = values.astype(ml_dtypes.float8_e4m3fn if fmt is formats.E4M3 else ml_dtypes.float8_e5m2)
        expected = expected.view(np.uint8)
        got_jax = np.asarray(
            jax.jit(lambda v, t=native_jax: jax.lax.bitcast_convert_type(v.astype(t), jnp.uint8))(
                jax.device_put(values, gpu)
            )
        )
        got_torch = torch.from_numpy(values).cuda().to(native_torch).view(torch.uint8).cpu().numpy()
        shared = np.asarray(
            jax.jit(lambda v, f=fmt: formats.encode(jnp, jx.pow2, v, f))(jax.device_put(values, gpu))
        )
        print(
            f"{fmt.name}: jax astype mismatches {int(np.sum(got_jax != expected))}, torch .to "
            f"{int(np.sum(got_torch != expected))}, jax shared encode {int(np.sum(shared != expected))}"
            f" of {values.size}"
        )


def recipe_checks() -> None:
    import jax

    gpu = jax.devices("gpu")[0]
    for recipe, layout in CASES:
        shape = (67, 300) if _fits(recipe, layout, (67, 300)) else (64, 256)
        x = wide_range(shape, seed=7)
        reference = bc.cast(x, recipe, layout)
        row = []
        for framework in ("torch", "jax"):
            device_x = (
                get_backend("torch").from_numpy(x, device="cuda")
                if framework == "torch"
                else jax.device_put(x, gpu)
            )
            got = bc.cast(device_x, recipe, layout)
            counts = []
            for field in ("data", "scale", "global_scale", "zero_point"):
                want, have = bits(getattr(reference, field)), bits(getattr(got, field))
                if want is not None:
                    counts.append(f"{field}={int(np.sum(want != have))}/{want.size}")
            row.append(f"{framework}: {' '.join(counts)}")
        print(f"{_case_id((recipe, layout)):<60} {' | '.join(row)}")


if __name__ == "__main__":
    primitive_checks()
    recipe_checks()
