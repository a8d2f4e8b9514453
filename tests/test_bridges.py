"""Bridges. TransformerEngine: against real TE on a CUDA GPU (skipped where TE is absent), plus the
behaviour without TE and the scale-swizzle permutation, which run everywhere."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import requires_cuda

import breccia as bc
from breccia.bridges import from_transformer_engine, to_transformer_engine
from breccia.errors import MissingDependencyError

TE_INSTALLED = importlib.util.find_spec("transformer_engine") is not None


# --- TransformerEngine: without TE ------------------------------------------------------------------


def test_te_bridge_imports_no_framework():
    code = (
        "import sys, breccia.bridges as b, breccia.bridges._transformer_engine\n"
        "assert callable(b.from_transformer_engine) and callable(b.to_transformer_engine)\n"
        "bad = [m for m in ('torch', 'transformer_engine', 'jax', 'mlx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(TE_INSTALLED, reason="TransformerEngine is installed")
@pytest.mark.parametrize("name", ["from_transformer_engine", "to_transformer_engine"])
def test_te_missing_raises_import_error_with_instructions(name):
    fn = {"from_transformer_engine": from_transformer_engine, "to_transformer_engine": to_transformer_engine}
    with pytest.raises(ImportError, match=r"pip install 'breccia\[te\]'") as info:
        fn[name](object())
    assert isinstance(info.value, MissingDependencyError) and isinstance(info.value, bc.BrecciaError)
    assert "NVIDIA GPU" in str(info.value)


def _te_reference_swizzle(compact):
    """TE's ``compute_ref_swizzle<128, 4, true>`` (tests/cpp/operator/test_swizzle.cu), index by index."""
    rows, cols = compact.shape
    out = [0] * (rows * cols)
    for m in range(rows):
        for k in range(cols):
            m_in, tile_m, tile_k = m % 128, m // 128, k // 4
            index = tile_m * 128 * cols + tile_k * 512 + (m_in % 32) * 16 + (m_in // 32) * 4 + k % 4
            out[index] = int(compact[m, k])
    return out


@pytest.mark.parametrize("shape", [(128, 4), (256, 8), (384, 12)])
def test_unswizzle_inverts_te_reference_swizzle(shape):
    torch = pytest.importorskip("torch")
    from breccia.bridges._transformer_engine import _unswizzle

    compact = torch.randint(0, 256, shape, dtype=torch.int32).to(torch.uint8)
    swizzled = torch.tensor(_te_reference_swizzle(compact), dtype=torch.uint8)
    assert torch.equal(_unswizzle(swizzled, *shape), compact)


# --- TransformerEngine: real TE on a CUDA GPU -------------------------------------------------------


@pytest.fixture(scope="module")
def te():
    """``transformer_engine.pytorch`` (imported before ``transformer_engine_torch``)."""
    return pytest.importorskip("transformer_engine.pytorch")


def _same_bits(a, b) -> None:
    import torch

    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    x, y = (v.contiguous().reshape(-1).view(torch.uint8) for v in (a, b))
    mismatches = int((x != y).sum())
    assert mismatches == 0, f"{mismatches} of {x.numel()} bytes differ"


def _input(shape, dtype_name="bfloat16", seed=0):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32) * 3.0
    return x.to(getattr(torch, dtype_name))


def _te_dtype(fmt):
    import transformer_engine_torch as tex

    return getattr(tex.DType, f"kFloat8{fmt}")


def _te_dequantize(t, dtype=None):
    """TE's own dequantize, or None where TE has no kernel for this GPU (MXFP8 before sm_100)."""
    try:
        return t.dequantize(dtype=dtype)
    except RuntimeError as exc:
        if "NOT supported by architectures" in str(exc):
            return None
        raise


def _check_dequantize_matches(t, st):
    """breccia's dequantize equals TE's own, bit for bit, in float32 and in the logical dtype."""
    import torch

    for dtype in (torch.float32, t.dtype):
        reference = _te_dequantize(t, dtype)
        if reference is not None:
            _same_bits(bc.dequantize(st, dtype), reference)


def _same_te_dequantize(a, b):
    x, y = _te_dequantize(a), _te_dequantize(b)
    assert (x is None) == (y is None)
    if x is not None:
        _same_bits(x, y)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _ulps_apart(a, b) -> int:
    import torch

    x, y = (v.reshape(-1).view(torch.int32).long() for v in (a, b))
    return int((x - y).abs().max())


