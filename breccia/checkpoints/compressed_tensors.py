"""``compressed-tensors``: what llm-compressor writes and vLLM serves (compressed-tensors 0.20).

config.json's ``quantization_config`` has ``quant_method: "compressed-tensors"``, a ``format`` (or one
per config group), ``config_groups`` (each: ``targets``, ``weights`` and ``input_activations``
arguments) and an ``ignore`` list. A quantized module ``m`` stores, by format (``[out, in]`` weights;
leading expert axes are allowed except for blocks)::

    float-quantized       m.weight F8_E4M3 [out, in], m.weight_scale (float) [1] / [out, 1] / [ceil(out/bm),
                          ceil(in/bk)] (tensor / channel / block) or [out, in/g] (group)
                          W = scale_dtype(fp8(Wq)) * S                                     (in S's dtype)
    int-quantized,        m.weight I8 with the same scales (+ m.weight_zero_point I8, asymmetric)
    naive-quantized       W = (Wq - Z) * S
    mxfp8-quantized       m.weight F8_E4M3, m.weight_scale U8 [out, in/32], an E8M0 exponent e:
                          W = bf16(fp8(Wq) * 2**(e - 127))
    mxfp4-pack-quantized  m.weight_packed U8 [out, in/2] (element 2i in the low nibble), m.weight_scale U8
                          [out, in/32]: W = bf16(e2m1(Wq) * 2**(e - 127))
    nvfp4-pack-quantized  m.weight_packed U8, m.weight_scale F8_E4M3 [out, in/16], m.weight_global_scale
                          F32 [1] g = 2688 / amax, a DIVISOR:  W = bf16(e2m1(Wq) * fl32(e4m3(S) / g))
    pack-quantized        m.weight_packed I32 [out, ceil(in * bits / 32)] (element i at bit i * bits of
                          the little-endian words, stored as q + 2**(bits-1)), m.weight_shape [2],
                          m.weight_scale (float) [out, in/g] or [out, 1]; asymmetric adds
                          m.weight_zero_point I32 packed the same way along the output axis:
                          W = (q - Z) * S                                                   (in S's dtype)

Read: each quantized module's weight as one ScaledTensor named ``m.weight`` whose ``bc.dequantize``
equals the package's ``decompress`` bit for bit (dtype: what decompress returns, see the table); the
compressed-tensors NVFP4 divisor is kept as it is stored (``NVFP4BlockScaling(convention=
"compressed-tensors")``), so no ulp moves. Modules named in ``ignore`` must hold plain tensors. Static
activation scales (``input_scale``, ``input_global_scale``, ``input_zero_point``, ``k_scale``,
``v_scale``) belong to the calibration of the source's activation scheme: they are not model tensors
(``ck.activation_scales`` lists them) and a conversion carries them only to a target that uses them.

Every tensor is checked against the config before any value is read: a config that says one format
while the tensors say another (a dtype, a missing part, a scale of the wrong shape, a group that
does not divide the axis) is a :class:`~breccia.errors.FileFormatError` naming the tensor, what the
config makes of it and what the file holds.

Write (``compressed-tensors-fp8-dynamic``, ``-fp8-block``, ``-nvfp4``, ``-mxfp4``, ``-mxfp8``,
``-w4a16``, ``-w4a16-asym``): the presets FP8_DYNAMIC, FP8_BLOCK, NVFP4A16, MXFP4A16, MXFP8 (weights
only: ``input_activations`` as the preset says, dynamic), W4A16, W4A16_ASYM; linear weights
(:func:`~.deepseek_fp8.is_linear_weight`, whose last axis the group divides) are cast with the
recipe below, the rest stay float and are listed in ``ignore``. A source already in that recipe and
layout is repacked bit for bit; a ModelOpt NVFP4 source has its global scale translated
(:func:`~.modelopt.to_divisor_convention`: exact where the block products agree, else a block
multiplier moves by one ulp).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FileFormatError, RecipeError
from ..layouts import Layout, PerBlock2D, PerBlockK, PerRow, PerTensor
from ..quantize import from_buffer
from ..recipes import (
    Float8BlockScaling,
    Float8CurrentScaling,
    Int4Scaling,
    Int8Scaling,
    MXFP4BlockScaling,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
    Recipe,
)
from ..tensor import ScaledTensor
from ._directory import ModelDirectory
from ._registry import Convention, StoredCheckpoint, register
from ._targets import Target, TargetParser, register_target

__all__ = ["CompressedTensorsCheckpoint", "QUANT_METHOD", "READ_FORMATS", "TARGETS"]

QUANT_METHOD = "compressed-tensors"
READ_FORMATS = (
    "float-quantized",
    "int-quantized",
    "naive-quantized",
    "mxfp8-quantized",
    "mxfp4-pack-quantized",
    "nvfp4-pack-quantized",
    "pack-quantized",
)
#: tensors of a quantized module that hold its weight
WEIGHT_PARTS = ("weight_packed", "weight_scale", "weight_global_scale", "weight_zero_point", "weight_shape")
#: static activation scales: calibration of the activation scheme, not model tensors
ACTIVATION_PARTS = ("input_scale", "input_global_scale", "input_zero_point", "k_scale", "v_scale")
_FLOATS = ("F32", "BF16", "F16")
E8M0_NAN = 255


def _fail(directory: ModelDirectory, tensor: str, config_says: str, file_holds: str) -> FileFormatError:
    return FileFormatError(
        f"{directory.root}: tensor {tensor!r}: config.json says {config_says}, but the file holds "
        f"{file_holds}; the config and the weights disagree (fix config.json or export the model again)"
    )


# --- the config -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scheme:
    """One config group: its compression format and the weights' quantization arguments."""

    format: str
    num_bits: int
    type: str  # "float" | "int"
    strategy: str  # tensor | channel | group | tensor_group | block
    symmetric: bool
    group_size: int | None
    block: tuple[int, int] | None
    activations: str  # a short description of input_activations

    @property
    def packed(self) -> bool:
        return self.format.endswith("pack-quantized")

    def describe(self) -> str:
        grain = {
            "tensor": "per-tensor",
            "channel": "per-channel",
            "group": f"group {self.group_size}",
            "tensor_group": f"group {self.group_size}",
            "block": f"{self.block[0]}x{self.block[1]} blocks" if self.block else "blocks",
        }.get(self.strategy, self.strategy)
        zero = "" if self.symmetric else ", zero points"
        return f"{self.format}, {grain}{zero}, {self.activations}"


