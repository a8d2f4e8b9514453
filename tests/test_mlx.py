"""The MLX bridge against real MLX 0.32: mx.quantize / mx.dequantize bits, layers, torch -> MLX flow."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

import breccia as bc  # noqa: E402
from breccia.backends import get_backend  # noqa: E402
from breccia.bridges import (  # noqa: E402
    from_mlx_quantized,
    mlx_recipe,
    requantize_to_mlx,
    to_mlx_quantized,
)
from breccia.mlx import Float8Linear, QuantizedLinear, export_mlx_model, load_mlx_model  # noqa: E402

MODES = [("mxfp8", 32, 8), ("mxfp4", 32, 4), ("nvfp4", 16, 4)] + [
    ("affine", g, b) for g in (32, 64, 128) for b in (4, 8)
]
DTYPES = ["float32", "bfloat16"]
FRAMEWORKS = ["numpy", "torch", "jax", "mlx"]
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)


def bits(a) -> np.ndarray:
    """The raw bits of an MLX array (bf16 as uint16, 32-bit as uint32, bytes as uint8)."""
    if a.dtype == mx.bfloat16:
        return np.array(a.view(mx.uint16))
    host = np.array(a)
    return host.view({4: np.uint32, 2: np.uint16, 1: np.uint8}[host.itemsize])


def weights(rows: int = 16, cols: int = 256, seed: int = 0, dtype: str = "float32"):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w *= rng.uniform(1e-3, 1e2, (rows, 1)).astype(np.float32)
    w[0, :32] = 0.0  # a zero block
    w[1, 7] = 1e-30  # a tiny value
    return mx.array(w).astype(getattr(mx, dtype))


def mlx_quantize(x, mode, group, nbits, global_scale=None):
    kw = {} if global_scale is None else {"global_scale": global_scale}
    out = mx.quantize(x, group_size=group, bits=nbits, mode=mode, **kw)
    return out[0], out[1], (out[2] if len(out) > 2 else None), kw


def nibbles(a) -> np.ndarray:
    b = np.array(a).view(np.uint8)
    return np.stack([b & 15, b >> 4], -1).reshape(b.shape[0], -1)


# --- MLX -> breccia: dequantize bit for bit, arrays back unchanged ----------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("mode", "group", "nbits", "with_global"),
                         [(*m, False) for m in MODES] + [("nvfp4", 16, 4, True)])
def test_from_mlx_dequantize_and_round_trip(mode, group, nbits, dtype, with_global):
    x = weights(dtype=dtype)
    g = mx.abs(x).max().astype(mx.float32) if with_global else None
    w, s, b, kw = mlx_quantize(x, mode, group, nbits, g)
    st = from_mlx_quantized(w, s, b, mode=mode, group_size=group, bits=nbits, **kw)
    assert st.framework == "mlx" and st.shape == tuple(x.shape)
    expected = mx.dequantize(w, s, b, group_size=group, bits=nbits, mode=mode, **kw)
    assert st.dtype == expected.dtype  # breccia's default dtype is mx.dequantize's
    assert np.array_equal(bits(bc.dequantize(st)), bits(expected))
    if mode != "affine":  # explicit float32 output
        y32 = mx.dequantize(w, s, b, group_size=group, bits=nbits, mode=mode, dtype=mx.float32, **kw)
        assert np.array_equal(bits(bc.dequantize(st, "float32")), bits(y32))
    q = to_mlx_quantized(st)
    assert (q.mode, q.group_size, q.bits) == (mode, group, nbits)
    assert np.array_equal(bits(q.weight), bits(w)) and np.array_equal(bits(q.scales), bits(s))
    assert (q.biases is None) == (b is None) and (b is None or np.array_equal(bits(q.biases), bits(b)))
    assert (q.global_scale is None) == (g is None)
    if g is not None:
        assert q.global_scale.item() == g.item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["mxfp8", "mxfp4", "nvfp4"])
def test_every_code_and_scale_code(mode, dtype):
    """All element codes x all scale codes (E8M0 255 aside: OCP NaN, MLX +inf; see next test)."""
    group = 16 if mode == "nvfp4" else 32
    per_byte = 1 if mode == "mxfp8" else 2
    codes = np.tile(np.arange(256, dtype=np.uint8), (255, 1))[:, : 256 // per_byte]
    codes = np.ascontiguousarray(np.tile(codes, (1, group // 8 if mode == "mxfp8" else group // 16)))
    n_groups = codes.shape[1] * per_byte // group
    scales = np.repeat(np.arange(255, dtype=np.uint8)[:, None], n_groups, axis=1)
    w, s = mx.array(codes.view(np.uint32)), mx.array(scales)
    st = from_mlx_quantized(w, s, mode=mode)
    expected = mx.dequantize(w, s, mode=mode, dtype=getattr(mx, dtype))
    assert np.array_equal(bits(bc.dequantize(st, dtype)), bits(expected))


@pytest.mark.parametrize("recipe", [bc.MXFP8BlockScaling(scale_rounding="ceil"), bc.MXFP4BlockScaling()])
def test_nan_block_stays_nan_in_mlx(recipe):
    x = np.array(weights()).copy()
    x[3, 40] = np.nan
    st = bc.cast(mx.array(x), recipe)
    q = to_mlx_quantized(st)
    y = np.array(q.dequantize(mx.float32))
    nan_block = np.zeros_like(x, bool)
    nan_block[3, 32:64] = True
    assert np.isnan(y[nan_block]).all()
    assert np.array_equal(y[~nan_block], np.array(bc.dequantize(st, "float32"))[~nan_block])


# --- breccia's casts against mx.quantize ----------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mxfp8_ceil_cast_is_mx_quantize(framework, dtype):
    x = weights(dtype=dtype, seed=1)
    w, s, _, _ = mlx_quantize(x, "mxfp8", 32, 8)
    backend = get_backend(framework)
    x_here = backend.from_numpy(get_backend("mlx").to_numpy(x))
    st = bc.cast(x_here, bc.MXFP8BlockScaling(scale_rounding="ceil"))
    assert np.array_equal(backend.to_numpy(st.data).view(np.uint8), bits(w.view(mx.uint8)))
    assert np.array_equal(backend.to_numpy(st.scale).view(np.uint8), bits(s))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("group", "nbits"), [(32, 4), (64, 8), (128, 4)])
def test_affine_mlx_cast_is_mx_quantize(framework, dtype, group, nbits):
    x = weights(dtype=dtype, seed=2)
    w, s, b, _ = mlx_quantize(x, "affine", group, nbits)
    assert (np.array(s.astype(mx.float32)) < 0).mean() > 0.2  # MLX's negative scales are exercised
    backend = get_backend(framework)
    st = bc.cast(backend.from_numpy(get_backend("mlx").to_numpy(x)), mlx_recipe("affine", group, nbits))
    q = to_mlx_quantized(st)
    for mine, theirs in ((q.weight, w), (q.scales, s), (q.biases, b)):
        assert np.array_equal(bits(mine), bits(theirs))
    host = backend.to_numpy(bc.dequantize(st))
    assert np.array_equal(host.view(np.uint16 if dtype == "bfloat16" else np.uint32), bits(q.dequantize()))


def _tie_heavy(signed_zero_block: bool = False) -> np.ndarray:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 256)).astype(np.float32)
    x[:, ::7] = np.round(x[:, ::7] * 4) / 4  # plenty of exact ties
    if signed_zero_block:
        x[0, :32] = -0.0
    return x


@pytest.mark.parametrize(
    ("mode", "recipe"),
    [("mxfp4", None), ("nvfp4", bc.NVFP4BlockScaling(convention="mlx"))],
    ids=["mxfp4", "nvfp4-one-level"],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fp4_casts_equal_mlx_bit_for_bit(mode, recipe, dtype):
    """MLX's fp4 rule (ties toward zero, never -0) through the "mlx" conventions, on every framework."""
    xm = mx.array(_tie_heavy(signed_zero_block=True)).astype(getattr(mx, dtype))
    group = 16 if mode == "nvfp4" else 32
    w, s = mx.quantize(xm, group_size=group, bits=4, mode=mode)
    for framework in FRAMEWORKS:
        backend = get_backend(framework)
        st = bc.cast(backend.from_numpy(get_backend("mlx").to_numpy(xm)), recipe or mlx_recipe(mode))
        ours = [np.ascontiguousarray(backend.to_numpy(a)).view(np.uint8).ravel() for a in (st.data, st.scale)]
        assert np.array_equal(ours[0], np.array(w).view(np.uint8).reshape(-1)), framework
        assert np.array_equal(ours[1], np.array(s).reshape(-1)), framework


