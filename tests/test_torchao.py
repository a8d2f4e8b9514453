"""torchao bridge: real torchao 0.18 tensors in and out of breccia, decoded bit for bit.

Every comparison is of raw bits (NaN included): ``dequantize`` through breccia and through torchao
must give identical arrays, and ``bc.cast`` with ``convention="torchao"`` must give torchao's codes.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", module="torchao")
import torchao.quantization.granularity as G  # noqa: E402
from conftest import requires_cuda  # noqa: E402
from torchao.dtypes import AffineQuantizedTensor  # noqa: E402
from torchao.prototype.mx_formats import (  # noqa: E402
    MXDynamicActivationMXWeightConfig,
    NVFP4WeightOnlyConfig,
)
from torchao.prototype.mx_formats.config import ScaleCalculationMode  # noqa: E402
from torchao.prototype.mx_formats.mx_tensor import MXTensor  # noqa: E402
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor  # noqa: E402
from torchao.quantization import (  # noqa: E402
    Float8DynamicActivationFloat8WeightConfig,
    Float8WeightOnlyConfig,
    Int4Tensor,
    Int8DynamicActivationInt8WeightConfig,
    Int8DynamicActivationIntxWeightConfig,
    Int8Tensor,
    Int8WeightOnlyConfig,
    IntxUnpackedToInt8Tensor,
    IntxWeightOnlyConfig,
    MappingType,
    quantize_,
)
from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4  # noqa: E402

import breccia as bc  # noqa: E402
from breccia.backends import get_backend  # noqa: E402
from breccia.bridges import (  # noqa: E402
    from_torchao,
    from_torchao_state_dict,
    to_torchao,
    to_torchao_state_dict,
)

DTYPES = [torch.float32, torch.bfloat16]
ASYM = MappingType.ASYMMETRIC


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and raw bits (so NaNs compare too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)
    )


def weight(dtype: torch.dtype, n: int = 48, k: int = 128, device: str = "cpu") -> torch.Tensor:
    """A Linear-like weight with a zero row and a tiny row (the edge cases of every scale rule)."""
    g = torch.Generator().manual_seed(n * k)
    w = torch.randn(n, k, generator=g) * 0.05
    w[3] = 0.0
    w[5] *= 1e-4
    return w.to(device=device, dtype=dtype)


def quantized_linear(config, dtype, device="cpu", n=48, k=128) -> torch.nn.Linear:
    lin = torch.nn.Linear(k, n, bias=False, dtype=dtype, device=device)
    with torch.no_grad():
        lin.weight.copy_(weight(dtype, n, k, device))
    quantize_(lin, config)
    return lin


# config id -> (factory, dtypes it runs in on CPU, class to_torchao gives back, recipe from_torchao infers)
CPU_CONFIGS = {
    "int8-wo-row": (
        lambda: Int8WeightOnlyConfig(),
        DTYPES,
        "Int8Tensor",
        bc.Int8Scaling(convention="torchao"),
    ),
    "int8-wo-g32": (
        lambda: Int8WeightOnlyConfig(granularity=G.PerGroup(32)),
        DTYPES,
        "Int8Tensor",
        bc.Int8Scaling(group_size=32, convention="torchao"),
    ),
    "int8-wo-tensor": (
        lambda: Int8WeightOnlyConfig(granularity=G.PerTensor()),
        DTYPES,
        "Int8Tensor",
        bc.Int8Scaling(convention="torchao"),
    ),
    "int8-dyn": (
        lambda: Int8DynamicActivationInt8WeightConfig(),
        DTYPES,
        "Int8Tensor",
        bc.Int8Scaling(convention="torchao"),
    ),
    "float8-wo": (
        lambda: Float8WeightOnlyConfig(),
        DTYPES,
        "Float8Tensor",
        bc.Float8CurrentScaling(convention="torchao"),
    ),
    "intx-int8": (lambda: IntxWeightOnlyConfig(), DTYPES, "Int8Tensor", bc.Int8Scaling(convention="torchao")),
    "intx-int8-asym": (
        lambda: IntxWeightOnlyConfig(mapping_type=ASYM),
        DTYPES,
        "IntxUnpackedToInt8Tensor",
        bc.Int8Scaling(symmetric=False, convention="torchao"),
    ),
    "intx-int4-g32": (
        lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=G.PerGroup(32)),
        DTYPES,
        "IntxUnpackedToInt8Tensor",
        bc.Int4Scaling(group_size=32, convention="torchao"),
    ),
    "intx-int4-g64-asym": (
        lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=G.PerGroup(64), mapping_type=ASYM),
        DTYPES,
        "IntxUnpackedToInt8Tensor",
        bc.Int4Scaling(group_size=64, symmetric=False, convention="torchao"),
    ),
    "int8-dyn-intx": (
        lambda: Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4),
        DTYPES,
        "IntxUnpackedToInt8Tensor",
        bc.Int4Scaling(group_size=32, convention="torchao"),
    ),
    "mxfp8": (
        lambda: MXDynamicActivationMXWeightConfig(),
        [torch.bfloat16],
        "MXTensor",
        bc.MXFP8BlockScaling(scale_rounding="ceil_f32_log2"),
    ),
    "mxfp4": (
        lambda: MXDynamicActivationMXWeightConfig(
            activation_dtype=torch.float4_e2m1fn_x2, weight_dtype=torch.float4_e2m1fn_x2
        ),
        [torch.bfloat16],
        "MXTensor",
        bc.MXFP4BlockScaling(scale_rounding="ceil_f32_log2"),
    ),
    "nvfp4-wo": (lambda: NVFP4WeightOnlyConfig(), DTYPES, "NVFP4Tensor", bc.NVFP4BlockScaling()),
}
CPU_CASES = [
    pytest.param(name, dtype, id=f"{name}-{str(dtype)[6:]}")
    for name, (_, dtypes, _, _) in CPU_CONFIGS.items()
    for dtype in dtypes
]


@pytest.mark.parametrize("name, dtype", CPU_CASES)
def test_decode_matches_torchao_both_ways(name, dtype):
    """from_torchao -> bc.dequantize == w.dequantize(); to_torchao -> .dequantize() == breccia's."""
    factory, _, _, recipe = CPU_CONFIGS[name]
    w = quantized_linear(factory(), dtype).weight
    st = from_torchao(w)
    assert st.recipe == recipe and st.dtype == dtype and st.shape == tuple(w.shape)
    assert same_bits(bc.dequantize(st), w.dequantize())
    back = to_torchao(st)
    assert same_bits(back.dequantize(), bc.dequantize(st))