def _int_field(where: str, args: dict[str, Any], key: str, optional: bool = False) -> int | None:
    value = args.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FileFormatError(f"{where}: {key} must be a positive int; got {value!r}")
    return value


def _scheme(where: str, group: Any, default_format: Any) -> Scheme:
    if not isinstance(group, dict) or not isinstance(group.get("weights"), dict):
        raise FileFormatError(f"{where}: a config group must be an object with 'weights' arguments")
    args = group["weights"]
    fmt = group.get("format") or default_format
    if fmt not in READ_FORMATS:
        raise FileFormatError(
            f"{where}: compressed-tensors format {fmt!r} is not one breccia reads ({', '.join(READ_FORMATS)})"
        )
    kind = args.get("type", "int")
    strategy = args.get("strategy")
    if kind not in ("int", "float") or strategy not in (
        "tensor",
        "channel",
        "group",
        "tensor_group",
        "block",
    ):
        raise FileFormatError(
            f"{where}: weights type {kind!r} / strategy {strategy!r} is not a weight quantization "
            "breccia reads"
        )
    block = args.get("block_structure")
    if strategy == "block":
        if not (isinstance(block, list) and len(block) == 2 and all(type(b) is int and b > 0 for b in block)):
            raise FileFormatError(f"{where}: block_structure must be [rows, cols]; got {block!r}")
        block = (block[0], block[1])
    activations = group.get("input_activations")
    if isinstance(activations, dict):
        dynamic = activations.get("dynamic")
        how = "static" if dynamic is False else "dynamic"
        kind_bits = f"{activations.get('type', 'int')}{activations.get('num_bits')}"
        act = f"{how} {kind_bits} {activations.get('strategy')} activations"
    else:
        act = "weights only"
    return Scheme(
        format=fmt,
        num_bits=_int_field(where, args, "num_bits"),
        type=kind,
        strategy=strategy,
        symmetric=bool(args.get("symmetric", True)),
        group_size=_int_field(where, args, "group_size", optional=strategy not in ("group", "tensor_group")),
        block=block if strategy == "block" else None,
        activations=act,
    )


