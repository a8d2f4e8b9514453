"""DeepSeek-V3 FP8: the bridge, act_quant's rule, checkpoints, JAX linear and sharding, convert.

References are DeepSeek's own formulas run in real PyTorch (``inference/kernel.py`` is Triton, GPU
only; its arithmetic is transcribed op for op): ``weight_dequant`` is ``fp32(W) * S`` per 128x128 tile,
``act_quant`` is ``s = max(amax, 1e-4) * fl32(1/448)`` (``ue8m0``: ``2**ceil(log2 s)``), ``y = e4m3(x *
fl32(1/s))``: the kernel's two ``div.full.f32`` with ``rcp.approx`` taken as the correctly rounded
reciprocal. On CUDA the kernel itself (``tests/data/deepseek_v3_kernel.py``) is the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import FRAMEWORKS, bits, requires_cuda, to_framework, to_numpy
from peers import deepseek_v3_kernel

import breccia as bc
from breccia import checkpoints, scaling
from breccia.backends import get_backend
from breccia.bridges._deepseek import (
    SCALE_SUFFIX,
    deepseek_recipe,
    from_deepseek_v3,
    infer_layout,
    load_deepseek_v3,
    to_deepseek_v3,
)
from breccia.checkpoints import _slabs as convert_module
from breccia.checkpoints.deepseek_fp8 import is_linear_weight
from breccia.demo import deepseek as demo

E4M3 = ml_dtypes.float8_e4m3fn


# --- DeepSeek's formulas in PyTorch ----------------------------------------------------------------


def torch_weight_dequant(data: np.ndarray, scale: np.ndarray, block: int = 128) -> torch.Tensor:
    """``weight_dequant``: ``y[i, j] = fp32(x[i, j]) * s[i // block, j // block]`` in float32."""
    x = torch.from_numpy(np.array(data).view(np.uint8)).view(torch.float8_e4m3fn)
    s = torch.from_numpy(np.array(scale, dtype=np.float32))
    m, n = x.shape
    expanded = s.repeat_interleave(block, 0)[:m].repeat_interleave(block, 1)[:, :n]
    return x.to(torch.float32) * expanded


def torch_act_quant(x: np.ndarray, block: int = 128, scale_fmt: str | None = None):
    """``act_quant``: per 1 x block group, ``s = max(amax, 1e-4) * fl32(1/448)``, ``y = e4m3(x *
    fl32(1/s))`` (the kernel's ``amax / 448.`` and ``x / s``, each ``div.full.f32``)."""
    t = torch.from_numpy(x).to(torch.float32)
    groups = t.view(*t.shape[:-1], t.shape[-1] // block, block)
    amax = groups.abs().amax(dim=-1).clamp(min=1e-4)
    s = amax * torch.tensor(1.0 / 448.0, dtype=torch.float32)
    if scale_fmt == "ue8m0":
        s = torch.exp2(torch.ceil(torch.log2(s)))
    y = (groups * torch.reciprocal(s).unsqueeze(-1)).to(torch.float8_e4m3fn).view(t.shape)
    return y.view(torch.uint8).numpy(), s.numpy()


def assert_same_floats(got, expected) -> None:
    """float32 arrays equal bit for bit (NaN payloads and -0 included)."""
    expected = expected.numpy() if isinstance(expected, torch.Tensor) else expected
    assert got.dtype == expected.dtype == np.float32 and got.shape == expected.shape
    mismatches = int(np.count_nonzero(got.view(np.uint32) != expected.view(np.uint32)))
    assert mismatches == 0, f"{mismatches} of {got.size} values differ"


def random_fp8(shape, seed=0) -> np.ndarray:
    """Every finite E4M3 code (subnormals, zeros, +-448) at random."""
    codes = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x7E  # 0x7F/0xFF are NaN
    return codes.view(E4M3)


def random_scale(shape, power_of_two: bool, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if power_of_two:
        return np.exp2(rng.integers(-20, 4, shape)).astype(np.float32)
    return (np.exp2(rng.uniform(-20, 4, shape))).astype(np.float32)


def activations(shape, seed=2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    x *= np.exp2(rng.uniform(-18, 8, (*shape[:-1], 1))).astype(np.float32)
    x[0, :128] = 0.0  # a zero group: s = 1e-4 / 448, not NaN
    x[-1, -128:] *= 1e-7  # a group below the 1e-4 floor
    return x


# --- layout inference --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "scale", "layout"),
    [
        ((576, 7168), (5, 56), bc.PerBlock2D(128, 128)),  # MLA kv_a_proj_with_mqa, ragged rows
        ((7168, 2048), (56, 16), bc.PerBlock2D(128, 128)),
        ((200, 300), (2, 3), bc.PerBlock2D(128, 128)),  # ragged both ways
        ((8, 4, 7168), (8, 4, 56), bc.PerBlockK(128)),  # act_quant output [B, T, in]
        ((16, 7168), (16, 56), bc.PerBlockK(128)),
        ((7168,), (56,), bc.PerBlockK(128)),
        ((3, 256, 384), (3, 2, 3), bc.PerBlock2D(128, 128)),  # stacked experts
        ((1, 129), (1, 2), bc.PerBlock2D(128, 128)),  # one row: both fit; the weight reading wins
        ((1, 7168), (1, 56), bc.PerBlock2D(128, 128)),
        ((4, 1, 300), (4, 1, 3), bc.PerBlock2D(128, 128)),
    ],
)
def test_layout_is_inferred_from_the_scale_shape(data, scale, layout):
    assert infer_layout(data, scale, 128) == layout


@pytest.mark.parametrize(
    ("data", "scale", "message"),
    [
        ((576, 7168), (4, 56), "must have shape"),  # a scale that drops the ragged edge tile
        ((576, 7168), (576, 57), "must have shape"),
        ((576, 7168), (5, 56, 1), "must have shape"),
        ((1, 129), (2, 2), "must have shape"),
        ((), (), "at least one axis"),
    ],
)
def test_unfitting_scale_raises(data, scale, message):
    with pytest.raises(bc.ShapeError, match=message):
        infer_layout(data, scale, 128)


def test_a_one_row_weight_reads_as_a_weight_and_decodes_as_either_reading():
    data, scale = random_fp8((1, 129)), random_scale((1, 2), False)
    st = from_deepseek_v3(data, scale)
    assert st.layout == bc.PerBlock2D(128, 128) and st.recipe == deepseek_recipe("weight")
    expected = torch_weight_dequant(data, scale)
    assert_same_floats(np.asarray(bc.dequantize(st)), expected)
    activation = from_deepseek_v3(data, scale, layout=bc.PerBlockK(128))
    assert activation.recipe == deepseek_recipe("activation")
    assert_same_floats(np.asarray(bc.dequantize(activation)), expected)
    with pytest.raises(bc.LayoutError):
        from_deepseek_v3(data, scale, layout=bc.PerBlockK(32))


# --- dequantization equals DeepSeek's weight_dequant bit for bit ------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("shape", "pow2"), [((576, 1000), False), ((256, 384), True), ((130, 7), False)])
def test_weight_dequant_is_bit_exact(framework, shape, pow2):
    data = random_fp8(shape)
    scale = random_scale((-(-shape[0] // 128), -(-shape[1] // 128)), pow2)
    st = from_deepseek_v3(to_framework(framework, data.view(np.uint8)), to_framework(framework, scale))
    assert st.layout == bc.PerBlock2D(128, 128) and st.recipe == deepseek_recipe("weight")
    assert_same_floats(to_numpy(bc.dequantize(st)), torch_weight_dequant(data, scale))


def test_full_size_mla_projection_is_bit_exact():
    data, scale = random_fp8((576, 7168)), random_scale((5, 56), False)
    assert_same_floats(bc.dequantize(from_deepseek_v3(data, scale)), torch_weight_dequant(data, scale))


def test_bf16_dequant_rounds_the_float32_product_once():
    data, scale = random_fp8((256, 256)), random_scale((2, 2), False)
    got = bc.dequantize(from_deepseek_v3(data, scale, dtype="bfloat16"))
    expected = torch_weight_dequant(data, scale).to(torch.bfloat16).view(torch.uint16).numpy()
    np.testing.assert_array_equal(got.view(np.uint16), expected)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_e8m0_scales_are_widened_exactly(framework):
    exponents = np.random.default_rng(3).integers(-30, 10, (2, 3))
    scale = np.exp2(exponents).astype(np.float32)
    data = random_fp8((256, 300))
    e8m0 = to_framework(framework, scale.astype(ml_dtypes.float8_e8m0fnu))
    st = from_deepseek_v3(to_framework(framework, data), e8m0)
    np.testing.assert_array_equal(to_numpy(st.scale), scale)


def test_bad_scales_raise():
    data = random_fp8((256, 256))
    with pytest.raises(bc.DTypeError, match="float32"):
        from_deepseek_v3(data, np.ones((2, 2), np.int32))
    with pytest.raises(bc.FrameworkError, match="numpy array like data"):
        from_deepseek_v3(data, torch.ones(2, 2))
    with pytest.raises(bc.DTypeError):
        from_deepseek_v3(np.zeros((256, 256), np.float32), np.ones((2, 2), np.float32))


# --- act_quant -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("scale_fmt", [None, "ue8m0"])
def test_act_quant_matches_deepseek(framework, scale_fmt):
    x = activations((6, 1024))
    codes, scale = torch_act_quant(x, scale_fmt=scale_fmt)
    st = bc.cast(to_framework(framework, x), deepseek_recipe("activation", scale_fmt=scale_fmt))
    assert st.layout == bc.PerBlockK(128)
    np.testing.assert_array_equal(bits(st.data), codes.reshape(-1))
    np.testing.assert_array_equal(to_numpy(st.scale).view(np.uint32), scale.view(np.uint32))
    data, s = to_deepseek_v3(st)
    back = from_deepseek_v3(data, s, scale_fmt=scale_fmt)
    assert back.recipe == st.recipe and back.layout == st.layout


#: The largest ``i`` for which DeepSeek's ``act_quant`` (``scale_fmt="ue8m0"``) gives the scale
#: ``s = 2**k * (1 + i * 2**-23)`` the exponent ``k`` rather than ``k + 1``, by ``k``: measured on an
#: H200 with its kernel's own ``ceil(log2 s)`` (``scripts/probe_deepseek_division.py``).
KERNEL_KEEPS = {-20: 5, -9: 2, 0: 0, 7: 1}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_ue8m0_exponent_is_the_kernels_float32_log2(framework):
    """DeepSeek's UE8M0 exponent is ``ceil(fl32(log2 s))``: a scale a few ulps above a power of two
    keeps that power (``x / s`` then saturates at 448, as in the kernel). breccia's exact rule for it
    agrees with a correctly rounded float32 ``log2`` over every exponent a scale can have and the
    first 64 mantissas above each power, and with the kernel's measured edges."""
    k = np.arange(-23, 120)[:, None]
    s = (np.exp2(k) * (1 + np.arange(64)[None, :] * 2.0**-23)).astype(np.float32)  # exact
    backend = get_backend(framework)
    got = to_numpy(scaling.ceil_f32_log2(backend.xp, backend.pow2, to_framework(framework, s)))
    expected = np.ceil(np.log2(s.astype(np.float64)).astype(np.float32))
    np.testing.assert_array_equal(got, expected)
    for power, largest in KERNEL_KEEPS.items():
        assert np.flatnonzero(got[power + 23] == power).tolist() == list(range(largest + 1))


def test_to_deepseek_refuses_other_recipes():
    x = activations((4, 256))
    with pytest.raises(bc.RecipeError, match="requantize"):
        to_deepseek_v3(bc.cast(x, bc.MXFP8BlockScaling()))
    with pytest.raises(bc.LayoutError, match="requantize"):
        to_deepseek_v3(bc.cast(x, bc.Float8CurrentScaling()))
    with pytest.raises(bc.DTypeError):
        to_deepseek_v3(x)
    with pytest.raises(bc.RecipeError):
        deepseek_recipe(scale_fmt="e8m0")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_to_deepseek_round_trips_the_same_arrays(framework):
    w = to_framework(framework, np.random.default_rng(4).standard_normal((300, 260)).astype(np.float32))
    st = bc.cast(w, deepseek_recipe("weight"))
    data, scale = to_deepseek_v3(st)
    assert get_backend(framework).dtype_name(scale) == "float32"
    assert np.array_equal(bits(data), bits(st.data)) and np.array_equal(bits(scale), bits(st.scale))
    np.testing.assert_array_equal(bits(from_deepseek_v3(data, scale).data), bits(st.data))


# --- JAX: linear under jit, and sharding on 8 devices ----------------------------------------------


def test_jax_linear_with_fp8_weight_under_jit():
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    w = bc.cast(jnp.asarray(rng.standard_normal((576, 300)).astype(np.float32)), deepseek_recipe("weight"))
    x = jnp.asarray(rng.standard_normal((9, 300)).astype(np.float32))
    got = jax.jit(bc.linear)(x, w)
    ref = np.asarray(x) @ torch_weight_dequant(np.asarray(w.data), np.asarray(w.scale)).numpy().T
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    xq = jax.jit(lambda x: bc.cast(x, deepseek_recipe("activation")))(x)
    both = jax.jit(bc.linear)(xq, w)
    assert float(jnp.linalg.norm(both - got) / jnp.linalg.norm(got)) < 0.05


SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import breccia as bc
    from breccia.bridges import deepseek_recipe
    from breccia.sharding import shard_jax

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    w = bc.cast(jnp.asarray(rng.standard_normal((1024, 1024)).astype(np.float32)), deepseek_recipe("weight"))
    x = jnp.asarray(rng.standard_normal((16, 1024)).astype(np.float32))
    linear = jax.jit(bc.linear)
    single = np.asarray(linear(x, w))
    tp = Mesh(np.array(jax.devices()), ("tp",))

    col = shard_jax(w, tp, P("tp", None))  # column parallel: 128 output rows (one tile row) per device
    assert col.data.sharding.spec == col.scale.sharding.spec == P("tp", None)
    assert {s.data.shape for s in col.data.addressable_shards} == {(128, 1024)}
    assert {s.data.shape for s in col.scale.addressable_shards} == {(1, 8)}
    out = linear(x, col)
    assert out.sharding.spec == P(None, "tp"), out.sharding
    # XLA's CPU dot sums in a shape-dependent order, so the product agrees to float32 rounding;
    # the dequantized weight, breccia's part, is bit for bit the single-device one
    tol = dict(rtol=1e-5, atol=1e-6 * np.abs(single).max())
    np.testing.assert_allclose(np.asarray(out), single, **tol)
    dq = jax.jit(bc.dequantize)
    assert dq(col).sharding.spec == P("tp", None)
    np.testing.assert_array_equal(np.asarray(dq(col)).view(np.uint32), np.asarray(dq(w)).view(np.uint32))
    hlo = dq.lower(col).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo  # each device dequantizes its own tiles

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("dp", "tp"))
    row = shard_jax(w, mesh, P(None, "tp"))  # row parallel: 256 input columns per device, psum after
    xs = jax.device_put(x, NamedSharding(mesh, P("dp", "tp")))
    np.testing.assert_allclose(np.asarray(linear(xs, row)), single, **tol)
    act = jax.jit(lambda x: bc.cast(x, deepseek_recipe("activation")))
    same = np.asarray(act(xs).data).view(np.uint8) == np.asarray(act(x).data).view(np.uint8)
    assert same.all()

    for spec, m in [(P(None, "tp"), tp), (P("tp", None), Mesh(np.array(jax.devices()[:4]), ("tp",)))]:
        try:
            shard_jax(bc.cast(jnp.ones((384, 768)), deepseek_recipe("weight")), m, spec)
        except bc.ShapeError as exc:
            assert "whole-block" in str(exc)
        else:
            raise AssertionError(f"{spec} on {m.shape} cut a 128x128 block")
    print("SHARDING OK")
    """
)


def test_tensor_parallel_linear_on_8_cpu_devices_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "SHARDING OK" in result.stdout, result.stderr[-3000:]


# --- checkpoints -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("deepseek") / "fp8"
    masters = demo.write_checkpoint(str(path))
    return str(path), masters


def _weight_map(path):
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        return json.load(f)["weight_map"]


def test_synthetic_checkpoint_has_the_deepseek_layout(checkpoint):
    path, _ = checkpoint
    weight_map = _weight_map(path)
    assert len(set(weight_map.values())) == 3
    scales = [n for n in weight_map if n.endswith(SCALE_SUFFIX)]
    assert scales and all(weight_map[n] != weight_map[n[: -len(SCALE_SUFFIX)]] for n in scales)
    from safetensors import safe_open

    name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
    with safe_open(os.path.join(path, weight_map[name]), "pt") as f:
        weight = f.get_tensor(name)
        assert weight.dtype == torch.float8_e4m3fn and tuple(weight.shape) == (576, 256)
    with safe_open(os.path.join(path, weight_map[name + SCALE_SUFFIX]), "pt") as f:
        scale = f.get_tensor(name + SCALE_SUFFIX)
        assert scale.dtype == torch.float32 and tuple(scale.shape) == (5, 2)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_pairs_weights_with_scales_in_other_shards(checkpoint, framework):
    path, masters = checkpoint
    model = load_deepseek_v3(path, framework=framework)
    assert set(model) == set(masters) and not any(n.endswith(SCALE_SUFFIX) for n in model)
    name = "model.layers.0.mlp.experts.2.down_proj.weight"
    st = model[name]
    assert isinstance(st, bc.ScaledTensor) and st.framework == framework and st.shape == (256, 192)
    expected = torch_weight_dequant(to_numpy(model.raw(name)), to_numpy(model.raw(name + SCALE_SUFFIX)))
    assert_same_floats(to_numpy(bc.dequantize(st)), expected)
    norm = model["model.layers.0.post_attention_layernorm.weight"]
    assert not isinstance(norm, bc.ScaledTensor) and to_numpy(norm).dtype == ml_dtypes.bfloat16
    bias = model["model.layers.0.mlp.gate.e_score_correction_bias"]
    assert to_numpy(bias).dtype == np.float32
    assert not isinstance(model["model.layers.0.mlp.gate.weight"], bc.ScaledTensor)
    with pytest.raises(KeyError, match="raw"):
        model[name + SCALE_SUFFIX]
    model.close()


def test_load_one_file_written_by_safetensors_torch(tmp_path):
    from safetensors.torch import save_file

    w = torch.randn(300, 200)
    st = bc.cast(w, deepseek_recipe("weight"))
    data, scale = to_deepseek_v3(st)
    tensors = {"a.weight": data, "a.weight_scale_inv": scale, "n.weight": torch.ones(200).bfloat16()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    model = load_deepseek_v3(str(tmp_path / "model.safetensors"), framework="torch")
    assert sorted(model) == ["a.weight", "n.weight"]
    assert torch.equal(bc.dequantize(model["a.weight"]), bc.dequantize(st))


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"a.weight": torch.zeros(128, 128, dtype=torch.float8_e4m3fn)}, "'a.weight' has no 'a.weight_sc"),
        ({"b.weight_scale_inv": torch.ones(1, 1)}, "has no tensor 'b.weight'"),
        ({"c.weight": torch.zeros(128, 128), "c.weight_scale_inv": torch.ones(1, 1)}, "not FP8"),
    ],
)
def test_broken_checkpoints_name_the_tensor(tmp_path, tensors, message):
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(bc.FileFormatError, match=message):
        model = load_deepseek_v3(str(tmp_path / "model.safetensors"))
        [model[name] for name in model]


def test_moe_block_in_jax_matches_float32(checkpoint):
    import jax
    import jax.numpy as jnp

    path, masters = checkpoint
    model = load_deepseek_v3(path, framework="jax")
    x = jnp.asarray(np.random.default_rng(6).standard_normal((16, 256)).astype(np.float32))
    y8 = np.asarray(jax.jit(demo.moe_block)(demo.moe_params(model), x))
    y32 = np.asarray(demo.moe_block(demo.moe_params(masters), x))
    assert np.linalg.norm(y8 - y32) / np.linalg.norm(y32) < 0.1
    # the same computation emulated in float32 numpy: act quant-dequant, then x @ dequant(W).T
    emulated = {k: v for k, v in demo.moe_params(model).items()}
    act = deepseek_recipe("activation")

    def emulate(h, w):
        if isinstance(w, bc.ScaledTensor):
            return np.asarray(bc.dequantize(bc.cast(h, act))) @ np.asarray(bc.dequantize(w)).T
        return h @ np.asarray(w, np.float32).T

    def expert(h, ws):
        g = emulate(h, ws[0])
        return emulate(g / (1 + np.exp(-g)) * emulate(h, ws[1]), ws[2])

    xs = np.asarray(x)
    h = xs / np.sqrt(np.mean(xs * xs, -1, keepdims=True) + 1e-6) * np.asarray(emulated["norm"], np.float32)
    scores = 1 / (1 + np.exp(-(h @ np.asarray(emulated["gate"], np.float32).T)))
    chosen = np.argsort(-(scores + np.asarray(emulated["bias"])), axis=-1)[:, :2]
    picked = np.take_along_axis(scores, chosen, -1)
    picked = picked / picked.sum(-1, keepdims=True) * 2.5
    y = expert(h, emulated["shared"])
    for e, ws in enumerate(emulated["experts"]):
        y = y + (picked * (chosen == e)).sum(-1, keepdims=True) * expert(h, ws)
    np.testing.assert_allclose(y8, y, rtol=1e-4, atol=1e-4 * np.abs(y).max())


# --- convert -------------------------------------------------------------------------------------------


def convert(src, dst, target, progress=False):
    bc.convert(src, dst, to=target, progress=progress)


def parse_target(text):
    """The recipe a target casts linear weights with (None for a float target)."""
    target = checkpoints.parse_target(text)
    if target.convention == "deepseek-fp8":
        return deepseek_recipe("weight", 128, target.options["scale_fmt"])
    return target.options.get("recipe")


def test_convert_to_bf16_is_exact_streamed_and_indexed(checkpoint, tmp_path, capsys, monkeypatch):
    from safetensors import safe_open

    monkeypatch.setattr(convert_module, "SLAB_ELEMENTS", 1 << 14)  # slabs of 128 rows in this tiny model
    path, masters = checkpoint
    convert(path, str(tmp_path / "warm-up"), "bf16", progress=False)  # imports and caches
    dst = str(tmp_path / "bf16")
    tracemalloc.start()
    convert(path, dst, "bf16", progress=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "convert" in capsys.readouterr().err  # the tqdm bar
    weight_map = _weight_map(dst)
    assert set(weight_map) == set(masters)
    shard_sizes = {}
    for name, shard in weight_map.items():
        with safe_open(os.path.join(dst, shard), "pt") as f:
            assert name in f.keys()
        shard_sizes[shard] = os.path.getsize(os.path.join(dst, shard))
    with open(os.path.join(dst, "config.json")) as f:
        assert "quantization_config" not in json.load(f)
    source = load_deepseek_v3(path)
    for name in source:
        with safe_open(os.path.join(dst, weight_map[name]), "pt") as f:
            got = f.get_tensor(name)
        if source.is_quantized(name):
            expected = torch_weight_dequant(source.raw(name), source.raw(name + SCALE_SUFFIX))
            assert got.dtype == torch.bfloat16
            assert torch.equal(got.view(torch.int16), expected.to(torch.bfloat16).view(torch.int16))
        else:
            assert np.array_equal(bits(got), bits(source[name]))
    # about one output shard: the largest one, plus a few float32 temporaries of one 128-row slab
    # (the bench measures 64 MiB shards)
    assert peak < 1.25 * max(shard_sizes.values()) + (512 << 10), (peak, shard_sizes)


@pytest.mark.parametrize(
    "recipe",
    [deepseek_recipe("weight"), bc.MXFP8BlockScaling(), bc.NVFP4BlockScaling(), bc.Float8CurrentScaling(),
     bc.Int4Scaling(symmetric=False), bc.Float8BlockScaling(block_m=96, block_k=96)],
)
def test_slab_by_slab_conversion_gives_the_whole_tensor_bits(recipe, monkeypatch):
    monkeypatch.setattr(convert_module, "SLAB_ELEMENTS", 1000)
    source = bc.cast(activations((600, 300)), deepseek_recipe("weight"))
    assert len(list(source.row_blocks(convert_module.SLAB_ELEMENTS))) == 5
    values = convert_module.dequantize_rows(source, "float32")
    got = convert_module.cast_rows(lambda rows: values[rows], source.shape, recipe, 128)
    expected = bc.cast(bc.dequantize(source), recipe)
    for a, b in zip(got.arrays, expected.arrays):
        assert (a is None and b is None) or np.array_equal(bits(a), bits(b))
    whole = bc.dequantize(source, "bfloat16").view(np.uint16)
    assert np.array_equal(convert_module.dequantize_rows(source, "bfloat16").view(np.uint16), whole)


def test_convert_bf16_back_to_deepseek_fp8_and_to_mxfp8(checkpoint, tmp_path):
    path, masters = checkpoint
    bf16 = str(tmp_path / "bf16")
    convert(path, bf16, "bf16", progress=False)
    fp8 = str(tmp_path / "fp8")
    convert(bf16, fp8, "deepseek-fp8", progress=False)
    back = load_deepseek_v3(fp8)
    source = load_deepseek_v3(bf16)
    name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
    assert back.is_quantized(name) and not back.is_quantized("lm_head.weight")
    expected = bc.cast(source[name], deepseek_recipe("weight"))
    assert np.array_equal(bits(back[name].data), bits(expected.data))
    assert np.array_equal(bits(back[name].scale), bits(expected.scale))
    with open(os.path.join(fp8, "config.json")) as f:
        assert json.load(f)["quantization_config"]["weight_block_size"] == [128, 128]

    mx = str(tmp_path / "mxfp8")
    convert(path, mx, "MXFP8BlockScaling(scale_rounding='ceil')", progress=False)
    from breccia.bridges._huggingface import open_safetensors

    with open_safetensors(mx) as m:
        st = m[name]
        assert isinstance(st, bc.ScaledTensor) and st.recipe == bc.MXFP8BlockScaling(scale_rounding="ceil")
        assert set(_weight_map(mx)) >= {name + ".data", name + ".scale"}
        w = masters[name]
        assert np.linalg.norm(np.asarray(bc.dequantize(st, "float32")) - w) / np.linalg.norm(w) < 0.1


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("bf16", None),
        ("MXFP8BlockScaling", bc.MXFP8BlockScaling()),
        ("Float8BlockScaling(block_m=128, convention='deepseek')", deepseek_recipe("weight")),
        ("deepseek-fp8", deepseek_recipe("weight")),
        ("Int4Scaling(group_size=64)", bc.Int4Scaling(group_size=64)),
    ],
)
def test_parse_target(target, expected):
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    "target", ["fp16", "__import__('os').system('true')", "MXFP8BlockScaling(1)", "Int4Scaling(group_size=x)",
               "Int4Scaling(bits=3)", "DelayedScaling"]
)
def test_parse_target_rejects(target):
    with pytest.raises(bc.RecipeError):
        parse_target(target)


def test_linear_weight_rule():
    assert is_linear_weight("model.layers.3.mlp.experts.7.gate_proj.weight", (2048, 7168))
    assert not is_linear_weight("model.layers.3.mlp.gate.weight", (256, 7168))
    assert not is_linear_weight("model.layers.3.input_layernorm.weight", (7168,))
    assert not is_linear_weight("model.embed_tokens.weight", (129280, 7168))
    assert not is_linear_weight("lm_head.weight", (129280, 7168))


def test_cli_convert(checkpoint, tmp_path, capsys):
    from breccia.cli import main

    path, _ = checkpoint
    assert main(["convert", path, str(tmp_path / "out"), "--to", "bf16", "--no-progress"]) == 0
    assert main(["convert", path, str(tmp_path / "bad"), "--to", "fp7"]) == 2
    assert "unknown conversion target" in capsys.readouterr().err


def test_demo_section_holds():
    import io

    from breccia.demo import run_demo

    out = io.StringIO()
    assert run_demo(["deepseek"], out) == 0, out.getvalue()


# --- CUDA (run on the GPU machine) ------------------------------------------------------------------


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_cuda_dequant_and_act_quant_match_cpu(framework):
    import jax

    device = torch.device("cuda") if framework == "torch" else jax.devices("gpu")[0]
    data, scale = random_fp8((576, 7168)), random_scale((5, 56), False)
    st = from_deepseek_v3(to_framework(framework, data, device), to_framework(framework, scale, device))
    assert_same_floats(to_numpy(bc.dequantize(st)), torch_weight_dequant(data, scale))
    x = activations((64, 7168))
    for scale_fmt in (None, "ue8m0"):
        codes, s = torch_act_quant(x, scale_fmt=scale_fmt)
        q = bc.cast(to_framework(framework, x, device), deepseek_recipe("activation", scale_fmt=scale_fmt))
        np.testing.assert_array_equal(bits(q.data), codes.reshape(-1))
        np.testing.assert_array_equal(to_numpy(q.scale), s)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("scale_fmt", [None, "ue8m0"])
@pytest.mark.parametrize(("rows", "dtype"), [(1, "bfloat16"), (64, "float32"), (4096, "bfloat16")])
def test_cuda_cast_reproduces_deepseek_act_quant_kernel(rows, dtype, scale_fmt):
    """breccia's torch and JAX CUDA casts give DeepSeek's Triton ``act_quant`` bits exactly (the same
    ``div.full.f32``, and its UE8M0 exponent at every power-of-two edge); the CPU gives its scales
    exactly and its codes except where ``rcp.approx(s)`` is not the correctly rounded reciprocal and
    ``x / s`` lies on an FP8 rounding boundary: each such code is one step from the kernel's, and they
    are rare (4 of 117,440,512 at 16384x7168)."""
    import jax

    kernel = deepseek_v3_kernel()
    x = torch.randn(rows, 7168, generator=torch.Generator().manual_seed(rows), dtype=torch.float32)
    x[0, :128] = 0.0  # a zero group: the 1e-4 floor
    x[-1, 128:256] *= 1e-6  # a group below the floor
    if dtype == "float32":  # groups whose amax lies a few ulps above 448 * 2**k, for every k a scale has
        edges = 448.0 * np.exp2(np.arange(-23, 33))[None, :] * (1 + np.arange(8)[:, None] * 2.0**-23)
        x[1:9] *= 1e-9
        x[1:9, 0::128] = torch.from_numpy(edges.astype(np.float32))
    x = x.to(getattr(torch, dtype))
    codes, scale = kernel.act_quant(x.cuda(), 128, scale_fmt)
    codes, scale = codes.view(torch.uint8).cpu().numpy(), scale.cpu().numpy()
    recipe = deepseek_recipe("activation", scale_fmt=scale_fmt)
    host = x.float().numpy().astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    for device in (torch.device("cuda"), jax.devices("gpu")[0]):
        framework = "torch" if isinstance(device, torch.device) else "jax"
        st = bc.cast(to_framework(framework, host, device), recipe)
        np.testing.assert_array_equal(to_numpy(st.scale).view(np.uint32), scale.view(np.uint32))
        np.testing.assert_array_equal(bits(st.data).reshape(codes.shape), codes)
    cpu = bc.cast(x, recipe)
    np.testing.assert_array_equal(to_numpy(cpu.scale).view(np.uint32), scale.view(np.uint32))
    got = bits(cpu.data).reshape(codes.shape)
    differ = got != codes
    assert int(differ.sum()) <= max(1, codes.size // 10**6), f"{int(differ.sum())} codes differ"
    steps = np.abs(got[differ].astype(np.int16) - codes[differ].astype(np.int16))
    assert np.all(steps == 1), steps