@pytest.mark.parametrize("name, dtype", CPU_CASES)
def test_to_torchao_works_as_linear_weight(name, dtype):
    """The rebuilt tensor of the expected class runs as an nn.Linear weight, close to the float math."""
    factory, _, cls, _ = CPU_CONFIGS[name]
    lin = quantized_linear(factory(), dtype)
    st = from_torchao(lin.weight)
    lin.weight = torch.nn.Parameter(to_torchao(st), requires_grad=False)
    assert type(lin.weight).__name__ == cls
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = lin(x).float()
    ref = torch.nn.functional.linear(x.float(), bc.dequantize(st, "float32"))
    # Float8Tensor's all-zero row holds NaN codes (torchao divides 0 by 0): NaN in both, elsewhere finite
    assert torch.equal(y.isnan(), ref.isnan())
    y, ref = y.nan_to_num(), ref.nan_to_num()
    # activations are quantized by the dynamic configs (int8 / MX); the error stays that of 8 or 4 bits
    tol = 0.25 if "mxfp4" in name else 0.05
    assert float((y - ref).abs().max()) <= tol * float(ref.abs().max())


# --- bc.cast(convention="torchao") reproduces torchao's own quantization ---------------------------

CAST_CASES = {
    "int8-row": (lambda: Int8WeightOnlyConfig(), bc.Int8Scaling(convention="torchao"), bc.PerRow()),
    "int8-g32": (
        lambda: Int8WeightOnlyConfig(granularity=G.PerGroup(32)),
        bc.Int8Scaling(group_size=32, convention="torchao"),
        None,
    ),
    "intx-int4-g32": (
        lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=G.PerGroup(32)),
        bc.Int4Scaling(group_size=32, convention="torchao"),
        None,
    ),
    "intx-int4-g32-asym": (
        lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=G.PerGroup(32), mapping_type=ASYM),
        bc.Int4Scaling(group_size=32, symmetric=False, convention="torchao"),
        None,
    ),
    "float8-row": (
        lambda: Float8WeightOnlyConfig(),
        bc.Float8CurrentScaling(convention="torchao"),
        bc.PerRow(),
    ),
}


