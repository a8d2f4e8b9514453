"""``mlx-lm``: model directories that ``mlx_lm.load`` opens (MLX's quantized layers).

Stored: a quantized layer ``X`` as ``X.weight`` (uint32 words, values packed LSB first), ``X.scales``
(and ``X.biases`` for ``affine``), with config.json's ``quantization`` (``group_size``, ``bits``,
``mode``; a layer path mapping to its own dict, or to false, overrides it) copied to
``quantization_config``. See :mod:`breccia.bridges._mlx` for the modes' arithmetic.

Read: each quantized layer as a ScaledTensor (:func:`~breccia.bridges.from_mlx_quantized`, bit for
bit); affine widths breccia has no format for (2, 3, 5, 6 bits) are decoded with ``mx.dequantize``
into float arrays of the scales' dtype.

Write (``mlx-affine{2,3,4,5,6,8}``, ``mlx-mxfp4``, ``mlx-mxfp8``, ``mlx-nvfp4``, each optionally
``-g<group>``): what ``mlx_lm.convert -q`` writes for the same model, produced a layer at a time:

1. mlx-lm's own model class for config.json's ``model_type`` is built (its parameters are lazy MLX
   arrays, never computed), and its ``sanitize`` renames and reshapes each layer's tensors exactly as
   mlx-lm's loader would (DeepSeek's experts stacked into ``switch_mlp``, ``kv_b_proj`` split into
   ``embed_q``/``unembed_out``, a tied ``lm_head`` dropped). Quantized source tensors enter it
   dequantized, in float32 (exact for FP8 and MX sources).
2. Floating tensors are cast to the model dtype as mlx-lm does (config.json's ``torch_dtype``, or the
   text config's ``dtype``; none: each keeps its dtype), except what the model's ``cast_predicate``
   keeps (DeepSeek's ``e_score_correction_bias``).
3. A tensor is quantized when mlx-lm's ``nn.quantize`` would quantize its module: the module has
   ``to_quantized``, its last axis divides into groups, and the model's ``quant_predicate`` (if any)
   agrees; a per-layer answer from that predicate is recorded in the config. So router gates stay
   float. A source ScaledTensor already in the target mode is repacked bit for bit (an int tensor
   whose scale block covers whole groups repeats its scale per group); any other is requantized and
   its added error reported.
4. Casts use breccia's numpy recipes for mxfp8, mxfp4 and nvfp4 (MLX's E8M0 rule and fp4 tie rule,
   one-level nvfp4: the same bits as ``mx.quantize``, several times faster on the CPU) and
   ``mx.quantize`` itself for affine, where MLX's CPU quantizer is the faster one.

The config is written as mlx-lm's ``save_config`` writes it: keys sorted, ``quantization`` and
``quantization_config`` equal, ``_name_or_path`` dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..backends import Backend, get_backend
from ..bridges import stored_array
from ..errors import DTypeError, FileFormatError, RecipeError, missing_dependency
from ..tensor import ScaledTensor
from ._directory import ModelDirectory
from ._output import OutputDirectory, ShardWriter
from ._registry import Checkpoint, Convention, StoredCheckpoint, register
from ._slabs import cast_rows, dequantize_rows, relative_error
from ._targets import ConversionReport, Target, TargetParser, register_target

__all__ = ["MLXLMCheckpoint", "mlx_target_names", "write_mlx"]

_MODES = ("affine", "mxfp4", "mxfp8", "nvfp4")
_AFFINE_BITS = (2, 3, 4, 5, 6, 8)
_BRECCIA_AFFINE_BITS = (4, 8)
_LAYER = re.compile(r"^(.*?\blayers\.\d+)\.")


def _mx() -> Any:
    try:
        import mlx.core as mx
    except ImportError as exc:
        raise missing_dependency("mlx", "mlx", str(exc)) from exc
    return mx


# --- reading --------------------------------------------------------------------------------------


def _quantization(directory: ModelDirectory) -> dict[str, Any] | None:
    q = directory.config.get("quantization")
    if not isinstance(q, dict):
        return None
    if not all(key in q for key in ("group_size", "bits")):
        raise FileFormatError(
            f"{directory.root}/config.json: 'quantization' needs group_size and bits; got {q!r}"
        )
    return q


def _detect(directory: ModelDirectory) -> str | None:
    q = _quantization(directory)
    if q is None:
        return None
    mode = q.get("mode", "affine")
    name = f"affine{q['bits']}" if mode == "affine" else mode
    overrides = sum(1 for v in q.values() if isinstance(v, dict))
    extra = f", {overrides} per-layer overrides" if overrides else ""
    return f"{name}, group {q['group_size']}{extra}"


class MLXLMCheckpoint(StoredCheckpoint):
    """Quantized layers of an mlx-lm directory as ScaledTensors; other tensors as stored."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str, device: Any
    ) -> None:

        super().__init__(directory, fmt, details, framework, device)
        self.quantization = _quantization(directory) or {}
        names = self.raw.tensor_names()
        self._stored = set(names)
        self._quantized = {
            n for n in names if n.endswith(".weight") and n[: -len("weight")] + "scales" in self._stored
        }
        parts = {
            n[: -len("weight")] + s for n in self._quantized for s in ("scales", "biases", "global_scale")
        }
        self._names = [n for n in names if n not in parts]

    def _keys(self) -> list[str]:
        return self._names

    def params(self, name: str) -> tuple[str, int, int]:
        """(mode, group_size, bits) of quantized weight ``name``: the layer's own entry of config.json's
        ``quantization`` if it has one, else the entry itself; the mode defaults to ``affine`` (as
        ``to_quantized``'s does). Integers must be JSON integers, the mode a string."""
        q = self.quantization
        where = f"{self.directory.root}/config.json"
        if not q:
            raise FileFormatError(
                f"{where}: {name!r} is stored quantized (it has scales) but there is no 'quantization' "
                "entry saying its mode, group_size and bits; add mlx-lm's entry (e.g. "
                '{"group_size": 64, "bits": 4, "mode": "affine"})'
            )
        layer = q.get(name[: -len(".weight")])
        settings = layer if isinstance(layer, dict) else q
        mode, group, bits = settings.get("mode", "affine"), settings.get("group_size"), settings.get("bits")
        if not isinstance(mode, str) or type(group) is not int or type(bits) is not int:
            raise FileFormatError(
                f"{where}: the quantization of {name!r} is malformed ({settings!r}); it needs integer "
                "group_size and bits and a string mode"
            )
        return mode, group, bits

    def __getitem__(self, name: str) -> ScaledTensor | Any:
        """As :class:`Checkpoint`'s; a quantized layer is read into MLX (how it is stored) and moved
        from there once, and a stored tensor goes to the framework once (FP8 as uint8 bits on MLX),
        with no round trip through numpy."""
        if name not in self:
            return super().__getitem__(name)
        if name in self._quantized:
            return self._in_framework(self._from_mlx(name))
        return self._stored_array(name, self._backend, self.device)

    def _read(self, name: str) -> Any:
        if name not in self._quantized:
            return self.raw.read_tensor(name)
        value = self._from_mlx(name)
        return value.to("numpy") if isinstance(value, ScaledTensor) else get_backend("mlx").to_numpy(value)

    def _stored_array(self, raw_name: str, backend: Backend, device: Any) -> Any:
        """Stored tensor ``raw_name`` as ``backend``'s array of the same bits (FP8 as uint8 on MLX)."""
        where = f"{self.directory.root}: tensor {raw_name!r}"
        return stored_array(self.raw.read_tensor(raw_name), backend, device, where)

    def _from_mlx(self, name: str) -> Any:
        """Quantized weight ``name`` from its stored arrays: a ScaledTensor of MLX arrays, or for the
        affine widths breccia has no format for, ``mx.dequantize``'s values. Arrays that do not fit
        the config's mode, group size and bits are a FileFormatError naming the layer."""
        from ..bridges import from_mlx_quantized

        mx = _mx()
        prefix = name[: -len("weight")]
        arrays = {
            part: self._stored_array(prefix + part, get_backend("mlx"), None)
            for part in ("weight", "scales", "biases", "global_scale")
            if part == "weight" or prefix + part in self._stored
        }
        mode, group, bits = self.params(name)
        try:
            if mode == "affine" and bits in _AFFINE_BITS and bits not in _BRECCIA_AFFINE_BITS:
                return mx.dequantize(
                    arrays["weight"],
                    arrays["scales"],
                    arrays.get("biases"),
                    group_size=group,
                    bits=bits,
                    mode=mode,
                )
            st = from_mlx_quantized(
                arrays["weight"],
                arrays["scales"],
                arrays.get("biases"),
                mode=mode,
                group_size=group,
                bits=bits,
                global_scale=arrays.get("global_scale"),
            )
        except (DTypeError, ValueError) as exc:  # breccia's checks; mx.dequantize's for 2, 3, 5, 6 bits
            shapes = ", ".join(f"{p} {tuple(a.shape)} {a.dtype}" for p, a in arrays.items())
            raise FileFormatError(
                f"{self.directory.root}: quantized layer {prefix[:-1]!r} ({shapes}) does not fit "
                f"config.json's mode {mode!r}, group_size {group}, bits {bits}: {exc}"
            ) from None
        if mode in ("mxfp4", "mxfp8") and self.directory.check_scales:
            # E8M0 byte 255: NaN in OCP MX and breccia, +inf in mx.dequantize. nvfp4 and affine scales
            # are not checked: mx.quantize itself writes zero scales for all-zero nvfp4 blocks.
            from ..bridges._huggingface import check_scales

            check_scales(f"{self.directory.root}: {name!r}", st.recipe, {"scale": np.array(st.scale)})
        return st