def test_two_level_nvfp4_differs_from_mlx_only_at_ties_and_negative_zero():
    """``mlx_recipe("nvfp4")`` (a global scale, NVIDIA's rule) rounds fp4 to nearest even, MLX's
    ``mx.quantize(global_scale=...)`` ties toward zero and never writes -0."""
    x = _tie_heavy()
    xm = mx.array(x)
    g = mx.abs(xm).max()
    w, s, _, _ = mlx_quantize(xm, "nvfp4", 16, 4, g)
    st = bc.cast(xm, mlx_recipe("nvfp4"))
    assert np.array_equal(bits(st.scale), bits(s))
    assert np.float32(g.item()) / np.float32(2688) == st.global_scale.item()
    ours, theirs = nibbles(st.data), nibbles(w)
    ours = np.where(ours == 8, 0, ours)  # -0 -> +0
    block = np.array(s).view(ml_dtypes.float8_e4m3fn).astype(np.float32) * np.float32(st.global_scale.item())
    scaled = np.abs(x / np.repeat(block, 16, axis=1))
    tie = np.isin(scaled, [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    differ = ours != theirs
    assert tie[differ].all()
    assert np.all(np.abs(E2M1[theirs[differ]]) < np.abs(E2M1[ours[differ]]))  # MLX: toward zero


# --- other int recipes, bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [
        bc.Int4Scaling(group_size=64),
        bc.Int4Scaling(group_size=32, convention="torchao"),
        bc.Int4Scaling(group_size=128, symmetric=False),
        bc.Int8Scaling(),  # per row: scales repeated into MLX groups
        bc.Int8Scaling(group_size=256, symmetric=False, convention="torchao"),
    ],
    ids=repr,
)
def test_other_int_recipes_map_to_affine(recipe):
    st = bc.cast(weights(seed=4), recipe)
    q = to_mlx_quantized(st)
    assert q.mode == "affine" and q.bits == recipe.element_format.bits
    mine = np.array(bc.dequantize(st, "float32"))
    theirs = np.array(q.dequantize(mx.float32))
    scale = np.repeat(np.abs(np.array(q.scales)), q.group_size, axis=1)
    assert np.all(np.abs(mine - theirs) <= 2 * 2.0**-23 * 256 * scale)  # MLX's two roundings of q_u*s+b


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda: bc.cast(weights(cols=48), bc.MXFP8BlockScaling()), bc.ShapeError, "nvfp4 (group 16)"),
        (lambda: bc.cast(weights(), bc.Int4Scaling(group_size=16)), bc.ShapeError, "affine (group 32"),
        (lambda: bc.cast(mx.ones((64,)), bc.MXFP8BlockScaling()), bc.ShapeError, "2-D"),
        (lambda: bc.cast(weights(), bc.Float8BlockScaling(block_m=128)), bc.RecipeError, "requantize_to_mlx"),
        (lambda: bc.cast(weights(), bc.MXFP8BlockScaling(fp8_format="E5M2")), bc.RecipeError, "E4M3"),
    ],
)
def test_tensors_mlx_cannot_hold(make, error, words):
    with pytest.raises(error, match=re.escape(words)):
        to_mlx_quantized(make())