def torchao_codes(w) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """torchao's (codes as int8/uint8 bits, scale as float32, zero point as float32 or None)."""
    q = w.qdata.view(torch.uint8) if w.qdata.dtype.is_floating_point else w.qdata
    zp = getattr(w, "zero_point", None)
    return q, w.scale.float(), None if zp is None else zp.float()


def breccia_codes(st) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if st.recipe.element_format.name == "INT4":
        q = to_torchao(st).qdata
    else:
        q = st.data if st.data.dtype == torch.int8 else st.data.view(torch.uint8)
    return q, st.scale.float(), st.zero_point


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(CAST_CASES))
def test_cast_torchao_convention_reproduces_quantize(name, dtype):
    check_cast_reproduces_quantize(name, dtype, "cpu")


def check_cast_reproduces_quantize(name: str, dtype: torch.dtype, device: str) -> None:
    """breccia's cast on ``device`` gives torchao's CPU codes and scales.

    The reference is torchao on the CPU on every device: on CUDA, PyTorch divides by a Python number
    as a multiply by its reciprocal (two roundings), so torchao's own CUDA scales can differ by an ulp
    from its CPU ones; breccia divides exactly everywhere.
    """
    factory, recipe, layout = CAST_CASES[name]
    x = weight(dtype)
    w = quantized_linear(factory(), dtype).weight
    st = bc.cast(x.to(device), recipe, layout)
    q2, s2, z2 = (None if a is None else a.cpu() for a in breccia_codes(st))
    q1, s1, z1 = torchao_codes(w)
    rows = torch.ones(x.shape[0], dtype=torch.bool)
    if name.startswith("float8"):
        # torchao's scale is 0 for an all-zero row, and for a tiny one in fp16 (amax / 448 underflows):
        # it then divides by 0 (NaN or +-448 codes); breccia keeps scale 1 there and decodes to 0
        rows = s1.reshape(-1) > 0
        assert int((~rows).sum()) == (2 if dtype == torch.float16 else 1)
        assert bool((s2.reshape(-1)[~rows] == 1.0).all()) and not bc.dequantize(st)[3].any().item()
    assert torch.equal(q1[rows], q2[rows])
    assert same_bits(s1[rows], s2[rows])
    if z1 is not None and z2 is not None:
        assert torch.equal(z1, z2)
    elif not getattr(recipe, "symmetric", True):
        pytest.fail("an asymmetric recipe must produce zero points")


