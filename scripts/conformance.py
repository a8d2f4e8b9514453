"""The conformance matrix: each installed peer's own encoder and decoder against breccia's.

Every peer is one small function in :data:`PEERS`: given a device it returns :class:`Row` s, each one
comparison of the peer's output with breccia's on the same golden input (:func:`cases`: random,
ragged, zeros, ties, subnormals, values at and beyond the format's max, +-Inf, NaN). A row is
``bytes equal``, ``values equal`` (NaN equals NaN, -0 differs from +0), or a documented difference
with its count; :data:`DOCUMENTED` holds the difference each such row expects and why. A peer that is
not installed gives no rows.

``python scripts/conformance.py`` prints the table and writes ``docs/conformance.md`` (with the date
and the versions). ``tests/test_conformance.py`` imports this module and asserts every row: an equal
row is equal and a documented one still differs, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

import breccia as bc
from breccia import formats
from breccia.backends import get_backend
from breccia.formats import E2M1, E4M3, E5M2, E8M0, ElementFormat

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "conformance.md")


@dataclass(frozen=True)
class Row:
    """One comparison: ``differing`` of ``total`` bytes (or values) differ between peer and breccia."""

    peer: str
    version: str
    fmt: str
    direction: str  # "encode" | "decode"
    device: str
    inputs: str
    compared: str  # "bytes" | "values"
    total: int
    differing: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies a row across versions and runs (the page and the test agree on it)."""
        return (self.peer, self.fmt, self.direction, self.inputs)

    @property
    def expected(self) -> str | None:
        """The documented difference this row expects, or None if it must be equal."""
        return DOCUMENTED.get(self.key)

    @property
    def result(self) -> str:
        if self.differing == 0:
            return f"{self.compared} equal"
        return f"documented difference: {self.differing} of {self.total} {self.compared}"

    @property
    def as_documented(self) -> bool:
        """Equal where equality is claimed; still different where a difference is documented."""
        return (self.differing == 0) == (self.expected is None)


# --- golden inputs ---------------------------------------------------------------------------------


def _grid(fmt: ElementFormat) -> np.ndarray:
    """Every positive finite value of ``fmt``, ascending."""
    if fmt.kind == "int":
        return np.arange(1, fmt.max_value + 1, dtype=np.float64)
    table = formats.decode_table(fmt).astype(np.float64)
    return np.unique(table[np.isfinite(table) & (table > 0)])


