"""compressed-tensors and ModelOpt NVFP4 model directories, against the compressed-tensors package itself.

Both directions are checked bit for bit with compressed-tensors 0.20's own code: what breccia writes,
the package's compressors ``decompress`` to breccia's values; what the package ``compress``es (scales
from its ``calculate_qparams``/``generate_gparam``), breccia reads to the package's values. ModelOpt
NVFP4 is checked against its definition ``e2m1 * (e4m3 * weight_scale_2)``, and the NVFP4 global-scale
translations (ModelOpt/MLX multiply, compressed-tensors divides) are checked exact or one ulp.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import breccia as bc

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.base import BaseCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, preset_name_to_scheme  # noqa: E402
from compressed_tensors.quantization.utils import generate_gparam  # noqa: E402
from peers import compressed_tensors_qparams  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from test_checkpoints import DEEPSEEK, _save  # noqa: E402

from breccia.demo.checkpoints import write_tiny_llama  # noqa: E402

CT_TARGETS = [
    "compressed-tensors-fp8-dynamic",
    "compressed-tensors-fp8-block",
    "compressed-tensors-nvfp4",
    "compressed-tensors-mxfp4",
    "compressed-tensors-mxfp8",
    "compressed-tensors-w4a16",
    "compressed-tensors-w4a16-asym",
]
#: preset -> compressed-tensors format
PRESETS = {
    "FP8": "float-quantized",
    "FP8_DYNAMIC": "float-quantized",
    "FP8_BLOCK": "float-quantized",
    "NVFP4A16": "nvfp4-pack-quantized",
    "MXFP4A16": "mxfp4-pack-quantized",
    "MXFP8": "mxfp8-quantized",
    "W4A16": "pack-quantized",
    "W4A16_ASYM": "pack-quantized",
    "W8A16": "pack-quantized",
}
LAYER = "model.layers.0.mlp.up_proj"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny untied bf16 Llama (lm_head stays float in every quantized output)."""
    path = str(tmp_path_factory.mktemp("llama") / "bf16")
    write_tiny_llama(path, tied=False)
    return path


def _config(path) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def _modules(weights: dict) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in weights if k.endswith(("weight_packed", "weight_scale"))})


def _decompress(weights: dict, module: str, scheme: QuantizationScheme, fmt: str):
    """The package's own decompression of one module's stored tensors."""
    local = {k[len(module) + 1 :]: v for k, v in weights.items() if k.startswith(module + ".")}
    return BaseCompressor.get_value_from_registry(fmt).decompress(local, scheme)["weight"]


def _same(ours, theirs) -> bool:
    """Bit-for-bit equality of breccia's dequantized values and a torch tensor of the same dtype."""
    a = np.asarray(ours)
    b = theirs.view(torch.int16).numpy() if theirs.dtype == torch.bfloat16 else theirs.numpy()
    return a.dtype.itemsize == b.dtype.itemsize and np.array_equal(a.view(b.dtype), b)


# --- breccia writes, the package decompresses -------------------------------------------------------


@pytest.mark.parametrize("target", CT_TARGETS)
def test_what_breccia_writes_the_package_decompresses_to_breccias_values(llama, tmp_path, target):
    out = str(tmp_path / "ct")
    report = bc.convert(llama, out, to=target)
    quant = _config(out)["quantization_config"]
    config = QuantizationConfig.model_validate(quant)  # the package accepts the config as written
    scheme = config.config_groups["group_0"]
    assert quant["ignore"] == ["lm_head"]
    weights = load_file(os.path.join(out, "model.safetensors"))
    ck = bc.open_checkpoint(out)
    assert ck.format == "compressed-tensors"
    modules = _modules(weights)
    assert len(modules) == report.count("quantized") == 14
    for module in modules:
        theirs = _decompress(weights, module, scheme, quant["format"])
        ours = bc.dequantize(ck[module + ".weight"], str(theirs.dtype).removeprefix("torch."))
        assert _same(ours, theirs), module
    again = bc.convert(out, str(tmp_path / "again"), to=target)
    assert again.count("repacked") == 14


# --- the package compresses, breccia reads ----------------------------------------------------------