@dataclass(frozen=True)
class CTConfig:
    """config.json's compressed-tensors section: config groups in order, and the ignore list."""

    groups: tuple[tuple[tuple[str, ...], Scheme], ...]
    ignore: tuple[str, ...]

    def matches(self, target: str, module: str) -> bool:
        """compressed-tensors' rule: ``re:`` patterns match the module path (``re.match``), other
        targets its path exactly or its class (a capitalized name; every stored module is taken to
        be the class the config targets, Linear in practice)."""
        if target.startswith("re:"):
            return re.match(target[3:], module) is not None
        return target == module

    def scheme_for(self, module: str) -> Scheme | None:
        """The scheme of ``module`` (None when ignored): a group naming it first, else a class group."""
        if any(self.matches(t, module) for t in self.ignore):
            return None
        for targets, scheme in self.groups:
            if any(self.matches(t, module) for t in targets):
                return scheme
        for targets, scheme in self.groups:
            if any(t[:1].isupper() and not t.startswith("re:") for t in targets):
                return scheme
        return None


def read_config(directory: ModelDirectory) -> CTConfig:
    quant = directory.quantization_config
    where = f"{directory.root}/config.json quantization_config"
    groups = quant.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise FileFormatError(f"{where}: compressed-tensors needs a non-empty 'config_groups' object")
    sparsity = quant.get("sparsity_config") or {}
    if isinstance(sparsity, dict) and sparsity.get("format") not in (None, "dense"):
        raise FileFormatError(
            f"{where}: sparsity format {sparsity.get('format')!r}: breccia reads compressed-tensors "
            "quantization, not its sparse formats"
        )
    parsed = []
    for name, group in groups.items():
        targets = group.get("targets") if isinstance(group, dict) else None
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise FileFormatError(f"{where}: config group {name!r} needs a 'targets' list of strings")
        parsed.append((tuple(targets), _scheme(f"{where} group {name!r}", group, quant.get("format"))))
    ignore = quant.get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(t, str) for t in ignore):
        raise FileFormatError(f"{where}: 'ignore' must be a list of module names or re: patterns")
    return CTConfig(tuple(parsed), tuple(ignore))


def _detect(directory: ModelDirectory) -> str | None:
    if directory.quantization_config.get("quant_method") != QUANT_METHOD:
        return None
    config = read_config(directory)
    described = dict.fromkeys(scheme.describe() for _, scheme in config.groups)
    return "; ".join(described)


# --- reading --------------------------------------------------------------------------------------


