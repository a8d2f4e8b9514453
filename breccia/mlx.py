"""breccia on MLX: layers that run a ScaledTensor weight, and PyTorch -> MLX model directories.

* :class:`QuantizedLinear` runs a weight MLX can hold (MXFP8, MXFP4, NVFP4, INT4/INT8) in
  ``mx.quantized_matmul``, straight from the packed arrays: ``y = x @ W.T (* g) + bias``.
* :class:`Float8Linear` runs FP8 weights MLX has no mode for (per-tensor, 1x128, 128x128) from their
  fp8 bits: ``W = mx.from_fp8(data) * scale`` (scale broadcast over its block), then ``x @ W.T``.
* :func:`export_mlx_model` writes a torch (or breccia) state dict as a directory that MLX and mlx-lm
  load: ``model.safetensors`` shards in mlx-lm's layout (``<layer>.weight`` uint32, ``.scales``,
  ``.biases``) and ``config.json`` with ``"quantization": {"group_size", "bits", "mode"}``;
  :func:`load_mlx_model` reads one back as ScaledTensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bridges._huggingface import INDEX_NAME
from .errors import DTypeError, FileFormatError, FileMissingError, RecipeError, missing_dependency
from .formats import NVFP4_GLOBAL_DIVISOR
from .tensor import ScaledTensor

try:
    import mlx.core as mx
    import mlx.nn as nn
except ImportError as _exc:  # pragma: no cover - exercised only without MLX
    raise missing_dependency("mlx", "mlx", str(_exc)) from _exc

from .bridges._mlx import (
    MLX_MODES,
    MLXQuantized,
    added_error,
    from_mlx_quantized,
    mlx_recipe,
    resolve_mode,
    to_mlx_quantized,
)

__all__ = [
    "QuantizedLinear",
    "Float8Linear",
    "export_mlx_model",
    "load_mlx_model",
    "ExportReport",
    "parse_mode",
]

_FLOAT8_RECIPES = ("Float8CurrentScaling", "DelayedScaling", "Float8BlockScaling")


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is a ScaledTensor MLX can hold, run by ``mx.quantized_matmul``.

    Its parameters are MLX's arrays under mlx-lm's names (``weight`` uint32, ``scales``, ``biases``
    for affine, ``global_scale`` for NVFP4 with a second level, ``bias``), so ``save_weights`` writes
    what ``mlx.nn.QuantizedLinear`` loads. :attr:`weight` gives the ScaledTensor back (a view).
    NVFP4's global scale, which ``mx.quantized_matmul`` does not take, multiplies the output once
    (``y * fl32(g / 2688)``, ``g`` being MLX's ``global_scale``).
    """

    def __init__(self, weight: ScaledTensor, bias: Any = None) -> None:
        super().__init__()
        q = weight if isinstance(weight, MLXQuantized) else to_mlx_quantized(weight)
        self.group_size, self.bits, self.mode = q.group_size, q.bits, q.mode
        self._dtype_name = weight.dtype_name if isinstance(weight, ScaledTensor) else None
        self["weight"] = q.weight
        self["scales"] = q.scales
        if q.biases is not None:
            self["biases"] = q.biases
        if q.global_scale is not None:
            self["global_scale"] = q.global_scale
        if bias is not None:
            self["bias"] = bias
        self.freeze()

    @property
    def weight(self) -> ScaledTensor:
        """The weight as a ScaledTensor over this layer's arrays."""
        return from_mlx_quantized(
            self["weight"], self["scales"], self.get("biases"), mode=self.mode,
            group_size=self.group_size, bits=self.bits, global_scale=self.get("global_scale"),
            dtype=self._dtype_name,
        )

    @property
    def quantized(self) -> MLXQuantized:
        """The weight in MLX's quantized form."""
        return MLXQuantized(
            self["weight"], self["scales"], self.get("biases"), self.mode, self.group_size, self.bits,
            self.get("global_scale"),
        )

    def __call__(self, x: Any) -> Any:
        y = mx.quantized_matmul(
            x, self["weight"], scales=self["scales"], biases=self.get("biases"), transpose=True,
            group_size=self.group_size, bits=self.bits, mode=self.mode,
        )
        if "global_scale" in self:  # MLX's g: dequantization multiplies by fl32(g / 2688)
            y = (y * (self["global_scale"] / NVFP4_GLOBAL_DIVISOR)).astype(y.dtype)
        if "bias" in self:
            y = y + self["bias"]
        return y

    def _extra_repr(self) -> str:
        out_dims, words = self["weight"].shape
        return (
            f"input_dims={words * 32 // self.bits}, output_dims={out_dims}, bias={'bias' in self}, "
            f"group_size={self.group_size}, bits={self.bits}, mode={self.mode}"
        )


