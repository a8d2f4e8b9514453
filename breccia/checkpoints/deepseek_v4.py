"""``deepseek-v4``: DeepSeek-V4 / V4.1 checkpoints as DeepSeek publishes them (FP8 + FP4 experts).

Stored (DeepSeek's ``inference/model.py`` and ``kernel.py``; names like ``layers.0.attn.wq_a.weight``):

- a linear layer's ``weight`` as F8_E4M3 ``[N, K]`` beside ``scale``, F8_E8M0 ``[ceil(N/b), ceil(K/b)]``
  (``b`` is ``weight_block_size``: 128 for V4, 32 for V4.1)::

      W[i, j] = fp32(Wq[i, j]) * 2**(S[i // b, j // b] - 127)

- a routed expert's ``w1``/``w2``/``w3`` (when ``expert_dtype`` is ``"fp4"``) as E2M1 codes packed two
  per byte in an I8-typed ``weight`` ``[N, K/2]`` (element 2i in the low nibble) beside F8_E8M0
  ``scale`` ``[N, K/32]``::

      W[i, j] = e2m1(code j of row i) * 2**(S[i, j // 32] - 127)

config.json: ``quantization_config`` ``{"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
"weight_block_size": [b, b], ...}`` and ``expert_dtype: "fp4"``.

Read: FP8 weights as ``Float8BlockScaling(block_m=b, block_k=b, convention="deepseek",
power_2_scale=True)`` in ``PerBlock2D(b, b)`` (the E8M0 scales widened to float32, exactly: the same
ScaledTensor as a V3.1 ``ue8m0`` checkpoint), FP4 weights as ``MXFP4BlockScaling(scale_rounding="ceil")``
in ``PerBlockK(32)`` (DeepSeek's ``fp4_quant`` rounds the scale up); E8M0 byte 255 is NaN, as the
F8_E8M0 dtype defines it. A scale of the wrong shape or dtype, an FP4 weight in a checkpoint whose
config does not say ``expert_dtype: "fp4"`` (or an FP8 expert where it does) is an error naming both.

Write (``deepseek-v4``): ScaledTensors in those two forms are moved bit for bit; other ScaledTensors
are requantized to them (FP4 for routed experts when the source says ``expert_dtype: "fp4"``, FP8
with power-of-two scales otherwise); float tensors are copied. To mlx: :func:`mxfp8_blocks` repacks
a ``b x b`` E8M0 FP8 weight into MXFP8's 1x32 blocks exactly (each tile's exponent repeated), and the
FP4 experts are already MLX's ``mxfp4`` (``to_mlx_quantized``). mlx-lm 0.32 has no ``deepseek_v4``
model (it has ``deepseek_v41``), so ``convert --to mlx-*`` of a V4 directory stops with mlx-lm's error.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..choices import FP8Format
from ..errors import FileFormatError, RecipeError
from ..layouts import PerBlock2D, PerBlockK
from ..recipes import Float8BlockScaling, MXFP4BlockScaling, MXFP8BlockScaling
from ..tensor import ScaledTensor
from ._directory import ModelDirectory
from ._output import OutputDirectory, ShardWriter, like_source
from ._registry import Checkpoint, Convention, StoredCheckpoint, register
from ._slabs import relative_error
from ._targets import ConversionReport, Target, TargetParser, register_target

__all__ = ["DeepSeekV4Checkpoint", "mxfp8_blocks", "fp8_recipe", "FP4_RECIPE"]

ROUTED_EXPERT = re.compile(r"(^|\.)experts\.\d+\.w[123]\.weight$")
FP4_RECIPE = MXFP4BlockScaling(scale_rounding="ceil")


def _block(directory: ModelDirectory) -> int:
    from .deepseek_fp8 import _block  # imported here: this convention registers before deepseek-fp8

    return _block(directory)


def fp8_recipe(block: int) -> Float8BlockScaling:
    """DeepSeek's FP8 weight recipe with power-of-two (E8M0) scales per ``block x block`` tile."""
    return Float8BlockScaling(block_k=block, block_m=block, convention="deepseek", power_2_scale=True)


def _expert_dtype(config: dict[str, Any]) -> str | None:
    for where in (config, config.get("quantization_config"), config.get("text_config")):
        if isinstance(where, dict) and where.get("expert_dtype") is not None:
            return where["expert_dtype"]
    return None


def _scale_pairs(directory: ModelDirectory) -> dict[str, str]:
    """``weight name -> scale name`` for every ``X.weight`` stored beside ``X.scale``."""
    entries = directory.entries
    return {
        n[: -len(".scale")] + ".weight": n
        for n in entries
        if n.endswith(".scale") and n[: -len(".scale")] + ".weight" in entries
    }


