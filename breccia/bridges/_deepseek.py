"""DeepSeek-V3 FP8: weights, activations and checkpoints.

DeepSeek-V3 (and R1, V3.1) ship linear weights as ``weight`` float8_e4m3fn ``[out, in]`` with a
float32 ``weight_scale_inv`` of shape ``[ceil(out/128), ceil(in/128)]``: one scale per 128x128 tile,
edge tiles partial (a 576x7168 projection has a 5x56 scale). Activations are quantized at run time in
1x128 groups along the last axis, scale ``[*, ceil(in/128)]``. Both scales are dequantization
multipliers, so breccia's ``PerBlock2D(128, 128)`` / ``PerBlockK(128)`` hold them unchanged::

    W[i, j] = fp32(Wq[i, j]) * S[i // 128, j // 128]        (weights, rounded once in float32)
    X[t, j] = fp32(Xq[t, j]) * S[t, j // 128]               (activations)

DeepSeek's ``act_quant`` (the current ``inference/kernel.py``) is the recipe
``Float8BlockScaling(convention="deepseek")``: ``s = max(amax, 1e-4) * fl32(1/448)`` (what the
kernel's ``amax / 448.`` computes), V3.1's ``scale_fmt="ue8m0"`` rounds ``s`` up to a power of two
as the kernel's float32 ``log2`` does (``power_2_scale=True``), and ``data = e4m3(x / s)`` divided as
the kernel divides on CUDA (see the recipe). :func:`deepseek_recipe` builds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..backends import Backend, backend_for, float_dtype_name, get_backend
from ..choices import ScaleFormat
from ..errors import DTypeError, FileFormatError, FrameworkError, LayoutError, RecipeError, ShapeError
from ..layouts import Layout, PerBlock2D, PerBlockK
from ..quantize import from_buffer
from ..recipes import Float8BlockScaling
from ..scaling import decode_scale
from ..tensor import ScaledTensor

__all__ = [
    "block_from_config",
    "from_deepseek_v3",
    "to_deepseek_v3",
    "deepseek_recipe",
    "load_deepseek_v3",
    "DeepSeekV3Checkpoint",
    "SCALE_SUFFIX",
]

SCALE_SUFFIX = "_scale_inv"
_SCALE_FMTS = (None, "ue8m0")
_FP8_NAMES = {"float8_e4m3fn": "E4M3", "float8_e5m2": "E5M2"}


def deepseek_recipe(
    kind: str = "weight", block_size: int = 128, scale_fmt: str | None = None, fp8_format: str = "E4M3"
) -> Float8BlockScaling:
    """DeepSeek's quantization rule as a breccia recipe.

    ``kind="weight"``: 128x128 tiles (``PerBlock2D``); ``kind="activation"``: 1x128 groups
    (``PerBlockK``), DeepSeek's ``act_quant``. Both use ``s = max(amax, 1e-4) * fl32(1/448)`` and
    ``data = e4m3(x / s)`` (see ``Float8BlockScaling``); ``scale_fmt="ue8m0"`` (V3.1) makes ``s =
    2**ceil(fl32(log2 s))``.
    """
    if kind not in ("weight", "activation"):
        raise RecipeError(f"kind must be 'weight' (128x128 tiles) or 'activation' (1x128); got {kind!r}")
    if scale_fmt not in _SCALE_FMTS:
        raise RecipeError(f"scale_fmt must be None or 'ue8m0' (DeepSeek-V3.1); got {scale_fmt!r}")
    return Float8BlockScaling(
        block_k=block_size,
        block_m=block_size if kind == "weight" else 1,
        fp8_format=fp8_format,
        power_2_scale=scale_fmt == "ue8m0",
        convention="deepseek",
    )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def infer_layout(data_shape: tuple[int, ...], scale_shape_: tuple[int, ...], block: int) -> Layout:
    """The layout a DeepSeek scale of ``scale_shape_`` implies for data of ``data_shape``.

    ``[..., ceil(M/b), ceil(K/b)]`` is 128x128 weight tiles (``PerBlock2D(b, b)``), ``[..., M, ceil(K/b)]``
    1x128 activation groups (``PerBlockK(b)``). When neither fits, a ShapeError says which shapes
    would.

    Both fit exactly when ``M <= 1`` (a one-row matrix such as a ``1x129`` weight with a ``(1, 2)``
    scale). The two readings then decode every element identically, ``W[0, j] = fp32(Wq[0, j]) *
    S[0, j // b]``, so the weight reading ``PerBlock2D(b, b)`` is chosen: checkpoints hold weights.
    Pass ``layout=PerBlockK(b)`` to :func:`from_deepseek_v3` for a one-token activation (the choice
    matters only to a later ``requantize``, which keeps the recipe's block shape).
    """
    data_shape, scale_shape_ = tuple(data_shape), tuple(scale_shape_)
    if not data_shape:
        raise ShapeError("DeepSeek FP8 data must have at least one axis; got a 0-d array")
    groups = (*data_shape[:-1], _ceil_div(data_shape[-1], block))
    candidates: list[tuple[Layout, tuple[int, ...]]] = [(PerBlockK(block), groups)]
    if len(data_shape) >= 2:
        tiles = (*data_shape[:-2], _ceil_div(data_shape[-2], block), _ceil_div(data_shape[-1], block))
        candidates.insert(0, (PerBlock2D(block, block), tiles))
    fits = [layout for layout, shape in candidates if shape == scale_shape_]
    if not fits:
        expected = " or ".join(f"{shape} for {layout!r}" for layout, shape in candidates)
        raise ShapeError(
            f"a DeepSeek scale for data of shape {data_shape} with block {block} must have shape {expected}; "
            f"got {scale_shape_}"
        )
    return fits[0]  # PerBlock2D comes first: the weight reading wins where both fit


def from_deepseek_v3(
    data: Any,
    scale: Any,
    block_k: int = 128,
    fp8_format: str = "E4M3",
    *,
    scale_fmt: str | None = None,
    layout: Layout | None = None,
    dtype: Any = "float32",
) -> ScaledTensor:
    """Wrap a DeepSeek FP8 pair (``weight`` + ``weight_scale_inv``, or ``act_quant``'s output).

    ``data``: float8_e4m3fn (or uint8 bits) of any framework. ``scale``: float32 (bf16/fp16 and
    ``float8_e8m0fnu`` are widened exactly) of the same framework; its shape picks the layout (see
    :func:`infer_layout`) unless ``layout`` is given. Zero-copy for float32 scales. ``scale_fmt``
    only records in the recipe whether the scales were made power-of-two (``"ue8m0"``);
    ``dtype`` is the logical dtype in any spelling (``"bfloat16"``, ``np.float32``, ``jnp.bfloat16``,
    ``torch.bfloat16``, ``mx.float16``, ...; ``dequantize`` then gives exactly ``fp32(Wq) * S`` cast
    to it).
    """
    _check_block_k(block_k)
    backend = backend_for(data, "data")
    data_shape = tuple(int(d) for d in data.shape)
    scale_shape_ = tuple(int(d) for d in getattr(scale, "shape", ()))
    if layout is None:
        layout = infer_layout(data_shape, scale_shape_, block_k)
    elif layout not in (PerBlock2D(block_k, block_k), PerBlockK(block_k)):
        raise LayoutError(
            f"DeepSeek layouts are PerBlock2D({block_k}, {block_k}) and PerBlockK({block_k}); got {layout!r}"
        )
    kind = "weight" if isinstance(layout, PerBlock2D) else "activation"
    recipe = deepseek_recipe(kind, block_k, scale_fmt, fp8_format)
    scale = _float_scale(backend, scale)
    return from_buffer(data, scale, recipe, layout, dtype=dtype)


def _float_scale(backend: Backend, scale: Any) -> Any:
    """``scale`` as float32/bf16/fp16 values; E8M0 (V3.2-style ue8m0 bytes in native dtype) widened."""
    if backend_for(scale, "scale").name != backend.name:
        raise FrameworkError(f"scale must be a {backend.name} array like data")
    name = backend.dtype_name(scale)
    if name == "float8_e8m0fnu":
        return decode_scale(backend, scale, "E8M0")
    if name not in ("float32", "bfloat16", "float16"):
        raise DTypeError(f"DeepSeek scales are float32 (or float8_e8m0fnu); got {name}")
    return scale


def to_deepseek_v3(st: ScaledTensor) -> tuple[Any, Any]:
    """``(data, scale)`` in DeepSeek's layout: fp8 data (MLX: uint8 bits) and a float32 scale.

    Works for any FP8 ScaledTensor with float32 scales in ``PerBlock2D(b, b)`` (a weight and its
    ``weight_scale_inv``) or ``PerBlockK(b)`` (1xb activation groups); the arrays are returned as
    they are (no copy), except that a bf16/fp16 scale is widened exactly and a strided torch tensor
    is made contiguous.
    """
    if not isinstance(st, ScaledTensor):
        raise DTypeError(f"to_deepseek_v3 needs a ScaledTensor; got {type(st).__name__}")
    recipe, layout = st.recipe, st.layout
    hint = "; requantize with bc.requantize(st, deepseek_recipe('weight'))"
    if recipe.element_format.name not in ("E4M3", "E5M2") or recipe.scale_format != ScaleFormat.F32:
        raise RecipeError(f"DeepSeek FP8 is fp8 data with float32 scales; {recipe!r} is not{hint}")
    square = isinstance(layout, PerBlock2D) and layout.m == layout.k
    if not (square or isinstance(layout, PerBlockK)) or len(st.shape) < 1:
        raise LayoutError(f"DeepSeek stores 128x128 tiles or 1x128 groups; {layout!r} is neither{hint}")
    backend = get_backend(st.framework)
    data, scale = st.data, st.scale
    if backend.dtype_name(scale) != "float32":
        scale = backend.astype(scale, "float32")
    # row-major, as DeepSeek stores them (torch's safetensors refuses strided tensors)
    return backend.contiguous(data), backend.contiguous(scale)


# --- checkpoints ----------------------------------------------------------------------------------


def _checkpoint_dir(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def read_quantization_config(path: str) -> dict[str, Any]:
    """``quantization_config`` of the ``config.json`` beside a checkpoint ({} if there is none).

    Read as a regular file only (a FIFO or device is refused, never waited on) by the strict JSON
    reader (FileFormatError for malformed or deeply nested JSON, or anything but an object)."""
    from ._safetensors_format import read_json_file

    config = os.path.join(_checkpoint_dir(os.fspath(path)), "config.json")
    if not os.path.lexists(config):
        return {}
    value = read_json_file(config, "config.json")
    if not isinstance(value, dict):
        raise FileFormatError(f"{config}: must be a JSON object; got {type(value).__name__}")
    quant = value.get("quantization_config") or {}
    return quant if isinstance(quant, dict) else {}


def block_from_config(quant: dict[str, Any], path: str) -> int:
    """The tile size ``b`` of ``quantization_config.weight_block_size`` (``[b, b]``; 128 when absent)."""
    block = quant.get("weight_block_size", [128, 128])
    if (
        not isinstance(block, list)
        or len(block) != 2
        or block[0] != block[1]
        or isinstance(block[0], bool)
        or not isinstance(block[0], int)
        or block[0] < 1
    ):
        raise FileFormatError(f"{path}: quantization_config.weight_block_size must be [b, b]; got {block!r}")
    return block[0]


def _check_block_k(block_k: Any) -> None:
    """A DeepSeek block size must be a positive int (LayoutError otherwise)."""
    if isinstance(block_k, bool) or not isinstance(block_k, int) or block_k < 1:
        raise LayoutError(f"block_k must be a positive int (DeepSeek uses 128); got {block_k!r}")


class DeepSeekV3Checkpoint(Mapping):
    """A lazy, read-only mapping over a DeepSeek-V3 checkpoint (see :func:`load_deepseek_v3`)."""

    def __init__(
        self,
        path: str | os.PathLike,
        framework: str = "numpy",
        *,
        device: Any = None,
        dtype: Any = "float32",
        block_k: int | None = None,
        scale_fmt: str | None = None,
        check_scales: bool = True,
    ) -> None:
        from ._huggingface import open_safetensors
        from ._safetensors_format import fspath

        path = fspath(path)
        if block_k is not None:
            _check_block_k(block_k)
        self.check_scales = check_scales
        self.path = path
        self.backend = get_backend(framework)
        self.backend.check_device(device)
        self.device = device
        self.dtype = float_dtype_name(dtype)
        quant = read_quantization_config(path)
        self.block_k = block_k if block_k is not None else block_from_config(quant, path)
        self.scale_fmt = scale_fmt if scale_fmt is not None else quant.get("scale_fmt")
        if self.scale_fmt == "float":  # transformers' FineGrainedFP8Config: plain float32 scales
            self.scale_fmt = None
        if self.scale_fmt not in _SCALE_FMTS:
            raise FileFormatError(f"{path}: unknown scale_fmt {self.scale_fmt!r}; DeepSeek uses 'ue8m0'")
        self._source = open_safetensors(path, "numpy", check_scales=check_scales)
        raw = list(self._source)
        present = set(raw)
        for name in raw:
            if name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] not in present:
                raise FileFormatError(
                    f"{path}: scale {name!r} has no tensor {name[: -len(SCALE_SUFFIX)]!r} to scale"
                )
        self._names = [n for n in raw if not n.endswith(SCALE_SUFFIX)]
        self._present = present

    # Mapping ------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._present and not name.endswith(SCALE_SUFFIX)

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            if isinstance(name, str) and name in self._present:
                raise KeyError(f"{name!r} is folded into its weight's ScaledTensor; read it with .raw()")
            raise KeyError(name)
        data = self._source[name]
        if isinstance(data, ScaledTensor):  # a breccia-format tensor: already paired with its scale
            return data.to(self.backend.name, self.device)
        scale_name = name + SCALE_SUFFIX
        if data.dtype.name in _FP8_NAMES:
            if scale_name not in self._present:
                raise FileFormatError(
                    f"{self.path}: FP8 tensor {name!r} has no {scale_name!r}; without it the weight "
                    "cannot be dequantized (refusing to upcast it unscaled)"
                )
            scale = self._source[scale_name]
            self._check_pair(name, data.shape, scale_name, scale)
            return from_deepseek_v3(
                self._move(data.view("uint8")),
                self._move(scale),
                self.block_k,
                _FP8_NAMES[data.dtype.name],
                scale_fmt=self.scale_fmt,
                layout=PerBlock2D(self.block_k, self.block_k) if data.ndim >= 2 else None,
                dtype=self.dtype,
            )
        if scale_name in self._present:
            raise FileFormatError(
                f"{self.path}: {name!r} is {data.dtype.name}, not FP8, yet has a {scale_name!r}"
            )
        return self._move(data)

    # extras -------------------------------------------------------------------------------------
    def tensor_names(self) -> list[str]:
        """Every raw tensor name stored, ``*_scale_inv`` included, in file order."""
        return list(self._source.tensor_names())

    def raw(self, name: str) -> Any:
        """One stored tensor as it is in the file (scales included), in this mapping's framework."""
        return self._move(self._source.read_tensor(name))

    def is_quantized(self, name: str) -> bool:
        """Whether ``name`` has a ``*_scale_inv`` beside it (an FP8 weight)."""
        return name in self and name + SCALE_SUFFIX in self._present

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._source.metadata)

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def unmap(self) -> None:
        """Drop the file maps but stay open (see ``SafetensorsCheckpoint.unmap``)."""
        self._source.unmap()

    def __enter__(self) -> DeepSeekV3Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DeepSeekV3Checkpoint({self.path!r}, framework={self.backend.name}, tensors={len(self)}, "
            f"quantized={sum(1 for n in self._names if n + SCALE_SUFFIX in self._present)})"
        )

    def _check_pair(self, name: str, shape: tuple[int, ...], scale_name: str, scale: np.ndarray) -> None:
        """FileFormatError for a block size (the config's, or the one passed for it) far larger than
        the weight (:func:`~breccia.layouts.oversized_axes`); ScaleValueError for a
        ``weight_scale_inv`` that is NaN, +-Inf, zero or negative, unless ``check_scales=False``."""
        from ..layouts import oversized_axes
        from ._huggingface import check_scales

        if len(shape) >= 2 and oversized_axes(
            PerBlock2D(self.block_k, self.block_k), tuple(shape)
        ):
            raise FileFormatError(
                f"{self.path}: block size {self.block_k} (quantization_config.weight_block_size) is far "
                f"larger than {name!r} of shape {tuple(shape)}; it does not describe this checkpoint"
            )
        if self.check_scales:
            check_scales(f"{self.path}: {scale_name!r}", deepseek_recipe(), {"scale": scale})

    def _move(self, a: Any) -> Any:
        """A stored numpy array in this mapping's framework (:meth:`Backend.from_host`)."""
        return self.backend.from_host(a, self.device)


def load_deepseek_v3(
    path: str | os.PathLike,
    framework: str = "numpy",
    *,
    device: Any = None,
    dtype: Any = "float32",
    block_k: int | None = None,
    scale_fmt: str | None = None,
    check_scales: bool = True,
) -> DeepSeekV3Checkpoint:
    """A lazy mapping over a DeepSeek-V3 checkpoint: a directory, its ``model.safetensors.index.json``,
    or one ``.safetensors`` file.

    ``m[name]`` reads only that tensor (memory-mapped): an FP8 weight comes back as a ScaledTensor
    paired with its ``weight_scale_inv`` (wherever that is stored), everything else (norms,
    embeddings, router ``gate.weight``, ``e_score_correction_bias``) as a plain array of
    ``framework``. ``*_scale_inv`` names are not keys (``m.raw(name)`` reads one). An FP8 tensor
    without its scale raises FileFormatError naming it. The block size and ``scale_fmt`` default to
    the ``quantization_config`` of a ``config.json`` beside the files (else 128 and None). ``dtype``
    is the weights' logical dtype, in any spelling :func:`breccia.dequantize` takes.

    Arrays handed out never share writable memory with the mapping (numpy: read-only views; other
    frameworks: arrays of their own). A ``weight_scale_inv`` (or breccia scale) that is NaN, +-Inf,
    zero or negative raises ScaleValueError naming it and its first bad block, unless
    ``check_scales=False`` (``breccia inspect`` reads that way, to count them).
    """
    return DeepSeekV3Checkpoint(
        path, framework, device=device, dtype=dtype, block_k=block_k, scale_fmt=scale_fmt,
        check_scales=check_scales,
    )