class Float8Linear(nn.Module):
    """A linear layer over an FP8 ScaledTensor (per-tensor, row-wise, 1x128 or 128x128 scales).

    MLX has no fp8 dtype and no fp8 quantization mode, so the weight stays in its fp8 bits (uint8) and
    fp32 scales; each call decodes it, ``W = from_fp8(data) * scale`` in float32 (one rounding, the
    same as ``bc.dequantize``; E4M3 through ``mx.from_fp8``), and computes ``x @ W.T (+ bias)`` in
    ``x``'s dtype. To move the weight into an MLX mode instead, use :func:`requantize_to_mlx`.
    """

    def __init__(self, weight: ScaledTensor, bias: Any = None) -> None:
        super().__init__()
        if not isinstance(weight, ScaledTensor) or type(weight.recipe).__name__ not in _FLOAT8_RECIPES:
            raise RecipeError(
                "Float8Linear takes an FP8 ScaledTensor (Float8CurrentScaling, DelayedScaling, "
                f"Float8BlockScaling); got {getattr(weight, 'recipe', type(weight).__name__)!r}. "
                "Use QuantizedLinear for MX, NVFP4 and int weights"
            )
        if len(weight.shape) != 2:
            raise RecipeError(f"Float8Linear needs a 2-D [out, in] weight; got shape {weight.shape}")
        st = weight.to("mlx")
        self._st = st
        self["weight"] = st.data
        self["scale"] = st.scale
        if bias is not None:
            self["bias"] = bias
        self.freeze()

    @property
    def weight(self) -> ScaledTensor:
        """The weight as a ScaledTensor over this layer's arrays."""
        return self._st.replace_arrays(self["weight"], self["scale"])

    def dequantized_weight(self) -> Any:
        """The weight dequantized to float32 (``decode(data) * scale`` per block: :func:`dequantize`)."""
        from .quantize import dequantize

        return dequantize(self.weight, "float32")

    def __call__(self, x: Any) -> Any:
        w = self.dequantized_weight().astype(x.dtype)
        y = x @ w.T
        if "bias" in self:
            y = y + self["bias"]
        return y


# --- PyTorch -> MLX model directories ------------------------------------------------------------


def parse_mode(target: str) -> tuple[str, int, int]:
    """``"mxfp8"``, ``"mxfp4"``, ``"nvfp4"``, ``"affine4"``, ``"affine8"``, ``"affine4-g32"`` ->
    ``(mode, group_size, bits)`` (an ``mlx-`` prefix is allowed)."""
    name = target.removeprefix("mlx-")
    mode, group, bits = name, None, None
    if "-g" in name:
        name, _, g = name.partition("-g")
        mode = name
        group = int(g) if g.isdigit() else -1
    if name.startswith("affine"):
        mode, rest = "affine", name.removeprefix("affine")
        bits = int(rest) if rest.isdigit() else (None if rest == "" else -1)
    if mode not in MLX_MODES or group == -1 or bits == -1:
        raise RecipeError(
            f"unknown MLX target {target!r}; use mlx-mxfp8, mlx-mxfp4, mlx-nvfp4, mlx-affine4 or "
            "mlx-affine8, optionally with a group size such as mlx-affine4-g32"
        )
    group, bits = resolve_mode(mode, group, bits)
    return mode, group, bits


@dataclass
class ExportReport:
    """What :func:`export_mlx_model` did with each tensor: ``{name: action}``, and the files written."""

    actions: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)  # requantized tensors: added relative error

    def __str__(self) -> str:
        counts: dict[str, int] = {}
        for action in self.actions.values():
            key = action.split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        files = ", ".join(os.path.basename(f) for f in self.files)
        return f"{len(self.actions)} tensors ({summary}) -> {files}"


