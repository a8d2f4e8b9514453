"""``hf``: a plain floating-point Hugging Face model directory (safetensors weights, no quantization).

Read: every stored tensor under its own name. This convention is the fallback: it claims a directory
only when no quantized convention does, and it refuses one whose tensors look quantized (integer,
uint8, fp8, fp4 or fp6 storage; ``*_blocks``/``*_scales`` pairs; torchao's serialized subclasses), so
a format breccia does not know is an error naming the tensor, never a silent float pass-through.

Write (targets ``bf16``, ``float16``, ``float32``): every quantized tensor is dequantized (in float32,
one rounding to the target dtype, a slab of rows at a time) and every float tensor is cast to the
target dtype (round to nearest even), except float32 tensors the model keeps in float32 on purpose
(DeepSeek's ``e_score_correction_bias``). Integer buffers (``position_ids``) are copied. Each tensor is
written in the layout transformers' float model of the source's convention holds
(``Checkpoint.float_layout``; gpt-oss experts are stored ``[E, N, K]`` but loaded ``[E, K, N]``).
config.json loses its ``quantization_config`` and says the new dtype (``torch_dtype`` and ``dtype``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tensor import ScaledTensor
from ._directory import ModelDirectory
from ._output import OutputDirectory, ShardWriter, like_source
from ._registry import Checkpoint, Convention, StoredCheckpoint, register
from ._slabs import dequantize_rows
from ._targets import ConversionReport, Target, TargetParser, register_target

__all__ = ["HFCheckpoint", "FLOAT_TARGETS", "QUANTIZED_STORAGE", "float_config", "write_float"]

#: safetensors dtypes that hold codes, not values: a tensor stored so needs a convention to decode it
QUANTIZED_STORAGE = ("I8", "U8", "I16", "U16", "I32", "U32", "U64", "F4", "F6_E2M3", "F6_E3M2")
_FP8 = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ")
#: target name -> numpy dtype name
FLOAT_TARGETS = {"bf16": "bfloat16", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
_KEEP_FLOAT32 = ("e_score_correction_bias",)
#: files of quantized formats that a float output must not carry
QUANTIZATION_SIDE_FILES = ("hf_quant_config.json", "quant_config.json", "quantization_config.json")


class HFCheckpoint(StoredCheckpoint):
    """Plain tensors of a safetensors model directory, by name."""


def _quantized_looking(directory: ModelDirectory) -> list[str]:
    """Descriptions of the stored tensors that only a quantized convention could explain."""
    found = []
    for raw, entry in directory.entries.items():
        if entry.dtype in QUANTIZED_STORAGE or entry.dtype in _FP8:
            found.append(f"{raw!r} ({entry.dtype} {list(entry.shape)})")
        elif raw.endswith(("_blocks", "_scales")) and entry.dtype != "F32":
            found.append(f"{raw!r} (a *_blocks/*_scales pair)")
    torchao = [k for k in directory.metadata if "torchao" in k.lower() or "tensor_type" in k.lower()]
    if torchao:
        found.append(f"torchao-serialized tensors (safetensors metadata {torchao[0]!r})")
    return found


def _detect(directory: ModelDirectory) -> str | None:
    from ..errors import FileFormatError

    files = directory.weight_files[0]
    if not any(f.endswith(".safetensors") for f in files):
        return None
    suspicious = _quantized_looking(directory)
    if suspicious:
        more = f" and {len(suspicious) - 3} more" if len(suspicious) > 3 else ""
        raise FileFormatError(
            f"{directory.root}: {', '.join(suspicious[:3])}{more} look quantized, but no quantization "
            "convention breccia knows describes this checkpoint (config.json names none it reads); "
            "refusing to treat the codes as float values"
        )
    dtypes = sorted({e.dtype for e in directory.entries.values()})
    return f"{', '.join(dtypes)} tensors" if dtypes else "no tensors"


register(Convention("hf", _detect, HFCheckpoint, fallback=True))


# --- writing --------------------------------------------------------------------------------------


def float_config(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """``config`` for a float checkpoint of ``dtype``: no quantization section, the dtype stated."""
    out = {k: v for k, v in config.items() if k not in ("quantization_config", "quantization")}
    if isinstance(out.get("text_config"), dict):
        out["text_config"] = {k: v for k, v in out["text_config"].items() if k != "quantization_config"}
    out["torch_dtype"] = dtype
    if "dtype" in config or "torch_dtype" not in config:
        out["dtype"] = dtype
    return out


def to_float(name: str, value: Any, dtype: str, report: ConversionReport) -> np.ndarray:
    """``value`` (ScaledTensor or array) as a float array of ``dtype``, recorded in ``report``."""
    if isinstance(value, ScaledTensor):
        report.record(name, "dequantized")
        return dequantize_rows(value, dtype)
    array = np.asarray(value)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        report.record(name, "copied")
        return array
    if array.dtype.name == dtype or (array.dtype == np.float32 and name.endswith(_KEEP_FLOAT32)):
        report.record(name, "copied")
        return array
    report.record(name, "cast")
    from ..backends import get_backend

    return get_backend("numpy").astype(array, dtype)


def write_float(
    source: Checkpoint, out: OutputDirectory, report: ConversionReport, dtype: str, progress: Any
) -> None:
    """Every tensor of ``source`` as a float checkpoint of ``dtype`` (see the module docstring)."""
    writer = ShardWriter(out, metadata={"format": "pt"}, **like_source(source))
    for name in progress(list(source)):
        writer.add(name, source.float_layout(name, to_float(name, source.read_numpy(name), dtype, report)))
        source.release()
    report.files = writer.finish()
    out.write_json("config.json", float_config(source.config, dtype))


def _parse(text: str) -> Target | None:
    dtype = FLOAT_TARGETS.get(text.lower())
    if dtype is None:
        return None
    return Target(dtype if dtype != "bfloat16" else "bf16", "hf", write_float, {"dtype": dtype})


register_target(TargetParser(_parse, ("bf16", "float16", "float32")))