def test_cast_torchao_convention_rounds_scales_in_bf16():
    """The bf16 rule is what makes bf16 inputs match: computing s in float32 gives other scale bits."""
    x = weight(torch.bfloat16)
    w = quantized_linear(Int8WeightOnlyConfig(), torch.bfloat16).weight
    s_fp32 = x.float().abs().amax(dim=1, keepdim=True) / 127.5
    assert not torch.equal(s_fp32, w.scale)  # the float32 formula is not torchao's
    assert torch.equal(bc.cast(x, bc.Int8Scaling(convention="torchao")).scale, w.scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "elem, recipe",
    [
        (torch.float8_e4m3fn, lambda r: bc.MXFP8BlockScaling(scale_rounding=r)),
        (torch.float8_e5m2, lambda r: bc.MXFP8BlockScaling(fp8_format="E5M2", scale_rounding=r)),
        (torch.float4_e2m1fn_x2, lambda r: bc.MXFP4BlockScaling(scale_rounding=r)),
    ],
    ids=["e4m3", "e5m2", "e2m1"],
)
@pytest.mark.parametrize(
    "mode, rounding",
    [
        (ScaleCalculationMode.FLOOR, "floor"),
        (ScaleCalculationMode.RCEIL, "ceil_f32_log2"),
        (ScaleCalculationMode.EVEN, "even"),
    ],
)
def test_cast_mx_matches_to_mx_outside_zero_blocks(elem, recipe, mode, rounding, dtype):
    """MX floor/ceil_f32_log2/even are torchao's FLOOR/RCEIL/EVEN; only all-zero blocks differ (torchao
    2**-127, breccia 1)."""
    x = weight(dtype)
    t = MXTensor.to_mx(x, elem, 32, mode)
    st = bc.cast(x, recipe(rounding))
    assert torch.equal(st.data.view(torch.uint8), t.qdata.view(torch.uint8))
    nonzero = x.reshape(48, 4, 32).abs().amax(-1) > 0
    assert torch.equal(st.scale.view(torch.uint8)[nonzero], t.scale.view(torch.uint8)[nonzero])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cast_nvfp4_scales_match_to_nvfp4(dtype):
    """Same global scale, block scales (outside all-zero blocks) and codes as torchao: both encode
    x * ((1 / g) / s)."""
    x = weight(dtype)
    t = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=x.float().abs().amax() / (448.0 * 6.0))
    st = bc.cast(x, bc.NVFP4BlockScaling())
    assert same_bits(st.global_scale, t.per_tensor_scale)
    nonzero = x.reshape(48, 8, 16).abs().amax(-1) > 0
    assert torch.equal(st.scale.view(torch.uint8)[nonzero], t.scale.view(torch.uint8)[nonzero])
    assert torch.equal(st.data.view(torch.uint8), t.qdata.view(torch.uint8))


# --- scale layouts, group sizes, recipe override ---------------------------------------------------


