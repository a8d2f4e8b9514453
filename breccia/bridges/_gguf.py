"""GGUF files (llama.cpp's container) at tensor level: read ggml tensors as ScaledTensors, write them back.

Reading goes through ``gguf.GGUFReader`` (memory-mapped; a tensor's bytes are read when asked for),
after checking every tensor's header: its ggml type must be one gguf-py knows and its rows must hold
whole blocks of that type, or the file is refused naming the tensor and both readings.

The block types breccia decodes, and the ScaledTensor each becomes (``K`` = row length; every
decode is the one of ``gguf.quants.dequantize``, bit for bit, up to the sign of zero noted below):

=========  =====================================  ==========================================================
ggml type  block (bytes)                          ScaledTensor
=========  =====================================  ==========================================================
Q8_0       fp16 ``d``, 32 x int8 ``q``            ``Int8Scaling(group_size=32)``: ``x = q * d``
Q4_0       fp16 ``d``, 16 bytes                   ``Int4Scaling(group_size=32)``: ``x = (u - 8) * d``
Q4_1       fp16 ``d``, fp16 ``m``, 16 bytes       ``Int4Scaling(32, symmetric=False, convention="mlx")``:
                                                  ``x = u * d + m`` (two float32 roundings)
MXFP4      E8M0 ``e``, 16 bytes                   ``MXFP4BlockScaling()``: ``x = e2m1(c) * 2**(e - 127)``
NVFP4      4 x UE4M3 ``s``, 32 bytes (64 values)  ``NVFP4BlockScaling()``, global scale 1: ``x = e2m1(c) * s``
=========  =====================================  ==========================================================

Nibble order: Q4_0, Q4_1 and MXFP4 hold elements ``j`` and ``j + 16`` of a 32-block in the low and
high nibble of byte ``j``; NVFP4 holds elements ``j`` and ``j + 8`` of each 16-value sub-block in byte
``j`` of its 8. breccia packs element ``2i`` low and ``2i + 1`` high (as gpt-oss, torch and MLX do),
so reading and writing move nibbles, never values. Plain tensors: F32, F16, BF16, F64, I8, I16, I32,
I64. Every other ggml type (the K-quants, IQ types, ...) is listed by name and refused when read.

Rules where the formats differ, chosen so that nothing is guessed:

- E8M0 byte 255: OCP MX reads it as NaN, ggml (and transformers' gpt-oss decoder) as ``2**128``. A
  GGUF MXFP4 block with ``e = 255`` is refused on reading, and a breccia NaN block (scale code 255)
  is refused on writing.
- UE4M3 (NVFP4's GGUF scale) is unsigned and ggml reads ``0x7F`` as 0: a scale byte ``0x7F`` is read
  as E4M3 code 0 (value 0, exactly what ggml decodes), a byte with the top bit set is refused, and
  writing refuses negative or NaN block scales. GGUF's NVFP4 has no global scale, so only an
  NVFP4 tensor whose global scale is 1 can be written.
- E2M1 code 8 (``-0``): ggml's table reads it as ``+0``, breccia as ``-0``; codes are moved as they
  are (so a gpt-oss <-> GGUF transcode is byte-exact), and the two decodes are equal (``-0 == +0``)
  with only the sign of those zeros differing.
- A Q8_0/Q4_0/Q4_1 scale (and Q4_1 offset) is fp16 in the file: a ScaledTensor is written only if
  each one is a float16 value already (else the write is refused: it would change values).

Float tensors go straight to Q8_0, Q4_0 or MXFP4 (``save_gguf(..., types=...)``) through the recipes
that reproduce ggml's own quantizers, :data:`GGML_RECIPES` (``convention="ggml"``, see
:mod:`breccia.recipes`): the blocks written are byte for byte those of ``gguf.quants.quantize``
(and ggml's ``quantize_row_*_ref``).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import DTypeError, FileFormatError, RecipeError, missing_dependency
from ..formats import offset_binary_flip
from ..layouts import PerBlockK
from ..recipes import Int4Scaling, Int8Scaling, MXFP4BlockScaling, NVFP4BlockScaling
from ..tensor import ScaledTensor

__all__ = ["GGUFFile", "open_gguf", "save_gguf", "DECODED_TYPES", "GGML_RECIPES"]

#: ggml types breccia reads (ScaledTensors, then plain arrays)
QUANTIZED_TYPES = ("Q8_0", "Q4_0", "Q4_1", "MXFP4", "NVFP4")
PLAIN_TYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}
DECODED_TYPES = (*QUANTIZED_TYPES, *PLAIN_TYPES)
#: ggml type -> the breccia recipe that quantizes floats as ggml does (byte for byte)
GGML_RECIPES = {
    "Q8_0": Int8Scaling(group_size=32, convention="ggml"),
    "Q4_0": Int4Scaling(group_size=32, convention="ggml"),
    "MXFP4": MXFP4BlockScaling(convention="ggml"),
}
E8M0_NAN = 255
UE4M3_ZERO = 0x7F  # ggml reads this UE4M3 byte as 0


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise missing_dependency("gguf", "gguf", str(exc)) from exc
    return gguf


# --- nibble orders ----------------------------------------------------------------------------------


def _halves_to_pairs(packed: np.ndarray) -> np.ndarray:
    """GGUF nibbles (byte ``j`` of ``half`` holds elements ``j`` and ``j + half`` of its group) to
    breccia's (element ``2i`` low): ``packed`` is ``[..., groups, half]``, the result the same shape."""
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def _pairs_to_halves(packed: np.ndarray, half: int) -> np.ndarray:
    """Inverse of :func:`_halves_to_pairs`."""
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], 2 * half)
    return codes[..., :half] | (codes[..., half:] << 4)


