"""``breccia convert SRC DST --to bf16|<recipe>``: rewrite a safetensors checkpoint shard by shard.

SRC is a ``.safetensors`` file, a directory with ``model.safetensors.index.json`` (or one file), or
the index itself. It may hold DeepSeek-V3 FP8 pairs (``weight`` + ``weight_scale_inv``, in any shard),
breccia ScaledTensors, and plain tensors. Every quantized tensor is first dequantized to float32
(DeepSeek: ``fp32(Wq) * S[i//128, j//128]``, exact), then:

* ``--to bf16``: written as bfloat16 (one RNE rounding from that float32, which is what DeepSeek's
  ``fp8_cast_bf16.py`` computes); ``*_scale_inv`` are dropped and ``quantization_config`` is removed
  from ``config.json``.
* ``--to NAME`` or ``--to "NAME(field=value, ...)"`` (a breccia recipe, e.g. ``MXFP8BlockScaling``,
  ``"Float8BlockScaling(block_m=128, convention='deepseek')"``; ``deepseek-fp8`` is short for the
  latter): the linear weights (2-D ``*.weight`` outside norms, embeddings, ``lm_head`` and the MoE
  router ``*.gate.weight``) are cast with the recipe. A 128x128 FP8 recipe with float32 scales is
  written in DeepSeek's own layout (``weight`` + ``weight_scale_inv``, ``quantization_config``
  updated); any other as breccia ScaledTensors (``save_safetensors``).

Other tensors are copied unchanged. Output shards keep the source's file names; an index is written
whenever the source had one. Memory: one output shard is built at a time and written before the next
is read; source bytes are memory-mapped, and each tensor is dequantized (and cast, where the recipe's
scales are not per tensor) a slab of about ``SLAB_ELEMENTS`` elements at a time, so the peak is about
one output shard plus one slab's float32 temporaries.
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backends import get_backend
from ..bridges._huggingface import INDEX_NAME
from ..errors import FileFormatError, RecipeError
from ..layouts import PerBlock2D, PerTensor
from ..quantize import cast, dequantize, from_buffer
from ..recipes import RECIPES, DelayedScaling, Recipe
from ..tensor import ScaledTensor

__all__ = ["convert", "parse_target", "is_linear_weight"]

SLAB_ELEMENTS = 1 << 22  # rows are converted in slabs of about this many elements (16 MiB of float32)
_BF16 = ("bf16", "bfloat16")
_ALIASES = {"deepseek-fp8": "Float8BlockScaling(block_m=128, convention='deepseek')"}
_KEEP_SUFFIXES = (".json", ".py", ".txt", ".model", ".md", ".jinja", ".tiktoken")


def parse_target(target: str) -> Recipe | None:
    """``None`` for bf16, else the recipe named by ``target`` (``Name`` or ``Name(field=literal, ...)``).

    Only a recipe name and literal keyword values are accepted (parsed with :mod:`ast`, never
    evaluated); the recipe validates its fields.
    """
    text = _ALIASES.get(target.strip(), target.strip())
    if text.lower() in _BF16:
        return None
    valid = f"bf16, deepseek-fp8, or one of {', '.join(RECIPES)} (optionally with fields, e.g. Name(k=v))"
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise RecipeError(f"unknown conversion target {target!r}; valid targets are {valid}") from None
    call = node if isinstance(node, ast.Call) else None
    name_node = call.func if call else node
    if not isinstance(name_node, ast.Name) or name_node.id not in RECIPES or (call and call.args):
        raise RecipeError(f"unknown conversion target {target!r}; valid targets are {valid}")
    fields: dict[str, Any] = {}
    for keyword in call.keywords if call else ():
        if keyword.arg is None or not isinstance(keyword.value, ast.Constant):
            raise RecipeError(f"{target!r}: recipe fields must be name=literal (number, string, True/False)")
        fields[keyword.arg] = keyword.value.value
    cls = RECIPES[name_node.id]
    if cls is DelayedScaling:
        raise RecipeError("DelayedScaling scales from an amax history; a checkpoint has none to convert with")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise RecipeError(f"{target!r}: {exc}") from None


def is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    """Whether ``name`` is a linear layer's weight that a recipe should quantize.

    2-D (or stacked 3-D) ``*.weight`` tensors, except norms, embeddings, ``lm_head`` and the MoE
    router (``*.gate.weight``; ``gate_proj`` is a linear layer), which DeepSeek keeps in bf16 too.
    """
    if not name.endswith(".weight") or len(shape) < 2:
        return False
    lowered = name.lower()
    excluded = ("norm", "embed", "lm_head", "wte", "wpe")
    return not any(word in lowered for word in excluded) and not lowered.endswith(".gate.weight")


def _deepseek_layout(recipe: Recipe) -> bool:
    """Whether ``recipe`` is stored exactly as DeepSeek stores weights (fp8 + fp32 128x128-style tiles)."""
    layout = recipe.default_layout()
    return (
        recipe.scale_format == "F32"
        and recipe.element_format.name in ("E4M3", "E5M2")
        and isinstance(layout, PerBlock2D)
        and layout.m == layout.k
    )


# --- source ---------------------------------------------------------------------------------------


def _source(src: str) -> tuple[str, list[tuple[str, list[str] | None]], bool]:
    """(directory, [(shard file, raw names in it or None for "all")], has_index)."""
    src = os.fspath(src)
    if os.path.isdir(src):
        index = os.path.join(src, INDEX_NAME)
        if os.path.isfile(index):
            return _from_index(index)
        files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
        if len(files) != 1:
            raise FileFormatError(f"{src}: expected {INDEX_NAME} or one .safetensors file; found {files}")
        return src, [(files[0], None)], False
    if src.endswith(".json"):
        return _from_index(src)
    if not os.path.isfile(src):
        raise FileFormatError(f"{src}: no such file or directory")
    return os.path.dirname(os.path.abspath(src)), [(os.path.basename(src), None)], False


def _from_index(index: str) -> tuple[str, list[tuple[str, list[str] | None]], bool]:
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FileFormatError(f"{index}: not a valid safetensors index ({exc})") from None
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard:
            raise FileFormatError(f"{index}: {name!r} maps to {shard!r}, not a file name beside the index")
        shards.setdefault(shard, []).append(name)
    return os.path.dirname(os.path.abspath(index)), sorted(shards.items()), True


def _logical_names(raw: list[str], present: set[str]) -> Iterator[str]:
    """The tensors a shard owns: its raw names, with a ScaledTensor's parts folded into one name."""
    seen: set[str] = set()
    for name in raw:
        base, _, part = name.rpartition(".")
        is_part = part in ("data", "scale", "global_scale", "zero_point") and base + ".data" in present
        logical = base if is_part else name
        if logical.endswith("_scale_inv") and logical[: -len("_scale_inv")] in present:
            continue
        if part != "data" and logical != name:
            continue  # a ScaledTensor belongs to the shard holding its .data
        if logical not in seen:
            seen.add(logical)
            yield logical