def _package_compress(src: str, dst, preset: str) -> None:
    """``src`` compressed by compressed-tensors itself with ``preset`` (lm_head ignored)."""
    fmt = PRESETS[preset]
    scheme = preset_name_to_scheme(preset, ["Linear"])
    if preset == "W8A16":
        scheme.weights.num_bits = 8
    tensors = load_file(os.path.join(src, "model.safetensors"))
    out = {}
    for name, w in tensors.items():
        module = name[: -len(".weight")]
        if not (name.endswith("proj.weight") and w.ndim == 2):
            out[name] = w
            continue
        state = {"weight": w}
        if scheme.weights.strategy == "tensor_group":
            state["weight_global_scale"] = generate_gparam(w.min(), w.max())
        global_scale = state.get("weight_global_scale")
        state["weight_scale"], zp = compressed_tensors_qparams(w, scheme.weights, global_scale)
        if not scheme.weights.symmetric:
            state["weight_zero_point"] = zp
        compressed = BaseCompressor.get_value_from_registry(fmt).compress(state, scheme)
        out.update({f"{module}.{k}": v.contiguous() for k, v in compressed.items()})
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(out, os.path.join(dst, "model.safetensors"))
    config = _config(src)
    quant = QuantizationConfig(
        config_groups={"group_0": scheme}, format=fmt, quantization_status="compressed", ignore=["lm_head"]
    )
    config["quantization_config"] = quant.model_dump(mode="json")
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_what_the_package_compresses_breccia_reads_bit_for_bit(llama, tmp_path, preset):
    path = tmp_path / preset
    _package_compress(llama, path, preset)
    quant = _config(path)["quantization_config"]
    scheme = QuantizationConfig.model_validate(quant).config_groups["group_0"]
    weights = load_file(os.path.join(path, "model.safetensors"))
    ck = bc.open_checkpoint(path)
    assert ck.format == "compressed-tensors" and PRESETS[preset] in ck.details
    assert "lm_head.weight" in ck and not isinstance(ck["lm_head.weight"], bc.ScaledTensor)
    for module in _modules(weights):
        theirs = _decompress(weights, module, scheme, quant["format"])
        ours = bc.dequantize(ck[module + ".weight"], str(theirs.dtype).removeprefix("torch."))
        assert _same(ours, theirs), module


def test_nvfp4_cast_is_the_packages_compress_and_its_divisor_is_not_a_reciprocal():
    """breccia's compressed-tensors NVFP4 rule gives the package's bytes; its float32 decode divides by
    the global scale, which differs from multiplying by fl32(1 / g) in many values."""
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 3, (64, 1))).astype(np.float32)
    st = bc.cast(x, bc.NVFP4BlockScaling(convention="compressed-tensors"))
    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    w = torch.from_numpy(x)
    g = generate_gparam(w.min(), w.max())
    state = {"weight": w, "weight_global_scale": g}
    state["weight_scale"], _ = compressed_tensors_qparams(w, scheme.weights, g)
    packed = BaseCompressor.get_value_from_registry("nvfp4-pack-quantized").compress(state, scheme)
    assert np.array_equal(packed["weight_packed"].numpy(), np.asarray(st.data))
    assert np.array_equal(
        packed["weight_scale"].view(torch.uint8).numpy(), np.asarray(st.scale).view(np.uint8)
    )
    assert np.float32(g.item()) == np.asarray(st.global_scale)
    codes = unpack_fp4_from_uint8(packed["weight_packed"], 64, 256, dtype=torch.float32)
    theirs = dequantize(
        codes, packed["weight_scale"].float(), args=scheme.weights, global_scale=g, dtype=torch.float32
    )
    ours = np.asarray(bc.dequantize(st, "float32"))
    assert np.array_equal(ours, theirs.numpy())
    reciprocal = np.asarray(bc.dequantize(bc.checkpoints.modelopt.to_multiplier_convention(st), "float32"))
    assert 0 < np.mean(reciprocal != ours)