def _pinned(values: np.ndarray, fmax: float, width: int = 64, block: int = 16) -> np.ndarray:
    """``values`` laid out in rows of ``width``, each block of ``block`` starting with +-max, so that
    every block's amax (16 for NVFP4, 32 for MX) is the format's max (a block scale of 1 in the MX
    rules and per-row fp8)."""
    per_block = block - 2
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    n_blocks = -(-values.size // per_block)
    n_blocks += -n_blocks % (width // block)
    out = np.zeros((n_blocks, block), dtype=np.float32)
    out[:, 0], out[:, 1] = fmax, -fmax
    flat = out[:, 2:].reshape(-1)
    flat[: values.size] = values
    out[:, 2:] = flat.reshape(n_blocks, per_block)
    return out.reshape(-1, width)


def cases(fmt: ElementFormat, *, ragged: bool = True) -> dict[str, np.ndarray]:
    """The golden inputs for ``fmt``, float32, by name. All but ``random``/``ragged``/``zeros`` pin
    every 16-element block's amax at the format's max (see :func:`_pinned`)."""
    rng = np.random.default_rng(2026)
    grid = _grid(fmt)
    fmax = float(grid[-1])
    random = rng.standard_normal((16, 64)) * (fmax / 4) * np.exp2(rng.uniform(-6, 0, (16, 1)))
    ties = (grid[:-1] + grid[1:]) / 2
    if fmt.kind == "int":
        small = np.array([0.25, 0.5, 0.75, 2.0**-126, 1e-40])
    else:
        smallest_normal = 2.0**fmt.e_min
        sub = grid[grid < smallest_normal]
        midpoints = (np.concatenate([[0.0], sub[:-1]]) + sub) / 2
        small = np.concatenate([sub, midpoints, [2.0**-126, 1e-40, 2.0**-149]])
    top = fmax + (fmax - grid[-2]) * np.array([0.25, 0.5])  # rounds to max: below and at the tie
    out = {
        "random": np.clip(random, -fmax, fmax),
        "zeros": np.where(rng.random((2, 64)) < 0.5, 0.0, -0.0),
        "ties": _pinned(np.concatenate([ties, -ties]), fmax),
        "subnormals": _pinned(np.concatenate([small, -small]), fmax),
        "max": _pinned(np.concatenate([[fmax, -fmax], top, -top]), fmax),
        "+-Inf": _pinned(np.array([np.inf, -np.inf, 1.0, -2.0]), fmax),
        "NaN": _pinned(np.array([np.nan, 1.0, -0.5]), fmax),
    }
    if ragged:
        out["ragged"] = np.clip(rng.standard_normal((5, 40)) * (fmax / 4), -fmax, fmax)
    return {name: np.asarray(a, dtype=np.float32) for name, a in out.items()}


def beyond_max(fmt: ElementFormat) -> np.ndarray:
    """Finite values past the format's max (past the rounding tie) and +-Inf: an element cast's edge."""
    grid = _grid(fmt)
    fmax = float(grid[-1])
    past = [fmax + (fmax - grid[-2]), fmax * 2, 1e30, float(np.finfo(np.float32).max), np.inf]
    return np.asarray(past + [-v for v in past], dtype=np.float32)


# --- comparisons -----------------------------------------------------------------------------------


def _bytes(a: Any) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(a))
    return a.reshape(-1).view(np.uint8)


def differ_bytes(pairs: list[tuple[Any, Any]]) -> tuple[int, int]:
    """(total, differing) bytes over ``(peer, breccia)`` array pairs (numpy arrays or bytes views)."""
    total = differing = 0
    for peer, ours in pairs:
        p, o = _bytes(peer), _bytes(ours)
        if p.size != o.size:
            return max(p.size, o.size), max(p.size, o.size)
        total += p.size
        differing += int(np.count_nonzero(p != o))
    return total, differing


def differ_values(peer: Any, ours: Any) -> tuple[int, int]:
    """(total, differing) values: bitwise float32 equality, any NaN equal to any NaN."""
    p = np.asarray(peer, dtype=np.float32).reshape(-1)
    o = np.asarray(ours, dtype=np.float32).reshape(-1)
    if p.size != o.size:
        return max(p.size, o.size), max(p.size, o.size)
    same = (p.view(np.uint32) == o.view(np.uint32)) | (np.isnan(p) & np.isnan(o))
    return p.size, int(np.count_nonzero(~same))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def breccia_encode(x: np.ndarray, fmt: ElementFormat) -> np.ndarray:
    """breccia's element encoder (the last step of every cast) at scale 1: RNE, saturating, +-Inf to
    +-max (``docs/numerics.md``); ``x`` holds no NaN (a cast marks a NaN's whole block instead)."""
    return get_backend("numpy").encode(np.asarray(x, dtype=np.float32), fmt)


def breccia_decode(codes: np.ndarray, fmt: ElementFormat) -> np.ndarray:
    """breccia's element decoder (the first step of every dequantize)."""
    return get_backend("numpy").decode(np.asarray(codes, dtype=np.uint8), fmt)


def _all_codes(fmt: ElementFormat) -> np.ndarray:
    return np.arange(1 << fmt.bits, dtype=np.uint8)


def _element_rows(
    peer: str, version: str, device: str, fmt: ElementFormat,
    encode: Callable[[np.ndarray], np.ndarray], decode: Callable[[np.ndarray], np.ndarray] | None,
) -> Iterator[Row]:
    """Rows of an element cast (``encode``: float32 -> codes as uint8; ``decode``: codes -> float32)."""
    inputs = {k: v for k, v in cases(fmt).items() if k not in ("NaN", "+-Inf")}
    inputs["beyond max, +-Inf"] = beyond_max(fmt)
    for name, x in inputs.items():
        x = x.reshape(-1)
        total, differing = differ_bytes([(encode(x), breccia_encode(x, fmt))])
        yield Row(peer, version, fmt.name, "encode", device, name, "bytes", total, differing)
    if decode is not None:
        codes = _all_codes(fmt)
        total, differing = differ_values(decode(codes), breccia_decode(codes, fmt))
        yield Row(peer, version, fmt.name, "decode", device, "every code", "values", total, differing)


# --- peers -----------------------------------------------------------------------------------------


def ml_dtypes_peer(device: str) -> Iterator[Row]:
    """ml_dtypes' numpy casts (``astype``), both ways, E4M3 / E5M2 / E2M1, and E8M0 decoding."""
    if device != "cpu":
        return
    version = _version("ml_dtypes")
    types = {"E4M3": ml_dtypes.float8_e4m3fn, "E5M2": ml_dtypes.float8_e5m2, "E2M1": ml_dtypes.float4_e2m1fn}
    for fmt in (E4M3, E5M2, E2M1):
        dtype = types[fmt.name]

        def encode(x: np.ndarray, dtype: Any = dtype, fmt: ElementFormat = fmt) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                codes = x.astype(dtype).view(np.uint8)
            return codes & 0x0F if fmt.packed else codes

        def decode(codes: np.ndarray, dtype: Any = dtype) -> np.ndarray:
            return codes.view(dtype).astype(np.float32)

        yield from _element_rows("ml_dtypes", version, device, fmt, encode, decode)
    codes = _all_codes(E8M0)
    total, differing = differ_values(
        codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32), breccia_decode(codes, E8M0)
    )
    yield Row("ml_dtypes", version, "E8M0", "decode", device, "every code", "values", total, differing)