def _flip_int4_bias(packed: np.ndarray) -> np.ndarray:
    """Two's complement INT4 nibbles ``q`` <-> unsigned ``u = q + 8`` nibbles, in place (an involution:
    both flip the top bit of each nibble)."""
    return packed ^ np.uint8(offset_binary_flip(4))


# --- reading ----------------------------------------------------------------------------------------


@functools.cache
def _checked_reader_class() -> type:
    gguf = _gguf()

    class CheckedReader(gguf.GGUFReader):
        """``GGUFReader`` that checks each tensor's type and block count before gguf-py shapes it,
        so a bad tensor is named (gguf-py's own errors do not say which tensor)."""

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            for field in fields:
                _, name_data, _, dims, raw_dtype, _ = field.parts
                name = bytes(name_data).decode("utf-8", errors="replace")
                code = int(raw_dtype[0])
                try:
                    kind = gguf.GGMLQuantizationType(code)
                except ValueError:
                    raise FileFormatError(
                        f"tensor {name!r}: ggml type {code} is not a type gguf {gguf_version()} knows; "
                        "breccia reads only known types and guesses nothing"
                    ) from None
                block, size = gguf.GGML_QUANT_SIZES[kind]
                row = int(dims[0]) if len(dims) else 1
                if block > 1 and row % block:
                    raise FileFormatError(
                        f"tensor {name!r}: its shape says rows of {row} elements, its type {kind.name} "
                        f"says blocks of {block} ({size} bytes each); {row} / {block} = "
                        f"{row / block:g} blocks per row is not whole"
                    )
            super()._build_tensors(start_offs, fields)

    return CheckedReader


def gguf_version() -> str:
    from importlib.metadata import version

    return version("gguf")