@pytest.mark.parametrize("shape", [(48, 96), (130, 64), (200, 160)], ids=str)
@pytest.mark.parametrize("kind", ["mxfp8", "mxfp4", "nvfp4", "nvfp4-no-global"])
def test_swizzled_and_plain_scales_give_the_same_tensor(kind, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    if kind.startswith("mx"):
        elem = torch.float8_e4m3fn if kind == "mxfp8" else torch.float4_e2m1fn_x2
        plain, swizzled = (MXTensor.to_mx(x, elem, 32, is_swizzled_scales=s) for s in (False, True))
    else:
        g = None if kind == "nvfp4-no-global" else x.float().abs().amax() / 2688.0
        plain, swizzled = (
            NVFP4Tensor.to_nvfp4(x, per_tensor_scale=g, is_swizzled_scales=s) for s in (False, True)
        )
    assert swizzled.scale.shape != plain.scale.shape  # padded to 128 x 4 tiles
    a, b = from_torchao(plain), from_torchao(swizzled)
    assert torch.equal(a.scale.view(torch.uint8), b.scale.view(torch.uint8))
    assert same_bits(bc.dequantize(b), swizzled.dequantize())
    assert same_bits(to_torchao(b).dequantize(), swizzled.dequantize())


@pytest.mark.parametrize("group", [16, 32, 64, 128])
def test_group_size_is_inferred_from_shapes(group):
    w = quantized_linear(
        IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=G.PerGroup(group)), torch.float32
    )
    st = from_torchao(w.weight)
    expected = bc.PerRow() if group == 128 else bc.PerBlockK(group)
    assert st.layout == expected and st.scale.shape == (48, 128 // group)
    assert same_bits(bc.dequantize(st), w.weight.dequantize())


def test_recipe_override_keeps_bits_and_rejects_other_bits():
    w = quantized_linear(Int8WeightOnlyConfig(), torch.bfloat16).weight  # per row over K = 128
    st = from_torchao(w, recipe=bc.Int8Scaling(group_size=128))
    assert st.recipe == bc.Int8Scaling(group_size=128) and st.layout == bc.PerBlockK(128)
    assert same_bits(bc.dequantize(st), w.dequantize())
    asym = from_torchao(w, recipe=bc.Int8Scaling(symmetric=False, convention="torchao"))
    assert same_bits(bc.dequantize(asym), w.dequantize()) and not asym.zero_point.any()
    with pytest.raises(bc.ShapeError):
        from_torchao(w, recipe=bc.Int8Scaling(group_size=32))
    with pytest.raises(bc.RecipeError, match="Int8Tensor"):
        from_torchao(w, recipe=bc.Int4Scaling(group_size=128))
    with pytest.raises(bc.RecipeError):
        from_torchao(w, recipe=bc.Int8Scaling(symmetric=False, convention="mlx"))
    asym_w = quantized_linear(IntxWeightOnlyConfig(mapping_type=ASYM), torch.float32).weight
    with pytest.raises(bc.RecipeError, match="symmetric=False"):
        from_torchao(asym_w, recipe=bc.Int8Scaling())


def test_float8_blockwise_and_e5m2_round_trip():
    """Float8Tensor blocks of any shape (128x128 weight tiles, 1x64 groups), E5M2 too."""
    from torchao.quantization import Float8Tensor

    x = torch.randn(256, 384, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    for fp8, gran, layout in [
        (torch.float8_e4m3fn, G.PerBlock([128, 128]), bc.PerBlock2D(128, 128)),
        (torch.float8_e5m2, G.PerBlock([1, 64]), bc.PerBlockK(64)),
        (torch.float8_e4m3fn, G.PerTensor(), bc.PerTensor()),
    ]:
        t = Float8Tensor.from_hp(x, float8_dtype=fp8, granularity=gran)
        st = from_torchao(t)
        assert st.layout == layout and st.recipe.fp8_format == {torch.float8_e5m2: "E5M2"}.get(fp8, "E4M3")
        assert same_bits(bc.dequantize(st), t.dequantize())
        assert same_bits(to_torchao(st).dequantize(), t.dequantize())
        assert same_bits(
            bc.cast(
                x, bc.Float8CurrentScaling(fp8_format=st.recipe.fp8_format, convention="torchao"), layout
            ).data.view(torch.uint8),
            t.qdata.view(torch.uint8),
        )


def test_int4_tensor_symmetric_reads_like_intx():
    """Int4Tensor (mslk's CUDA layout: packed low nibble first, scale stored (K/g, N)), built on CPU from
    an IntxUnpackedToInt8Tensor's codes, decodes to exactly what the Intx tensor decodes to."""
    w = quantized_linear(
        IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=G.PerGroup(32)), torch.bfloat16
    ).weight
    q = w.qdata
    packed = ((q[:, 0::2] & 0xF) | (q[:, 1::2] << 4)).view(torch.uint8)
    scale_t = w.scale.t().contiguous()
    t = Int4Tensor(packed, scale_t, torch.zeros_like(scale_t), [1, 32], w.shape)
    st = from_torchao(t)
    assert st.recipe == bc.Int4Scaling(group_size=32, convention="torchao")
    assert same_bits(bc.dequantize(st), w.dequantize())
    with pytest.raises(bc.RecipeError, match="Int4Tensor with zero points"):
        from_torchao(Int4Tensor(packed, scale_t, scale_t * 8, [1, 32], w.shape))


def test_float_zero_points_are_checked():
    """IntxUnpackedToInt8Tensor.to(dtype) turns zero points into floats; whole ones still decode exactly,
    fractional ones in bf16 would not (torchao subtracts in bf16) and raise."""
    w = quantized_linear(
        IntxWeightOnlyConfig(weight_dtype=torch.int4, mapping_type=ASYM), torch.bfloat16
    ).weight
    whole = IntxUnpackedToInt8Tensor(
        w.qdata, w.scale, w.zero_point.to(torch.bfloat16), torch.int4, w.block_size, torch.bfloat16, None
    )
    assert same_bits(bc.dequantize(from_torchao(whole)), whole.dequantize())
    frac = IntxUnpackedToInt8Tensor(
        w.qdata,
        w.scale,
        w.zero_point.to(torch.bfloat16) + 0.3,
        torch.int4,
        w.block_size,
        torch.bfloat16,
        None,
    )
    with pytest.raises(bc.RecipeError, match="float zero points"):
        from_torchao(frac)
    frac32 = IntxUnpackedToInt8Tensor(
        w.qdata, w.scale.float(), w.zero_point.float() + 0.3, torch.int4, w.block_size, torch.float32, None
    )
    assert same_bits(bc.dequantize(from_torchao(frac32)), frac32.dequantize())


# --- what breccia cannot hold, and what torchao cannot hold ----------------------------------------


def test_unrepresentable_torchao_tensors_raise_naming_the_class():
    with pytest.raises(bc.RecipeError, match=r"NF4Tensor: .*table"):
        from_torchao(to_nf4(torch.randn(64, 64), 64, 32))
    int3 = quantized_linear(IntxWeightOnlyConfig(weight_dtype=torch.int3), torch.float32).weight
    with pytest.raises(bc.RecipeError, match=r"IntxUnpackedToInt8Tensor.*int3"):
        from_torchao(int3)
    fp6 = MXTensor.to_mx(torch.randn(32, 64, dtype=torch.bfloat16), "fp6_e2m3", 32)
    with pytest.raises(bc.RecipeError, match=r"MXTensor.*fp6"):
        from_torchao(fp6)
    with pytest.raises(bc.DTypeError, match="torchao tensor subclass"):
        from_torchao(torch.zeros(4, 4))
    with pytest.raises(bc.RecipeError, match="AffineQuantizedTensor"):
        from_torchao(AffineQuantizedTensor())


def test_non_breccia_block_shapes_raise_layout_error():
    from torchao.quantization import Float8Tensor

    x = torch.randn(64, 64)
    per_column = Float8Tensor.from_hp(x, granularity=G.PerBlock([64, 1]))  # a PerBlock2D(64, 1) layout
    assert same_bits(bc.dequantize(from_torchao(per_column)), per_column.dequantize())
    with pytest.raises(bc.LayoutError, match="Int8Tensor: integer"):
        from_torchao(Int8Tensor.from_hp(x, G.PerBlock([64, 1])))
    over_batch = Float8Tensor.from_hp(torch.randn(4, 64, 64), granularity=G.PerBlock([2, 1, 64]))
    with pytest.raises(bc.LayoutError, match="Float8Tensor: blocks of shape"):
        from_torchao(over_batch)


def test_to_torchao_refuses_what_torchao_cannot_hold():
    x = torch.randn(8, 48)
    with pytest.raises(bc.LayoutError, match="partial"):
        to_torchao(bc.cast(x, bc.Int4Scaling(group_size=32)))  # 48 = 32 + 16: a partial block
    mlx_style = bc.cast(torch.randn(8, 64), bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"))
    with pytest.raises(bc.RecipeError, match="MLX"):
        to_torchao(mlx_style)
    with pytest.raises(bc.ShapeError):
        to_torchao(bc.cast(torch.randn(64), bc.NVFP4BlockScaling()))
    with pytest.raises(bc.DTypeError):
        to_torchao(torch.zeros(3))


def test_breccia_recipes_round_trip_through_torchao():
    """Tensors cast by breccia's own recipes become torchao tensors decoding to the same bits."""
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    for recipe, layout in [
        (bc.Int8Scaling(), None),
        (bc.Int8Scaling(group_size=64, symmetric=False), None),
        (bc.Int4Scaling(group_size=32), None),
        (bc.Float8CurrentScaling(), None),
        (bc.Float8BlockScaling(block_m=32, block_k=64, convention="deepseek"), None),
        (bc.MXFP8BlockScaling(fp8_format="E5M2"), None),
        (bc.MXFP4BlockScaling(), None),
        (bc.NVFP4BlockScaling(), None),
    ]:
        st = bc.cast(x, recipe, layout)
        t = to_torchao(st)
        assert same_bits(t.dequantize(), bc.dequantize(st)), recipe
        again = from_torchao(t)
        assert torch.equal(again.data.view(torch.uint8), st.data.view(torch.uint8)), recipe


def test_non_torch_scaled_tensor_moves_to_torch_first():
    st = bc.cast(np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 64), bc.Int4Scaling(group_size=32))
    t = to_torchao(st)
    assert type(t).__name__ == "IntxUnpackedToInt8Tensor"
    assert np.array_equal(t.dequantize().numpy(), bc.dequantize(st))


def test_missing_torchao_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(ImportError, match=r"breccia\[torchao\]"):
        to_torchao(bc.cast(torch.randn(4, 32), bc.Int8Scaling()))


# --- whole models ----------------------------------------------------------------------------------


def plain_mlp(dtype: torch.dtype) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32),
        torch.nn.LayerNorm(32),
    ).to(dtype)