def torch_peer(device: str) -> Iterator[Row]:
    """torch's dtype casts (``Tensor.to``), both ways, E4M3 / E5M2."""
    if not _installed("torch") or device != "cpu":
        return
    import torch

    version = torch.__version__.split("+")[0]
    for fmt, dtype in ((E4M3, torch.float8_e4m3fn), (E5M2, torch.float8_e5m2)):

        def encode(x: np.ndarray, dtype: Any = dtype) -> np.ndarray:
            return torch.from_numpy(x.copy()).to(dtype).view(torch.uint8).numpy()

        def decode(codes: np.ndarray, dtype: Any = dtype) -> np.ndarray:
            return torch.from_numpy(codes.copy()).view(dtype).to(torch.float32).numpy()

        yield from _element_rows("torch", version, device, fmt, encode, decode)


def jax_peer(device: str) -> Iterator[Row]:
    """JAX's dtype casts (``astype``), both ways, E4M3 / E5M2 / E2M1."""
    if not _installed("jax") or device != "cpu":
        return
    import jax
    import jax.numpy as jnp

    version = jax.__version__
    cpu = jax.devices("cpu")[0]
    for fmt, dtype in ((E4M3, jnp.float8_e4m3fn), (E5M2, jnp.float8_e5m2), (E2M1, jnp.float4_e2m1fn)):

        def encode(x: np.ndarray, dtype: Any = dtype, fmt: ElementFormat = fmt) -> np.ndarray:
            codes = np.asarray(jax.device_put(x, cpu).astype(dtype)).view(np.uint8)
            return codes & 0x0F if fmt.packed else codes

        def decode(codes: np.ndarray, dtype: Any = dtype) -> np.ndarray:
            return np.asarray(jax.device_put(codes.view(np.dtype(dtype)), cpu).astype(jnp.float32))

        yield from _element_rows("jax", version, device, fmt, encode, decode)


_MLX_MODES = (("mxfp8", 32, 8, E4M3), ("mxfp4", 32, 4, E2M1), ("nvfp4", 16, 4, E2M1))