def test_from_mlx_refuses_what_breccia_cannot_hold():
    w, s, b, _ = mlx_quantize(weights(), "affine", 64, 3)
    with pytest.raises(bc.RecipeError, match="bits 4"):
        from_mlx_quantized(w, s, b, mode="affine", group_size=64, bits=3)
    with pytest.raises(bc.LayoutError, match="group_size"):
        from_mlx_quantized(w, s, b, mode="mxfp8", group_size=64)
    with pytest.raises(bc.ShapeError, match="do not fit"):
        from_mlx_quantized(w, s[:, :1], b[:, :1], mode="affine", group_size=64, bits=4)


def test_nvfp4_global_scale_without_exact_mlx_twin():
    st = bc.cast(weights(), bc.NVFP4BlockScaling())
    # mantissas above 2/1.3125 make g's ulp 2**12 of gs's: about a third of such gs are unreachable
    candidates = (np.array(np.float32(0.95)).view(np.int32) + np.arange(64, dtype=np.int32)).view(np.float32)
    g = (candidates * np.float32(2688)).astype(np.float32)
    near = g.view(np.int32)[:, None] + np.arange(-2, 3, dtype=np.int32)
    reachable = (near.view(np.float32) / np.float32(2688) == candidates[:, None]).any(axis=1)
    gs = candidates[~reachable][0]  # a float32 that no MLX g reproduces as fl32(g / 2688)
    st = st.replace_arrays(st.data, st.scale, mx.array(gs))
    with pytest.raises(bc.RecipeError, match="exact=False"):
        to_mlx_quantized(st)
    assert to_mlx_quantized(st, exact=False).global_scale is not None


# --- FP8 without an MLX mode, layers --------------------------------------------------------------

FLOAT8 = [bc.Float8CurrentScaling(), bc.Float8BlockScaling(), bc.Float8BlockScaling(block_m=128)]