def mixed_model(dtype: torch.dtype) -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = plain_mlp(dtype)
    quantize_(
        model,
        IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=G.PerGroup(32)),
        filter_fn=lambda m, fqn: fqn == "0",
    )
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "2")
    quantize_(model, NVFP4WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "4")
    return model


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_state_dict_round_trip_gives_the_same_model(dtype):
    model = mixed_model(dtype)
    sd = from_torchao_state_dict(model.state_dict())
    assert {k for k, v in sd.items() if isinstance(v, bc.ScaledTensor)} == {
        "0.weight",
        "2.weight",
        "4.weight",
    }
    assert isinstance(sd["0.bias"], torch.Tensor) and isinstance(sd["5.weight"], torch.Tensor)
    sd["5.bias"] = get_backend("torch").to_numpy(sd["5.bias"])  # plain arrays of any framework convert
    fresh = plain_mlp(dtype)
    fresh.load_state_dict(to_torchao_state_dict(sd), assign=True)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(4)).to(dtype)
    assert same_bits(fresh(x), model(x))
    for name in ("0.weight", "2.weight", "4.weight"):
        assert type(fresh.state_dict()[name]) is type(model.state_dict()[name])


def test_state_dict_errors_name_the_key():
    sd = {"embed.weight": torch.zeros(2), "layers.0.weight": to_nf4(torch.randn(64, 64), 64, 32)}
    with pytest.raises(bc.RecipeError, match=r"layers\.0\.weight: NF4Tensor"):
        from_torchao_state_dict(sd)
    bad = {"w": bc.cast(torch.randn(4, 48), bc.Int4Scaling(group_size=32))}
    with pytest.raises(bc.LayoutError, match=r"^w: "):
        to_torchao_state_dict(bad)


