"""``gpt-oss-mxfp4``: OpenAI's gpt-oss checkpoints, MoE experts in MXFP4 (``quant_method: "mxfp4"``).

Stored: each expert weight ``P`` (``...mlp.experts.gate_up_proj`` and ``...experts.down_proj``, one
matrix ``[N, K]`` per expert) as two uint8 tensors::

    P_blocks  [E, N, K/32, 16]   two E2M1 codes per byte, element 2i in the low nibble
    P_scales  [E, N, K/32]       E8M0 exponents
    W[e, n, 32 g + i] = e2m1(code i of P_blocks[e, n, g]) * 2**(P_scales[e, n, g] - 127)

config.json's ``quantization_config`` is ``{"quant_method": "mxfp4", "modules_to_not_convert": [...]}``
(attention, router, embeddings and ``lm_head`` stay bf16). transformers' CPU decoder
(``integrations/mxfp4.py``) computes the same ``W`` and returns it transposed, ``[E, K, N]``, the
layout of transformers' float ``GptOssExperts`` (``gate_up_proj [E, hidden, 2 * intermediate]``,
``down_proj [E, intermediate, hidden]``, same names without the suffixes).

Read: ``P`` as one ScaledTensor ``[E, N, K]`` (``MXFP4BlockScaling``, ``PerBlockK(32)``): the stored
bytes reshaped, nothing decoded. Scale byte 255 has one rule: it is refused (FileFormatError naming
the tensor and block), since OCP MX reads it as NaN and transformers' decoder as ``2**128``. A config
that says mxfp4 without ``*_blocks`` tensors, blocks without scales (or of another shape or dtype),
and blocks under a module the config lists in ``modules_to_not_convert`` are errors naming both
readings.

To float (``bf16``, ``float16``, ``float32``) each expert weight is written as that float model loads
it: ``W`` transposed to ``[E, K, N]`` (:meth:`GptOssCheckpoint.float_layout`), so transformers'
``GptOssForCausalLM.from_pretrained`` reads the output with the values its own decoder gives the source.

Write (``gpt-oss-mxfp4``): 3-D expert weights ``P`` become ``P_blocks``/``P_scales``. From a gpt-oss
source (``[E, N, K]``) an MXFP4 ScaledTensor (any E8M0 rounding) is moved bit for bit and any other
is cast with ``MXFP4BlockScaling()`` (OCP floor); from any other source the weight is in transformers'
float layout ``[E, K, N]`` (a bf16 gpt-oss directory), so it is transposed to ``[E, N, K]`` (in
float32) and then cast. Other tensors are copied (quantized ones dequantized to the model dtype).

To mlx (``mlx-mxfp4``) the experts go through :meth:`GptOssCheckpoint.mlx_tensors`, which does what
mlx-lm's ``gpt_oss`` sanitize does to the stored bytes (``gate_up_proj`` rows ``0::2`` become
``gate_proj``, rows ``1::2`` ``up_proj``) on the ScaledTensors, so they are repacked without
arithmetic.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np

from ..bridges._gguf import refuse_e8m0_nan
from ..errors import FileFormatError, RecipeError
from ..layouts import PerBlockK
from ..recipes import MXFP4BlockScaling
from ..tensor import ScaledTensor
from ._directory import ModelDirectory
from ._output import OutputDirectory, ShardWriter, like_source
from ._registry import Checkpoint, Convention, StoredCheckpoint, register
from ._slabs import relative_error
from ._targets import ConversionReport, Target, TargetParser, register_target
from .deepseek_fp8 import model_dtype

__all__ = ["GptOssCheckpoint", "mxfp4_parts"]

BLOCKS, SCALES = "_blocks", "_scales"
EXPERT_WEIGHTS = (".experts.gate_up_proj", ".experts.down_proj")
DEFAULT_NOT_CONVERTED = [
    "model.layers.*.self_attn",
    "model.layers.*.mlp.router",
    "model.embed_tokens",
    "lm_head",
]
E8M0_NAN = 255


def _not_converted(directory: ModelDirectory) -> list[str]:
    modules = directory.quantization_config.get("modules_to_not_convert") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise FileFormatError(
            f"{directory.root}/config.json: quantization_config.modules_to_not_convert must be a list of "
            f"module names; got {modules!r}"
        )
    return modules


def _excluded(name: str, patterns: list[str]) -> str | None:
    """The ``modules_to_not_convert`` entry covering tensor ``name``, if any."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return next((p for p in patterns for m in prefixes if fnmatch.fnmatchcase(m, p)), None)