@pytest.mark.parametrize("recipe", FLOAT8, ids=repr)
def test_float8_linear_runs_fp8_bits(recipe):
    w = weights(rows=200, cols=384, seed=5)
    st = bc.cast(w, recipe)
    layer = Float8Linear(st, bias=mx.ones((200,)))
    x = mx.array(np.random.default_rng(0).standard_normal((4, 384)).astype(np.float32))
    expected = x @ bc.dequantize(st, "float32").T + 1
    assert np.array_equal(np.array(layer.dequantized_weight()), np.array(bc.dequantize(st, "float32")))
    atol = 1e-5 * float(mx.abs(expected).max())
    assert np.allclose(np.array(layer(x)), np.array(expected), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("recipe", FLOAT8, ids=repr)
def test_requantize_to_mxfp8_reports_added_error(recipe):
    st = bc.cast(weights(rows=256, cols=256, seed=6), recipe)
    q, report = requantize_to_mlx(st, "mxfp8")
    old = np.array(bc.dequantize(st, "float32"))
    new = np.array(q.dequantize(mx.float32))
    assert q.mode == "mxfp8"
    assert report.rel_error == pytest.approx(np.linalg.norm(new - old) / np.linalg.norm(old), rel=1e-5)
    assert 0 < report.rel_error < 0.05 and report.max_abs_error == pytest.approx(np.abs(new - old).max())
    w2, s2, _, _ = mlx_quantize(mx.array(old), "mxfp8", 32, 8)  # exactly mx.quantize of the values
    assert np.array_equal(bits(q.weight), bits(w2)) and np.array_equal(bits(q.scales), bits(s2))


@pytest.mark.parametrize(("mode", "group", "nbits"), [("mxfp8", 32, 8), ("mxfp4", 32, 4), ("nvfp4", 16, 4),
                                                      ("affine", 64, 4), ("affine", 128, 8)])
def test_quantized_linear(mode, group, nbits):
    st = bc.cast(weights(rows=64, cols=256, seed=7), mlx_recipe(mode, group, nbits))
    layer = QuantizedLinear(st, bias=mx.zeros((64,)))
    x = mx.array(np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32))
    expected = np.array(x @ bc.dequantize(st, "float32").T)
    assert np.allclose(np.array(layer(x)), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert np.array_equal(bits(layer.weight.data.view(mx.uint8)), bits(st.data.view(mx.uint8)))


# --- PyTorch -> MLX ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["mxfp8", "mxfp4", "nvfp4", "affine4", "affine8"])
def test_torch_mlp_and_its_mlx_twin(target):
    import torch

    from breccia.demo.mlx_flow import BOUNDS, run_mode, torch_mlp

    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(2))
    result = run_mode(target, torch_mlp(), x)
    assert result["twin"] <= 1e-4  # MLX ran exactly the weights breccia wrote
    assert result["format"] <= BOUNDS[target]


def test_state_dict_of_scaled_tensors_and_torchao(tmp_path):
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from breccia.demo.mlx_flow import mlx_twin, torch_mlp

    model = torch_mlp()
    quantize_(model, Int8WeightOnlyConfig())
    sd = dict(model.state_dict())
    fp8 = bc.cast(torch.randn(64, 256), bc.Float8BlockScaling(block_m=128))
    sd["extra.weight"] = fp8
    report = export_mlx_model(sd, tmp_path, "affine", bits=8, group_size=128)
    assert report.actions["fc1.weight"] == report.actions["fc2.weight"] == "repacked"
    assert report.actions["extra.weight"].startswith("requantized")
    assert 0 < report.errors["extra.weight"] < 0.01
    loaded, config = load_mlx_model(tmp_path)
    assert isinstance(loaded["fc1.weight"], bc.ScaledTensor)
    twin = mlx_twin(config)
    twin.load_weights([(k, v) for k, v in mx.load(str(tmp_path / "model.safetensors")).items()
                       if not k.startswith("extra")])
    x = torch.randn(4, 256)
    with torch.no_grad():
        ref = model(x).numpy()
    y = np.array(twin(mx.array(x.numpy())))
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_export_of_a_state_dict_and_convert_needs_a_model(tmp_path):
    import json

    import safetensors.torch

    from breccia.demo.mlx_flow import mlx_twin, torch_mlp

    model = torch_mlp()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"hidden_size": 512}))
    safetensors.torch.save_file(model.state_dict(), tmp_path / "src" / "model.safetensors")
    export_mlx_model(model.state_dict(), tmp_path / "out", "affine", group_size=32, bits=4,
                     config={"hidden_size": 512})
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    assert config["hidden_size"] == 512
    twin = mlx_twin(config)
    twin.load_weights(str(tmp_path / "out" / "model.safetensors"))
    assert twin.fc1.weight.dtype == mx.uint32
    # a model directory for mlx-lm needs an architecture mlx-lm knows: no model_type, no directory
    with pytest.raises(bc.FileFormatError, match="model_type"):
        bc.convert(tmp_path / "src", tmp_path / "bad", to="mlx-affine4-g32")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(bc.RecipeError, match="mlx-affine4"):
        bc.convert(tmp_path / "src", tmp_path / "bad", to="mlx-int3")