def _detect(directory: ModelDirectory) -> str | None:
    quant = directory.quantization_config
    if quant.get("quant_method") != "fp8":
        return None
    config = directory.config
    model_type = config.get("model_type") or (config.get("text_config") or {}).get("model_type")
    pairs = _scale_pairs(directory)
    if not (pairs or str(model_type).startswith("deepseek_v4") or _expert_dtype(config) is not None):
        return None
    block = _block(directory)
    fp4 = sum(1 for w in pairs if directory.entries[w].dtype in ("I8", "U8"))
    return f"FP8 E4M3 {block}x{block} tiles and {fp4} FP4 experts (1x32), E8M0 scales"


class DeepSeekV4Checkpoint(StoredCheckpoint):
    """FP8 and FP4 weights with their ``.scale`` as ScaledTensors; other tensors as stored."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str, device: Any
    ) -> None:

        super().__init__(directory, fmt, details, framework, device)
        self.block = _block(directory)
        self.expert_dtype = _expert_dtype(directory.config)
        from .deepseek_fp8 import model_dtype

        self.dtype = model_dtype(directory.config)
        self.pairs = _scale_pairs(directory)
        for weight, scale in self.pairs.items():
            self._check(weight, scale)
        scales = set(self.pairs.values())
        self._names = [n for n in self.raw.tensor_names() if n not in scales]

    def _check(self, weight: str, scale: str) -> None:
        entries, root = self.directory.entries, self.directory.root
        w, s = entries[weight], entries[scale]
        shape, scale_shape = tuple(w.shape), tuple(s.shape)
        if s.dtype != "F8_E8M0":
            raise FileFormatError(f"{root}: {scale!r} is {s.dtype}; DeepSeek-V4 stores scales as F8_E8M0")
        routed = bool(ROUTED_EXPERT.search(weight))
        if w.dtype in ("I8", "U8"):
            if self.expert_dtype != "fp4":
                raise FileFormatError(
                    f"{root}: {weight!r} is packed FP4 ({w.dtype} {list(shape)}), but config.json's "
                    f"expert_dtype is {self.expert_dtype!r}, which says FP8 experts; fix the config "
                    "or the weights"
                )
            expected = (*shape[:-1], 2 * shape[-1] // 32) if shape else None
            if not shape or (2 * shape[-1]) % 32 or scale_shape != expected:
                raise FileFormatError(
                    f"{root}: {weight!r} holds FP4 {list(shape[:-1])} x {2 * shape[-1] if shape else 0} and "
                    f"{scale!r} has shape {list(scale_shape)}; one E8M0 scale per 32 values needs {expected}"
                )
        elif w.dtype == "F8_E4M3":
            if routed and self.expert_dtype == "fp4":
                raise FileFormatError(
                    f"{root}: config.json says expert_dtype 'fp4', but routed expert {weight!r} is F8_E4M3 "
                    f"{list(shape)}; fix the config or the weights"
                )
            b = self.block
            expected = tuple(-(-d // b) for d in shape)
            if len(shape) != 2 or scale_shape != expected:
                raise FileFormatError(
                    f"{root}: {weight!r} is F8_E4M3 {list(shape)} and {scale!r} has shape "
                    f"{list(scale_shape)}; weight_block_size {b} needs one scale per {b}x{b} tile, "
                    f"{list(expected)}"
                )
        else:
            raise FileFormatError(
                f"{root}: {weight!r} is {w.dtype} beside a scale {scale!r}; DeepSeek-V4 scales F8_E4M3 "
                "weights and I8-packed FP4 weights only"
            )

    def _keys(self) -> list[str]:
        return self._names

    def _read(self, name: str) -> Any:
        scale_name = self.pairs.get(name)
        if scale_name is None:
            return self.raw.read_tensor(name)
        from ..quantize import from_buffer

        weight = np.ascontiguousarray(self.raw.read_tensor(name))
        scale = np.ascontiguousarray(self.raw.read_tensor(scale_name))
        if weight.dtype.itemsize == 1 and weight.dtype.kind in "iu":
            *lead, cols = weight.shape
            return from_buffer(
                weight.view(np.uint8),
                scale.view(np.uint8),
                FP4_RECIPE,
                PerBlockK(32),
                shape=(*lead, 2 * cols),
                dtype=self.dtype,
            )
        b = self.block
        return from_buffer(
            weight, scale.astype(np.float32), fp8_recipe(b), PerBlock2D(b, b), dtype=self.dtype
        )


register(Convention("deepseek-v4", _detect, DeepSeekV4Checkpoint))


# --- repacks and writing ----------------------------------------------------------------------------


def _e8m0_bytes(scale: np.ndarray) -> np.ndarray | None:
    """float32 scales as E8M0 bytes, or None unless every one is a power of two E8M0 holds (or NaN)."""
    import ml_dtypes

    e8m0 = np.asarray(scale, np.float32).astype(ml_dtypes.float8_e8m0fnu)
    back = e8m0.astype(np.float32)
    same = (back == scale) | (np.isnan(back) & np.isnan(scale))
    return e8m0 if same.all() else None


def _fp8_tile(st: ScaledTensor) -> int | None:
    """The tile ``b`` of a DeepSeek FP8 ScaledTensor whose scales are all E8M0 values, else None."""
    r, layout = st.recipe, st.layout
    e4m3 = isinstance(r, Float8BlockScaling) and r.fp8_format == FP8Format.E4M3
    if not (e4m3 and isinstance(layout, PerBlock2D)):
        return None
    if layout.m != layout.k or len(st.shape) != 2:
        return None
    return layout.k if _e8m0_bytes(np.asarray(st.to("numpy").scale)) is not None else None


def mxfp8_blocks(st: ScaledTensor) -> ScaledTensor:
    """A ``b x b`` FP8 weight with E8M0-valued scales as MXFP8 (``PerBlockK(32)``), bit for bit.

    The codes are unchanged; block ``(i, j)`` of 32 gets the exponent of tile ``(i // b, 32 j // b)``,
    so every element keeps its scale (``b`` must be a multiple of 32). Decodes identically.
    """
    from ..quantize import from_buffer

    b = _fp8_tile(st)
    if b is None or b % 32:
        raise RecipeError(
            f"mxfp8_blocks needs an E4M3 weight in PerBlock2D(b, b) (b a multiple of 32) whose scales are "
            f"powers of two; got {st.recipe!r} in {st.layout!r}"
        )
    st = st.to("numpy")
    rows, cols = st.shape
    codes = _e8m0_bytes(np.asarray(st.scale)).view(np.uint8)
    scale = np.repeat(np.repeat(codes, b, axis=0)[:rows], b // 32, axis=1)[:, : -(-cols // 32)]
    return from_buffer(
        st.data,
        np.ascontiguousarray(scale),
        MXFP8BlockScaling(scale_rounding="ceil"),
        PerBlockK(32),
        shape=st.shape,
        dtype=st.dtype_name,
    )


def _v4_form(name: str, value: ScaledTensor, block: int, fp4_experts: bool) -> tuple[ScaledTensor, str]:
    """``value`` in DeepSeek-V4's form for ``name``, and the action (repacked or requantized)."""
    from ..quantize import cast, dequantize

    if (
        isinstance(value.recipe, MXFP4BlockScaling)
        and value.layout == PerBlockK(32)
        and value.shape[-1] % 32 == 0
    ):
        return value, "repacked"
    if _fp8_tile(value) == block:
        return value, "repacked"
    recipe = FP4_RECIPE if fp4_experts and ROUTED_EXPERT.search(name) else fp8_recipe(block)
    if recipe is not FP4_RECIPE and len(value.shape) != 2:
        raise RecipeError(f"tensor {name!r}: DeepSeek-V4 FP8 weights are 2-D; got shape {value.shape}")
    return cast(np.asarray(dequantize(value, "float32")), recipe), "requantized"


def write_deepseek_v4(
    source: Checkpoint, out: OutputDirectory, report: ConversionReport, progress: Any
) -> None:
    """``source`` as a DeepSeek-V4 checkpoint (see the module docstring)."""
    from ..quantize import dequantize

    quant = source.config.get("quantization_config") or {}
    sizes = quant.get("weight_block_size") if isinstance(quant, dict) else None
    block = sizes[0] if isinstance(sizes, list) and sizes and isinstance(sizes[0], int) else 128
    fp4_experts = _expert_dtype(source.config) == "fp4"
    wrote_fp4 = False
    writer = ShardWriter(out, metadata={"format": "pt"}, **like_source(source))
    for name in progress(list(source)):
        source.release()  # the previous tensor's file pages: resident memory stays one tensor
        value = source.read_numpy(name)
        if not isinstance(value, ScaledTensor):
            writer.add(name, value)
            report.record(name, "copied")
            continue
        st, action = _v4_form(name, value, block, fp4_experts)
        error = None
        if action == "requantized":
            error = relative_error(
                np.asarray(dequantize(value, "float32")), np.asarray(dequantize(st, "float32"))
            )
        report.record(name, action, error)
        base = name[: -len(".weight")] if name.endswith(".weight") else name
        if isinstance(st.recipe, MXFP4BlockScaling):
            wrote_fp4 = True
            writer.add(name, np.ascontiguousarray(st.data).view(np.int8))
            writer.add(base + ".scale", np.ascontiguousarray(st.scale).view(np.uint8).view(_e8m0_dtype()))
        else:
            writer.add(name, st.data)
            writer.add(base + ".scale", _e8m0_bytes(np.asarray(st.scale)))
    report.files = writer.finish()
    config = {k: v for k, v in source.config.items() if k not in ("quantization_config", "quantization")}
    config["quantization_config"] = {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "scale_fmt": "ue8m0",
        "weight_block_size": [block, block],
    }
    if wrote_fp4:
        config["expert_dtype"] = "fp4"
    out.write_json("config.json", config)


def _e8m0_dtype() -> Any:
    import ml_dtypes

    return ml_dtypes.float8_e8m0fnu


def _parse(text: str) -> Target | None:
    if text.lower() != "deepseek-v4":
        return None
    return Target("deepseek-v4", "deepseek-v4", write_deepseek_v4)


register_target(TargetParser(_parse, ("deepseek-v4",)))