def _pairs(directory: ModelDirectory) -> dict[str, tuple[str, str]]:
    """``P -> (P_blocks, P_scales)`` for every MXFP4 weight, each pair checked against the other."""
    entries = directory.entries
    root = directory.root
    pairs = {}
    patterns = _not_converted(directory)
    for name, entry in entries.items():
        if not name.endswith(BLOCKS):
            continue
        base = name[: -len(BLOCKS)]
        scales = entries.get(base + SCALES)
        if scales is None:
            raise FileFormatError(f"{root}: tensor {name!r} has no {base + SCALES!r} beside it")
        shape, scale_shape = tuple(entry.shape), tuple(scales.shape)
        if entry.dtype != "U8" or scales.dtype != "U8":
            raise FileFormatError(
                f"{root}: {name!r} is {entry.dtype} and {base + SCALES!r} {scales.dtype}; gpt-oss MXFP4 "
                "stores both as U8 (packed E2M1 codes and E8M0 exponents)"
            )
        if len(shape) < 2 or shape[-1] != 16 or shape[:-1] != scale_shape:
            raise FileFormatError(
                f"{root}: {name!r} has shape {list(shape)} and {base + SCALES!r} {list(scale_shape)}; "
                "gpt-oss MXFP4 needs blocks [..., G, 16] beside scales [..., G] (32 values per scale)"
            )
        covered = _excluded(base, patterns)
        if covered is not None:
            raise FileFormatError(
                f"{root}: tensor {name!r} is stored as MXFP4 blocks, but config.json's "
                f"modules_to_not_convert lists {covered!r}, which says it is not quantized"
            )
        pairs[base] = (name, base + SCALES)
    orphans = [n for n in entries if n.endswith(SCALES) and n[: -len(SCALES)] not in pairs]
    orphans = [n for n in orphans if entries[n].dtype == "U8"]
    if orphans:
        raise FileFormatError(f"{root}: tensor {orphans[0]!r} has no {orphans[0][: -len(SCALES)] + BLOCKS!r}")
    return pairs


def _detect(directory: ModelDirectory) -> str | None:
    if directory.quantization_config.get("quant_method") != "mxfp4":
        return None
    pairs = _pairs(directory)
    if not pairs:
        raise FileFormatError(
            f"{directory.root}: config.json says quant_method 'mxfp4', but no tensor is stored as "
            "*_blocks/*_scales (the tensors say float); fix the config or the weights"
        )
    kept = len(_not_converted(directory))
    return f"{len(pairs)} MXFP4 expert tensors (E8M0 per 32), {kept} module patterns kept float"


class GptOssCheckpoint(StoredCheckpoint):
    """Expert weights as MXFP4 ScaledTensors ``[E, N, K]``; every other tensor as stored."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str, device: Any
    ) -> None:

        super().__init__(directory, fmt, details, framework, device)
        self.pairs = _pairs(directory)
        parts = {n for pair in self.pairs.values() for n in pair}
        names = []
        for name in self.raw.tensor_names():
            if name.endswith(BLOCKS) and name[: -len(BLOCKS)] in self.pairs:
                names.append(name[: -len(BLOCKS)])
            elif name not in parts:
                names.append(name)
        self._names = names
        self.dtype = model_dtype(directory.config)

    def _keys(self) -> list[str]:
        return self._names

    def _read(self, name: str) -> Any:
        pair = self.pairs.get(name)
        if pair is None:
            return self.raw.read_tensor(name)
        from ..quantize import from_buffer

        blocks = np.ascontiguousarray(self.raw.read_tensor(pair[0]))
        scales = np.ascontiguousarray(self.raw.read_tensor(pair[1]))
        refuse_e8m0_nan(f"{self.directory.root}: tensor {pair[1]!r}", scales, "transformers' gpt-oss decoder")
        *lead, groups, _ = blocks.shape
        return from_buffer(
            blocks.reshape(*lead, groups * 16),
            scales,
            MXFP4BlockScaling(),
            PerBlockK(32),
            shape=(*lead, groups * 32),
            dtype=self.dtype,
        )

    def float_layout(self, name: str, array: Any) -> Any:
        """Expert weights ``[E, N, K]`` as transformers' float ``GptOssExperts`` holds them, ``[E, K, N]``."""
        if name not in self.pairs:
            return array
        return np.ascontiguousarray(np.swapaxes(array, -1, -2))

    def mlx_tensors(self, values: dict[str, Any]) -> dict[str, Any]:
        """mlx-lm's ``gpt_oss`` sanitize applied to ScaledTensors: ``experts.gate_up_proj`` rows
        ``0::2``/``1::2`` (and its bias) become ``gate_proj``/``up_proj``, ``down_proj`` gets ``.weight``."""
        out = {}
        for name, value in values.items():
            if name.endswith(".experts.gate_up_proj"):
                prefix = name[: -len("gate_up_proj")]
                out[prefix + "gate_proj.weight"] = _rows(value, 0)
                out[prefix + "up_proj.weight"] = _rows(value, 1)
            elif name.endswith(".experts.gate_up_proj_bias"):
                prefix = name[: -len("gate_up_proj_bias")]
                out[prefix + "gate_proj.bias"] = np.ascontiguousarray(value[..., 0::2])
                out[prefix + "up_proj.bias"] = np.ascontiguousarray(value[..., 1::2])
            elif name.endswith(".experts.down_proj") and isinstance(value, ScaledTensor):
                out[name + ".weight"] = value
            elif name.endswith(".experts.down_proj_bias"):
                out[name[: -len("_bias")] + ".bias"] = value
            else:
                out[name] = value
        return out


