"""MLX model directories: a state dict written as mlx-lm's layout, and such a directory read back.

* :func:`export_mlx_model` writes a torch (or breccia, or torchao) state dict as a directory that MLX
  and mlx-lm load: ``model.safetensors`` shards in mlx-lm's layout (``<layer>.weight`` uint32,
  ``.scales``, ``.biases``) and ``config.json`` with ``"quantization": {"group_size", "bits",
  "mode"}``. It is for a module mlx-lm has no model class for; ``breccia convert --to mlx-<mode>``
  (:mod:`breccia.checkpoints.mlx_lm`) is the path for a model mlx-lm knows.
* :func:`load_mlx_model` reads one back as ScaledTensors.

This is model-directory code, so it sits at the checkpoint layer and builds on that layer's pieces
through their public names: the output directory (temporary, renamed into place when complete) and
the streaming safetensors shard writer of :mod:`breccia.checkpoints`, its :class:`ModelDirectory`
and the mlx-lm convention's reader for loading. The tensor arithmetic (MLX's modes, packing, the
added-error measure) is the MLX bridge's, and torchao tensors are turned into ScaledTensors by the
torchao bridge (:func:`breccia.bridges.from_torchao_state_dict`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from ..bridges import (
    MLX_MODES,
    MLXQuantized,
    added_error,
    from_torchao_state_dict,
    fspath,
    mlx_recipe,
    resolve_mode,
    to_mlx_quantized,
)
from ..checkpoints import DEFAULT_SHARD_BYTES, ModelDirectory, OutputDirectory, ShardWriter
from ..errors import DTypeError, FileFormatError, FileMissingError, RecipeError
from ..tensor import ScaledTensor

__all__ = ["ExportReport", "default_predicate", "export_mlx_model", "load_mlx_model", "parse_mode"]


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
    from ..backends import backend_for, get_backend

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


def _quantize_float(w: Any, mode: str, group: int, bits: int) -> MLXQuantized:
    """A float matrix in MLX's form: breccia's MLX recipe, or MLX's own quantizer for nvfp4.

    mlx-lm's nvfp4 layers have no global scale, so nvfp4 uses ``mx.quantize`` without one
    (``scale = e4m3(amax / 6)``); breccia's NVFP4 recipe always has a second level.
    """
    from ..quantize import cast

    if mode == "nvfp4":
        wq, scales = mx.quantize(w, group_size=group, bits=bits, mode=mode)
        return MLXQuantized(wq, scales, None, mode, group, bits)
    return to_mlx_quantized(cast(w, mlx_recipe(mode, group, bits)))


def _fits(q: MLXQuantized, mode: str, group: int, bits: int) -> bool:
    return (q.mode, q.group_size, q.bits) == (mode, group, bits) and q.global_scale is None


def _export_tensor(
    name: str,
    value: Any,
    mode: str,
    group: int,
    bits: int,
    quantize: Callable[[str, tuple], bool],
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
    name: str,
    st: ScaledTensor,
    mode: str,
    group: int,
    bits: int,
    quantize: Callable[[str, tuple], bool],
    report: ExportReport,
) -> dict[str, Any]:
    """Repack ``st`` if it is already in the target mode; else requantize it, recording the error."""
    from ..quantize import dequantize

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
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: Callable[[str, str], None] | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write ``state_dict`` as an MLX model directory (mlx-lm's layout) at ``path``.

    Values may be torch/numpy/jax/mlx arrays, breccia ScaledTensors, or torchao tensors (converted by
    ``breccia.bridges.from_torchao_state_dict``). Float ``*.weight`` matrices chosen by ``quantize``
    (default: :func:`default_predicate`) are quantized in ``mode``; ScaledTensors already in that
    mode are repacked bit for bit; any other ScaledTensor is requantized and its added error recorded
    in the report (never silently); everything else is written as is. ``config`` (e.g. the model's
    hyper-parameters) is merged into ``config.json`` next to ``"quantization"``.

    The directory is written as ``breccia convert`` writes one (the checkpoint layer's
    ``OutputDirectory`` and ``ShardWriter``): tensors stream into ``model.safetensors`` shards of at
    most ``max_shard_bytes`` (a tensor larger than that gets a shard of its own) with
    ``model.safetensors.index.json`` when there are several, inside a temporary directory beside
    ``path`` that is renamed into place when complete, so a reader never sees a partial directory.
    ``path`` must not exist or be empty, unless ``overwrite=True`` replaces it; missing parent
    directories are created.
    """
    group, bits = resolve_mode(mode, group_size, bits)
    state_dict = from_torchao_state_dict(state_dict)
    quantize = quantize or default_predicate(group)
    report = ExportReport()
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    with OutputDirectory(path, None, overwrite=overwrite) as out:
        writer = ShardWriter(out, max_shard_bytes=max_shard_bytes, metadata={"format": "mlx"})
        for name, value in state_dict.items():
            for part, array in _export_tensor(name, value, mode, group, bits, quantize, report).items():
                writer.add(part, array)
            if progress is not None:
                progress(name, report.actions[name])
        files = writer.finish()
        quantization = {"group_size": group, "bits": bits, "mode": mode}
        full_config = {**(config or {}), "quantization": quantization, "quantization_config": quantization}
        out.write_json("config.json", full_config)
        out.commit()
    report.files = [os.path.join(out.dst, name) for name in files]
    return report


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
    from ..checkpoints.mlx_lm import MLXLMCheckpoint

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