def _recipe_and_layout(scheme: Scheme, ndim: int) -> tuple[Recipe, Layout]:
    """The breccia recipe and layout a scheme's weights decode with (the rule fields are the ones
    breccia writes that scheme with, so a round trip repacks)."""
    fmt, strategy = scheme.format, scheme.strategy
    if fmt == "nvfp4-pack-quantized":
        return NVFP4BlockScaling(convention="compressed-tensors"), PerBlockK(16)
    if fmt == "mxfp4-pack-quantized":
        return MXFP4BlockScaling(), PerBlockK(32)
    if fmt == "mxfp8-quantized":
        return MXFP8BlockScaling(), PerBlockK(32)
    layout: Layout = {
        "tensor": PerTensor(),
        "channel": PerRow(),
        "group": PerBlockK(scheme.group_size or 1),
        "block": PerBlock2D(*scheme.block) if scheme.block else PerTensor(),
    }[strategy]
    if scheme.type == "float":
        if strategy == "block":
            return Float8BlockScaling(
                block_k=scheme.block[1], block_m=scheme.block[0], convention="deepseek"
            ), layout
        if strategy == "group":
            return Float8BlockScaling(block_k=scheme.group_size, convention="deepseek"), layout
        return Float8CurrentScaling(convention="torchao"), layout
    cls = Int4Scaling if scheme.num_bits == 4 else Int8Scaling
    group = scheme.group_size if strategy == "group" else None
    return cls(group_size=group, symmetric=scheme.symmetric, convention="torchao"), layout