def test_nvfp4_global_scale_is_generate_gparams_for_every_amax():
    """``generate_gparam``'s ``2688 / amax`` is torch's ``amax.reciprocal() * 2688``, one float32 ulp
    from the correctly rounded quotient for a share of amaxes; breccia's global scale is the package's
    for each (an amax of 7, the conformance matrix's ``max`` input, is one of them)."""
    rng = np.random.default_rng(3)
    amaxes = np.abs(rng.standard_normal(300) * np.exp2(rng.uniform(-30, 30, 300))).astype(np.float32)
    amaxes[0] = 7.0
    recipe = bc.NVFP4BlockScaling(convention="compressed-tensors")
    quotient_differs = 0
    for amax in amaxes:
        x = np.zeros((1, 16), np.float32)
        x[0, 0] = amax
        theirs = np.float32(generate_gparam(torch.tensor(-amax), torch.tensor(amax)).item())
        assert np.float32(np.asarray(bc.cast(x, recipe).global_scale)) == theirs, amax
        quotient_differs += theirs != np.float32(2688.0) / amax
    assert 0 < quotient_differs < len(amaxes)


# --- ModelOpt NVFP4 and the global-scale translations -----------------------------------------------


def _modelopt_reference(path: str, module: str) -> np.ndarray:
    """ModelOpt's definition, computed here from the raw bytes: e2m1(q) * (fl32(e4m3(s)) * g)."""
    import ml_dtypes

    w = load_file(os.path.join(path, "model.safetensors"))
    packed = w[module + ".weight"].numpy()
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    codes = np.stack((packed & 0xF, packed >> 4), axis=-1).reshape(packed.shape[0], -1)
    s = w[module + ".weight_scale"].view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    g = np.float32(w[module + ".weight_scale_2"].item())
    return grid[codes] * np.repeat(s * g, 16, axis=-1)


def test_modelopt_output_reads_back_to_its_definition(llama, tmp_path):
    out = str(tmp_path / "modelopt")
    report = bc.convert(llama, out, to="modelopt-nvfp4")
    with open(os.path.join(out, "hf_quant_config.json")) as f:
        settings = json.load(f)["quantization"]
    assert settings["quant_algo"] == "NVFP4" and settings["exclude_modules"] == ["lm_head"]
    assert _config(out)["quantization_config"]["quant_method"] == "modelopt"
    ck = bc.open_checkpoint(out)
    assert ck.format == "modelopt-nvfp4" and report.count("quantized") == 14
    for module in _modules(load_file(os.path.join(out, "model.safetensors"))):
        assert np.array_equal(
            np.asarray(bc.dequantize(ck[module + ".weight"], "float32")), _modelopt_reference(out, module)
        )
    assert isinstance(bc.dequantize(ck[LAYER + ".weight"]), np.ndarray)


def _block_multipliers(st) -> np.ndarray:
    """fl32(s * g) or fl32(s / g): what each block's codes are multiplied by."""
    s = np.asarray(st.scale).astype(np.float32)
    g = np.float32(np.asarray(st.global_scale))
    return s / g if st.recipe.global_scale_divides else s * g


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    ia, ib = (np.asarray(v, np.float32).view(np.int32).astype(np.int64) for v in (a, b))
    return int(np.max(np.abs(ia - ib))) if ia.size else 0