def _quantizer(kind, fmt="E4M3", **kw):
    import torch
    from transformer_engine.pytorch.tensor.float8_blockwise_tensor import Float8BlockQuantizer
    from transformer_engine.pytorch.tensor.float8_tensor import (
        Float8CurrentScalingQuantizer,
        Float8Quantizer,
    )
    from transformer_engine.pytorch.tensor.mxfp8_tensor import MXFP8Quantizer

    dt = _te_dtype(fmt)
    if kind == "current":
        return Float8CurrentScalingQuantizer(dt, torch.device("cuda"), rowwise=True, columnwise=False, **kw)
    if kind == "delayed":
        scale = torch.tensor([kw.get("scale", 32.0)], device="cuda")
        amax = torch.zeros(1, device="cuda")
        return Float8Quantizer(scale, amax, dt, rowwise=True, columnwise=False)
    if kind == "mxfp8":
        return MXFP8Quantizer(dt, rowwise=True, columnwise=kw.get("columnwise", False))
    return Float8BlockQuantizer(
        dt, rowwise=kw.get("rowwise", True), columnwise=kw.get("columnwise", False),
        block_scaling_dim=kw.get("dim", 1), force_pow_2_scales=kw.get("pow2", True),
    )


FP8 = ["E4M3", "E5M2"]


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("fmt", FP8)
@pytest.mark.parametrize("shape", [(256, 512), (3, 40, 96)])
def test_te_float8_current_scaling(te, fmt, shape):
    x = _input(shape)
    t = _quantizer("current", fmt)(x)
    st = from_transformer_engine(t)
    assert st.recipe == bc.Float8CurrentScaling(fp8_format=fmt) and st.layout == bc.PerTensor()
    assert st.data.data_ptr() == t._data.data_ptr()  # the data buffer is shared
    _check_dequantize_matches(t, st)
    # breccia's own Float8CurrentScaling cast: TE's CUDA build divides fp8_max / amax with fast math,
    # so its scale may sit one float32 ulp from the correctly rounded one breccia computes
    ours = bc.cast(x.cpu(), bc.Float8CurrentScaling(fp8_format=fmt))
    assert _ulps_apart(ours.scale, st.scale.cpu()) <= 1
    if _ulps_apart(ours.scale, st.scale.cpu()) == 0:
        _same_bits(ours.data, st.data.cpu())
    # round trip keeps the bytes and TE's dequantize
    back = to_transformer_engine(st)
    _same_bits(back._data, t._data)
    _same_bits(back._scale_inv, t._scale_inv)
    _same_te_dequantize(back, t)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("fmt", FP8)
def test_te_float8_delayed_scaling(te, fmt):
    x = _input((128, 256))
    t = _quantizer("delayed", fmt, scale=16.0)(x)
    st = from_transformer_engine(t)
    assert isinstance(st.recipe, bc.DelayedScaling) and st.recipe.fp8_format == fmt
    _check_dequantize_matches(t, st)
    back = to_transformer_engine(st)
    assert type(back._quantizer).__name__ == "Float8Quantizer"
    _same_bits(back._data, t._data)
    _same_bits(back._scale_inv, t._scale_inv)


def _blackwell() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (10, 0)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.skipif(
    not _blackwell(),
    reason="TE's MXFP8 quantizer needs a CUDA GPU of sm_100+ (on sm_90 TE 2.20.2 returns unwritten buffers)",
)
@pytest.mark.parametrize("fmt", FP8)
@pytest.mark.parametrize("shape", [(256, 512), (2, 64, 96)])
def test_te_mxfp8_from_te(te, fmt, shape):
    x = _input(shape)
    t = _quantizer("mxfp8", fmt)(x)
    st = from_transformer_engine(t)
    assert st.recipe == bc.MXFP8BlockScaling(fp8_format=fmt, scale_rounding="ceil")
    _check_dequantize_matches(t, st)
    ours = bc.cast(x, st.recipe)
    _same_bits(ours.data, st.data)
    _same_bits(ours.scale, st.scale)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("fmt", FP8)
