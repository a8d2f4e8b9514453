"""``deepseek-fp8``: DeepSeek-style block FP8 (V3, R1, V3.1, transformers' FineGrainedFP8, Qwen FP8).

Stored: a linear layer's ``weight`` as float8_e4m3fn ``[out, in]`` beside ``weight_scale_inv``, one
dequantization multiplier per 128x128 tile (``[ceil(out/128), ceil(in/128)]``)::

    W[i, j] = fp32(Wq[i, j]) * S[i // 128, j // 128]

config.json's ``quantization_config`` is ``{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme":
"dynamic", "weight_block_size": [128, 128]}``; V3.1 adds ``"scale_fmt": "ue8m0"`` (power-of-two
scales), transformers' ``FineGrainedFP8Config`` writes ``"scale_fmt": "float"`` or nothing. Scales
may be stored as float32, bfloat16 (some Qwen FP8 releases) or F8_E8M0 bytes; all are widened
exactly. A checkpoint without a config but with ``*_scale_inv`` pairs is read the same way.

Read: each FP8 weight with its scale as a ScaledTensor (``Float8BlockScaling(block_m=128,
convention="deepseek")`` in ``PerBlock2D(128, 128)``); every other tensor as it is.

Write (``deepseek-fp8``, ``deepseek-fp8-ue8m0``): linear weights (2-D ``*.weight`` outside norms,
embeddings, ``lm_head`` and the MoE router ``*.gate.weight``, as DeepSeek ships them) are cast with
DeepSeek's weight rule, ``s = max(amax, 1e-4) / 448`` per tile (``ue8m0``: rounded up to a power of
two); a source tensor that is already DeepSeek FP8 with the same rule is repacked bit for bit. Other
quantized tensors are dequantized to the model's dtype; float tensors are copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import FileFormatError
from ..tensor import ScaledTensor
from ._directory import ModelDirectory
from ._output import OutputDirectory, ShardWriter, like_source
from ._registry import Checkpoint, Convention, register
from ._slabs import in_recipe
from ._targets import ConversionReport, Target, TargetParser, register_target

__all__ = ["DeepSeekFP8Checkpoint", "is_linear_weight", "model_dtype"]

SCALE_SUFFIX = "_scale_inv"
_SCALE_FORMATS = {None: None, "float": None, "ue8m0": "ue8m0"}


def is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    """Whether ``name`` is a linear layer's weight that DeepSeek stores in FP8.

    2-D (or stacked 3-D) ``*.weight`` tensors, except norms, embeddings, ``lm_head`` and the MoE
    router (``*.gate.weight``; ``gate_proj`` is a linear layer), which DeepSeek keeps in bf16.
    """
    if not name.endswith(".weight") or len(shape) < 2:
        return False
    lowered = name.lower()
    excluded = ("norm", "embed", "lm_head", "wte", "wpe")
    return not any(word in lowered for word in excluded) and not lowered.endswith(".gate.weight")


def model_dtype(config: dict[str, Any], default: str = "bfloat16") -> str:
    """The model's float dtype as config.json states it (``torch_dtype`` or ``dtype``)."""
    for key in ("torch_dtype", "dtype"):
        value = config.get(key)
        if value in ("bfloat16", "float16", "float32"):
            return value
    return default


def _block(directory: ModelDirectory) -> int:
    from ..bridges._deepseek import block_from_config

    return block_from_config(directory.quantization_config, f"{directory.root}/config.json")


def _scale_fmt(directory: ModelDirectory) -> str | None:
    fmt = directory.quantization_config.get("scale_fmt")
    if fmt not in _SCALE_FORMATS:
        raise FileFormatError(
            f"{directory.root}/config.json: quantization_config.scale_fmt {fmt!r} is unknown; DeepSeek and "
            "transformers write 'ue8m0' or 'float'"
        )
    return _SCALE_FORMATS[fmt]


