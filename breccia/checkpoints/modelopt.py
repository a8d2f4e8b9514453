"""``modelopt-nvfp4``: NVIDIA ModelOpt's NVFP4 export, and the one writer of NVFP4-style checkpoints.

Detected by ``hf_quant_config.json`` (``{"quantization": {"quant_algo": "NVFP4", "group_size": 16,
"exclude_modules": [...]}}``) or config.json's ``quantization_config`` with ``quant_method:
"modelopt"``. A quantized linear module ``m`` stores::

    m.weight          U8 [out, in/2]     two E2M1 codes a byte, element 2i in the low nibble
    m.weight_scale    F8_E4M3 [out, in/16]
    m.weight_scale_2  F32 [] or [1]       g = amax(W) / 2688, a MULTIPLIER
    m.input_scale     F32                 the activations' amax / 2688 (calibration)

    W = e2m1(Wq) * (fl32(e4m3(S)) * g)        (breccia's NVFP4BlockScaling(): global_scale = g)

Read: each quantized weight as a ScaledTensor (``NVFP4BlockScaling()``, the global scale as stored),
dtype the model's. ``exclude_modules`` (fnmatch patterns) are float. Input and KV scales are
calibration of the activations, listed in ``ck.activation_scales``, not model tensors.

The two NVFP4 global-scale conventions (this one multiplies by ``g = amax / 2688``, compressed-tensors
divides by ``g' = 2688 / amax``) are translated by :func:`to_divisor_convention` and
:func:`to_multiplier_convention`: the codes and E4M3 block scales are kept and ``g' = fl32(1 / g)``
(or the float32 neighbour of it that reproduces the most block products ``e4m3(S) * g`` exactly).
A tensor is translated exactly when every one of its block products ``s * g == s / g'`` in float32;
otherwise the values of the blocks that differ move by one float32 ulp. The report says which.

Write (``modelopt-nvfp4``, and every ``compressed-tensors-*`` target through :func:`write_quantized`):
2-D linear weights (:func:`~.deepseek_fp8.is_linear_weight`, last axis a multiple of the group) are
repacked when already in the target's recipe, translated between NVFP4 conventions, requantized from
other formats (the report gives the error) or cast from float; other linear layers stay float and
are listed in ``exclude_modules`` / ``ignore``. ``hf_quant_config.json`` and config.json's
``quantization_config`` are written. Activation scales travel only where their meaning is kept:
ModelOpt to ModelOpt as they are, compressed-tensors' ``input_global_scale`` (a divisor) to
ModelOpt's ``input_scale`` as ``fl32(1 / x)``; every other one is dropped (``dropped`` in the
report), so a ModelOpt output made from float weights has no ``input_scale``: calibrate activations
with ModelOpt if a W4A4 engine needs them.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import numpy as np

from ..choices import ScaleFormat
from ..errors import FileFormatError
from ..layouts import Layout, PerBlockK, PerRow
from ..quantize import dequantize, from_buffer
from ..recipes import NVFP4BlockScaling, Recipe
from ..tensor import ScaledTensor
from ._directory import ModelDirectory
from ._output import OutputDirectory, ShardWriter, like_source
from ._registry import Checkpoint, Convention, StoredCheckpoint, register
from ._slabs import cast_rows, dequantize_rows, relative_error
from ._targets import ConversionReport, Target, TargetParser, register_target
from .deepseek_fp8 import is_linear_weight, model_dtype

__all__ = [
    "ModelOptCheckpoint",
    "to_divisor_convention",
    "to_multiplier_convention",
    "write_quantized",
]

NAME = "modelopt-nvfp4"
QUANT_CONFIG = "hf_quant_config.json"
ACTIVATION_PARTS = ("input_scale", "k_scale", "v_scale")
GROUP = 16


# --- the two global-scale conventions -------------------------------------------------------------


def _translated_global(scale_codes: np.ndarray, g: np.float32, divides: bool) -> np.float32:
    """The other convention's global scale for block scales ``scale_codes`` (E4M3) and global ``g``:
    ``fl32(1 / g)`` or a float32 neighbour, whichever reproduces the most block products."""
    from ..backends import get_backend
    from ..scaling import decode_scale

    s = np.unique(np.asarray(decode_scale(get_backend("numpy"), scale_codes, ScaleFormat.E4M3)))
    want = s / g if divides else s * g  # the block multipliers of the source
    first = np.float32(1) / g
    candidates = [first, np.nextafter(first, np.float32(np.inf)), np.nextafter(first, np.float32(0))]
    with np.errstate(all="ignore"):
        misses = [int(np.count_nonzero((s * c if divides else s / c) != want)) for c in candidates]
    return candidates[int(np.argmin(misses))]


def _translate(st: ScaledTensor, convention: str) -> ScaledTensor:
    """``st`` (numpy NVFP4) with its global scale in ``convention``; codes and block scales kept."""
    if not isinstance(st.recipe, NVFP4BlockScaling):
        raise FileFormatError(f"only NVFP4 tensors have a global-scale convention; got {st.recipe!r}")
    recipe = NVFP4BlockScaling(convention=convention)
    if st.recipe == recipe:
        return st
    g = np.float32(np.asarray(st.global_scale, np.float32).reshape(()))
    new = _translated_global(np.asarray(st.scale), g, st.recipe.global_scale_divides)
    return from_buffer(
        st.data,
        st.scale,
        recipe,
        st.layout,
        shape=st.shape,
        dtype=st.dtype_name,
        global_scale=np.asarray(new, np.float32),
    )


def _value_table(st: ScaledTensor) -> np.ndarray:
    """``T[s, c]``: the float32 value ``bc.dequantize`` gives E2M1 code ``c`` (0-15) under E4M3 block
    scale byte ``s`` (0-255) and ``st``'s global scale; every value of ``st`` is one of these. It is
    computed by dequantizing a 256x16 tensor that holds each pair once, so it is the decoder's own
    arithmetic, not a copy of it."""
    codes = np.arange(16, dtype=np.uint8)
    packed = np.tile(codes[0::2] | (codes[1::2] << 4), (256, 1))
    scales = np.arange(256, dtype=np.uint8).reshape(256, 1)
    table = from_buffer(packed, scales, st.recipe, PerBlockK(GROUP), shape=(256, GROUP),
                        global_scale=np.asarray(st.global_scale, np.float32))
    with np.errstate(all="ignore"):
        return np.asarray(dequantize(table, "float32"))


def _pair_counts(st: ScaledTensor) -> np.ndarray | None:
    """``n[s, c]``: how many elements of ``st`` hold E2M1 code ``c`` under block scale byte ``s``
    (None when the blocks are not whole 16-element runs of each row). One pass over the packed
    bytes, a slab of rows at a time: each byte counted with its block's scale byte, then split into
    its two codes."""
    if st.shape[-1] % GROUP or st.layout != PerBlockK(GROUP):
        return None
    data = np.asarray(st.data).reshape(-1, st.shape[-1] // 2)
    scale = np.asarray(st.scale).view(np.uint8).reshape(-1, st.shape[-1] // GROUP)
    by_byte = np.zeros(256 * 256, dtype=np.int64)
    step = max(1, (1 << 22) // max(1, data.shape[1]))
    for r in range(0, data.shape[0], step):
        keys = np.repeat(scale[r : r + step].astype(np.int32) << 8, GROUP // 2, axis=1) | data[r : r + step]
        by_byte += np.bincount(keys.reshape(-1), minlength=256 * 256)
    by_byte = by_byte.reshape(256, 256)
    byte = np.arange(256)
    counts = np.zeros((256, 16), dtype=np.int64)
    np.add.at(counts.T, byte & 15, by_byte.T)
    np.add.at(counts.T, byte >> 4, by_byte.T)
    return counts


def _translation_error(before: ScaledTensor, after: ScaledTensor) -> float | None:
    """``relative_error(dequantize(before), dequantize(after))`` (None when every value is equal,
    NaN equal to NaN) from the two value tables and the pair counts, without decoding either tensor:
    both hold the same codes and block scales, so each element's two values are ``T_before[s, c]``
    and ``T_after[s, c]``."""
    counts = _pair_counts(before)
    if counts is None:
        old, new = dequantize(before, "float32"), dequantize(after, "float32")
        same = np.array_equal(np.asarray(old), np.asarray(new), equal_nan=True)
        return None if same else relative_error(old, new)
    ref, approx = _value_table(before).astype(np.float64), _value_table(after).astype(np.float64)
    used = counts > 0
    if np.array_equal(ref[used], approx[used], equal_nan=True):
        return None
    with np.errstate(all="ignore"):
        diff = approx - ref
    finite = used & np.isfinite(ref) & np.isfinite(diff)
    norm = float(np.sqrt(np.sum(counts[finite] * ref[finite] ** 2)))
    return 0.0 if norm == 0 else float(np.sqrt(np.sum(counts[finite] * diff[finite] ** 2))) / norm


def to_divisor_convention(st: ScaledTensor) -> ScaledTensor:
    """A ModelOpt/MLX/torchao NVFP4 tensor (``x = q * (s * g)``) in compressed-tensors' convention
    (``x = q * (s / g')``), numpy arrays; see the module docstring for when this is exact."""
    return _translate(st, "compressed-tensors")


def to_multiplier_convention(st: ScaledTensor) -> ScaledTensor:
    """A compressed-tensors NVFP4 tensor in the multiplier convention of ModelOpt, MLX and torchao."""
    return _translate(st, "nvidia")


# --- reading --------------------------------------------------------------------------------------


def _settings(directory: ModelDirectory) -> dict[str, Any] | None:
    """ModelOpt's quantization settings (``hf_quant_config.json``, else config.json), or None."""
    side = directory.json(QUANT_CONFIG) if directory.has(QUANT_CONFIG) else None
    if isinstance(side, dict) and isinstance(side.get("quantization"), dict):
        return side["quantization"]
    quant = directory.quantization_config
    if quant.get("quant_method") == "modelopt":
        return quant.get("quantization", quant)
    return None


def _detect(directory: ModelDirectory) -> str | None:
    settings = _settings(directory)
    if settings is None:
        return None
    algo = settings.get("quant_algo")
    if algo != "NVFP4":
        raise FileFormatError(
            f"{directory.root}: ModelOpt quant_algo {algo!r}; breccia reads ModelOpt's NVFP4 only"
        )
    if settings.get("group_size", GROUP) != GROUP:
        raise FileFormatError(
            f"{directory.root}: ModelOpt NVFP4 with group_size {settings.get('group_size')!r}; NVFP4 uses 16"
        )
    excluded = len(settings.get("exclude_modules") or [])
    return f"nvfp4, group 16, {excluded} modules excluded"


class ModelOptCheckpoint(StoredCheckpoint):
    """ModelOpt NVFP4 weights as ScaledTensors; other tensors as stored."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str, device: Any
    ) -> None:

        super().__init__(directory, fmt, details, framework, device)
        settings = _settings(directory) or {}
        excluded = settings.get("exclude_modules") or []
        if not isinstance(excluded, list) or not all(isinstance(p, str) for p in excluded):
            raise FileFormatError(f"{directory.root}: exclude_modules must be a list of module patterns")
        self.dtype = model_dtype(directory.config)
        entries = directory.entries
        self.layers: dict[str, tuple[int, ...]] = {}
        for name in entries:
            if not name.endswith(".weight_scale"):
                continue
            prefix = name[: -len("weight_scale")]
            if any(fnmatch.fnmatchcase(prefix[:-1], p) for p in excluded):
                raise self._disagree(prefix + "weight_scale", f"module {prefix[:-1]!r} is excluded (float)")
            self.layers[prefix + "weight"] = self._check(prefix)
        for name, entry in entries.items():
            if name.endswith(".weight") and entry.dtype == "U8" and name not in self.layers:
                raise self._disagree(name, "NVFP4 weights come with a weight_scale and a weight_scale_2")
        parts = {n[: -len("weight")] + p for n in self.layers for p in ("weight_scale", "weight_scale_2")}
        self.activation_scales = [n for n in entries if n.rsplit(".", 1)[-1] in ACTIVATION_PARTS]
        hidden = parts | set(self.activation_scales)
        self._names = [n for n in self.raw.tensor_names() if n not in hidden]

    def _disagree(self, tensor: str, config_says: str) -> FileFormatError:
        prefix = tensor.rsplit(".", 1)[0] + "."
        held = ", ".join(
            f"{p} {self.directory.entries[prefix + p].dtype} {list(self.directory.entries[prefix + p].shape)}"
            for p in ("weight", "weight_scale", "weight_scale_2")
            if prefix + p in self.directory.entries
        )
        return FileFormatError(
            f"{self.directory.root}: tensor {tensor!r}: the ModelOpt config says {config_says}, but the file "
            f"holds {held or 'nothing for it'}; the config and the weights disagree"
        )

    def _check(self, prefix: str) -> tuple[int, ...]:
        entries = self.directory.entries
        weight, scale, g = (entries.get(prefix + p) for p in ("weight", "weight_scale", "weight_scale_2"))
        says = "NVFP4 (weight U8 [out, in/2], weight_scale F8_E4M3 [out, in/16], weight_scale_2 F32 [1])"
        if weight is None or weight.dtype != "U8" or len(weight.shape) < 2:
            raise self._disagree(prefix + "weight", says)
        shape = (*weight.shape[:-1], 2 * weight.shape[-1])
        if shape[-1] % GROUP:
            raise self._disagree(
                prefix + "weight", f"{says}; {shape[-1]} columns do not divide into groups of 16"
            )
        if scale.dtype != "F8_E4M3" or tuple(scale.shape) != (*shape[:-1], shape[-1] // GROUP):
            raise self._disagree(prefix + "weight_scale", says)
        if g is None or g.dtype != "F32" or int(np.prod(g.shape)) != 1:
            raise self._disagree(prefix + "weight_scale_2", says)
        return shape

    def _keys(self) -> list[str]:
        return self._names

    def _read(self, name: str) -> Any:
        shape = self.layers.get(name)
        if shape is None:
            return self.raw.read_tensor(name)
        prefix = name[: -len("weight")]
        g = np.asarray(self.raw.read_tensor(prefix + "weight_scale_2"), np.float32).reshape(())
        if not (np.isfinite(g) and g > 0):
            raise FileFormatError(
                f"{self.directory.root}: tensor {prefix}weight_scale_2 is {float(g)!r}; an NVFP4 global "
                "scale (amax / 2688) must be finite and positive"
            )
        return from_buffer(
            np.asarray(self.raw.read_tensor(name)),
            np.asarray(self.raw.read_tensor(prefix + "weight_scale")),
            NVFP4BlockScaling(),
            PerBlockK(GROUP),
            shape=shape,
            dtype=self.dtype,
            global_scale=g,
        )


register(Convention(NAME, _detect, ModelOptCheckpoint))


# --- writing --------------------------------------------------------------------------------------


def _cast(
    values: Any, shape: tuple[int, ...], recipe: Recipe, layout: Layout, source_rows: int
) -> ScaledTensor:
    """``values(rows)`` cast with ``recipe`` in ``layout``, a slab of rows at a time."""
    if layout not in (recipe.default_layout(), PerRow()):
        raise FileFormatError(f"no slab cast for {recipe!r} in {layout!r}")
    return cast_rows(values, shape, recipe, source_rows, layout)


def _weight(name: str, value: Any, recipe: Recipe, layout: Layout, report: ConversionReport) -> ScaledTensor:
    """``value`` in ``recipe``/``layout``: repacked, translated, requantized or cast (recorded)."""
    if not isinstance(value, ScaledTensor):
        array = np.asarray(value)
        report.record(name, "quantized")
        return _cast(lambda rows: array[rows], array.shape, recipe, layout, 1)
    if value.recipe == recipe and value.layout == layout:
        report.record(name, "repacked")
        return value
    nvfp4 = (value.recipe, recipe)
    if all(isinstance(r, NVFP4BlockScaling) for r in nvfp4) and value.layout == layout:
        st = _translate(value, recipe.convention)
        report.record(name, "repacked", _translation_error(value, st))
        return st
    values = dequantize_rows(value, "float32")
    block = 1 if len(value.shape) < 2 else value.layout.block_shape(value.shape)[0]
    st = _cast(lambda rows: values[rows], value.shape, recipe, layout, block)
    report.record(name, "requantized", relative_error(values, dequantize_rows(st, "float32")))
    return st


def _quantizable(name: str, shape: tuple[int, ...], layout: Layout) -> bool:
    if not is_linear_weight(name, shape) or len(shape) != 2:
        return False
    return not isinstance(layout, PerBlockK) or shape[-1] % layout.k == 0


def _excluded_module(name: str, shape: tuple[int, ...]) -> bool:
    """A float linear layer that a quantized config must name (lm_head, router gates, odd shapes)."""
    lowered = name.lower()
    return (
        name.endswith(".weight")
        and len(shape) == 2
        and not any(w in lowered for w in ("norm", "embed", "wte", "wpe"))
    )


def _activation_scale(source: Checkpoint, raw: str, writer: str) -> tuple[str, np.ndarray] | None:
    """(name, value) of a source activation scale in the output, or None when it is dropped."""
    value = np.asarray(source.raw.read_tensor(raw))
    if writer == "modelopt" and source.format == NAME:
        return raw, value
    if writer == "modelopt" and raw.endswith(".input_global_scale"):
        return raw[: -len("input_global_scale")] + "input_scale", (np.float32(1) / value.astype(np.float32))
    return None


def write_quantized(
    source: Checkpoint,
    out: OutputDirectory,
    report: ConversionReport,
    progress: Any,
    writer: str,
    ct_target: Any = None,
) -> None:
    """Write ``source`` as ModelOpt NVFP4 (``writer="modelopt"``) or as the compressed-tensors preset
    ``ct_target`` (see the module docstrings of both conventions)."""
    from .compressed_tensors import layer_parts, quantization_config
    from .hf import to_float

    if writer == "modelopt":
        recipe, layout = NVFP4BlockScaling(), PerBlockK(GROUP)
    else:
        recipe, layout = ct_target.recipe, ct_target.layout
    dtype = model_dtype(source.config)
    shards = ShardWriter(out, metadata={"format": "pt"}, **like_source(source))
    excluded: list[str] = []
    for name in progress(list(source)):
        source.release()  # the previous tensor's file pages: resident memory stays one tensor
        value = source.read_numpy(name)
        shape = tuple(value.shape)
        prefix = name[: -len("weight")]
        if not _quantizable(name, shape, layout):
            if _excluded_module(name, shape):
                excluded.append(prefix[:-1])
            if isinstance(value, ScaledTensor):
                shards.add(name, to_float(name, value, dtype, report))
            else:
                report.record(name, "copied")
                shards.add(name, value)
            continue
        st = _weight(name, value, recipe, layout, report)
        if writer == "modelopt":
            shards.add(name, np.asarray(st.data))
            shards.add(prefix + "weight_scale", np.asarray(st.scale))
            shards.add(prefix + "weight_scale_2", np.asarray(st.global_scale, np.float32).reshape(()))
        else:
            for part, array in layer_parts(ct_target, st).items():
                shards.add(prefix + part, array)
    for raw in getattr(source, "activation_scales", []):
        carried = _activation_scale(source, raw, writer)
        if carried is None:
            report.record(raw, "dropped")
        else:
            shards.add(*carried)
            report.record(carried[0], "copied" if carried[0] == raw else "cast")
    report.files = shards.finish()
    config = {k: v for k, v in source.config.items() if k not in ("quantization_config", "quantization")}
    if writer == "modelopt":
        settings = {
            "quant_algo": "NVFP4",
            "kv_cache_quant_algo": None,
            "group_size": GROUP,
            "exclude_modules": excluded,
        }
        out.write_json(
            QUANT_CONFIG, {"producer": {"name": "breccia", "version": _version()}, "quantization": settings}
        )
        config["quantization_config"] = {"quant_method": "modelopt", **settings}
    else:
        config["quantization_config"] = quantization_config(ct_target, excluded)
    out.write_json("config.json", config)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("breccia")
    except PackageNotFoundError:
        return "unknown"


def _parse(text: str) -> Target | None:
    if text != NAME:
        return None
    return Target(text, NAME, write_quantized, {"writer": "modelopt"})


register_target(TargetParser(_parse, (NAME,)))