class GGUFFile(Mapping):
    """A lazy mapping ``name -> ScaledTensor | numpy array`` over one GGUF file (see module doc).

    ``types`` maps each tensor to its ggml type name; ``metadata`` holds the key/value fields
    (decoded lazily by gguf-py). Reading a tensor whose type breccia does not decode raises
    FileFormatError naming it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        reader_class = _checked_reader_class()
        try:
            self._reader = reader_class(self.path, "r")
        except FileFormatError as exc:
            raise FileFormatError(f"{self.path}: {exc}") from None
        except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as exc:
            raise FileFormatError(
                f"{self.path}: not a GGUF file gguf {gguf_version()} can read ({type(exc).__name__}: {exc})"
            ) from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        size = os.path.getsize(self.path)
        for t in self._tensors.values():
            if t.data_offset + t.n_bytes > size:
                raise FileFormatError(
                    f"{self.path}: tensor {t.name!r} would end at byte {t.data_offset + t.n_bytes}, past the "
                    f"end of the file ({size} bytes); the file is truncated or damaged"
                )
        self.types = {name: t.tensor_type.name for name, t in self._tensors.items()}

    @property
    def version(self) -> int:
        field = self._reader.fields.get("GGUF.version")
        return int(field.parts[field.data[0]][0]) if field is not None else 0

    def undecoded(self) -> dict[str, str]:
        """The tensors whose ggml type breccia does not decode: name -> type name."""
        return {name: kind for name, kind in self.types.items() if kind not in DECODED_TYPES}

    def shape(self, name: str) -> tuple[int, ...]:
        """The logical (numpy-order) shape of tensor ``name``."""
        return tuple(int(d) for d in reversed(self._tensors[name].shape.tolist()))

    def nbytes(self, name: str) -> int:
        """The bytes tensor ``name`` takes in the file (blocks and their scales)."""
        return int(self._tensors[name].n_bytes)

    def __getitem__(self, name: str) -> ScaledTensor | np.ndarray:
        tensor = self._tensors.get(name) if isinstance(name, str) else None
        if tensor is None:
            raise KeyError(name)
        kind = tensor.tensor_type.name
        where = f"{self.path}: tensor {name!r}"
        shape = self.shape(name)
        if kind in PLAIN_TYPES:
            raw = np.array(tensor.data)
            if kind == "BF16":
                import ml_dtypes

                raw = raw.view(ml_dtypes.bfloat16)
            return raw.reshape(shape)
        if kind not in QUANTIZED_TYPES:
            raise FileFormatError(
                f"{where} is {kind}, a ggml type breccia does not decode (it reads "
                f"{', '.join(DECODED_TYPES)}); nothing is guessed: dequantize it with llama.cpp first"
            )
        return _DECODERS[kind](where, np.array(tensor.data), shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def close(self) -> None:
        """Drop the memory map (arrays already read are copies and stay valid)."""
        self._tensors = {}
        self._reader = None

    def __repr__(self) -> str:
        return f"GGUFFile({self.path!r}, tensors={len(self._tensors)})"


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """A lazy mapping over the tensors of the GGUF file ``path`` (see :class:`GGUFFile`)."""
    return GGUFFile(path)


def _blocks(raw: np.ndarray, shape: tuple[int, ...], block: int, size: int) -> np.ndarray:
    """The bytes of a quantized tensor as ``[..., blocks per row, bytes per block]``."""
    lead = shape[:-1]
    return raw.reshape(*lead, shape[-1] // block, size)


def _f16(b: np.ndarray) -> np.ndarray:
    """Two-byte fields ``[..., 2]`` as float32 values of their fp16 bits (exact)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _decode_q8_0(where: str, raw: np.ndarray, shape: tuple[int, ...]) -> ScaledTensor:
    from ..quantize import from_buffer

    b = _blocks(raw, shape, 32, 34)
    q = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(shape)
    return from_buffer(q, _f16(b[..., :2]), Int8Scaling(group_size=32), PerBlockK(32), shape=shape)