def _to_mlx_array(value: Any) -> Any:
    """A state dict's plain array (any framework) as an MLX array: float64 as float32, and fp8/fp4,
    which need a scale, refused."""
    from .backends import backend_for, get_backend

    if isinstance(value, mx.array):
        return value
    backend = backend_for(value, "state dict value")
    host = np.ascontiguousarray(backend.to_numpy(value))
    if host.dtype == np.float64:
        host = host.astype(np.float32)
    if host.dtype.kind == "V" or host.dtype.name.startswith("float8") or host.dtype.name.startswith("float4"):
        raise DTypeError(
            f"a plain {host.dtype.name} tensor has no scale to go with it; load it as a ScaledTensor "
            "(e.g. breccia.bridges.load_deepseek_v3) before exporting to MLX"
        )
    return get_backend("mlx").from_host(host)


def _is_torchao(value: Any) -> bool:
    return any(c.__module__.startswith("torchao") for c in type(value).__mro__)


def _from_torchao(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    if not any(_is_torchao(v) for v in state_dict.values()):
        return state_dict
    from . import bridges

    try:
        convert = bridges.from_torchao_state_dict
    except AttributeError:
        raise missing_dependency(
            "breccia.bridges.from_torchao_state_dict", "torchao", "it converts torchao tensors"
        ) from None
    return convert(state_dict)


def _quantize_float(w: Any, mode: str, group: int, bits: int) -> MLXQuantized:
    """A float matrix in MLX's form: breccia's MLX recipe, or MLX's own quantizer for nvfp4.

    mlx-lm's nvfp4 layers have no global scale, so nvfp4 uses ``mx.quantize`` without one
    (``scale = e4m3(amax / 6)``); breccia's NVFP4 recipe always has a second level.
    """
    from .quantize import cast

    if mode == "nvfp4":
        wq, scales = mx.quantize(w, group_size=group, bits=bits, mode=mode)
        return MLXQuantized(wq, scales, None, mode, group, bits)
    return to_mlx_quantized(cast(w, mlx_recipe(mode, group, bits)))


def _fits(q: MLXQuantized, mode: str, group: int, bits: int) -> bool:
    return (q.mode, q.group_size, q.bits) == (mode, group, bits) and q.global_scale is None


def _export_tensor(
    name: str, value: Any, mode: str, group: int, bits: int, quantize: Callable[[str, tuple], bool],
    report: ExportReport,
) -> dict[str, Any]:
    if isinstance(value, ScaledTensor):
        return _export_scaled(name, value, mode, group, bits, quantize, report)
    w = _to_mlx_array(value)
    shape = tuple(int(d) for d in w.shape)
    if quantize(name, shape):
        report.actions[name] = "quantized"
        return _arrays(name, _quantize_float(w, mode, group, bits))
    report.actions[name] = "kept"
    return {name: w}


def _export_scaled(
    name: str, st: ScaledTensor, mode: str, group: int, bits: int, quantize: Callable[[str, tuple], bool],
    report: ExportReport,
) -> dict[str, Any]:
    """Repack ``st`` if it is already in the target mode; else requantize it, recording the error."""
    from .quantize import dequantize

    try:
        q = to_mlx_quantized(st)
    except ValueError:  # breccia's RecipeError/LayoutError/ShapeError: MLX cannot hold it as it is
        q = None
    if q is not None and _fits(q, mode, group, bits):
        report.actions[name] = "repacked"
        return _arrays(name, q)
    values = dequantize(st.to("mlx"), "float32")
    if not quantize(name, st.shape):
        report.actions[name] = f"dequantized ({st.recipe!r} has no place in this MLX model)"
        return {name: values.astype(st.dtype)}
    q = _quantize_float(values, mode, group, bits)
    err = added_error(values, q.dequantize(mx.float32))
    report.actions[name] = f"requantized ({st.recipe!r} -> {mode}: added relative error {err:.3e})"
    report.errors[name] = err
    return _arrays(name, q)


def _arrays(name: str, q: MLXQuantized) -> dict[str, Any]:
    prefix = name.removesuffix(".weight")
    out = {f"{prefix}.weight": q.weight, f"{prefix}.scales": q.scales}
    if q.biases is not None:
        out[f"{prefix}.biases"] = q.biases
    return out


def default_predicate(group: int) -> Callable[[str, tuple], bool]:
    """Quantize what mlx-lm's ``nn.quantize`` would: 2-D ``*.weight`` whose last axis divides by ``group``."""

    def quantize(name: str, shape: tuple) -> bool:
        return name.endswith(".weight") and len(shape) == 2 and shape[-1] % group == 0

    return quantize


def export_mlx_model(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike[str],
    mode: str = "affine",
    *,
    group_size: int | None = None,
    bits: int | None = None,
    config: Mapping[str, Any] | None = None,
    quantize: Callable[[str, tuple], bool] | None = None,
    max_shard_bytes: int = 5 << 30,
    progress: Callable[[str, str], None] | None = None,
) -> ExportReport:
    """Write ``state_dict`` as an MLX model directory (mlx-lm's layout) at ``path``.

    Values may be torch/numpy/jax/mlx arrays, breccia ScaledTensors, or torchao tensors (converted by
    ``breccia.bridges.from_torchao_state_dict``). Float ``*.weight`` matrices chosen by ``quantize``
    (default: :func:`default_predicate`) are quantized in ``mode``; ScaledTensors already in that
    mode are repacked bit for bit; any other ScaledTensor is requantized and its added error recorded
    in the report (never silently); everything else is written as is. ``config`` (e.g. the model's
    hyper-parameters) is merged into ``config.json`` next to ``"quantization"``.
    """
    group, bits = resolve_mode(mode, group_size, bits)
    os.makedirs(path, exist_ok=True)
    state_dict = _from_torchao(state_dict)
    quantize = quantize or default_predicate(group)
    report = ExportReport()
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, value in state_dict.items():
        arrays = _export_tensor(name, value, mode, group, bits, quantize, report)
        nbytes = sum(int(a.nbytes) for a in arrays.values())
        if size and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1].update(arrays)
        size += nbytes
        if progress is not None:
            progress(name, report.actions[name])
    report.files = _write_shards(str(path), shards)
    quantization = {"group_size": group, "bits": bits, "mode": mode}
    full_config = {**(config or {}), "quantization": quantization, "quantization_config": quantization}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(full_config, f, indent=2)
    return report