register(Convention("mlx-lm", _detect, MLXLMCheckpoint))


# --- writing --------------------------------------------------------------------------------------


_MODELS_ALIAS = "_breccia_mlx_lm_models"


def _remappings(utils_path: str) -> tuple[dict, dict]:
    """``MODEL_REMAPPING`` and ``MODEL_ARCHITECTURE_REMAPPING`` of mlx_lm/utils.py, read as literals."""
    import ast

    with open(utils_path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found: dict[str, dict] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("MODEL_REMAPPING", "MODEL_ARCHITECTURE_REMAPPING"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found.get("MODEL_REMAPPING", {}), found.get("MODEL_ARCHITECTURE_REMAPPING", {})


def _model_module(config: dict[str, Any]) -> Any:
    """mlx-lm's model module for ``config``, chosen as ``mlx_lm.utils._get_classes`` chooses it.

    Importing the ``mlx_lm`` package imports its tokenizer code, hence transformers and torch (about
    8 s and 230 MB here). Unless mlx_lm.utils is already imported, the module is loaded from mlx-lm's
    own ``models/`` folder under a private package name, with the remapping tables read from
    ``mlx_lm/utils.py`` as literals (never executed); a model whose module reaches outside ``models/``
    falls back to the real import."""
    import importlib
    import importlib.util
    import os
    import sys

    def real() -> Any:
        from mlx_lm.utils import _get_classes

        model_class, _ = _get_classes(config)
        return sys.modules[model_class.__module__]

    if "mlx_lm.utils" in sys.modules:
        return real()
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        raise missing_dependency("mlx_lm", "mlx-lm", "mlx targets build mlx-lm's model to name its tensors")
    root = spec.submodule_search_locations[0]
    remapping, by_architecture = _remappings(os.path.join(root, "utils.py"))
    model_type = config["model_type"]
    architectures = config.get("architectures") or ()
    architectures = (architectures,) if isinstance(architectures, str) else architectures
    remapped = next(
        (by_architecture[(model_type, a)] for a in architectures if (model_type, a) in by_architecture), None
    )
    model_type = remapped or remapping.get(model_type, model_type)
    if _MODELS_ALIAS not in sys.modules:
        models = os.path.join(root, "models")
        alias = importlib.util.spec_from_file_location(
            _MODELS_ALIAS, os.path.join(models, "__init__.py"), submodule_search_locations=[models]
        )
        package = importlib.util.module_from_spec(alias)
        sys.modules[_MODELS_ALIAS] = package
        alias.loader.exec_module(package)
    if not os.path.isfile(os.path.join(root, "models", f"{model_type}.py")):
        raise ValueError(f"Model type {model_type} not supported.")
    try:
        return importlib.import_module(f"{_MODELS_ALIAS}.{model_type}")
    except ImportError:  # the module imports from outside models/: use mlx-lm's own import
        return real()


def _model(config: dict[str, Any]) -> Any:
    """mlx-lm's model for ``config`` (parameters are lazy MLX arrays: nothing is computed)."""
    try:
        module = _model_module(config)
    except ImportError as exc:
        raise missing_dependency("mlx_lm", "mlx-lm", str(exc)) from exc
    except ValueError as exc:
        raise FileFormatError(f"mlx-lm has no model for this checkpoint ({exc})") from None
    try:
        return module.Model(module.ModelArgs.from_dict(config))
    except (TypeError, KeyError, ValueError) as exc:
        raise FileFormatError(
            f"mlx-lm cannot build a {config.get('model_type')!r} model from config.json ({exc})"
        ) from None


def _layer_groups(names: list[str]) -> Iterator[list[str]]:
    """The tensor names grouped by transformer layer (``...layers.N.``), in order; the rest last."""
    groups: dict[str, list[str]] = {}
    for name in names:
        match = _LAYER.match(name)
        groups.setdefault(match.group(1) if match else "", []).append(name)
    rest = groups.pop("", [])
    yield from groups.values()
    if rest:
        yield rest


def _model_dtype(config: dict[str, Any]) -> str | None:
    """The dtype mlx_lm.convert casts to: ``torch_dtype``, else the text config's ``dtype``."""
    dtype = config.get("torch_dtype")
    if dtype is None and isinstance(config.get("text_config"), dict):
        dtype = config["text_config"].get("dtype")
    return dtype if dtype in ("float16", "bfloat16", "float32") else None


def _mlx_float(value: Any) -> Any:
    """A source value as an MLX array: a ScaledTensor dequantized in float32, an array as stored."""
    from ..backends import get_backend

    backend = get_backend("mlx")
    if isinstance(value, ScaledTensor):
        return backend.from_numpy(dequantize_rows(value, "float32"))
    return backend.from_numpy(np.ascontiguousarray(value))


def _to_host(a: Any) -> np.ndarray:
    from ..backends import get_backend

    return get_backend("mlx").to_numpy(a)


Params = tuple[str, int, int]  # (mode, group_size, bits)


def _breccia_recipe(mode: str, group: int, bits: int) -> Any:
    """The breccia recipe whose numpy cast gives ``mx.quantize``'s bits and runs faster than it on the
    CPU (benchmarks/RESULTS.md), or None where ``mx.quantize`` is faster (affine)."""
    from ..bridges import mlx_recipe
    from ..recipes import NVFP4BlockScaling

    if mode == "nvfp4":
        return NVFP4BlockScaling(convention="mlx")  # mlx-lm's nvfp4 layers: no global scale
    if mode in ("mxfp8", "mxfp4"):
        return mlx_recipe(mode, group, bits)
    return None


def _quantize(w: Any, params: Params) -> dict[str, Any]:
    """MLX's quantized arrays of float MLX array ``w`` for ``params``, bit for bit what
    ``mx.quantize`` gives (see ``_breccia_recipe`` for which path computes them)."""
    mode, group, bits = params
    mx = _mx()
    recipe = _breccia_recipe(mode, group, bits)
    if recipe is None:
        out = mx.quantize(w, group_size=group, bits=bits, mode=mode)
        return dict(zip(("weight", "scales", "biases"), out))
    from ..bridges import to_mlx_quantized

    host = _to_host(w)
    return _arrays(to_mlx_quantized(cast_rows(lambda rows: host[rows], host.shape, recipe)))


def _arrays(q: Any) -> dict[str, Any]:
    out = {"weight": q.weight, "scales": q.scales}
    if q.biases is not None:
        out["biases"] = q.biases
    return out


def _repack(st: ScaledTensor, params: Params) -> dict[str, Any] | None:
    """``st``'s bits in MLX's form for ``params``, or None if they do not fit it exactly."""
    from ..bridges import to_mlx_quantized

    mode, group, bits = params
    try:
        q = to_mlx_quantized(st)
    except ValueError:  # breccia's RecipeError/LayoutError/ShapeError: MLX cannot hold it as it is
        return None
    if q.mode != mode or q.bits != bits or q.global_scale is not None:
        return None
    if q.group_size == group:
        return _arrays(q)
    if mode == "affine" and q.group_size % group == 0:  # a scale per wider block: repeat it per group
        mx = _mx()
        reps = q.group_size // group
        return {
            "weight": q.weight,
            "scales": mx.repeat(q.scales, reps, axis=-1),
            "biases": mx.repeat(q.biases, reps, axis=-1),
        }
    return None


def _decision(name: str, w: Any, modules: dict[str, Any], predicate: Any, default: Params) -> Params | None:
    """The parameters ``nn.quantize`` (as mlx_lm.convert calls it) quantizes parameter ``name`` with,
    or None when it stays float: its module must have ``to_quantized``, a last axis that divides into
    groups, and the model's ``quant_predicate`` (if any) must say yes or give per-layer parameters."""
    _, group, bits = default
    if not name.endswith(".weight"):
        return None
    path = name[: -len(".weight")]
    module = modules.get(path)
    if module is None or not hasattr(module, "to_quantized") or w.shape[-1] % group != 0:
        return None
    answer = True if predicate is None else predicate(path, module)
    if not answer:
        return None
    if isinstance(answer, dict):  # to_quantized(**answer): its own defaults fill what the dict omits
        return answer.get("mode", "affine"), answer.get("group_size", group), answer.get("bits", bits)
    return default


class _MLXWriter:
    """One layer group at a time: sanitize, cast, decide, repack or quantize, write (see module doc)."""

    def __init__(
        self,
        source: Checkpoint,
        out: OutputDirectory,
        report: ConversionReport,
        params: Params,
        dtype: str | None,
    ) -> None:
        mx = _mx()
        self.source, self.report, self.params = source, report, params
        self.config = {
            k: v for k, v in source.config.items() if k not in ("quantization_config", "quantization")
        }
        if "model_type" not in self.config:
            raise FileFormatError(
                f"{source.where}: config.json has no model_type, so mlx-lm cannot know the "
                "architecture; an mlx target needs the model's config.json beside its weights"
            )
        self.model = _model(self.config)
        self.modules = dict(self.model.named_modules())
        self.predicate = getattr(self.model, "quant_predicate", None)
        self.keep_dtype = getattr(self.model, "cast_predicate", lambda _: True)
        dtype = dtype or _model_dtype(self.config)
        self.dtype = None if dtype is None else getattr(mx, dtype)
        mode, group, bits = params
        self.quantization: dict[str, Any] = {"group_size": group, "bits": bits, "mode": mode}
        self.writer = ShardWriter(out, metadata={"format": "mlx"}, always_index=True)

    def layer(self, names: list[str]) -> None:
        """One layer group: read, sanitize, then write tensor by tensor, dropping each as it goes (the
        source's pages are let go once MLX holds its copies; ScaledTensors stay for their repack)."""
        values = self.source.mlx_tensors({name: self.source.read_numpy(name) for name in names})
        floats = {name: _mlx_float(v) for name, v in values.items()}
        dtypes = {name: f.dtype for name, f in floats.items()}
        values = {name: v for name, v in values.items() if isinstance(v, ScaledTensor)}
        self.source.release()
        sanitized = self.model.sanitize(floats) if hasattr(self.model, "sanitize") else floats
        del floats
        for name in list(sanitized):
            self.tensor(name, sanitized.pop(name), values.pop(name, None), dtypes.get(name))

    def tensor(self, name: str, w: Any, original: Any, stored_dtype: Any) -> None:
        """Write parameter ``name`` (MLX array ``w``): cast, then kept float, repacked from the source
        ScaledTensor ``original``, or quantized; ``stored_dtype`` is the dtype the source held."""
        mx = _mx()
        if self.dtype is not None and self.keep_dtype(name) and mx.issubdtype(w.dtype, mx.floating):
            w = w.astype(self.dtype)
        params = _decision(name, w, self.modules, self.predicate, self.params)
        if params is None:
            if isinstance(original, ScaledTensor):
                self.report.record(name, "dequantized")
            else:
                same = stored_dtype is not None and stored_dtype == w.dtype
                self.report.record(name, "copied" if same else "cast")
            self.writer.add(name, w)
            return
        if params != self.params:
            mode, group, bits = params
            self.quantization[name[: -len(".weight")]] = {"group_size": group, "bits": bits, "mode": mode}
        arrays = _repack(original, params) if isinstance(original, ScaledTensor) else None
        if arrays is not None:
            self.report.record(name, "repacked")
        else:
            arrays = _quantize(w, params)
            if isinstance(original, ScaledTensor):
                self.report.record(name, "requantized", self._error(original, arrays, params))
            else:
                self.report.record(name, "quantized")
        prefix = name[: -len("weight")]
        for part, array in arrays.items():
            self.writer.add(prefix + part, array)

    @staticmethod
    def _error(original: ScaledTensor, arrays: dict[str, Any], params: Params) -> float:
        mx = _mx()
        mode, group, bits = params
        new = mx.dequantize(
            arrays["weight"], arrays["scales"], arrays.get("biases"), group_size=group, bits=bits, mode=mode
        )
        return relative_error(dequantize_rows(original, "float32"), _to_host(new.astype(mx.float32)))

    def finish(self) -> None:
        self.report.files = self.writer.finish()
        config = {**self.config, "quantization": self.quantization, "quantization_config": self.quantization}
        config.pop("_name_or_path", None)
        config.pop("vision_config", None)
        self.writer.out.write_json("config.json", dict(sorted(config.items())), indent=4)


def write_mlx(
    source: Checkpoint,
    out: OutputDirectory,
    report: ConversionReport,
    mode: str,
    group: int,
    bits: int,
    progress: Callable,
    dtype: str | None = None,
) -> None:
    """Write ``source`` as an mlx-lm directory quantized in (mode, group, bits); see the module doc."""
    writer = _MLXWriter(source, out, report, (mode, group, bits), dtype)
    for names in progress(list(_layer_groups(list(source)))):
        writer.layer(names)
        source.release()
    writer.finish()


# --- targets --------------------------------------------------------------------------------------

_TARGET = re.compile(r"^mlx-(affine(\d)|mxfp4|mxfp8|nvfp4)(?:-g(\d+))?$")


def mlx_target_names() -> tuple[str, ...]:
    return (*(f"mlx-affine{b}" for b in _AFFINE_BITS), "mlx-mxfp4", "mlx-mxfp8", "mlx-nvfp4")


def _parse(text: str) -> Target | None:
    if not text.startswith("mlx-"):
        return None
    match = _TARGET.match(text)
    if match is None:
        raise RecipeError(
            f"unknown MLX target {text!r}; use one of {', '.join(mlx_target_names())}, optionally with a "
            "group size such as mlx-affine4-g32"
        )
    mode = "affine" if match.group(2) else match.group(1)
    from ..bridges import MLX_MODES

    groups, _, default_group, default_bits = MLX_MODES[mode]
    bits = int(match.group(2)) if match.group(2) else default_bits
    group = int(match.group(3)) if match.group(3) else default_group
    if mode == "affine" and bits not in _AFFINE_BITS:
        raise RecipeError(f"{text!r}: MLX affine takes bits {', '.join(map(str, _AFFINE_BITS))}; got {bits}")
    if group not in groups:
        raise RecipeError(f"{text!r}: MLX's {mode} mode takes group sizes {groups}; got {group}")
    return Target(text, "mlx-lm", write_mlx, {"mode": mode, "group": group, "bits": bits})


register_target(TargetParser(_parse, mlx_target_names()))