def _detect(directory: ModelDirectory) -> str | None:
    quant = directory.quantization_config
    pairs = [n for n in directory.entries if n.endswith(SCALE_SUFFIX)]
    if quant.get("quant_method") != "fp8" and not (pairs and not quant):
        return None
    block = _block(directory)
    fmt = _scale_fmt(directory)
    dtypes = {directory.entries[n].dtype for n in pairs}
    stored = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F8_E8M0": "e8m0"}
    scales = "ue8m0 scales" if fmt == "ue8m0" else "float scales"
    if dtypes and dtypes != {"F32"}:
        scales += " stored as " + "/".join(sorted(stored.get(d, d) for d in dtypes))
    return f"{block}x{block} blocks, {scales}"


class DeepSeekFP8Checkpoint(Checkpoint):
    """FP8 weights with their ``weight_scale_inv`` as ScaledTensors; other tensors as stored."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str, device: Any
    ) -> None:
        from ..bridges import load_deepseek_v3

        super().__init__(directory, fmt, details, framework, device)
        self.source = load_deepseek_v3(
            directory.safetensors_source(),
            "numpy",
            dtype=model_dtype(directory.config),
            block_k=_block(directory),
            check_scales=directory.check_scales,
            scale_fmt=_scale_fmt(directory) or "float",
        )

    def _keys(self) -> list[str]:
        return list(self.source)

    def _read(self, name: str) -> Any:
        return self.source[name]

    def release(self) -> None:
        self.source.unmap()

    def close(self) -> None:
        self.source.close()


register(Convention("deepseek-fp8", _detect, DeepSeekFP8Checkpoint))


# --- writing --------------------------------------------------------------------------------------


def write_quantizing_linear_weights(
    source: Checkpoint,
    out: OutputDirectory,
    report: ConversionReport,
    progress: Any,
    write_weight: Callable[[ShardWriter, str, Any], None],
    quantization_config: dict[str, Any],
    *,
    matrices_only: bool = False,
) -> None:
    """The writer of the recipe targets: each linear weight (:func:`is_linear_weight`; 2-D only with
    ``matrices_only``) goes to ``write_weight(writer, name, value)``; every other tensor is copied, a
    quantized one dequantized to the model's dtype first; config.json gets ``quantization_config``."""
    from .hf import to_float

    dtype = model_dtype(source.config)
    writer = ShardWriter(out, metadata={"format": "pt"}, **like_source(source))
    for name in progress(list(source)):
        value = source.read_numpy(name)
        if is_linear_weight(name, tuple(value.shape)) and (value.ndim == 2 or not matrices_only):
            write_weight(writer, name, value)
        elif isinstance(value, ScaledTensor):
            writer.add(name, to_float(name, value, dtype, report))
        else:
            writer.add(name, value)
            report.record(name, "copied")
        source.release()
    report.files = writer.finish()
    config = {k: v for k, v in source.config.items() if k not in ("quantization_config", "quantization")}
    config["quantization_config"] = quantization_config
    out.write_json("config.json", config)


def write_deepseek(
    source: Checkpoint, out: OutputDirectory, report: ConversionReport, scale_fmt: str | None, progress: Any
) -> None:
    from ..bridges import deepseek_recipe

    recipe = deepseek_recipe("weight", 128, scale_fmt)

    def write_weight(writer: ShardWriter, name: str, value: Any) -> None:
        st = in_recipe(name, value, recipe, report)
        writer.add(name, st.data)
        writer.add(name + SCALE_SUFFIX, np.asarray(st.scale, dtype=np.float32))

    quantization_config = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
        **({"scale_fmt": "ue8m0"} if scale_fmt == "ue8m0" else {}),
    }
    write_quantizing_linear_weights(
        source, out, report, progress, write_weight, quantization_config, matrices_only=True
    )


def _parse(text: str) -> Target | None:
    if text == "deepseek-fp8":
        return Target(text, "deepseek-fp8", write_deepseek, {"scale_fmt": None})
    if text == "deepseek-fp8-ue8m0":
        return Target(text, "deepseek-fp8", write_deepseek, {"scale_fmt": "ue8m0"})
    return None


register_target(TargetParser(_parse, ("deepseek-fp8", "deepseek-fp8-ue8m0")))