def mlx_peer(device: str) -> Iterator[Row]:
    """MLX's ``mx.quantize``/``mx.dequantize`` (mxfp8, mxfp4, nvfp4, affine 4/8) against
    ``bc.cast(x, mlx_recipe(mode))`` and ``from_mlx_quantized``, and ``mx.to_fp8``/``mx.from_fp8``."""
    if not _installed("mlx") or device != "cpu":
        return
    import mlx.core as mx

    from breccia.bridges import from_mlx_quantized, mlx_recipe, to_mlx_quantized

    version = mx.__version__
    with mx.stream(mx.cpu):
        modes = [*_MLX_MODES, ("affine", 64, 4, None), ("affine", 64, 8, None)]
        for mode, group, bits, fmt in modes:
            label = mode if mode != "affine" else f"affine{bits}"
            for name, x in cases(fmt or E4M3, ragged=False).items():
                xm = mx.array(x)
                extra = {"global_scale": mx.max(mx.abs(xm))} if mode == "nvfp4" else {}
                if mode == "nvfp4" and not np.isfinite(np.abs(x).max()):
                    continue  # an Inf or NaN global scale: nothing to compare
                peer = mx.quantize(xm, group_size=group, bits=bits, mode=mode, **extra)
                st = bc.cast(xm, mlx_recipe(mode, group, bits))
                q = to_mlx_quantized(st, exact=False)
                pairs = [(np.array(peer[0]), np.array(q.weight)), (np.array(peer[1]), np.array(q.scales))]
                if mode == "affine":
                    pairs.append((np.array(peer[2]), np.array(q.biases)))
                total, differing = differ_bytes(pairs)
                yield Row("mlx", version, label, "encode", device, name, "bytes", total, differing)
                w, s = peer[0], peer[1]
                b = peer[2] if mode == "affine" else None
                ours = bc.dequantize(
                    from_mlx_quantized(w, s, b, mode=mode, group_size=group, bits=bits, **extra), "float32"
                )
                kwargs = dict(group_size=group, bits=bits, mode=mode, **extra)
                theirs = mx.dequantize(w, s, b, dtype=mx.float32, **kwargs)
                total, differing = differ_values(np.array(theirs), np.array(ours))
                yield Row("mlx", version, label, "decode", device, name, "values", total, differing)

        # mlx-lm's nvfp4 layers: mx.quantize without a global scale, NVFP4BlockScaling(convention="mlx")
        one_level = bc.NVFP4BlockScaling(convention="mlx")
        for name, x in cases(E2M1, ragged=False).items():
            if not np.isfinite(x).all():
                continue  # breccia's NaN/Inf rule (numerics.md) applies, not MLX's
            xm = mx.array(x)
            peer = mx.quantize(xm, group_size=16, bits=4, mode="nvfp4")
            q = to_mlx_quantized(bc.cast(xm, one_level))
            pairs = [(np.array(peer[0]), np.array(q.weight)), (np.array(peer[1]), np.array(q.scales))]
            total, differing = differ_bytes(pairs)
            yield Row("mlx", version, "nvfp4 one level", "encode", device, name, "bytes", total, differing)

        def encode(x: np.ndarray) -> np.ndarray:
            return np.array(mx.to_fp8(mx.array(x)))

        def decode(codes: np.ndarray) -> np.ndarray:
            return np.array(mx.from_fp8(mx.array(codes), dtype=mx.float32))

        yield from _element_rows("mlx to_fp8/from_fp8", version, device, E4M3, encode, decode)


def torchao_peer(device: str) -> Iterator[Row]:
    """torchao 0.18's CPU tensor types: ``Float8Tensor``, ``Int8Tensor``, ``IntxUnpackedToInt8Tensor``
    (int4), ``MXTensor`` (FLOOR and RCEIL, fp8 and fp4) and ``NVFP4Tensor``; encode compares
    ``bc.cast`` with the recipe :func:`~breccia.bridges.from_torchao` infers, decode compares
    ``t.dequantize()`` with ``bc.dequantize(from_torchao(t))``."""
    if not _installed("torchao") or device != "cpu":
        return
    import torch
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import MXTensor
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor
    from torchao.quantization import Float8Tensor, Int8Tensor, IntxUnpackedToInt8Tensor
    from torchao.quantization.granularity import PerRow

    from breccia.bridges import from_torchao

    version = _version("torchao")
    mx8, mx4 = torch.float8_e4m3fn, torch.float4_e2m1fn_x2
    rceil = ScaleCalculationMode.RCEIL
    # (class, format, the peer's encoder, the recipe when the tensor does not record it)
    makers: list[tuple[str, ElementFormat, Callable[[Any], Any], bc.Recipe | None]] = [
        ("Float8Tensor", E4M3, lambda x: Float8Tensor.from_hp(x, granularity=PerRow()), None),
        ("Int8Tensor", formats.INT8, lambda x: Int8Tensor.from_hp(x, PerRow()), None),
        ("IntxUnpackedToInt8Tensor", formats.INT4,
         lambda x: IntxUnpackedToInt8Tensor.from_hp(x, (1, 32), torch.int4), None),
        ("MXTensor FLOOR", E4M3, lambda x: MXTensor.to_mx(x, mx8, 32), bc.MXFP8BlockScaling()),
        ("MXTensor RCEIL", E4M3, lambda x: MXTensor.to_mx(x, mx8, 32, rceil),
         bc.MXFP8BlockScaling(scale_rounding="ceil")),
        ("MXTensor FLOOR", E2M1, lambda x: MXTensor.to_mx(x, mx4, 32), bc.MXFP4BlockScaling()),
        ("MXTensor RCEIL", E2M1, lambda x: MXTensor.to_mx(x, mx4, 32, rceil),
         bc.MXFP4BlockScaling(scale_rounding="ceil")),
        ("NVFP4Tensor", E2M1,
         lambda x: NVFP4Tensor.to_nvfp4(x, per_tensor_scale=x.abs().amax() / (448.0 * 6.0)), None),
    ]
    for cls, fmt, make, recipe in makers:
        label = f"{cls.split()[0]} {fmt.name}"
        peer = f"torchao {cls.split()[1]}" if " " in cls else "torchao"
        for name, x in cases(fmt, ragged=False).items():
            if cls == "NVFP4Tensor" and not np.isfinite(np.abs(x).max()):
                continue  # an Inf or NaN per-tensor scale: nothing to compare
            xt = torch.from_numpy(x.copy())
            t = make(xt)
            theirs = from_torchao(t, recipe)
            ours = bc.cast(xt, theirs.recipe, theirs.layout)
            fields = ("data", "scale", "global_scale", "zero_point")
            pairs = [(_host(getattr(theirs, f)), _host(getattr(ours, f))) for f in fields]
            total, differing = differ_bytes([(a, b) for a, b in pairs if a.size or b.size])
            yield Row(peer, version, label, "encode", device, name, "bytes", total, differing)
            peer_values, our_values = _host(t.dequantize().float()), _host(bc.dequantize(theirs, "float32"))
            total, differing = differ_values(peer_values, our_values)
            yield Row(peer, version, label, "decode", device, name, "values", total, differing)


