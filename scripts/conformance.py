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
from breccia.layouts import PerBlockK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "conformance.md")
sys.path.insert(0, os.path.join(ROOT, "tests"))  # peers.py: how the suite drives peers without a one-call API

from peers import compressed_tensors_qparams, deepseek_v3_kernel, load_transformer_engine_first  # noqa: E402


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
        """The documented difference this row expects, or None if it must be equal: the one documented
        for its device kind (``cuda``) if any, else the one for every device."""
        return DOCUMENTED.get((*self.key, self.device.split()[0]), DOCUMENTED.get(self.key))

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
    peer: str,
    version: str,
    device: str,
    fmt: ElementFormat,
    encode: Callable[[np.ndarray], np.ndarray],
    decode: Callable[[np.ndarray], np.ndarray] | None,
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
    """torch's dtype casts (``Tensor.to``), both ways, E4M3 / E5M2, on the CPU or the GPU."""
    if not _installed("torch"):
        return
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return
    version = torch.__version__.split("+")[0]
    for fmt, dtype in ((E4M3, torch.float8_e4m3fn), (E5M2, torch.float8_e5m2)):

        def encode(x: np.ndarray, dtype: Any = dtype) -> np.ndarray:
            return torch.from_numpy(x.copy()).to(device).to(dtype).view(torch.uint8).cpu().numpy()

        def decode(codes: np.ndarray, dtype: Any = dtype) -> np.ndarray:
            return torch.from_numpy(codes.copy()).to(device).view(dtype).to(torch.float32).cpu().numpy()

        yield from _element_rows("torch", version, device, fmt, encode, decode)


def jax_peer(device: str) -> Iterator[Row]:
    """JAX's dtype casts (``astype``), both ways, E4M3 / E5M2 / E2M1, on the CPU or the GPU."""
    if not _installed("jax"):
        return
    import jax
    import jax.numpy as jnp

    version = jax.__version__
    try:
        cpu = jax.devices("gpu" if device == "cuda" else "cpu")[0]
    except RuntimeError:  # no GPU backend
        return
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
        (
            "IntxUnpackedToInt8Tensor",
            formats.INT4,
            lambda x: IntxUnpackedToInt8Tensor.from_hp(x, (1, 32), torch.int4),
            None,
        ),
        ("MXTensor FLOOR", E4M3, lambda x: MXTensor.to_mx(x, mx8, 32), bc.MXFP8BlockScaling()),
        (
            "MXTensor RCEIL",
            E4M3,
            lambda x: MXTensor.to_mx(x, mx8, 32, rceil),
            bc.MXFP8BlockScaling(scale_rounding="ceil"),
        ),
        ("MXTensor FLOOR", E2M1, lambda x: MXTensor.to_mx(x, mx4, 32), bc.MXFP4BlockScaling()),
        (
            "MXTensor RCEIL",
            E2M1,
            lambda x: MXTensor.to_mx(x, mx4, 32, rceil),
            bc.MXFP4BlockScaling(scale_rounding="ceil"),
        ),
        (
            "NVFP4Tensor",
            E2M1,
            lambda x: NVFP4Tensor.to_nvfp4(x, per_tensor_scale=x.abs().amax() / (448.0 * 6.0)),
            None,
        ),
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


def _ct_presets() -> list[tuple[str, str, bc.Recipe, Any, int]]:
    """The compressed-tensors presets breccia writes, in the page's order: (preset, breccia's target
    whose ``layer_parts`` store it, the recipe and layout that reproduce the package's ``compress``,
    the row width the golden inputs are tiled to: the preset's group where it is wider than 64)."""
    from breccia.checkpoints.compressed_tensors import TARGETS
    from breccia.layouts import PerBlock2D

    def target(name: str) -> tuple[bc.Recipe, Any]:
        return TARGETS[name].recipe, TARGETS[name].layout

    return [
        ("FP8_DYNAMIC", "compressed-tensors-fp8-dynamic", *target("compressed-tensors-fp8-dynamic"), 0),
        # the package divides amax / 448 per tile as per row; breccia's target writes DeepSeek's rule
        (
            "FP8_BLOCK",
            "compressed-tensors-fp8-block",
            bc.Float8CurrentScaling(convention="torchao"),
            PerBlock2D(128, 128),
            0,
        ),
        ("NVFP4A16", "compressed-tensors-nvfp4", *target("compressed-tensors-nvfp4"), 0),
        (
            "MXFP4A16",
            "compressed-tensors-mxfp4",
            bc.MXFP4BlockScaling(scale_rounding="even"),
            PerBlockK(32),
            0,
        ),
        # no breccia rule is the package's MXFP8 exponent (_CT_MX8); ceil differs from it least
        ("MXFP8", "compressed-tensors-mxfp8", bc.MXFP8BlockScaling(scale_rounding="ceil"), PerBlockK(32), 0),
        ("W4A16", "compressed-tensors-w4a16", *target("compressed-tensors-w4a16"), 128),
        (
            "W4A16_ASYM",
            "compressed-tensors-w4a16-asym",
            bc.Int4Scaling(group_size=128, symmetric=False, convention="breccia"),
            PerBlockK(128),
            128,
        ),
    ]


