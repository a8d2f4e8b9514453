"""Demo section "recipes": one weight matrix cast with every recipe on every installed framework."""

from __future__ import annotations

import importlib.util
from typing import IO, Any

import numpy as np

from .. import recipes as r
from ..backends import Backend, get_backend
from ..quantize import cast, cast_with_history, dequantize

DEMO_RECIPES: list[r.Recipe] = [
    r.Float8CurrentScaling(),
    r.DelayedScaling(amax_history_len=16),
    r.Float8CurrentScaling(fp8_format="E5M2"),
    r.Float8BlockScaling(),
    r.Float8BlockScaling(block_m=128),
    r.Float8BlockScaling(convention="deepseek"),
    r.MXFP8BlockScaling(),
    r.MXFP8BlockScaling(scale_rounding="ceil"),
    r.MXFP4BlockScaling(),
    r.NVFP4BlockScaling(),
    r.Int8Scaling(),
    r.Int8Scaling(group_size=128),
    r.Int4Scaling(),
    r.Int4Scaling(symmetric=False),
]

_MODULES = {"numpy": "numpy", "jax": "jax", "mlx": "mlx.core", "torch": "torch"}


def installed_frameworks() -> list[str]:
    """The frameworks whose packages import here, numpy first."""
    found = []
    for name, module in _MODULES.items():
        try:
            ok = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            ok = False
        if ok:
            found.append(name)
    return found


def demo_weight(rows: int = 512, cols: int = 1024, seed: int = 0) -> np.ndarray:
    """A weight-like float32 matrix: Gaussian rows scaled by 2**-4..2**4, with 0.1% outliers."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= (2.0 ** rng.uniform(-4, 4, (rows, 1))).astype(np.float32)
    outliers = rng.integers(0, w.size, w.size // 1000)
    w.flat[outliers] *= 20
    return w


def _bits(backend: Backend, a: Any) -> bytes:
    if a is None:
        return b""
    return np.ascontiguousarray(backend.to_numpy(a)).tobytes()


def _cast(x: Any, recipe: r.Recipe) -> Any:
    """One cast; DelayedScaling's is its second step, scaled from the history the first recorded."""
    if isinstance(recipe, r.DelayedScaling):
        _, history = cast_with_history(x, recipe)
        return cast(x, recipe, history=history)
    return cast(x, recipe)


def run(out: IO[str]) -> bool:
    frameworks = installed_frameworks()
    w = demo_weight()
    print(f"weight {w.shape[0]}x{w.shape[1]} float32 ({w.nbytes / 2**20:.1f} MiB); "
          f"frameworks: {', '.join(frameworks)}", file=out)
    header = f"{'recipe':<46} {'bytes':>9} {'ratio':>6} {'rel.err':>9}  bits agree"
    print(header, file=out)
    print("-" * len(header), file=out)
    all_agree = True
    for recipe in DEMO_RECIPES:
        reference = None
        agree = []
        for name in frameworks:
            backend = get_backend(name)
            st = _cast(backend.from_numpy(w), recipe)
            bits = tuple(_bits(backend, a) for a in st.arrays)
            if reference is None:
                reference = bits
                y = backend.to_numpy(dequantize(st, "float32"))
                err = float(np.linalg.norm(y - w) / np.linalg.norm(w))
                nbytes = st.nbytes
            agree.append(name if bits == reference else f"{name}:DIFFERS")
        ok = all(":" not in a for a in agree)
        all_agree &= ok
        label = recipe.label()
        print(f"{label:<46} {nbytes:>9,} {w.nbytes / nbytes:>5.2f}x {err:>9.2e}  "
              f"{'yes' if ok else 'NO'} ({', '.join(agree)})", file=out)
    return all_agree