def _rows(st: ScaledTensor, start: int) -> ScaledTensor:
    """Rows ``start::2`` of the second-to-last axis of an MXFP4 ScaledTensor (its blocks run along
    the last axis, so each row keeps its own scales)."""
    from ..quantize import from_buffer

    return from_buffer(
        np.ascontiguousarray(st.data[..., start::2, :]),
        np.ascontiguousarray(st.scale[..., start::2, :]),
        st.recipe,
        st.layout,
        shape=(*st.shape[:-2], len(range(start, st.shape[-2], 2)), st.shape[-1]),
        dtype=st.dtype_name,
    )


register(Convention("gpt-oss-mxfp4", _detect, GptOssCheckpoint))


# --- writing --------------------------------------------------------------------------------------


def mxfp4_parts(name: str, st: ScaledTensor) -> tuple[np.ndarray, np.ndarray]:
    """``(P_blocks, P_scales)`` of an MXFP4 ScaledTensor ``[..., K]`` (K a multiple of 32), bit for bit."""
    if not isinstance(st.recipe, MXFP4BlockScaling) or st.layout != PerBlockK(32) or st.shape[-1] % 32:
        raise RecipeError(
            f"tensor {name!r}: gpt-oss blocks hold MXFP4 with 32-element blocks along whole rows; got "
            f"{st.recipe!r} in {st.layout!r} with shape {st.shape}"
        )
    st = st.to("numpy")
    scales = np.ascontiguousarray(st.scale).view(np.uint8)
    if (scales == E8M0_NAN).any():
        raise RecipeError(
            f"tensor {name!r}: holds NaN blocks (E8M0 code 255), which transformers' gpt-oss decoder reads "
            "as 2**128; there is no NaN to write"
        )
    *lead, k = st.shape
    return np.ascontiguousarray(st.data).reshape(*lead, k // 32, 16), scales


def _expert_weight(name: str, value: Any) -> bool:
    return name.endswith(EXPERT_WEIGHTS) and len(value.shape) == 3


def write_gpt_oss(source: Checkpoint, out: OutputDirectory, report: ConversionReport, progress: Any) -> None:
    """``source`` as a gpt-oss MXFP4 checkpoint (see the module docstring)."""
    from ..quantize import cast, dequantize
    from .hf import to_float

    dtype = model_dtype(source.config)
    recipe = MXFP4BlockScaling()
    stored_layout = isinstance(source, GptOssCheckpoint)
    writer = ShardWriter(out, metadata={"format": "pt"}, **like_source(source))
    for name in progress(list(source)):
        source.release()  # the previous tensor's file pages: resident memory stays one tensor
        value = source.read_numpy(name)
        if not _expert_weight(name, value):
            writer.add(
                name, to_float(name, value, dtype, report) if isinstance(value, ScaledTensor) else value
            )
            if not isinstance(value, ScaledTensor):
                report.record(name, "copied")
            continue
        if stored_layout and isinstance(value, ScaledTensor) and isinstance(value.recipe, MXFP4BlockScaling):
            st = value
            report.record(name, "repacked")
        elif not stored_layout:  # transformers' float layout [E, K, N]
            float32 = np.asarray(dequantize(value, "float32")) if isinstance(value, ScaledTensor) else value
            reference = np.ascontiguousarray(np.swapaxes(np.asarray(float32, np.float32), -1, -2))
            st = cast(reference, recipe)
            if isinstance(value, ScaledTensor):
                error = relative_error(reference, np.asarray(dequantize(st, "float32")))
                report.record(name, "requantized", error)
            else:
                report.record(name, "quantized")
        elif isinstance(value, ScaledTensor):
            reference = np.asarray(dequantize(value, "float32"))
            st = cast(reference, recipe)
            report.record(
                name, "requantized", relative_error(reference, np.asarray(dequantize(st, "float32")))
            )
        else:
            st = cast(np.asarray(value), recipe)
            report.record(name, "quantized")
        blocks, scales = mxfp4_parts(name, st)
        writer.add(name + BLOCKS, blocks)
        writer.add(name + SCALES, scales)
    report.files = writer.finish()
    config = {k: v for k, v in source.config.items() if k not in ("quantization_config", "quantization")}
    kept = source.config.get("quantization_config", {}).get("modules_to_not_convert")
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": kept if isinstance(kept, list) else DEFAULT_NOT_CONVERTED,
    }
    out.write_json("config.json", config)


def _parse(text: str) -> Target | None:
    if text.lower() != "gpt-oss-mxfp4":
        return None
    return Target("gpt-oss-mxfp4", "gpt-oss-mxfp4", write_gpt_oss)


register_target(TargetParser(_parse, ("gpt-oss-mxfp4",)))