# --- CUDA (run on the device machine with the torchao==0.18.0 wheel) ------------------------------

CUDA_CONFIGS = {
    "float8-dyn-tensor": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=G.PerTensor()),
    "float8-dyn-row": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=G.PerRow()),
    "float8-wo": lambda: Float8WeightOnlyConfig(),
    "int8-wo-row": lambda: Int8WeightOnlyConfig(),
    "intx-int4-g32-asym": lambda: IntxWeightOnlyConfig(
        weight_dtype=torch.int4, granularity=G.PerGroup(32), mapping_type=ASYM
    ),
    "nvfp4-wo": lambda: NVFP4WeightOnlyConfig(),
}


# torchao's PerRow float8 config takes bfloat16 weights only
CUDA_CASES = [
    (name, dtype)
    for name in CUDA_CONFIGS
    for dtype in DTYPES
    if not (name == "float8-dyn-row" and dtype != torch.bfloat16)
]


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize(("name", "dtype"), CUDA_CASES, ids=[f"{n}-{d}" for n, d in CUDA_CASES])
def test_cuda_decode_and_linear_match_torchao(name, dtype):
    lin = quantized_linear(CUDA_CONFIGS[name](), dtype, device="cuda")
    w = lin.weight
    st = from_torchao(w)
    assert st.framework == "torch" and st.data.is_cuda
    assert same_bits(bc.dequantize(st), w.dequantize())
    back = to_torchao(st)
    assert same_bits(back.dequantize(), w.dequantize())
    x = torch.randn(8, 128, device="cuda", dtype=dtype)
    y_ref = lin(x)
    lin.weight = torch.nn.Parameter(back, requires_grad=False)
    if name.startswith("float8-dyn"):
        # to_torchao builds a weight-only tensor: a dynamic config's activation quantization does not
        # travel, so the layer now computes x @ dequantize(w).T
        expected = torch.nn.functional.linear(x, w.dequantize())
        torch.testing.assert_close(lin(x), expected, rtol=2e-2, atol=2e-2, equal_nan=True)
    else:
        assert same_bits(lin(x), y_ref)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(CAST_CASES))
def test_cuda_cast_torchao_convention_reproduces_quantize(name, dtype):
    check_cast_reproduces_quantize(name, dtype, "cuda")