@pytest.mark.parametrize(
    ("first", "second"),
    [("modelopt-nvfp4", "compressed-tensors-nvfp4"), ("compressed-tensors-nvfp4", "modelopt-nvfp4")],
)
def test_nvfp4_global_scale_translation_is_exact_or_one_ulp(llama, tmp_path, first, second):
    """Codes and block scales move unchanged; the global scale is translated; each block multiplier is
    the same or one float32 ulp away (so a value at most two), and the report says which tensors moved."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    bc.convert(llama, a, to=first)
    report = bc.convert(a, b, to=second)
    assert report.count("repacked") == 14 and report.count("quantized") == 0
    src, dst = bc.open_checkpoint(a), bc.open_checkpoint(b)
    moved = 0
    for name in (n for n in src if isinstance(src[n], bc.ScaledTensor)):
        x, y = src[name], dst[name]
        assert np.array_equal(np.asarray(x.data), np.asarray(y.data))
        assert np.array_equal(np.asarray(x.scale).view(np.uint8), np.asarray(y.scale).view(np.uint8))
        assert _ulps(_block_multipliers(x), _block_multipliers(y)) <= 1, name
        vx, vy = (np.asarray(bc.dequantize(v, "float32")) for v in (x, y))
        assert _ulps(vx, vy) <= 2, name  # a code of 1.5 or 3 rounds the moved multiplier again
        assert (name in report.errors) == (not np.array_equal(vx, vy)), name
        moved += name in report.errors
    # the tiny model's global scales happen to translate exactly or not; both outcomes are checked above
    assert 0 <= moved <= 14


def test_translation_exactness_over_many_global_scales():
    """Over random tensors, ``s * g == s / g'`` for the chosen g' in most but not all tensors."""
    rng = np.random.default_rng(1)
    exact = 0
    for _ in range(200):
        x = (rng.standard_normal((16, 64)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        st = bc.cast(x, bc.NVFP4BlockScaling())
        ct_st = bc.checkpoints.modelopt.to_divisor_convention(st)
        v, w = (np.asarray(bc.dequantize(s, "float32")) for s in (st, ct_st))
        assert _ulps(_block_multipliers(st), _block_multipliers(ct_st)) <= 1 and _ulps(v, w) <= 2
        exact += np.array_equal(v, w)
    assert 0 < exact < 200


def test_mlx_nvfp4_to_modelopt_is_exact_and_back_is_requantized(llama, tmp_path):
    mx = pytest.importorskip("mlx.core")
    mlx_lm = pytest.importorskip("mlx_lm")
    mlx_dir, mo, back = str(tmp_path / "mlx"), str(tmp_path / "mo"), str(tmp_path / "back")
    bc.convert(llama, mlx_dir, to="mlx-nvfp4")
    report = bc.convert(mlx_dir, mo, to="modelopt-nvfp4")
    assert report.count("repacked") == 14
    weights = mx.load(os.path.join(mlx_dir, "model.safetensors"))
    theirs = mx.dequantize(
        weights[LAYER + ".weight"], weights[LAYER + ".scales"], group_size=16, bits=4, mode="nvfp4"
    )
    ours = bc.dequantize(bc.open_checkpoint(mo)[LAYER + ".weight"], "float32")
    assert np.array_equal(np.asarray(theirs.astype(mx.float32)), np.asarray(ours))
    # mlx-lm's nvfp4 Linear holds no global scale, so a ModelOpt weight is requantized on the way back
    report = bc.convert(mo, back, to="mlx-nvfp4")
    assert report.count("repacked") + report.count("requantized") == 14
    model, tokenizer = mlx_lm.load(back)
    assert isinstance(mlx_lm.generate(model, tokenizer, "hello", max_tokens=2), str)


def test_compressed_tensors_w4a16_g32_deepseek_loads_in_mlx_lm(tmp_path):
    """mlx-lm reads compressed-tensors pack-quantized (group 32, symmetric) DeepSeek-V3 checkpoints."""
    mlx_lm = pytest.importorskip("mlx_lm")
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**DEEPSEEK)).to(torch.bfloat16)
    src = _save(model, str(tmp_path / "ds"))
    out = str(tmp_path / "ct")
    bc.convert(src, out, to="compressed-tensors-w4a16-g32")
    model, tokenizer = mlx_lm.load(out)
    assert isinstance(mlx_lm.generate(model, tokenizer, "hello", max_tokens=2), str)


# --- bad input: the config says one format, the tensors another --------------------------------------


def _rewrite(path, change) -> None:
    """Apply ``change(tensors, config)`` to the directory's weights and config."""
    tensors = load_file(os.path.join(path, "model.safetensors"))
    config = _config(path)
    change(tensors, config)
    save_file(tensors, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def _ct_quant(config: dict) -> dict:
    return config["quantization_config"]


BAD_INPUT = {
    "format says mxfp4": (
        "compressed-tensors-nvfp4",
        lambda t, c: (
            _ct_quant(c)["config_groups"]["group_0"].update(format="mxfp4-pack-quantized")
            or _ct_quant(c).update(format="mxfp4-pack-quantized")
        ),
        "weight_scale",
    ),
    "missing global scale": (
        "compressed-tensors-nvfp4",
        lambda t, c: t.pop(LAYER + ".weight_global_scale"),
        "weight_global_scale",
    ),
    "scale of the wrong shape": (
        "compressed-tensors-nvfp4",
        lambda t, c: t.update({LAYER + ".weight_scale": t[LAYER + ".weight_scale"][:, :4].contiguous()}),
        "weight_scale",
    ),
    "scale of the wrong dtype": (
        "compressed-tensors-mxfp4",
        lambda t, c: t.update({LAYER + ".weight_scale": t[LAYER + ".weight_scale"].float()}),
        "weight_scale",
    ),
    "group that does not divide": (
        "compressed-tensors-w4a16",
        lambda t, c: _ct_quant(c)["config_groups"]["group_0"]["weights"].update(group_size=96),
        "weight_scale",
    ),
    "quantized module in ignore": (
        "compressed-tensors-w4a16",
        lambda t, c: _ct_quant(c)["ignore"].append(LAYER),
        "weight_scale",
    ),
    "modelopt without weight_scale_2": (
        "modelopt-nvfp4",
        lambda t, c: t.pop(LAYER + ".weight_scale_2"),
        "weight_scale_2",
    ),
    "modelopt scale of the wrong dtype": (
        "modelopt-nvfp4",
        lambda t, c: t.update({LAYER + ".weight_scale": t[LAYER + ".weight_scale"].float()}),
        "weight_scale",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_config_and_tensors_that_disagree_are_errors_naming_both(llama, tmp_path, case):
    target, change, part = BAD_INPUT[case]
    path = str(tmp_path / "bad")
    bc.convert(llama, path, to=target)
    _rewrite(path, change)
    with pytest.raises(bc.FileFormatError) as info:
        ck = bc.open_checkpoint(path)
        for name in ck:
            ck[name]
    message = str(info.value)
    assert part in message and "config" in message and "the file holds" in message


def test_modelopt_quant_algo_other_than_nvfp4_is_refused(llama, tmp_path):
    path = str(tmp_path / "fp8")
    bc.convert(llama, path, to="modelopt-nvfp4")
    with open(os.path.join(path, "hf_quant_config.json")) as f:
        side = json.load(f)
    side["quantization"]["quant_algo"] = "FP8"
    with open(os.path.join(path, "hf_quant_config.json"), "w") as f:
        json.dump(side, f)
    with pytest.raises(bc.FileFormatError, match="quant_algo 'FP8'"):
        bc.open_checkpoint(path)


def test_float_target_drops_the_quantization_side_file(llama, tmp_path):
    mo, out = str(tmp_path / "mo"), str(tmp_path / "bf16")
    bc.convert(llama, mo, to="modelopt-nvfp4")
    bc.convert(mo, out, to="bf16")
    assert not os.path.exists(os.path.join(out, "hf_quant_config.json"))
    assert bc.open_checkpoint(out).format == "hf"


# --- fuzz: mutated files give breccia's errors or the reference values ---------------------------------

FUZZ_EXAMPLES = int(os.environ.get("BRECCIA_FUZZ_EXAMPLES", "40"))


def _torch(v: np.ndarray):
    """A numpy array (fp8 as ml_dtypes) as a torch tensor of the same dtype, copied."""
    v = np.ascontiguousarray(v)
    if v.dtype.name.startswith("float8"):
        return torch.from_numpy(v.view(np.uint8).copy()).view(torch.float8_e4m3fn)
    return torch.from_numpy(v.copy())


def _tiny(path, target: str) -> None:
    """A one-layer directory in ``target``'s convention (64x64 weight)."""
    from breccia.checkpoints.compressed_tensors import TARGETS, layer_parts, quantization_config

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    os.makedirs(path)
    if target == "modelopt-nvfp4":
        st = bc.cast(x, bc.NVFP4BlockScaling())
        parts = {
            "weight": np.asarray(st.data),
            "weight_scale": np.asarray(st.scale),
            "weight_scale_2": np.asarray(st.global_scale).reshape(1),
        }
        quant = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "exclude_modules": []}
    else:
        spec = TARGETS[target]
        parts = layer_parts(spec, bc.cast(x, spec.recipe, spec.layout))
        quant = quantization_config(spec, [])
    save_file({f"{LAYER}.{k}": _torch(v) for k, v in parts.items()}, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"quantization_config": quant}, f)


def _reference(ck, target: str) -> np.ndarray:
    """The owning library's decode of the bytes breccia read (compressed-tensors' decompress; ModelOpt's
    definition computed in numpy)."""
    import ml_dtypes

    raw = {
        p: np.asarray(ck.raw.read_tensor(f"{LAYER}.{p}"))
        for p in (
            "weight",
            "weight_packed",
            "weight_scale",
            "weight_global_scale",
            "weight_scale_2",
            "weight_shape",
            "weight_zero_point",
        )
        if f"{LAYER}.{p}" in ck.raw.tensor_names()
    }
    if target == "modelopt-nvfp4":
        grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
        packed = raw["weight"]
        codes = np.stack((packed & 0xF, packed >> 4), axis=-1).reshape(packed.shape[0], -1)
        s = raw["weight_scale"].view(ml_dtypes.float8_e4m3fn).astype(np.float32)
        return grid[codes] * np.repeat(s * np.float32(raw["weight_scale_2"].reshape(())), 16, axis=-1)
    local = {k: _torch(v) for k, v in raw.items()}
    scheme = QuantizationConfig.model_validate(
        _config(ck.directory.root)["quantization_config"]
    ).config_groups["group_0"]
    fmt = _config(ck.directory.root)["quantization_config"]["format"]
    return BaseCompressor.get_value_from_registry(fmt).decompress(local, scheme)["weight"].float().numpy()


@pytest.mark.parametrize(
    "target", ["compressed-tensors-nvfp4", "compressed-tensors-w4a16-asym", "modelopt-nvfp4"]
)
def test_fuzzed_files_give_breccia_errors_or_the_reference_values(tmp_path, target):
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hs

    clean = str(tmp_path / "clean")
    _tiny(clean, target)
    data = open(os.path.join(clean, "model.safetensors"), "rb").read()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(hs.lists(hs.tuples(hs.integers(0, len(data) - 1), hs.integers(0, 255)), min_size=1, max_size=4))
    def check(edits):
        mutated = bytearray(data)
        for offset, byte in edits:
            mutated[offset] = byte
        with tempfile.TemporaryDirectory(dir=tmp_path) as root:
            shutil.copy(os.path.join(clean, "config.json"), root)
            with open(os.path.join(root, "model.safetensors"), "wb") as f:
                f.write(bytes(mutated))
            try:
                ck = bc.open_checkpoint(root)
                ours = np.asarray(bc.dequantize(ck[LAYER + ".weight"], "float32"))
            except bc.BrecciaError:
                return
            theirs = _reference(ck, target)
            if target != "modelopt-nvfp4":  # the package returns bfloat16
                ours = np.asarray(bc.dequantize(ck[LAYER + ".weight"], "bfloat16")).astype(np.float32)
            assert np.array_equal(ours, theirs, equal_nan=True)
            ck.close()

    check()


@pytest.mark.parametrize("source", ["nvidia", "compressed-tensors"])
@pytest.mark.parametrize("case", ["random", "experts", "zeros and NaN", "ragged row"])
def test_translation_error_is_the_decoded_tensors_relative_error(source, case):
    """The report's error of a global-scale translation, computed from the (block scale, code) pair
    counts, is what decoding both tensors and comparing them gives (None where all values are equal)."""
    from breccia.checkpoints._slabs import relative_error
    from breccia.checkpoints.modelopt import _translate, _translation_error

    rng = np.random.default_rng(7)
    shapes = {"random": (64, 256), "experts": (3, 32, 64), "zeros and NaN": (8, 64), "ragged row": (4, 40)}
    shape = shapes[case]
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-12, 12, (*shape[:-1], 1)))).astype(np.float32)
    if case == "zeros and NaN":
        x[0] = 0.0
        x[1, 5] = np.nan
    st = bc.cast(x, bc.NVFP4BlockScaling(convention=source))
    target = "compressed-tensors" if source == "nvidia" else "nvidia"
    translated = _translate(st, target)
    before, after = bc.dequantize(st, "float32"), bc.dequantize(translated, "float32")
    expected = None if np.array_equal(before, after, equal_nan=True) else relative_error(before, after)
    got = _translation_error(st, translated)
    assert (got is None) == (expected is None)
    if expected is not None:
        assert got == pytest.approx(expected, rel=1e-12)