@pytest.mark.parametrize("shape", [(256, 512), (96, 160), (2, 64, 96)])
def test_te_mxfp8_from_breccia(te, fmt, shape):
    """breccia -> MXFP8Tensor -> breccia keeps every byte, also after TE swizzles the scales for GEMM."""
    import transformer_engine_torch as tex

    st = bc.cast(_input(shape), bc.MXFP8BlockScaling(fp8_format=fmt, scale_rounding="ceil"))
    t = to_transformer_engine(st)
    assert type(t).__name__ == "MXFP8Tensor"
    rows, cols = st.scale.numel() // st.scale.shape[-1], st.scale.shape[-1]
    assert tuple(t._rowwise_scale_inv.shape) == (-(-rows // 128) * 128, -(-cols // 4) * 4)
    _check_dequantize_matches(t, st)  # where TE has an MXFP8 dequantize kernel (sm_100+)
    back = from_transformer_engine(t)
    _same_bits(back.data, st.data)
    _same_bits(back.scale, st.scale)
    compact = t._rowwise_scale_inv.clone()
    tex.swizzle_scales_for_gemm_(t)
    assert t._with_gemm_swizzled_scales and not torch_equal(t._rowwise_scale_inv, compact)
    swizzled = from_transformer_engine(t)
    _same_bits(swizzled.data, st.data)
    _same_bits(swizzled.scale, st.scale)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("fmt", FP8)
@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("pow2", [True, False])
@pytest.mark.parametrize("shape", [(256, 512), (264, 640)])
def test_te_float8_blockwise(te, fmt, dim, pow2, shape):
    x = _input(shape)
    t = _quantizer("block", fmt, dim=dim, pow2=pow2)(x)
    st = from_transformer_engine(t)
    block_m = 1 if dim == 1 else 128
    expected = bc.Float8BlockScaling(block_k=128, block_m=block_m, fp8_format=fmt, power_2_scale=pow2)
    assert st.recipe == expected
    _check_dequantize_matches(t, st)
    ours = bc.cast(x.cpu(), expected)  # breccia's shared (eager) code reproduces TE's quantizer
    _same_bits(ours.data, st.data.cpu())
    _same_bits(ours.scale, st.scale.cpu())
    back = to_transformer_engine(st)
    assert back._rowwise_scale_inv.shape == t._rowwise_scale_inv.shape  # TE's padded layout
    _same_bits(back._rowwise_data, t._rowwise_data)
    _same_bits(from_transformer_engine(back).scale, st.scale)
    _same_te_dequantize(back, t)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dim", [1, 2])
def test_te_float8_blockwise_columnwise_only(te, dim):
    x = _input((256, 384))
    rowwise = _quantizer("block", dim=dim)(x)
    colwise = _quantizer("block", dim=dim, rowwise=False, columnwise=True)(x)
    st = from_transformer_engine(colwise)
    _check_dequantize_matches(colwise, st)
    if dim == 2:  # the same 128x128 tiles, so the same bits as the row-wise tensor
        _same_bits(st.data, from_transformer_engine(rowwise).data)
    else:
        assert st.layout == bc.PerBlock2D(128, 1)


def _nvfp4_or_skip(x):
    from transformer_engine.pytorch.tensor.nvfp4_tensor import NVFP4Quantizer

    try:
        return NVFP4Quantizer(rowwise=True, columnwise=False)(x)
    except RuntimeError as exc:  # TE quantizes NVFP4 only on Blackwell (sm_100+)
        pytest.skip(f"this CUDA GPU cannot quantize NVFP4 with TE: {str(exc).splitlines()[0][:200]}")


@pytest.mark.cuda
@requires_cuda
def test_te_nvfp4_from_te(te):
    import torch

    x = _input((256, 512))
    t = _nvfp4_or_skip(x)
    st = from_transformer_engine(t)
    assert st.recipe == bc.NVFP4BlockScaling()
    _same_bits(st.data, t._rowwise_data)
    torch.testing.assert_close(bc.dequantize(st, torch.float32), t.dequantize(dtype=torch.float32),
                               rtol=2.0**-20, atol=0.0)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("shape", [(256, 512), (130, 64)])
def test_te_nvfp4_from_breccia(te, shape):
    """breccia's NVFP4 tensor in TE: TE dequantizes it to breccia's values within a few float32 roundings
    (TE multiplies e4m3 * amax * (1/2688), breccia e4m3 * (amax / 2688))."""
    import torch

    st = bc.cast(_input(shape, "float32"), bc.NVFP4BlockScaling())
    t = to_transformer_engine(st)
    assert type(t).__name__ == "NVFP4Tensor"
    torch.testing.assert_close(t.dequantize(dtype=torch.float32), bc.dequantize(st, torch.float32),
                               rtol=2.0**-20, atol=0.0)
    again = from_transformer_engine(t)
    _same_bits(again.data, st.data)
    _same_bits(again.scale, st.scale)
    torch.testing.assert_close(again.global_scale, st.global_scale, rtol=2.0**-23, atol=0.0)


def _autocast(te, recipe):
    if hasattr(te, "autocast"):
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kind", ["current", "delayed", "block"])
def test_te_linear_forward_with_breccia_weight(te, kind):
    import torch
    from transformer_engine.common import recipe as te_recipe

    out_features, in_features = 256, 512
    w = _input((out_features, in_features), seed=1)
    x = _input((64, in_features), seed=2)
    recipe, te_rec = {
        "current": (bc.Float8CurrentScaling(), te_recipe.Float8CurrentScaling()),
        "delayed": (bc.Float8CurrentScaling(), te_recipe.DelayedScaling()),
        "block": (bc.Float8BlockScaling(block_m=128, power_2_scale=True), te_recipe.Float8BlockScaling()),
    }[kind]
    st = bc.cast(w, recipe)
    if kind == "delayed":
        st = bc.from_buffer(st.data, st.scale, bc.DelayedScaling(), dtype=st.dtype)
    weight = to_transformer_engine(st)
    linear = te.Linear(in_features, out_features, bias=False, params_dtype=torch.bfloat16, device="cuda")
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    with torch.no_grad(), _autocast(te, te_rec):
        y = linear(x)
    reference = x.float() @ bc.dequantize(st, torch.float32).T
    error = float((y.float() - reference).norm() / reference.norm())
    assert y.shape == (64, out_features) and error < 0.08, error