def _host(a: Any) -> np.ndarray:
    """A torch tensor (or numpy array) as numpy: 1- and 2-byte types as their raw bits."""
    if a is None:
        return np.zeros(0, np.uint8)
    if not hasattr(a, "detach"):
        return np.asarray(a)
    import torch

    a = a.detach().cpu().contiguous()
    if a.dtype.itemsize == 1:
        return a.view(torch.uint8).numpy()
    if a.dtype in (torch.bfloat16, torch.float16):
        return a.view(torch.int16).numpy()
    return a.numpy()


#: The peers, in the page's order. A peer is a function ``(device) -> rows``; add one here.
PEERS: list[Callable[[str], Iterator[Row]]] = [ml_dtypes_peer, torch_peer, jax_peer, mlx_peer, torchao_peer]


# --- what breccia documents where it differs -------------------------------------------------------

_E4M3_NAN = "past max and +-Inf give NaN (E4M3 has no Inf); breccia saturates to +-448 (the NaN rule, 3)"
_E5M2_INF_TIE = "the tie between max 57344 and 2**16 rounds to Inf (IEEE); breccia saturates to +-57344"
_E5M2_INF = "past max gives +-Inf and Inf stays Inf; breccia saturates to +-57344 (the NaN rule, 3)"
_NONFINITE = "a non-finite value in a block: the peer's rule differs from breccia's (numerics.md, the table)"
_FP4_TIES = "fp4: MLX rounds ties toward zero and never writes -0; breccia rounds to even, keeps the sign"
_ZERO_TENSOR = "an all-zero tensor: the peer's global scale is 0 (0 / 0 in its block scales); breccia's is 1"
_MX_ZERO = "an all-zero block: torchao writes E8M0 code 0 (2**-127), breccia 127 (scale 1); both decode to 0"
_F8_ZERO = "an all-zero row: torchao's scale is 0 and its codes 0 / 0 = NaN; breccia's scale is 1, codes 0"