def _expected(
    scheme: Scheme, shape: tuple[int, ...]
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]]:
    """What the config makes of a module whose weight has logical ``shape``: part -> (dtypes, shape)."""
    *lead, out, n = shape if len(shape) >= 2 else (1, *shape)
    lead = tuple(lead)
    fmt, strategy = scheme.format, scheme.strategy
    if strategy in ("group", "tensor_group"):
        scale_shape = (*lead, out, n // scheme.group_size)
    elif strategy == "channel":
        scale_shape = (*lead, out, 1)
    elif strategy == "block":
        bm, bk = scheme.block
        scale_shape = (-(-out // bm), -(-n // bk))
    else:
        scale_shape = None  # one value, stored as [1]
    parts: dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]] = {}
    if fmt in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        parts["weight_packed"] = (("U8",), (*lead, out, n // 2))
        parts["weight_scale"] = (("F8_E4M3",) if fmt.startswith("nv") else ("U8",), scale_shape)
        if fmt.startswith("nv"):
            parts["weight_global_scale"] = (("F32",), None)
    elif fmt == "pack-quantized":
        words = -(-n * scheme.num_bits // 32)
        parts["weight_packed"] = (("I32",), (*lead, out, words))
        parts["weight_shape"] = (("I64", "I32"), (len(shape),))
        parts["weight_scale"] = (_FLOATS, scale_shape)
        if not scheme.symmetric:
            zp_rows = -(-out * scheme.num_bits // 32)
            parts["weight_zero_point"] = (("I32",), (*lead, zp_rows, scale_shape[-1]))
    else:
        parts["weight"] = (("F8_E4M3",) if scheme.type == "float" else ("I8",), shape)
        parts["weight_scale"] = (("U8",) if fmt == "mxfp8-quantized" else _FLOATS, scale_shape)
        if not scheme.symmetric:
            parts["weight_zero_point"] = (("I8",), scale_shape)
    return parts


def _reading_of(entries: dict[str, Any], prefix: str) -> str:
    """What the stored tensors of module ``prefix`` look like, in words (for error messages)."""
    found = [
        f"{p} {entries[prefix + p].dtype} {list(entries[prefix + p].shape)}"
        for p in ("weight", *WEIGHT_PARTS)
        if prefix + p in entries
    ]
    return ", ".join(found) or "no weight tensors"


def _logical_shape(directory: ModelDirectory, prefix: str, scheme: Scheme) -> tuple[int, ...]:
    """The weight's logical shape from the stored tensors as the scheme reads them."""
    entries = directory.entries
    if not scheme.packed:
        return tuple(entries[prefix + "weight"].shape)
    packed = entries.get(prefix + "weight_packed")
    if packed is None:
        raise _fail(
            directory,
            prefix + "weight_packed",
            f"{scheme.format} (a weight_packed tensor)",
            _reading_of(entries, prefix),
        )
    *lead, out, cols = packed.shape
    if scheme.format == "pack-quantized":
        scale = entries.get(prefix + "weight_scale")
        n = cols * 32 // scheme.num_bits  # exact unless the words end in padding: then the groups say
        if scheme.strategy == "group" and scale is not None and len(scale.shape) == len(packed.shape):
            grouped = scale.shape[-1] * scheme.group_size
            n = grouped if -(-grouped * scheme.num_bits // 32) == cols else n
        return (*lead, out, n)
    return (*lead, out, 2 * cols)


@dataclass(frozen=True)
class Layer:
    """A quantized module: its prefix (``m.``), scheme, logical weight shape and stored parts."""

    prefix: str
    scheme: Scheme
    shape: tuple[int, ...]


def check_layer(directory: ModelDirectory, prefix: str, scheme: Scheme) -> Layer:
    """The layer ``prefix`` after checking every stored part against ``scheme`` (headers only)."""
    entries = directory.entries
    shape = _logical_shape(directory, prefix, scheme)
    says = f"{scheme.format} ({scheme.describe()})"
    if scheme.strategy in ("group", "tensor_group") and (shape[-1] % scheme.group_size):
        raise _fail(
            directory,
            prefix + "weight_scale",
            says + f": groups of {scheme.group_size}",
            f"a weight of {shape[-1]} columns, which groups of {scheme.group_size} do not divide",
        )
    if scheme.strategy == "block" and len(shape) != 2:
        raise _fail(directory, prefix + "weight", says, f"a {len(shape)}-D weight (blocks are 2-D)")
    for part, (dtypes, part_shape) in _expected(scheme, shape).items():
        entry = entries.get(prefix + part)
        if entry is None:
            raise _fail(directory, prefix + part, says + f": a {part} tensor", _reading_of(entries, prefix))
        size_one = part_shape is None and int(np.prod(entry.shape)) == 1
        if entry.dtype not in dtypes or not (size_one or tuple(entry.shape) == part_shape):
            want = f"{'/'.join(dtypes)} {list(part_shape) if part_shape else '[1]'}"
            raise _fail(
                directory, prefix + part, f"{says}: {part} {want}", f"{entry.dtype} {list(entry.shape)}"
            )
    extra = [p for p in WEIGHT_PARTS if prefix + p in entries and p not in _expected(scheme, shape)]
    if extra:
        raise _fail(
            directory, prefix + extra[0], says + f", which has no {extra[0]}", _reading_of(entries, prefix)
        )
    if scheme.format == "pack-quantized" and scheme.num_bits not in (4, 8):
        raise FileFormatError(
            f"{directory.root}: {prefix}weight_packed: pack-quantized with {scheme.num_bits} bits; breccia "
            "reads 4 and 8 bits"
        )
    if scheme.format == "nvfp4-pack-quantized" and (scheme.type, scheme.num_bits, scheme.group_size) != (
        "float",
        4,
        16,
    ):
        raise FileFormatError(
            f"{directory.root}: {prefix}weight: nvfp4-pack-quantized needs float 4-bit weights in groups "
            "of 16"
        )
    if scheme.format in ("mxfp4-pack-quantized", "mxfp8-quantized") and scheme.group_size != 32:
        raise FileFormatError(f"{directory.root}: {prefix}weight: {scheme.format} needs groups of 32")
    return Layer(prefix, scheme, shape)


def unpack_int32(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """compressed-tensors' ``unpack_from_int32`` along the last axis: ``count`` signed codes."""
    raw = np.ascontiguousarray(words).astype("<i4", copy=False).view(np.uint8)
    if bits == 4:
        nibbles = np.stack((raw & 0xF, raw >> 4), axis=-1).reshape(*raw.shape[:-1], -1)
        return nibbles[..., :count].astype(np.int8) - 8
    return (raw[..., :count].astype(np.int16) - 128).astype(np.int8)


def _scale_e8m0(directory: ModelDirectory, name: str, scale: np.ndarray) -> np.ndarray:
    if np.any(scale == E8M0_NAN):
        raise FileFormatError(
            f"{directory.root}: tensor {name!r} holds scale byte 255: NaN in OCP MX (breccia), 2**128 = inf "
            "in compressed-tensors' decompress; the two readings differ, so breccia refuses the file"
        )
    return scale


class CompressedTensorsCheckpoint(StoredCheckpoint):
    """Quantized modules of a compressed-tensors directory as ScaledTensors; other tensors as stored."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str, device: Any
    ) -> None:

        super().__init__(directory, fmt, details, framework, device)
        self.ct_config = read_config(directory)
        self.layers: dict[str, Layer] = {}
        entries = directory.entries
        prefixes = {
            n[: -len(p)] for n in entries for p in ("weight_packed", "weight_scale") if n.endswith("." + p)
        }
        for prefix in sorted(prefixes):
            scheme = self.ct_config.scheme_for(prefix[:-1])
            if scheme is None:
                raise _fail(
                    directory,
                    prefix + "weight_scale",
                    f"module {prefix[:-1]!r} is not quantized (ignored, or no config group targets it)",
                    _reading_of(entries, prefix),
                )
            self.layers[prefix + "weight"] = check_layer(directory, prefix, scheme)
        parts = {layer.prefix + p for layer in self.layers.values() for p in WEIGHT_PARTS}
        self.activation_scales = [n for n in entries if n.rsplit(".", 1)[-1] in ACTIVATION_PARTS]
        hidden = parts | set(self.activation_scales)
        names = [n for n in self.raw.tensor_names() if n not in hidden]
        self._names = names + [n for n in self.layers if n not in set(names)]

    def _keys(self) -> list[str]:
        return self._names

    def _read(self, name: str) -> Any:
        layer = self.layers.get(name)
        if layer is None:
            return self.raw.read_tensor(name)
        return decode_layer(
            self.directory, layer, lambda part: np.asarray(self.raw.read_tensor(layer.prefix + part))
        )


def decode_layer(directory: ModelDirectory, layer: Layer, read: Callable[[str], np.ndarray]) -> ScaledTensor:
    """The ScaledTensor of ``layer`` from its parts (``read(part)``), checking their values."""
    scheme, shape, prefix = layer.scheme, layer.shape, layer.prefix
    recipe, layout = _recipe_and_layout(scheme, len(shape))
    scale = read("weight_scale")
    fmt = scheme.format
    extra: dict[str, Any] = {}
    if fmt in ("mxfp4-pack-quantized", "mxfp8-quantized"):
        scale = _scale_e8m0(directory, prefix + "weight_scale", scale)
        dtype = "bfloat16"
    elif fmt == "nvfp4-pack-quantized":
        g = read("weight_global_scale").reshape(())
        if not (np.isfinite(g) and g > 0):
            raise FileFormatError(
                f"{directory.root}: tensor {prefix}weight_global_scale is {float(g)!r}; an NVFP4 global "
                "scale (2688 / amax) must be finite and positive"
            )
        extra["global_scale"] = g.astype(np.float32)
        dtype = "bfloat16"
    else:
        dtype = scale.dtype.name  # decompress computes in the scale's dtype
    if isinstance(layout, PerTensor):
        scale = scale.reshape((1,) * len(shape))
    if fmt == "pack-quantized":
        stored_shape = tuple(int(d) for d in read("weight_shape"))
        if stored_shape != shape:
            raise _fail(
                directory,
                prefix + "weight_shape",
                f"a weight of shape {list(shape)} (from weight_packed and weight_scale)",
                f"weight_shape {list(stored_shape)}",
            )
        codes = unpack_int32(read("weight_packed"), scheme.num_bits, shape[-1])
        data = _int_storage(codes, scheme.num_bits)
        if not scheme.symmetric:
            zp = read("weight_zero_point")
            rows = unpack_int32(np.swapaxes(zp, -1, -2), scheme.num_bits, shape[-2])
            extra["zero_point"] = np.swapaxes(rows, -1, -2).astype(np.float32)
    elif scheme.packed:
        data = read("weight_packed")
    else:
        data = read("weight")
        if not scheme.symmetric:
            extra["zero_point"] = read("weight_zero_point").astype(np.float32).reshape(scale.shape)
    return from_buffer(data, scale, recipe, layout, shape=shape, dtype=dtype, **extra)


def _int_storage(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed codes in breccia's storage: int8, or two's complement nibbles (element 2i low) for int4."""
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.int8)], axis=-1)
    nibbles = codes.view(np.uint8) & 0xF
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).astype(np.uint8)


register(Convention(QUANT_METHOD, _detect, CompressedTensorsCheckpoint))


# --- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTTarget:
    """A compressed-tensors preset breccia writes: format, the preset's arguments, breccia's recipe."""

    format: str
    weights: dict[str, Any]
    input_activations: dict[str, Any] | None
    recipe: Recipe
    layout: Layout


def _args(num_bits: int, kind: str, strategy: str, **more: Any) -> dict[str, Any]:
    return {
        "num_bits": num_bits,
        "type": kind,
        "symmetric": True,
        "group_size": None,
        "strategy": strategy,
        "dynamic": False,
        **more,
    }


TARGETS: dict[str, CTTarget] = {
    "compressed-tensors-fp8-dynamic": CTTarget(
        "float-quantized",
        _args(8, "float", "channel"),
        _args(8, "float", "token", dynamic=True),
        Float8CurrentScaling(convention="torchao"),
        PerRow(),
    ),
    "compressed-tensors-fp8-block": CTTarget(
        "float-quantized",
        _args(8, "float", "block", block_structure=[128, 128]),
        _args(8, "float", "group", group_size=128, dynamic=True),
        Float8BlockScaling(block_k=128, block_m=128, convention="deepseek"),
        PerBlock2D(128, 128),
    ),
    "compressed-tensors-nvfp4": CTTarget(
        "nvfp4-pack-quantized",
        _args(4, "float", "tensor_group", group_size=16, scale_dtype="torch.float8_e4m3fn"),
        None,
        NVFP4BlockScaling(convention="compressed-tensors"),
        PerBlockK(16),
    ),
    "compressed-tensors-mxfp4": CTTarget(
        "mxfp4-pack-quantized",
        _args(4, "float", "group", group_size=32, scale_dtype="torch.uint8"),
        None,
        MXFP4BlockScaling(),
        PerBlockK(32),
    ),
    "compressed-tensors-mxfp8": CTTarget(
        "mxfp8-quantized",
        _args(8, "float", "group", group_size=32, scale_dtype="torch.uint8"),
        _args(8, "float", "group", group_size=32, scale_dtype="torch.uint8", dynamic=True),
        MXFP8BlockScaling(),
        PerBlockK(32),
    ),
    "compressed-tensors-w4a16": CTTarget(
        "pack-quantized",
        _args(4, "int", "group", group_size=128),
        None,
        Int4Scaling(group_size=128, convention="torchao"),
        PerBlockK(128),
    ),
    "compressed-tensors-w4a16-asym": CTTarget(
        "pack-quantized",
        {**_args(4, "int", "group", group_size=128), "symmetric": False},
        None,
        Int4Scaling(group_size=128, symmetric=False, convention="torchao"),
        PerBlockK(128),
    ),
}


def pack_int32(codes: np.ndarray, bits: int) -> np.ndarray:
    """compressed-tensors' ``pack_to_int32`` along the last axis: signed codes -> int32 words."""
    offset = (codes.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
    n = codes.shape[-1]
    if bits == 4:
        if n % 2:
            offset = np.concatenate([offset, np.zeros((*offset.shape[:-1], 1), np.uint8)], axis=-1)
        offset = offset[..., 0::2] | (offset[..., 1::2] << 4)
    words = -(-n * bits // 32)
    pad = words * 4 - offset.shape[-1]
    if pad:
        offset = np.concatenate([offset, np.zeros((*offset.shape[:-1], pad), np.uint8)], axis=-1)
    return np.ascontiguousarray(offset).view("<i4").astype(np.int32, copy=False)


def _signed_codes(st: ScaledTensor) -> np.ndarray:
    """An int ScaledTensor's codes as int8 (int4 nibbles sign-extended)."""
    data = np.asarray(st.data)
    if st.recipe.element_format.bits == 8:
        return data.view(np.int8)
    low = (data & 0xF).astype(np.int8)
    high = (data >> 4).astype(np.int8)
    both = np.stack((low, high), axis=-1).reshape(*data.shape[:-1], -1)[..., : st.shape[-1]]
    return np.where(both > 7, both - 16, both).astype(np.int8)


def layer_parts(target: CTTarget, st: ScaledTensor) -> dict[str, np.ndarray]:
    """The stored tensors of one module written as ``target`` (``st`` is in the target's recipe)."""
    fmt = target.format
    scale = np.asarray(st.scale)
    if isinstance(st.layout, PerTensor):
        scale = scale.reshape(1)
    if fmt == "pack-quantized":
        bits = st.recipe.element_format.bits
        parts = {
            "weight_packed": pack_int32(_signed_codes(st), bits),
            "weight_shape": np.asarray(st.shape, dtype=np.int64),
            "weight_scale": scale,
        }
        if st.zero_point is not None:
            zp = np.rint(np.asarray(st.zero_point)).astype(np.int8)
            parts["weight_zero_point"] = np.swapaxes(pack_int32(np.swapaxes(zp, -1, -2), bits), -1, -2).copy()
        return parts
    if fmt == "nvfp4-pack-quantized":
        return {
            "weight_packed": np.asarray(st.data),
            "weight_scale": scale,
            "weight_global_scale": np.asarray(st.global_scale, np.float32).reshape(1),
        }
    if fmt == "mxfp4-pack-quantized":
        return {"weight_packed": np.asarray(st.data), "weight_scale": scale.view(np.uint8)}
    if fmt == "mxfp8-quantized":
        return {"weight": np.asarray(st.data), "weight_scale": scale.view(np.uint8)}
    return {"weight": np.asarray(st.data), "weight_scale": scale}


def quantization_config(target: CTTarget, ignore: list[str]) -> dict[str, Any]:
    """config.json's ``quantization_config`` as compressed-tensors 0.20 writes it for ``target``."""
    return {
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": dict(target.weights),
                "input_activations": None
                if target.input_activations is None
                else dict(target.input_activations),
                "output_activations": None,
                "format": target.format,
            }
        },
        "quant_method": QUANT_METHOD,
        "kv_cache_scheme": None,
        "format": target.format,
        "quantization_status": "compressed",
        "global_compression_ratio": None,
        "ignore": ignore,
    }


_GROUPED = re.compile(r"^(compressed-tensors-w4a16(?:-asym)?)-g(\d+)$")


def _grouped(text: str) -> CTTarget | None:
    """``compressed-tensors-w4a16[-asym]-g<group>``: the W4A16 preset with another group size (32 is
    what mlx-lm reads, and what Kimi-K2 ships)."""
    match = _GROUPED.match(text)
    if match is None:
        return None
    base, group = TARGETS[match.group(1)], int(match.group(2))
    if group < 1:
        raise RecipeError(f"{text!r}: the group size must be a positive int")
    recipe = Int4Scaling(group_size=group, symmetric=base.recipe.symmetric, convention="torchao")
    return CTTarget(base.format, {**base.weights, "group_size": group}, None, recipe, PerBlockK(group))


def _parse(text: str) -> Target | None:
    target = TARGETS.get(text) or _grouped(text)
    if target is None:
        return None
    from .modelopt import write_quantized

    return Target(text, QUANT_METHOD, write_quantized, {"writer": "compressed-tensors", "ct_target": target})


register_target(TargetParser(_parse, tuple(TARGETS)))