def _torch_of(a: np.ndarray) -> Any:
    """A numpy array as a torch tensor of the same type (ml_dtypes' fp8 as torch's), copied."""
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype == ml_dtypes.float8_e4m3fn:
        return torch.from_numpy(a.view(np.uint8).copy()).view(torch.float8_e4m3fn)
    return torch.from_numpy(a.copy())


def compressed_tensors_peer(device: str) -> Iterator[Row]:
    """compressed-tensors' own compressors for the presets breccia writes: encode compares the
    package's ``compress`` (scales from its ``calculate_qparams``/``generate_gparam``, as llm-compressor
    passes them) with ``layer_parts`` of ``bc.cast`` under the recipe that reproduces the preset
    (:func:`_ct_presets`); decode compares the package's ``decompress`` of breccia's parts with
    ``bc.dequantize`` in the dtype it returns."""
    if device != "cpu" or not _installed("compressed_tensors"):
        return
    import torch
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.utils import generate_gparam

    from breccia.checkpoints.compressed_tensors import TARGETS, layer_parts

    peer, version = "compressed-tensors", _version("compressed-tensors")
    for preset, target, recipe, layout, width in _ct_presets():
        spec = TARGETS[target]
        scheme = preset_name_to_scheme(preset, ["Linear"])
        compressor = BaseCompressor.get_value_from_registry(spec.format)
        whole_rows = scheme.weights.strategy in ("group", "tensor_group")  # no ragged groups
        for name, x in cases(recipe.element_format, ragged=not whole_rows).items():
            x = np.tile(x, (1, width // x.shape[-1])) if width else x
            w = torch.from_numpy(x.copy())
            state = {"weight": w}
            if scheme.weights.strategy == "tensor_group":
                state["weight_global_scale"] = generate_gparam(w.min(), w.max())
            global_scale = state.get("weight_global_scale")
            state["weight_scale"], zero_point = compressed_tensors_qparams(w, scheme.weights, global_scale)
            if not scheme.weights.symmetric:
                state["weight_zero_point"] = zero_point
            theirs = compressor.compress(state, scheme)
            st = bc.cast(x, recipe, layout)
            ours = layer_parts(spec, st)
            total, differing = differ_bytes([(_host(theirs[k]), ours[k]) for k in sorted(theirs)])
            yield Row(peer, version, preset, "encode", device, name, "bytes", total, differing)
            decoded = compressor.decompress({k: _torch_of(v) for k, v in ours.items()}, scheme)["weight"]
            our_values = bc.dequantize(st, str(decoded.dtype).removeprefix("torch."))
            total, differing = differ_values(decoded.float().numpy(), np.asarray(our_values, np.float32))
            yield Row(peer, version, preset, "decode", device, name, "values", total, differing)


def transformers_mxfp4_peer(device: str) -> Iterator[Row]:
    """transformers' gpt-oss MXFP4 decoder (``integrations/mxfp4.py``'s ``convert_moe_packed_tensors``,
    what ``from_pretrained`` dequantizes gpt-oss with on the CPU) against ``bc.dequantize``: on
    ``bc.cast(x, MXFP4BlockScaling())`` of each golden input in gpt-oss's ``_blocks``/``_scales``
    layout (:func:`~breccia.checkpoints.gpt_oss.mxfp4_parts`'s, NaN blocks included), and on every
    E2M1 code under every E8M0 scale."""
    if device != "cpu" or not (_installed("transformers") and _installed("torch")):
        return
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from breccia.quantize import from_buffer

    version = _version("transformers")

    def rows_of(name: str, st: bc.ScaledTensor) -> Row:
        rows, k = st.shape
        blocks = np.asarray(st.data).reshape(1, rows, k // 32, 16)  # one expert: [E, N, K/32, 16]
        scales = np.asarray(st.scale).view(np.uint8).reshape(1, rows, k // 32)
        theirs = (
            convert_moe_packed_tensors(
                torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32
            )
            .transpose(1, 2)[0]
            .numpy()
        )  # transformers' [E, K, N] back to [N, K]
        with np.errstate(over="ignore", invalid="ignore"):
            ours = np.asarray(bc.dequantize(st, "float32"))
        total, differing = differ_values(theirs, ours)
        return Row(
            "transformers", version, "gpt-oss MXFP4", "decode", device, name, "values", total, differing
        )

    for name, x in cases(E2M1, ragged=False).items():
        yield rows_of(name, bc.cast(x, bc.MXFP4BlockScaling()))
    codes = np.tile(np.arange(16, dtype=np.uint8), 2)  # a block of 32: every code, twice
    data = np.tile(codes[0::2] | (codes[1::2] << 4), (256, 1))
    scale = np.arange(256, dtype=np.uint8).reshape(256, 1)  # block i under E8M0 code i
    every = from_buffer(data, scale, bc.MXFP4BlockScaling(), PerBlockK(32), shape=(256, 32))
    yield rows_of("every code, every scale", every)


#: Golden inputs gguf-py's rows leave out: breccia's ggml recipes refuse NaN and Inf (ggml has no rule
#: for them; ``tests/test_conformance.py`` asserts the refusal), and gguf-py's blocks of them are
#: numpy's casts of NaN to integers, which the platform defines.
GGML_REFUSED = ("+-Inf", "NaN")


def gguf_peer(device: str) -> Iterator[Row]:
    """gguf-py's ``gguf.quants.quantize``/``dequantize`` for the ggml types breccia quantizes to (Q8_0,
    Q4_0, MXFP4): encode compares gguf-py's blocks with those ``save_gguf(..., types=...)`` writes (the
    bridge's ``GGML_RECIPES``); decode compares gguf-py's ``dequantize`` of its own blocks with
    ``bc.dequantize`` of what ``open_gguf`` reads from a file gguf-py wrote."""
    if device != "cpu" or not _installed("gguf"):
        return
    import tempfile

    import gguf

    from breccia.bridges import GGML_RECIPES, open_gguf, save_gguf

    version = _version("gguf")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, recipe in GGML_RECIPES.items():
            qtype = gguf.GGMLQuantizationType[kind]
            for i, (name, x) in enumerate(cases(recipe.element_format, ragged=False).items()):
                if name in GGML_REFUSED:
                    continue
                theirs = gguf.quants.quantize(x, qtype)
                ours_path = os.path.join(tmp, f"{kind}-{i}-breccia.gguf")
                theirs_path = os.path.join(tmp, f"{kind}-{i}-gguf-py.gguf")
                save_gguf({"t": x}, ours_path, types={"t": kind})
                ours = np.array(gguf.GGUFReader(ours_path).tensors[0].data)
                total, differing = differ_bytes([(theirs, ours)])
                yield Row("gguf-py", version, kind, "encode", device, name, "bytes", total, differing)
                writer = gguf.GGUFWriter(theirs_path, "conformance")
                writer.add_tensor("t", theirs, raw_dtype=qtype)
                writer.write_header_to_file()
                writer.write_kv_data_to_file()
                writer.write_tensors_to_file()
                writer.close()
                ours = bc.dequantize(open_gguf(theirs_path)["t"], "float32")
                total, differing = differ_values(gguf.quants.dequantize(theirs, qtype), ours)
                yield Row("gguf-py", version, kind, "decode", device, name, "values", total, differing)


DEEPSEEK_COMMIT = "adecc0e"  # deepseek-ai/DeepSeek-V3, the last commit of inference/kernel.py


def deepseek_inputs() -> dict[str, np.ndarray]:
    """Finite ``[rows, 7168]`` float32 activations for ``act_quant`` (1x128 groups)."""
    rng = np.random.default_rng(21)
    random = rng.standard_normal((64, 7168)).astype(np.float32)
    magnitudes = np.exp2(rng.integers(-40, 40, (64, 56, 1))).astype(np.float32)
    ragged = (random.reshape(64, 56, 128) * magnitudes).reshape(64, 7168)
    zeros = np.zeros((8, 7168), np.float32)
    zeros[:, 1::2] = -0.0
    edges = 448.0 * np.exp2(np.arange(-23, 33))[None, :] * (1 + np.arange(8)[:, None] * 2.0**-23)
    powers = random[:8] * np.float32(1e-9)
    powers[:, ::128] = edges.astype(np.float32)
    big = random[:8] * np.float32(1e36)
    big[0, 0] = np.float32(3.4e38)
    return {
        "random": random,
        "ragged": ragged,
        "zeros": zeros,
        "below the 1e-4 floor": random[:8] * np.float32(1e-7),
        "scales at powers of two": powers,
        "max": big,
    }


def deepseek_peer(device: str) -> Iterator[Row]:
    """DeepSeek-V3's own ``act_quant`` (Triton, ``tests/data/deepseek_v3_kernel.py``; CUDA only)
    against ``bc.cast(x, deepseek_recipe("activation", scale_fmt))`` on torch and JAX on the GPU:
    codes and scales. Finite inputs only (a NaN block follows breccia's NaN rule, numerics.md)."""
    if device != "cuda" or not (_installed("torch") and _installed("triton") and _installed("jax")):
        return
    import jax
    import torch

    if not torch.cuda.is_available():
        return
    from breccia.bridges import deepseek_recipe

    kernel = deepseek_v3_kernel()
    gpu = jax.devices("gpu")[0]
    for scale_fmt in (None, "ue8m0"):
        recipe = deepseek_recipe("activation", scale_fmt=scale_fmt)
        for name, x in deepseek_inputs().items():
            codes, scale = kernel.act_quant(torch.from_numpy(x).cuda(), 128, scale_fmt)
            theirs = [_host(codes), _host(scale)]
            for framework, array in (("torch", torch.from_numpy(x).cuda()), ("jax", jax.device_put(x, gpu))):
                st = bc.cast(array, recipe).to("numpy")
                ours = [st.data.view(np.uint8), st.scale]
                total, differing = differ_bytes(list(zip(theirs, ours)))
                fmt = f"act_quant {scale_fmt or 'fp32 scales'}"
                yield Row(
                    "deepseek kernel.py",
                    DEEPSEEK_COMMIT,
                    fmt,
                    "encode",
                    f"cuda {framework}",
                    name,
                    "bytes",
                    total,
                    differing,
                )


def _te_quantizers(fmt_name: str) -> list[tuple[str, Callable[[], Any]]]:
    """TransformerEngine's quantizers that run on every CUDA GPU, by label (row-wise buffers only).
    ``Float8Quantizer`` (delayed scaling) is given the scale 16, which breccia's DelayedScaling
    reproduces from a history holding ``max / 16``."""
    import torch
    import transformer_engine_torch as tex
    from transformer_engine.pytorch.tensor.float8_blockwise_tensor import Float8BlockQuantizer
    from transformer_engine.pytorch.tensor.float8_tensor import Float8CurrentScalingQuantizer, Float8Quantizer

    dt = getattr(tex.DType, f"kFloat8{fmt_name}")
    cuda = torch.device("cuda")
    rowwise = {"rowwise": True, "columnwise": False}
    out = [
        ("Float8Tensor current", lambda: Float8CurrentScalingQuantizer(dt, cuda, **rowwise)),
        (
            "Float8Tensor delayed",
            lambda: Float8Quantizer(
                torch.tensor([16.0], device=cuda), torch.zeros(1, device=cuda), dt, **rowwise
            ),
        ),
    ]
    for dim, block in ((1, "1x128"), (2, "128x128")):
        for pow2 in (True, False):
            out.append(
                (
                    f"Float8BlockwiseQTensor {block}{' pow2' if pow2 else ''}",
                    lambda dim=dim, pow2=pow2: Float8BlockQuantizer(
                        dt, **rowwise, block_scaling_dim=dim, force_pow_2_scales=pow2
                    ),
                )
            )
    return out


def transformer_engine_peer(device: str) -> Iterator[Row]:
    """TransformerEngine's own quantizers and dequantize on the GPU (CUDA only, when TE is installed):
    encode compares the codes and scales of ``from_transformer_engine(quantizer(x))`` with
    ``bc.cast`` of the recipe it reports, on torch and on JAX on the GPU; decode compares TE's
    ``dequantize(dtype=float32)`` with ``bc.dequantize``. MXFP8 and NVFP4 are left out: TE 2.20's
    quantizers for them need sm_100+ (on sm_90 MXFP8 returns unwritten buffers, NVFP4 raises)."""
    if device != "cuda" or not (_installed("transformer_engine") and _installed("jax")):
        return
    import jax
    import torch

    if not torch.cuda.is_available():
        return
    import transformer_engine.pytorch  # noqa: F401  (loads TE's library before transformer_engine_torch)

    from breccia.bridges import from_transformer_engine

    version = _version("transformer-engine")
    gpu = jax.devices("gpu")[0]
    on_gpu = {"torch": lambda a: torch.from_numpy(a).cuda(), "jax": lambda a: jax.device_put(a, gpu)}
    for fmt in (E4M3, E5M2):
        for label, quantizer in _te_quantizers(fmt.name):
            for name, x in cases(fmt).items():
                x = np.tile(x, (1, 4))  # 256 (or 160) columns: whole and ragged 128-wide blocks
                t = quantizer()(on_gpu["torch"](x))
                theirs = from_transformer_engine(t)
                theirs_bytes = [_host(theirs.data), _host(theirs.scale)]
                history = float(fmt.max_value) / 16.0
                for framework, move in on_gpu.items():
                    array = move(x)
                    if isinstance(theirs.recipe, bc.DelayedScaling):
                        full = np.full((theirs.recipe.amax_history_len,), history, np.float32)
                        ours, _ = bc.cast_with_history(
                            array, theirs.recipe, theirs.layout, history=bc.AmaxHistory(move(full))
                        )
                    else:
                        ours = bc.cast(array, theirs.recipe, theirs.layout)
                    ours = ours.to("numpy")
                    pairs = list(zip(theirs_bytes, [ours.data.view(np.uint8), ours.scale]))
                    total, differing = differ_bytes(pairs)
                    yield Row(
                        "transformer-engine",
                        version,
                        f"{label} {fmt.name}",
                        "encode",
                        f"cuda {framework}",
                        name,
                        "bytes",
                        total,
                        differing,
                    )
                total, differing = differ_values(
                    _host(t.dequantize(dtype=torch.float32)), _host(bc.dequantize(theirs, "float32"))
                )
                yield Row(
                    "transformer-engine",
                    version,
                    f"{label} {fmt.name}",
                    "decode",
                    "cuda torch",
                    name,
                    "values",
                    total,
                    differing,
                )


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
PEERS: list[Callable[[str], Iterator[Row]]] = [
    ml_dtypes_peer,
    torch_peer,
    jax_peer,
    mlx_peer,
    torchao_peer,
    compressed_tensors_peer,
    transformers_mxfp4_peer,
    gguf_peer,
    deepseek_peer,
    transformer_engine_peer,
]


# --- what breccia documents where it differs -------------------------------------------------------

_E4M3_NAN = "past max and +-Inf give NaN (E4M3 has no Inf); breccia saturates to +-448 (the NaN rule, 3)"
_E5M2_INF_TIE = "the tie between max 57344 and 2**16 rounds to Inf (IEEE); breccia saturates to +-57344"
_E5M2_INF = "past max gives +-Inf and Inf stays Inf; breccia saturates to +-57344 (the NaN rule, 3)"
_NONFINITE = "a non-finite value in a block: the peer's rule differs from breccia's (numerics.md, the table)"
_FP4_TIES = "fp4: MLX rounds ties toward zero and never writes -0; breccia rounds to even, keeps the sign"
_ZERO_TENSOR = "an all-zero tensor: the peer's global scale is 0 (0 / 0 in its block scales); breccia's is 1"
_MX_ZERO = "an all-zero block: torchao writes E8M0 code 0 (2**-127), breccia 127 (scale 1); both decode to 0"
_F8_ZERO = "an all-zero row: torchao's scale is 0 and its codes 0 / 0 = NaN; breccia's scale is 1, codes 0"
_CT_ZERO = (
    "an all-zero row or tile: compressed-tensors' calculate_qparams replaces its 0 scale by float32 "
    "eps (2**-23); breccia's is 1; codes 0 alike"
)
_CT_INT4_ZERO = (
    "an all-zero group: compressed-tensors' scale is float32 eps (2**-23, calculate_qparams' "
    "floor for a 0 scale), torchao's int4 rule (breccia's) floors it at 2**-126; codes 0 alike"
)
_CT_ASYM_ZERO = (
    "an all-zero group: compressed-tensors' zero point is bit_min - 0 / 0 (its 0 scale becomes "
    "eps only afterwards), NaN cast to int8 (0 here), so its codes are 0; breccia's zero point "
    "is -8 = qmin - round(0 / s) with codes -8; both decode to 0"
)
_CT_FP4_ZERO = (
    "-0: compressed-tensors' CPU E2M1 cast (fp4_utils.cast_to_fp4: |x| rounded, times "
    "torch.sign(x), which is +0 for -0) writes code 0; breccia keeps the sign (code 8)"
)
_CT_MX_ZERO = "an all-zero block: compressed-tensors writes E8M0 code 0 (2**-127), breccia 127 (scale 1)"
_CT_MX8 = (
    "compressed-tensors' MX exponent (generate_mx_scales) carries to the next power of two where "
    "amax's mantissa is >= 1.75 (E2M1's half-step, kept for MXFP8); breccia's closest rule, ceil, "
    "carries only above 1.75, so a block whose amax is 448 * 2**k gets half the package's scale"
)
_CT_W4_DIVIDE = (
    "compressed-tensors divides x / s; torchao's rule (breccia's W4A16 recipe, the same scale "
    "amax / 7.5) multiplies x * fl32(1 / s): a quotient of exactly -7.5 there is -7.4999995 "
    "here, one code apart"
)
_CT_E8M0_255 = (
    "E8M0 code 255 (breccia's NaN block): compressed-tensors reads its scale as 2**(255 - 127) = "
    "Inf, so the block's nonzero codes decode to +-Inf, its zero codes to 0 * Inf = NaN; breccia "
    "decodes the whole block to NaN"
)
_GPT_OSS_255 = (
    "E8M0 code 255 (breccia's NaN block): transformers computes ldexp(code, 255 - 127): +-Inf, "
    "+-2**127 for +-0.5, +-0 for +-0; breccia decodes the whole block to NaN, and its gpt-oss "
    "writer refuses such blocks (mxfp4_parts)"
)

_TE_LABELS = (
    "Float8Tensor current",
    "Float8Tensor delayed",
    *(f"Float8BlockwiseQTensor {block}{pow2}" for block in ("1x128", "128x128") for pow2 in (" pow2", "")),
)

#: (peer, format, direction, inputs[, device kind]) -> why this row differs (a device kind narrows it
#: to that kind's rows). Every row not listed must be equal.
DOCUMENTED: dict[tuple[str, ...], str] = {
    ("torch", "E4M3", "encode", "beyond max, +-Inf", "cuda"): _E4M3_NAN
    + " (torch saturates E4M3 on the CPU only)",
    ("ml_dtypes", "E4M3", "encode", "beyond max, +-Inf"): _E4M3_NAN,
    ("ml_dtypes", "E5M2", "encode", "max"): _E5M2_INF_TIE,
    ("ml_dtypes", "E5M2", "encode", "beyond max, +-Inf"): _E5M2_INF,
    ("torch", "E5M2", "encode", "max"): _E5M2_INF_TIE,
    ("torch", "E5M2", "encode", "beyond max, +-Inf"): _E5M2_INF + " (torch saturates only E4M3)",
    ("jax", "E4M3", "encode", "beyond max, +-Inf"): _E4M3_NAN,
    ("jax", "E5M2", "encode", "max"): _E5M2_INF_TIE,
    ("jax", "E5M2", "encode", "beyond max, +-Inf"): _E5M2_INF,
    **{
        ("mlx", mode, "encode", inputs): _NONFINITE
        for mode in ("mxfp8", "mxfp4", "affine4", "affine8")
        for inputs in ("+-Inf", "NaN")
    },
    **{("mlx", "nvfp4", "encode", inputs): _FP4_TIES for inputs in ("random", "subnormals")},
    ("mlx", "nvfp4", "encode", "zeros"): _FP4_TIES + "; " + _ZERO_TENSOR,
    ("torchao", "Float8Tensor E4M3", "encode", "zeros"): _F8_ZERO,
    ("torchao", "NVFP4Tensor E2M1", "encode", "zeros"): _ZERO_TENSOR,
    **{
        ("torchao", label, "encode", inputs): _NONFINITE
        for label in ("Float8Tensor E4M3", "Int8Tensor INT8", "IntxUnpackedToInt8Tensor INT4")
        for inputs in ("+-Inf", "NaN")
    },
    **{
        (f"torchao {mode}", f"MXTensor {fmt}", "encode", inputs): note
        for mode in ("FLOOR", "RCEIL")
        for fmt in ("E4M3", "E2M1")
        for inputs, note in (("zeros", _MX_ZERO), ("+-Inf", _NONFINITE), ("NaN", _NONFINITE))
    },
    **{
        ("compressed-tensors", preset, "encode", inputs): _NONFINITE
        for preset in ("FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "MXFP4A16", "MXFP8", "W4A16", "W4A16_ASYM")
        for inputs in ("+-Inf", "NaN")
    },
    ("compressed-tensors", "FP8_DYNAMIC", "encode", "zeros"): _CT_ZERO,
    ("compressed-tensors", "FP8_BLOCK", "encode", "zeros"): _CT_ZERO,
    ("compressed-tensors", "NVFP4A16", "encode", "zeros"): _CT_FP4_ZERO,
    ("compressed-tensors", "MXFP4A16", "encode", "zeros"): _CT_FP4_ZERO + "; " + _CT_MX_ZERO,
    ("compressed-tensors", "MXFP8", "encode", "zeros"): _CT_MX_ZERO,
    **{
        ("compressed-tensors", "MXFP8", "encode", inputs): _CT_MX8 for inputs in ("ties", "subnormals", "max")
    },
    ("compressed-tensors", "MXFP4A16", "decode", "NaN"): _CT_E8M0_255,
    ("compressed-tensors", "MXFP8", "decode", "NaN"): _CT_E8M0_255,
    ("compressed-tensors", "W4A16", "encode", "random"): _CT_W4_DIVIDE,
    ("compressed-tensors", "W4A16", "encode", "zeros"): _CT_INT4_ZERO,
    ("compressed-tensors", "W4A16_ASYM", "encode", "zeros"): _CT_ASYM_ZERO,
    **{
        ("transformer-engine", f"{label} {fmt}", "encode", "NaN"): _NONFINITE
        for label in _TE_LABELS
        for fmt in ("E4M3", "E5M2")
    },
    ("transformers", "gpt-oss MXFP4", "decode", "NaN"): _GPT_OSS_255,
    ("transformers", "gpt-oss MXFP4", "decode", "every code, every scale"): _GPT_OSS_255,
}


def rows(device: str = "cpu", peers: list[Callable[[str], Iterator[Row]]] | None = None) -> list[Row]:
    """Every row of every installed peer on ``device``."""
    return [row for peer in (PEERS if peers is None else peers) for row in peer(device)]


# --- the page --------------------------------------------------------------------------------------


def _run_kind(device: str) -> str:
    """``cpu`` or ``cuda``: the rows of one run of the script (``cuda torch`` rows are a cuda run's)."""
    return device.split()[0]


def _kept_from_page(device: str) -> tuple[list[str], list[str]]:
    """The page's "Generated" lines and table rows of the other kind of run than ``device``'s, so that
    a CPU run and a CUDA run (on the device machine) each rewrite only their own rows."""
    if not os.path.exists(PAGE):
        return [], []
    with open(PAGE, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kind = _run_kind(device)
    generated = [line for line in lines if line.startswith("- Generated ") and f"({kind} rows)" not in line]
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|", 6)]  # a note may hold "|"
        if line.startswith("| ") and len(cells) == 7 and cells[0] not in ("peer", "---"):
            if _run_kind(cells[4]) != kind:
                rows.append(line)
    return generated, rows


#: The page's sections, in order, with what their rows compare: a row's section is the first word of
#: its peer's name; docs link to a peer's rows as ``conformance.md#<the title's anchor>``.
SECTIONS: dict[str, tuple[str, str]] = {
    "ml_dtypes": ("ml_dtypes", "numpy's fp8 and fp4 casts (`astype`) both ways, and E8M0 decoding."),
    "torch": ("torch", "torch's dtype casts (`Tensor.to`) both ways, E4M3 and E5M2, on the CPU and the GPU."),
    "jax": ("JAX", "JAX's dtype casts (`astype`) both ways, E4M3 and E5M2, on the CPU and the GPU."),
    "mlx": (
        "MLX",
        "`mx.quantize` and `mx.dequantize` in every mode against `bc.cast` with `mlx_recipe(mode)` "
        "and `bc.dequantize`.",
    ),
    "torchao": (
        "torchao",
        "torchao's CPU tensor types (`Float8Tensor`, `Int8Tensor`, "
        "`IntxUnpackedToInt8Tensor`, `MXTensor` with FLOOR and RCEIL, `NVFP4Tensor`) against "
        "`bc.cast` with the recipe `from_torchao` infers; decode compares `t.dequantize()` with "
        "`bc.dequantize(from_torchao(t))`.",
    ),
    "compressed-tensors": (
        "compressed-tensors",
        "The package's own `compress` (scales from its "
        "`calculate_qparams`/`generate_gparam`, as llm-compressor passes them) against "
        "`layer_parts` of `bc.cast` for each preset breccia writes, with the recipe that "
        "reproduces it: FP8_DYNAMIC and FP8_BLOCK `Float8CurrentScaling(convention="
        '"torchao")` per row and per 128x128 tile, NVFP4A16 `NVFP4BlockScaling('
        'convention="compressed-tensors")`, MXFP4A16 `MXFP4BlockScaling(scale_rounding='
        '"even")`, MXFP8 `MXFP8BlockScaling(scale_rounding="ceil")` (the closest: no '
        "breccia rule is the package's), W4A16 `Int4Scaling(group_size=128, convention="
        '"torchao")` and W4A16_ASYM `Int4Scaling(group_size=128, symmetric=False)`, the '
        "inputs tiled to 128 wide; decode rows are the package's `decompress` of breccia's "
        "parts.",
    ),
    "transformers": (
        "transformers",
        "breccia's MXFP4 casts in gpt-oss's `_blocks`/`_scales` layout decoded "
        "by `convert_moe_packed_tensors` (transformers' CPU dequantize), and `every code, every "
        "scale` (the 16 E2M1 codes under each of the 256 E8M0 scales).",
    ),
    "gguf-py": (
        "gguf-py",
        "`gguf.quants.quantize` against the blocks `save_gguf(..., types=...)` writes "
        "(`GGML_RECIPES`), and `gguf.quants.dequantize` against `bc.dequantize` of what `open_gguf` "
        "reads from gguf-py's file. `+-Inf` and `NaN` are left out: breccia's ggml recipes refuse "
        "them (a `RecipeError`: ggml has no rule for them; the test asserts it), and gguf-py's blocks "
        "for them are numpy's platform-defined casts of NaN to integers.",
    ),
    "deepseek": (
        "DeepSeek-V3 kernel",
        "DeepSeek-V3's own Triton `act_quant` "
        "(`tests/data/deepseek_v3_kernel.py`) against breccia's torch and JAX CUDA casts on 1x128 "
        "activations: `random`, `ragged` (a random power of two per group), `zeros`, groups "
        "`below the 1e-4 floor`, `scales at powers of two` (the UE8M0 edge) and `max` (up to "
        "3.4e38). The CPU's residue against that kernel is counted in "
        "[the DeepSeek bridge](bridges/deepseek.md#act_quant-ue8m0).",
    ),
    "transformer-engine": (
        "TransformerEngine",
        "TE's own quantizers on the GPU "
        "(`Float8CurrentScalingQuantizer`, `Float8Quantizer` with scale 16, "
        "`Float8BlockQuantizer` 1x128 and 128x128 with and without power-of-two scales; "
        "the inputs tiled to 256 or 160 columns) against `bc.cast` on torch and JAX on "
        "the GPU with the recipe `from_transformer_engine` reports, and TE's `dequantize` "
        "against `bc.dequantize`. TE's MXFP8 and NVFP4 quantizers need sm_100+: an H200 "
        "gives no rows for them.",
    ),
}


def _sections(lines: list[str]) -> list[tuple[str, str, list[str]]]:
    """``(title, about, table lines)`` per :data:`SECTIONS` entry, in its order (a peer not listed gets
    a section of its own at the end)."""
    grouped: dict[str, list[str]] = {}
    for line in lines:
        first = line.strip().strip("|").split("|", 1)[0].strip().split()[0]
        grouped.setdefault(first, []).append(line)
    order = [k for k in SECTIONS if k in grouped] + [k for k in grouped if k not in SECTIONS]
    return [(*SECTIONS.get(k, (k, "")), grouped[k]) for k in order]


def render(table: list[Row], device: str = "cpu") -> str:
    """``docs/conformance.md``: this run's rows beside the other device's rows already on the page."""
    versions = sorted({(r.peer.split()[0], r.version) for r in table})
    kept_generated, kept_rows = _kept_from_page(device)
    generated = (
        f"- Generated {datetime.date.today().isoformat()} ({_run_kind(device)} rows) on {platform.system()} "
        f"{platform.machine()}{_gpu_name(device)}, Python {platform.python_version()}, breccia "
        f"{bc.__version__}, numpy {np.__version__}; peers: "
        + ", ".join(f"{name} {v}" for name, v in versions)
        + "."
    )
    lines = [
        "# Conformance matrix",
        "",
        "<!-- generated by scripts/conformance.py; do not edit by hand -->",
        "",
        *sorted([generated, *kept_generated]),
        "",
        "Each row drives the peer's own encoder or decoder and breccia's on the same golden input and "
        "compares the bytes (encode: data, scales, and global scales or zero points where the format "
        "has them) or the float32 values (decode: NaN equals NaN, -0 differs from +0). Inputs: "
        "`random` and `ragged` normal values in range, `zeros` (+0 and -0), `ties` (midpoints between "
        "neighbouring values of the format), `subnormals` (the format's, their midpoints, and float32 "
        "subnormals), `max` (+-max and values that round to it), `+-Inf` and `NaN` inside a block, and for "
        "element casts `beyond max, +-Inf`. Block-scaled inputs pin each 16-element block's amax at the "
        "format's max; `ragged` appears where the peer takes rows that are not whole groups. Encode rows "
        "use the recipe that reproduces the peer; element casts use breccia's element encoder at scale 1. "
        "`tests/test_conformance.py` runs the same rows and asserts each one: a row that says *equal* is "
        "equal, and a documented difference still differs. The rules behind the differences are in "
        "[Numerics](numerics.md#how-breccia-and-the-peers-differ). The CUDA rows run on the device "
        "machine.",
    ]
    rendered = []
    for r in table:
        note = f" ({r.expected})" if r.expected and r.differing else ""
        rendered.append(
            f"| {r.peer} | {r.version} | {r.fmt} | {r.direction} | {r.device} | {r.inputs} "
            f"| {r.result}{note} |"
        )
    cpu_first = (rendered + kept_rows) if _run_kind(device) == "cpu" else (kept_rows + rendered)
    for title, about, section in _sections(cpu_first):
        lines += [
            "",
            f"## {title}",
            "",
            about,
            "",
            "| peer | version | format | direction | device | inputs | result |",
            "|---|---|---|---|---|---|---|",
            *section,
        ]
    lines += [
        "",
        "Regenerate with `python scripts/conformance.py` (the CPU rows) and, on the CUDA machine, "
        "`python scripts/conformance.py --device cuda` (the CUDA rows); each keeps the other's rows.",
        "",
    ]
    return "\n".join(lines)


def _gpu_name(device: str) -> str:
    if _run_kind(device) != "cuda":
        return ""
    import torch

    return f", {torch.cuda.get_device_name()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (the CUDA rows run on the device machine)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/conformance.md")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        load_transformer_engine_first()
    table = rows(args.device)
    width = max(len(r.peer) for r in table)
    for r in table:
        flag = "" if r.as_documented else "   <-- NOT AS DOCUMENTED"
        columns = f"{r.version:<8} {r.fmt:<22} {r.direction:<6} {r.inputs:<18}"
        print(f"{r.peer:<{width}}  {columns} {r.result}{flag}")
    if not args.no_write:
        page = render(table, args.device)  # before opening PAGE for writing: it keeps the page's other rows
        with open(PAGE, "w", encoding="utf-8") as f:
            f.write(page)
        print(f"wrote {PAGE}")
    return 0 if all(r.as_documented for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