def _decode_q4(where: str, raw: np.ndarray, shape: tuple[int, ...], with_min: bool) -> ScaledTensor:
    from ..quantize import from_buffer

    head = 4 if with_min else 2
    b = _blocks(raw, shape, 32, head + 16)
    data = _flip_int4_bias(_halves_to_pairs(b[..., head:])).reshape(*shape[:-1], shape[-1] // 2)
    if not with_min:
        return from_buffer(data, _f16(b[..., :2]), Int4Scaling(group_size=32), PerBlockK(32), shape=shape)
    recipe = Int4Scaling(group_size=32, symmetric=False, convention="mlx")
    return from_buffer(
        data, _f16(b[..., :2]), recipe, PerBlockK(32), shape=shape, zero_point=_f16(b[..., 2:4])
    )


def _decode_mxfp4(where: str, raw: np.ndarray, shape: tuple[int, ...]) -> ScaledTensor:
    from ..quantize import from_buffer

    b = _blocks(raw, shape, 32, 17)
    scale = np.ascontiguousarray(b[..., 0])
    refuse_e8m0_nan(where, scale, "GGUF's MXFP4")
    data = _halves_to_pairs(b[..., 1:]).reshape(*shape[:-1], shape[-1] // 2)
    return from_buffer(data, scale, MXFP4BlockScaling(), PerBlockK(32), shape=shape)


def _decode_nvfp4(where: str, raw: np.ndarray, shape: tuple[int, ...]) -> ScaledTensor:
    from ..quantize import from_buffer

    b = _blocks(raw, shape, 64, 36)
    scale = np.ascontiguousarray(b[..., :4])
    signed = np.argwhere(scale >= 0x80)
    if signed.size:
        raise FileFormatError(
            f"{where}: UE4M3 block scale byte {int(scale[tuple(signed[0])]):#04x} at block "
            f"{tuple(int(i) for i in signed[0])} has its top bit set; ggml's UE4M3 is unsigned and never "
            "writes it (reading it signed or unsigned would be a guess)"
        )
    scale = np.where(scale == UE4M3_ZERO, np.uint8(0), scale).reshape(*shape[:-1], shape[-1] // 16)
    sub = b[..., 4:].reshape(*b.shape[:-1], 4, 8)
    data = _halves_to_pairs(sub).reshape(*shape[:-1], shape[-1] // 2)
    return from_buffer(
        data, scale, NVFP4BlockScaling(), PerBlockK(16), shape=shape, global_scale=np.float32(1.0)
    )


def refuse_e8m0_nan(where: str, scale: np.ndarray, fmt: str) -> None:
    """The one rule for E8M0 byte 255 in an MXFP4 file whose own decoder (``fmt``) reads it as
    2**128 (GGUF, gpt-oss): refused, naming the first such block (see the module docstring)."""
    bad = np.argwhere(scale == E8M0_NAN)
    if bad.size:
        raise FileFormatError(
            f"{where}: E8M0 scale byte 255 at block {tuple(int(i) for i in bad[0])} "
            f"({len(bad)} such blocks): OCP MX reads it as NaN, {fmt}'s own decoder as 2**128 (so "
            "Inf); breccia refuses it rather "
            "than pick one"
        )


_DECODERS = {
    "Q8_0": _decode_q8_0,
    "Q4_0": lambda where, raw, shape: _decode_q4(where, raw, shape, with_min=False),
    "Q4_1": lambda where, raw, shape: _decode_q4(where, raw, shape, with_min=True),
    "MXFP4": _decode_mxfp4,
    "NVFP4": _decode_nvfp4,
}


# --- writing ----------------------------------------------------------------------------------------


def _fp16_bytes(name: str, values: np.ndarray, what: str, kind: str) -> np.ndarray:
    """float32 ``values`` as fp16 bytes ``[..., 2]``, refused unless each is a float16 value already."""
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    same = (half.astype(np.float32) == values) | (np.isnan(values) & np.isnan(half))
    if not same.all():
        first = float(values.reshape(-1)[np.flatnonzero(~same.reshape(-1))[0]])
        raise RecipeError(
            f"tensor {name!r}: {kind} stores each block's {what} as float16, and {int((~same).sum())} of "
            f"this tensor's are not float16 values (first: {first!r}); writing would change its values. "
            f"Requantize it with float16-valued {what}s first"
        )
    return half.view(np.uint8).reshape(*values.shape, 2)


def _block_row(name: str, st: ScaledTensor, block: int, kind: str) -> None:
    if st.layout != PerBlockK(block if kind != "NVFP4" else 16) or not st.shape or st.shape[-1] % block:
        raise RecipeError(
            f"tensor {name!r}: GGUF {kind} needs blocks of {block} along whole rows; this tensor is "
            f"{st.recipe!r} in {st.layout!r} with shape {st.shape}"
        )


def _encode(name: str, st: ScaledTensor) -> tuple[str, np.ndarray]:
    """(ggml type name, bytes ``[..., bytes per row]``) of ScaledTensor ``st``, moved exactly."""
    st = st.to("numpy")
    recipe, shape = st.recipe, st.shape
    lead, k = shape[:-1], shape[-1] if shape else 0
    data = np.ascontiguousarray(st.data).view(np.uint8)
    if isinstance(recipe, Int8Scaling) and recipe.zero_point_kind is None:
        _block_row(name, st, 32, "Q8_0")
        d = _fp16_bytes(name, np.asarray(st.scale, np.float32), "scale", "Q8_0")
        body = [d, data.reshape(*lead, k // 32, 32)]
        return "Q8_0", np.concatenate(body, axis=-1).reshape(*lead, -1)
    if isinstance(recipe, Int4Scaling) and recipe.zero_point_kind != "int":
        kind = "Q4_0" if recipe.zero_point_kind is None else "Q4_1"
        _block_row(name, st, 32, kind)
        if np.asarray(st.scale).dtype != np.float32:
            raise RecipeError(
                f"tensor {name!r}: its {np.asarray(st.scale).dtype} scales make breccia decode it in that "
                f"dtype, while GGUF {kind} decodes in float32; requantize it from float32 values"
            )
        parts = [_fp16_bytes(name, np.asarray(st.scale, np.float32), "scale", kind)]
        if kind == "Q4_1":
            parts.append(_fp16_bytes(name, np.asarray(st.zero_point, np.float32), "offset", kind))
        codes = _pairs_to_halves(_flip_int4_bias(data).reshape(*lead, k // 32, 16), 16)
        return kind, np.concatenate([*parts, codes], axis=-1).reshape(*lead, -1)
    if isinstance(recipe, MXFP4BlockScaling):
        _block_row(name, st, 32, "MXFP4")
        scale = np.ascontiguousarray(st.scale).view(np.uint8)
        if (scale == E8M0_NAN).any():
            raise RecipeError(
                f"tensor {name!r}: holds NaN blocks (E8M0 code 255), which GGUF's MXFP4 decodes as 2**128; "
                "there is no NaN to write"
            )
        codes = _pairs_to_halves(data.reshape(*lead, k // 32, 16), 16)
        return "MXFP4", np.concatenate([scale[..., None], codes], axis=-1).reshape(*lead, -1)
    if isinstance(recipe, NVFP4BlockScaling):
        _block_row(name, st, 64, "NVFP4")
        if float(np.asarray(st.global_scale, np.float32)) != 1.0:
            raise RecipeError(
                f"tensor {name!r}: NVFP4 with global scale {float(np.asarray(st.global_scale))!r}; "
                "GGUF's NVFP4 has no global scale, so only a tensor whose global scale is 1 can be "
                "written exactly"
            )
        scale = np.ascontiguousarray(st.scale).view(np.uint8)
        bad = (scale >= 0x80) | (scale == UE4M3_ZERO)
        if bad.any():
            raise RecipeError(
                f"tensor {name!r}: {int(bad.sum())} block scales are negative or NaN; GGUF's UE4M3 "
                "scales are unsigned and have no NaN"
            )
        sub = _pairs_to_halves(data.reshape(*lead, k // 64, 4, 8), 8).reshape(*lead, k // 64, 32)
        body = [scale.reshape(*lead, k // 64, 4), sub]
        return "NVFP4", np.concatenate(body, axis=-1).reshape(*lead, -1)
    raise RecipeError(
        f"tensor {name!r}: GGUF has no block type that holds {recipe!r} exactly; it holds "
        "Int8Scaling(group_size=32) (Q8_0), Int4Scaling(group_size=32) (Q4_0), its mlx convention (Q4_1), "
        "MXFP4BlockScaling (MXFP4) and NVFP4BlockScaling with global scale 1 (NVFP4). Requantize first"
    )


def _quantize_types(mapping: Mapping[str, Any], types: str | Mapping[str, str] | None) -> dict[str, str]:
    """``save_gguf``'s ``types`` as ``name -> ggml type`` for the float arrays it quantizes."""
    if types is None:
        return {}
    valid = ", ".join(GGML_RECIPES)
    if isinstance(types, str):
        if types.upper() not in GGML_RECIPES:
            raise RecipeError(f"types={types!r}: breccia quantizes floats to the ggml types {valid}")
        floats = {
            name: types.upper()
            for name, value in mapping.items()
            if not isinstance(value, ScaledTensor)
            and len(getattr(value, "shape", ())) >= 2
            and "float" in str(getattr(value, "dtype", ""))
        }
        return floats
    chosen = {}
    for name, kind in types.items():
        if name not in mapping:
            raise RecipeError(f"types names tensor {name!r}, which is not in the mapping to write")
        if not isinstance(kind, str) or kind.upper() not in GGML_RECIPES:
            raise RecipeError(f"tensor {name!r}: types says {kind!r}; breccia quantizes floats to {valid}")
        if isinstance(mapping[name], ScaledTensor):
            raise RecipeError(
                f"tensor {name!r} is already a ScaledTensor ({mapping[name].recipe!r}); types= quantizes "
                "float arrays. Dequantize it first, or leave it out of types to move its blocks exactly"
            )
        chosen[name] = kind.upper()
    return chosen


def _ggml_cast(name: str, value: Any, kind: str) -> ScaledTensor:
    """Float array ``value`` quantized as ggml quantizes to ``kind`` (rows a whole number of blocks)."""
    from ..quantize import cast

    shape = tuple(int(d) for d in value.shape)
    if not shape or shape[-1] % 32:
        raise RecipeError(
            f"tensor {name!r}: GGUF {kind} needs rows of whole 32-element blocks; its shape is "
            f"{list(shape)}. Leave it out of types (it is then written as it is)"
        )
    return cast(value, GGML_RECIPES[kind])


def save_gguf(
    mapping: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    arch: str = "breccia",
    types: str | Mapping[str, str] | None = None,
) -> None:
    """Write ``mapping`` (name -> ScaledTensor or array of any framework) as the GGUF file ``path``.

    ScaledTensors are moved into the ggml block type that holds them exactly (table in the module
    docstring) and refused, with a RecipeError saying why, when none does. Arrays are written as
    F32/F16/BF16/F64/I8/I16/I32/I64 by dtype, except those ``types`` names: ``types`` maps a tensor
    name to ``"Q8_0"``, ``"Q4_0"`` or ``"MXFP4"`` (or is one of these for every float array of two or
    more axes, as llama.cpp keeps 1-D tensors float), and those arrays are quantized with
    :data:`GGML_RECIPES`, so their blocks are the bytes ``gguf.quants.quantize`` writes (NaN and Inf
    refused). ``gguf.GGUFReader`` plus ``gguf.quants.dequantize`` of the file give ``bc.dequantize``
    of each tensor bit for bit (up to E2M1's ``-0``, read as ``+0``). The file is written beside
    ``path`` and renamed into place when complete; ``general.architecture`` is ``arch`` (the only
    metadata written).
    """
    gguf = _gguf()
    from ..backends import host_array

    target = os.path.abspath(os.fspath(path))
    quantize = _quantize_types(mapping, types)
    entries = []
    for name, value in mapping.items():
        if not isinstance(name, str) or not name:
            raise FileFormatError(f"GGUF tensor names are non-empty strings; got {name!r}")
        if name in quantize:
            value = _ggml_cast(name, value, quantize[name])
        if isinstance(value, ScaledTensor):
            kind, raw = _encode(name, value)
            entries.append((name, raw, gguf.GGMLQuantizationType[kind]))
            continue
        array = host_array(value)
        kind = next((k for k, dtype in PLAIN_TYPES.items() if array.dtype.name == dtype), None)
        if kind is None:
            raise DTypeError(
                f"tensor {name!r}: GGUF has no plain type for {array.dtype.name}; it takes "
                f"{', '.join(PLAIN_TYPES.values())}"
            )
        raw = np.ascontiguousarray(array.reshape(array.shape or (1,))).view(np.uint8)
        entries.append((name, raw, gguf.GGMLQuantizationType[kind]))
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".partial", dir=os.path.dirname(target)
    )
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(temporary, arch)
        for name, raw, kind in entries:
            writer.add_tensor(name, np.ascontiguousarray(raw), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