#: (peer, format, direction, inputs) -> why this row differs. Every row not listed must be equal.
DOCUMENTED: dict[tuple[str, str, str, str], str] = {
    ("ml_dtypes", "E4M3", "encode", "beyond max, +-Inf"): _E4M3_NAN,
    ("ml_dtypes", "E5M2", "encode", "max"): _E5M2_INF_TIE,
    ("ml_dtypes", "E5M2", "encode", "beyond max, +-Inf"): _E5M2_INF,
    ("torch", "E5M2", "encode", "max"): _E5M2_INF_TIE,
    ("torch", "E5M2", "encode", "beyond max, +-Inf"): _E5M2_INF + " (torch saturates only E4M3)",
    ("jax", "E4M3", "encode", "beyond max, +-Inf"): _E4M3_NAN,
    ("jax", "E5M2", "encode", "max"): _E5M2_INF_TIE,
    ("jax", "E5M2", "encode", "beyond max, +-Inf"): _E5M2_INF,
    **{("mlx", mode, "encode", inputs): _NONFINITE for mode in ("mxfp8", "mxfp4", "affine4", "affine8")
       for inputs in ("+-Inf", "NaN")},
    **{("mlx", "nvfp4", "encode", inputs): _FP4_TIES for inputs in ("random", "subnormals")},
    ("mlx", "nvfp4", "encode", "zeros"): _FP4_TIES + "; " + _ZERO_TENSOR,
    ("torchao", "Float8Tensor E4M3", "encode", "zeros"): _F8_ZERO,
    ("torchao", "NVFP4Tensor E2M1", "encode", "zeros"): _ZERO_TENSOR,
    **{("torchao", label, "encode", inputs): _NONFINITE
       for label in ("Float8Tensor E4M3", "Int8Tensor INT8", "IntxUnpackedToInt8Tensor INT4")
       for inputs in ("+-Inf", "NaN")},
    **{(f"torchao {mode}", f"MXTensor {fmt}", "encode", inputs): note
       for mode in ("FLOOR", "RCEIL") for fmt in ("E4M3", "E2M1")
       for inputs, note in (("zeros", _MX_ZERO), ("+-Inf", _NONFINITE), ("NaN", _NONFINITE))},
}


def rows(device: str = "cpu", peers: list[Callable[[str], Iterator[Row]]] | None = None) -> list[Row]:
    """Every row of every installed peer on ``device``."""
    return [row for peer in (PEERS if peers is None else peers) for row in peer(device)]


# --- the page --------------------------------------------------------------------------------------


def render(table: list[Row]) -> str:
    """``docs/conformance.md``: the rows, then the documented differences they refer to."""
    versions = sorted({(r.peer.split()[0], r.version) for r in table})
    lines = [
        "# Conformance matrix",
        "",
        "<!-- generated by scripts/conformance.py; do not edit by hand -->",
        "",
        f"Generated {datetime.date.today().isoformat()} on {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, breccia {_version('breccia')}, numpy {np.__version__}; peers: "
        + ", ".join(f"{name} {v}" for name, v in versions)
        + ".",
        "",
        "Each row drives the peer's own encoder or decoder and breccia's on the same golden input and "
        "compares the bytes (encode: data, scales, and global scales or zero points where the format "
        "has them) or the float32 values (decode: NaN equals NaN, -0 differs from +0). Inputs: "
        "`random` and `ragged` normal values in range, `zeros` (+0 and -0), `ties` (midpoints between "
        "neighbouring values of the format), `subnormals` (the format's, their midpoints, and float32 "
        "subnormals), `max` (+-max and values that round to it), `+-Inf` and `NaN` inside a block, and for "
        "element casts `beyond max, +-Inf`. Block-scaled inputs pin each 16-element block's amax at the "
        "format's max. `tests/test_conformance.py` runs the same rows and asserts each one: a row that "
        "says *equal* is equal, and a documented difference still differs. The rules behind the "
        "differences are in [Numerics](numerics.md#how-breccia-and-the-peers-differ); encode rows use "
        "the recipe that reproduces the peer (`mlx_recipe(mode)`, the recipe `from_torchao` infers), "
        "element casts breccia's element encoder at scale 1.",
        "",
        "| peer | version | format | direction | device | inputs | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        note = f" ({r.expected})" if r.expected and r.differing else ""
        lines.append(
            f"| {r.peer} | {r.version} | {r.fmt} | {r.direction} | {r.device} | {r.inputs} "
            f"| {r.result}{note} |"
        )
    lines += ["", "Regenerate with `python scripts/conformance.py` (writes this page).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (the CUDA rows run on the device machine)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/conformance.md")
    args = parser.parse_args(argv)
    table = rows(args.device)
    width = max(len(r.peer) for r in table)
    for r in table:
        flag = "" if r.as_documented else "   <-- NOT AS DOCUMENTED"
        columns = f"{r.version:<8} {r.fmt:<22} {r.direction:<6} {r.inputs:<18}"
        print(f"{r.peer:<{width}}  {columns} {r.result}{flag}")
    if not args.no_write:
        with open(PAGE, "w", encoding="utf-8") as f:
            f.write(render(table))
        print(f"wrote {PAGE}")
    return 0 if all(r.as_documented for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