# --- conversion -----------------------------------------------------------------------------------


def _row_slabs(shape: tuple[int, ...], block_rows: int) -> list[slice]:
    """Slices of axis 0 in whole blocks of ``block_rows`` rows, each about ``SLAB_ELEMENTS`` elements."""
    if len(shape) < 2:
        return [slice(None)]
    per_row = max(1, math.prod(shape[1:]))
    rows = max(block_rows, SLAB_ELEMENTS // per_row // block_rows * block_rows)
    return [slice(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


def _slab(st: ScaledTensor, rows: slice) -> ScaledTensor:
    """The rows ``rows`` of ``st`` (whole blocks along axis 0) as a ScaledTensor of its own."""
    if rows == slice(None):
        return st
    block = st.layout.block_shape(st.shape)[0]
    scale_rows = slice(rows.start // block, -(-rows.stop // block))
    zero_point = None if st.zero_point is None else st.zero_point[scale_rows]
    return from_buffer(
        st.data[rows], st.scale[scale_rows], st.recipe, st.layout,
        shape=(rows.stop - rows.start, *st.shape[1:]), dtype=st.dtype_name,
        global_scale=st.global_scale, zero_point=zero_point,
    )


def _dequantize_slabs(st: ScaledTensor, dtype: str) -> np.ndarray:
    """``dequantize(st, dtype)`` a slab of rows at a time: float32 temporaries stay at one slab."""
    slabs = _row_slabs(st.shape, st.layout.block_shape(st.shape)[0] if len(st.shape) >= 2 else 1)
    if len(slabs) == 1:
        return dequantize(st, dtype)
    out = np.empty(st.shape, dtype=get_backend("numpy").dtype(dtype))
    for rows in slabs:
        out[rows] = dequantize(_slab(st, rows), dtype)
    return out


class _RowView:
    """``value[rows]`` for a ScaledTensor (whole blocks of rows) or an array, taken lazily per slab."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.shape = tuple(value.shape)
        quantized = isinstance(value, ScaledTensor) and len(self.shape) >= 2
        self.block_rows = value.layout.block_shape(self.shape)[0] if quantized else 1

    def __getitem__(self, rows: slice) -> Any:
        if isinstance(self.value, ScaledTensor):
            return _slab(self.value, rows)
        return self.value[rows]


def _cast_slabs(values: _RowView, recipe: Recipe, dtype: str) -> ScaledTensor:
    """``cast`` a slab of rows at a time where the recipe's blocks allow it (not per-tensor scales)."""
    shape = tuple(values.shape)
    layout = recipe.default_layout()
    slabs = [slice(None)]
    if recipe.scale_format != "E4M3" and not isinstance(layout, PerTensor) and len(shape) >= 2:
        slabs = _row_slabs(shape, math.lcm(layout.block_shape(shape)[0], values.block_rows))
    parts = []
    for rows in slabs:
        v = values[rows]
        v = _dequantize_slabs(v, "float32") if isinstance(v, ScaledTensor) else np.asarray(v)
        parts.append(cast(v, recipe))
    def stack(field: str) -> Any:
        arrays = [getattr(p, field) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays)

    st = parts[0] if len(parts) == 1 else from_buffer(
        stack("data"), stack("scale"), recipe, layout, shape=shape, zero_point=stack("zero_point")
    )
    st.dtype_name = dtype
    return st


def _convert_tensor(name: str, value: Any, recipe: Recipe | None, out: dict[str, Any]) -> None:
    """Add ``name``'s converted tensor(s) to ``out``."""
    quantized = isinstance(value, ScaledTensor)
    shape = tuple(value.shape)
    if recipe is None or not is_linear_weight(name, shape):
        out[name] = _dequantize_slabs(value, "bfloat16") if quantized else value
        return
    dtype = value.dtype_name if quantized else np.asarray(value).dtype.name
    if dtype not in ("float32", "bfloat16", "float16", "float64"):
        raise FileFormatError(f"{name!r} is {dtype}; only float weights can be quantized")
    st = _cast_slabs(_RowView(value), recipe, dtype)
    if _deepseek_layout(recipe):
        out[name] = st.data
        out[name + "_scale_inv"] = np.asarray(st.scale, dtype=np.float32)
    else:
        out[name] = st


def _stored_names(name: str, value: Any) -> list[str]:
    """The raw names ``save_safetensors`` stores ``value`` under."""
    if not isinstance(value, ScaledTensor):
        return [name]
    parts = ("data", "scale", "global_scale", "zero_point")
    return [f"{name}.{part}" for part, array in zip(parts, value.arrays) if array is not None]


def _write_config(src_dir: str, dst: str, recipe: Recipe | None) -> None:
    """Copy config/tokenizer files; rewrite ``quantization_config`` to describe the output."""
    for entry in sorted(os.listdir(src_dir)):
        path = os.path.join(src_dir, entry)
        if not os.path.isfile(path) or entry == INDEX_NAME or not entry.endswith(_KEEP_SUFFIXES):
            continue
        if entry != "config.json":
            shutil.copyfile(path, os.path.join(dst, entry))
            continue
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config.pop("quantization_config", None)
        if recipe is not None and _deepseek_layout(recipe):
            layout = recipe.default_layout()
            config["quantization_config"] = {
                "activation_scheme": "dynamic",
                "fmt": recipe.element_format.name.lower(),
                "quant_method": "fp8",
                "weight_block_size": [layout.m, layout.k],
                **({"scale_fmt": "ue8m0"} if getattr(recipe, "power_2_scale", False) else {}),
            }
        elif recipe is None:
            config["torch_dtype"] = "bfloat16"
        with open(os.path.join(dst, entry), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)


def convert(src: str, dst: str, target: str, progress: bool = True) -> None:
    """Convert checkpoint ``src`` into directory ``dst`` (see the module docstring)."""
    from tqdm.auto import tqdm

    from ..bridges._deepseek import DeepSeekV3Checkpoint
    from ..bridges._huggingface import save_safetensors

    recipe = parse_target(target)
    src_dir, shards, has_index = _source(src)
    if os.path.abspath(dst) == os.path.abspath(src_dir):
        raise FileFormatError(f"{dst}: the destination must differ from the source directory")
    os.makedirs(dst, exist_ok=True)
    index_or_file = os.path.join(src_dir, INDEX_NAME) if has_index else os.path.join(src_dir, shards[0][0])
    weight_map: dict[str, str] = {}
    total_size = 0
    sizes = [os.path.getsize(os.path.join(src_dir, shard)) for shard, _ in shards]
    with (
        DeepSeekV3Checkpoint(index_or_file, "numpy", dtype="bfloat16") as checkpoint,
        tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="convert", disable=not progress) as bar,
    ):
        raw_present = set(checkpoint.tensor_names())
        for (shard, raw), size in zip(shards, sizes):
            bar.set_postfix_str(shard)
            names = raw if raw is not None else checkpoint.tensor_names()
            out: dict[str, Any] = {}
            for name in _logical_names(names, raw_present):
                _convert_tensor(name, checkpoint[name], recipe, out)
            save_safetensors(out, os.path.join(dst, shard), {"format": "pt"})
            for name, value in out.items():
                weight_map.update(dict.fromkeys(_stored_names(name, value), shard))
                total_size += int(value.nbytes)
            del out
            bar.update(size)
    if has_index:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(dst, INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
    _write_config(src_dir, dst, recipe)