def _write_shards(path: str, shards: list[dict[str, Any]]) -> list[str]:
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    files = []
    weight_map = {}
    for name, shard in zip(names, shards):
        file = os.path.join(path, name)
        mx.save_safetensors(file, shard, metadata={"format": "mlx"})
        files.append(file)
        weight_map.update(dict.fromkeys(shard, name))
    if len(shards) > 1:
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(path, INDEX_NAME), "w") as f:
            json.dump(index, f, indent=2)
    return files


def load_mlx_model(
    path: str | os.PathLike[str], *, check_scales: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read an MLX model directory: ``({name: ScaledTensor | mx.array}, config)``.

    Quantized layers (``<layer>.weight`` with ``.scales``) come back as ScaledTensors under
    ``<layer>.weight``, through :func:`from_mlx_quantized` (bit for bit), using the directory's
    ``config.json`` ``"quantization"`` entry (a layer's own entry there overrides it); affine widths
    breccia has no format for (2, 3, 5, 6 bits) as ``mx.dequantize``'s values; other tensors as MLX
    arrays (FP8 as uint8 bits).

    The directory is read by the checkpoint layer's mlx-lm convention: regular files only, no link out
    of the directory, config.json parsed strictly with a size limit, the shards of
    ``model.safetensors.index.json`` or the one ``model.safetensors``. Anything malformed is a
    :class:`~breccia.BrecciaError` whose message names the file and the tensor. An MX scale byte 255
    (NaN in OCP MX and breccia, +inf in ``mx.dequantize``) is a ScaleValueError unless
    ``check_scales=False``.
    """
    from .bridges._safetensors_format import fspath
    from .checkpoints import ModelDirectory
    from .checkpoints.mlx_lm import MLXLMCheckpoint

    text = fspath(path)
    if not os.path.lexists(text):
        raise FileMissingError(f"{text}: No such file or directory")
    directory = ModelDirectory(text, check_scales=check_scales)
    if directory.single is not None:
        raise FileFormatError(f"{text}: not a directory; load_mlx_model reads an MLX model directory")
    if not directory.has("config.json"):
        raise FileFormatError(f"{text} has no config.json; it is not an MLX model directory")
    with MLXLMCheckpoint(directory, "mlx-lm", "", "mlx", None) as checkpoint:
        return {name: checkpoint[name] for name in checkpoint}, directory.config
