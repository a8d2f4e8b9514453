"""``breccia``: checkpoints of breccia's own files (:func:`breccia.bridges.save_safetensors`).

Stored: a ScaledTensor ``w`` as ``w.data``, ``w.scale`` (``w.global_scale``, ``w.zero_point``) and the
``__metadata__`` entry ``w.config`` naming its recipe, layout, shape and dtype; any recipe and layout
round-trips bit for bit. Plain tensors are stored as they are.

Write (a recipe as the target: ``MXFP8BlockScaling``, ``"Int4Scaling(group_size=64)"``, ...): the
linear weights (the DeepSeek rule of :func:`~.deepseek_fp8.is_linear_weight`) are cast with the
recipe a slab of rows at a time (a source already in that recipe and layout is repacked); everything
else is copied, quantized non-linear tensors dequantized to the model dtype. A 128x128 FP8 recipe with
float32 scales is DeepSeek's own layout and is written as ``deepseek-fp8`` instead. config.json's
``quantization_config`` becomes ``{"quant_method": "breccia", "recipe": {...}}``, which no other loader
claims to read.

Recipe targets are parsed with :mod:`ast` (never evaluated): a recipe name and keyword literals only,
at most ``MAX_TARGET_LENGTH`` characters, no keyword twice.
"""

from __future__ import annotations

import ast
from typing import Any

from ..choices import ScaleFormat
from ..errors import RecipeError
from ..layouts import PerBlock2D
from ..recipes import RECIPES, DelayedScaling, Recipe
from ._directory import ModelDirectory
from ._output import OutputDirectory, ShardWriter
from ._registry import Checkpoint, Convention, StoredCheckpoint, register
from ._slabs import in_recipe
from ._targets import ConversionReport, Target, TargetParser, register_target
from .deepseek_fp8 import write_deepseek, write_quantizing_linear_weights

__all__ = ["BrecciaCheckpoint", "parse_recipe"]

MAX_TARGET_LENGTH = 500
CONFIG_SUFFIX = ".config"


def _detect(directory: ModelDirectory) -> str | None:
    from ..bridges._huggingface import CONFIG_FORMAT

    configs = [k for k, v in directory.metadata.items() if k.endswith(CONFIG_SUFFIX) and CONFIG_FORMAT in v]
    if not configs and directory.quantization_config.get("quant_method") != "breccia":
        return None
    return f"{len(configs)} ScaledTensors"


class BrecciaCheckpoint(StoredCheckpoint):
    """ScaledTensors and plain tensors of breccia's own files."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str, device: Any
    ) -> None:

        super().__init__(directory, fmt, details, framework, device)

    def _keys(self) -> list[str]:  # ScaledTensors paired by the safetensors reader
        return list(self.raw)

    def _read(self, name: str) -> Any:
        return self.raw[name]


register(Convention("breccia", _detect, BrecciaCheckpoint))


# --- writing --------------------------------------------------------------------------------------


def parse_recipe(text: str) -> Recipe | None:
    """The recipe named by ``text`` (``Name`` or ``Name(field=literal, ...)``), None if it names none."""
    if len(text) > MAX_TARGET_LENGTH:
        raise RecipeError(f"a conversion target is at most {MAX_TARGET_LENGTH} characters; got {len(text)}")
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    call = node if isinstance(node, ast.Call) else None
    name_node = call.func if call else node
    if not isinstance(name_node, ast.Name) or name_node.id not in RECIPES:
        return None
    if call and call.args:
        raise RecipeError(f"{text!r}: recipe fields must be given as name=literal")
    fields: dict[str, Any] = {}
    for keyword in call.keywords if call else ():
        if keyword.arg is None or not isinstance(keyword.value, ast.Constant):
            raise RecipeError(f"{text!r}: recipe fields must be name=literal (number, string, True/False)")
        if keyword.arg in fields:
            raise RecipeError(f"{text!r}: field {keyword.arg!r} is given twice")
        fields[keyword.arg] = keyword.value.value
    cls = RECIPES[name_node.id]
    if cls is DelayedScaling:
        raise RecipeError("DelayedScaling scales from an amax history; a checkpoint has none to convert with")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise RecipeError(f"{text!r}: {exc}") from None


def _is_deepseek_layout(recipe: Recipe) -> bool:
    layout = recipe.default_layout()
    return (
        recipe.scale_format == ScaleFormat.F32
        and recipe.element_format.name in ("E4M3", "E5M2")
        and isinstance(layout, PerBlock2D)
        and layout.m == layout.k
    )


def write_breccia(
    source: Checkpoint, out: OutputDirectory, report: ConversionReport, recipe: Recipe, progress: Any
) -> None:
    from ..bridges import scaled_parts

    def write_weight(writer: ShardWriter, name: str, value: Any) -> None:
        parts, config = scaled_parts(name, in_recipe(name, value, recipe, report))
        for part in parts:  # the .config entry goes to the shard holding .data
            metadata = {name + CONFIG_SUFFIX: config} if part.name == name + ".data" else None
            writer.add_raw(part.name, part.dtype, part.shape, part.host(), metadata)

    quantization_config = {"quant_method": "breccia", "recipe": recipe.to_dict()}
    write_quantizing_linear_weights(source, out, report, progress, write_weight, quantization_config)


def _parse(text: str) -> Target | None:
    recipe = parse_recipe(text)
    if recipe is None:
        return None
    if _is_deepseek_layout(recipe):
        from ..bridges import deepseek_recipe

        scale_fmt = "ue8m0" if recipe.power_2_scale else None
        if recipe == deepseek_recipe("weight", 128, scale_fmt):
            return Target(text, "deepseek-fp8", write_deepseek, {"scale_fmt": scale_fmt})
    return Target(text, "breccia", write_breccia, {"recipe": recipe})


register_target(TargetParser(_parse, tuple(name for name in RECIPES if name != "DelayedScaling")))
