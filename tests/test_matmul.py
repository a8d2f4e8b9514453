"""bc.matmul / bc.linear: every recipe on every backend equals the float64 product of the dequantized
operands within the accumulation bound of the path taken.

The bound (module docstring of breccia.matmul): with ``u = 2**-24`` (float32) and the result rounded
once to its dtype (unit roundoff ``u_out``: 2**-8 for bfloat16, 2**-11 for float16, 0 for float32),

    |y - y64| <= (K + 4) * u * (|A| @ |B|) + u_out * |y64|

where ``A``, ``B`` are the dequantized operands and ``y64`` their float64 product. ``K * u`` is the
worst case of any float32 summation order; the 4 extra roundings cover the MLX path's per-element
dequantization (and NVFP4's global scale, which MLX applies after the product).

On CUDA, the FP8 tensor cores accumulate within a K-chunk of 128 in a reduced-precision fixed-point
accumulator (about 14 significant bits, DeepSeek-V3 report 3.3.2) before cuBLASLt promotes to fp32,
so there the bound is ``(2**-7 + K * u) * (|A| @ |B|) + 2 * u_out * |y64|`` (128 additions of
relative error 2**-14; the second rounding is row-wise scaling applied after an fp32 GEMM).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import FRAMEWORKS, assert_same_bits, requires_cuda, to_framework, to_numpy

import breccia as bc
from breccia.backends import get_backend

mm = importlib.import_module("breccia.matmul")  # the module (bc.matmul is the function)

U32 = 2.0**-24
U_OUT = {"float32": 0.0, "bfloat16": 2.0**-8, "float16": 2.0**-11, "float64": 0.0}

RECIPES = {
    "fp8-tensor": (bc.Float8CurrentScaling(), None),
    "fp8-row": (bc.Float8CurrentScaling(), bc.PerRow()),
    "fp8-e5m2-tensor": (bc.Float8CurrentScaling(fp8_format="E5M2"), None),
    "fp8-torchao-row": (bc.Float8CurrentScaling(convention="torchao"), bc.PerRow()),
    "delayed": (bc.DelayedScaling(amax_history_len=4), None),
    "block-1x128": (bc.Float8BlockScaling(), None),
    "block-128x128-deepseek": (bc.Float8BlockScaling(block_m=128, convention="deepseek"), None),
    "mxfp8": (bc.MXFP8BlockScaling(), None),
    "mxfp8-e5m2-ceil": (bc.MXFP8BlockScaling(fp8_format="E5M2", scale_rounding="ceil"), None),
    "mxfp4": (bc.MXFP4BlockScaling(), None),
    "nvfp4": (bc.NVFP4BlockScaling(), None),
    "int8-row": (bc.Int8Scaling(), None),
    "int8-asym-torchao": (bc.Int8Scaling(symmetric=False, convention="torchao"), None),
    "int4-g128": (bc.Int4Scaling(), None),
    "int4-mlx-g64": (bc.Int4Scaling(group_size=64, symmetric=False, convention="mlx"), None),
    "int8-mlx-g32": (bc.Int8Scaling(group_size=32, symmetric=False, convention="mlx"), None),
}
MLX_FAST = ("mxfp8", "mxfp4", "nvfp4", "int4-mlx-g64", "int8-mlx-g32")

M, K, N = 8, 256, 320  # N > TILE_ROWS and not a multiple of it or of 128: partial tiles and blocks


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Normal values with magnitudes varying by powers of two per 32 columns and per row, so block
    scales differ and a misplaced scale shows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = 2.0 ** rng.integers(-3, 4, size=(*shape[:-1], -(-shape[-1] // 32)))
    x *= np.repeat(cols, 32, axis=-1)[..., : shape[-1]]
    return x.astype(np.float32)


def _cast(x, name: str):
    recipe, layout = RECIPES[name]
    return bc.cast(x, recipe, layout)


def _f64(x) -> np.ndarray:
    if isinstance(x, bc.ScaledTensor):
        x = x.dequantize("float32")
    return np.asarray(to_numpy(x), dtype=np.float64)


def assert_within(y, a, b, transpose_b: bool, out_dtype: str, gemm_error: float = 0.0, roundings: int = 1):
    """``y`` is the product of ``a`` and ``b`` (dequantized, float64) within the stated bound."""
    da, db = _f64(a), _f64(b)
    db = db.T if transpose_b else db
    ref = da @ db
    k = da.shape[-1]
    bound = (gemm_error + (k + 4) * U32) * (np.abs(da) @ np.abs(db))
    bound += roundings * U_OUT[out_dtype] * np.abs(ref)
    got = _f64(y)
    assert got.shape == ref.shape
    assert np.all(np.isfinite(got)), "non-finite result"
    excess = np.abs(got - ref) - bound
    worst = f"{excess.max():.3g} (ref max {np.abs(ref).max():.3g})"
    assert np.all(excess <= 0), f"error exceeds the bound by up to {worst}"


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_linear_both_scaled(framework, recipe):
    x = _cast(to_framework(framework, _data((M, K), 0)), recipe)
    w = _cast(to_framework(framework, _data((N, K), 1)), recipe)
    y = bc.linear(x, w)
    assert get_backend(framework).dtype_name(y) == "float32"
    assert_within(y, x, w, True, "float32")


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_matmul_both_scaled(framework, recipe):
    a = _cast(to_framework(framework, _data((3, M, K), 2)), recipe)
    b = _cast(to_framework(framework, _data((K, N), 3)), recipe)
    y = bc.matmul(a, b)
    assert tuple(y.shape) == (3, M, N)
    assert_within(y, a, b, False, "float32")


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("recipe", ["block-128x128-deepseek", "nvfp4", "int4-mlx-g64"])
def test_one_side_plain(framework, recipe):
    """A plain array on either side; bfloat16 operands give a bfloat16 result (one more rounding)."""
    x_plain = get_backend(framework).astype(to_framework(framework, _data((M, K), 4)), "bfloat16")
    w = _cast(to_framework(framework, _data((N, K), 5)), recipe)
    y = bc.linear(x_plain, w)
    assert get_backend(framework).dtype_name(y) == "float32"  # float32 weight: the wider dtype wins
    assert_within(y, x_plain, w, True, "float32")
    a = _cast(get_backend(framework).astype(to_framework(framework, _data((M, K), 6)), "bfloat16"), recipe)
    b_plain = get_backend(framework).astype(to_framework(framework, _data((K, 64), 7)), "bfloat16")
    y2 = bc.matmul(a, b_plain)
    assert get_backend(framework).dtype_name(y2) == "bfloat16"
    assert_within(y2, a, b_plain, False, "bfloat16")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_vector_operands(framework):
    v = _cast(to_framework(framework, _data((K,), 8)), "fp8-tensor")
    w = _cast(to_framework(framework, _data((N, K), 9)), "block-1x128")
    y = bc.linear(v, w)
    assert tuple(y.shape) == (N,)
    assert_within(y, v, w, True, "float32")
    b = _cast(to_framework(framework, _data((K, N), 10)), "mxfp8")
    y2 = bc.matmul(v, b)
    assert tuple(y2.shape) == (N,)
    assert_within(y2, v, b, False, "float32")


@pytest.mark.parametrize("dtypes", [("bfloat16", "float16", "float32"), ("bfloat16", "float32", "float32"),
                                    ("float16", "float16", "float16"), ("float64", "float32", "float64")])
def test_result_dtype(dtypes):
    a_dtype, b_dtype, expected = dtypes
    assert mm.result_dtype(a_dtype, b_dtype) == expected
    np_backend = get_backend("numpy")
    a = _cast(np_backend.astype(_data((M, K), 11), a_dtype), "mxfp4")
    b = np_backend.astype(_data((N, K), 12), b_dtype)
    y = bc.linear(a, b)
    assert np_backend.dtype_name(y) == expected
    assert_within(y, a, b, True, expected)


@pytest.mark.parametrize("recipe", ["fp8-row", "block-128x128-deepseek", "int4-g128", "fp8-tensor"])
def test_weight_dequantized_one_tile_row_at_a_time(monkeypatch, recipe):
    """The reference path never holds more than one tile row of the weight in float32."""
    x = _cast(_data((M, K), 13), "fp8-tensor")
    w = _cast(_data((3 * mm.TILE_ROWS + 40, K), 14), recipe)
    seen = []
    real = bc.ScaledTensor.dequantize

    def spy(self, dtype=None):
        seen.append(self.shape)
        return real(self, dtype)

    monkeypatch.setattr(bc.ScaledTensor, "dequantize", spy)
    y = bc.linear(x, w)
    weight_rows = [s[0] for s in seen if s[-1] == K and s != x.shape]
    assert len(weight_rows) == 4 and max(weight_rows) <= mm.tile_rows(w) <= mm.TILE_ROWS + 127
    monkeypatch.setattr(bc.ScaledTensor, "dequantize", real)
    assert_within(y, x, w, True, "float32")


@pytest.mark.parametrize("recipe", MLX_FAST)
def test_mlx_quantized_matmul_path(recipe):
    """MX, NVFP4 and affine weights reach mx.quantized_matmul (and agree with the bound above)."""
    from breccia.kernels import mlx_gemm

    w = _cast(to_framework("mlx", _data((N, K), 15)), recipe)
    x = to_framework("mlx", _data((M, K), 16))
    assert mlx_gemm.mlx_weight(w) is not None
    y = mlx_gemm.fast_matmul(mm._operand(x, "x"), mm._operand(w, "w"), "float32", transpose_b=True)
    assert y is not None
    assert_within(y, x, w, True, "float32")


def test_errors():
    x = _data((M, K), 17)
    w = _cast(_data((N, K), 18), "mxfp8")
    with pytest.raises(bc.ShapeError, match="features"):
        bc.linear(_data((M, K + 32), 19), w)
    with pytest.raises(bc.ShapeError, match="2-D"):
        bc.linear(x, _cast(_data((2, N, K), 20), "mxfp8"))
    with pytest.raises(bc.ShapeError, match="do not fit"):
        bc.matmul(x, _data((K + 1, 4), 21))
    with pytest.raises(bc.ShapeError, match="rank"):
        bc.matmul(np.float32(2.0), x)
    with pytest.raises(bc.FrameworkError, match="different frameworks"):
        bc.linear(to_framework("torch", x), w)
    with pytest.raises(bc.NotAnArrayError):
        bc.matmul([[1.0]], w)
    with pytest.raises(bc.DTypeError):
        bc.linear(x.astype(np.int32), w)


# --- CUDA: the fast paths (run on the H100 machine) ---------------------------------------------------

CUDA_BOUND = 2.0**-7
CUDA_PAIRS = [  # (x recipe, w recipe)
    ("fp8-tensor", "fp8-tensor"),
    ("fp8-row", "fp8-row"),
    ("fp8-tensor", "fp8-row"),
    ("fp8-row", "fp8-tensor"),
    ("block-1x128", "block-128x128-deepseek"),
    ("block-1x128", "block-1x128"),
]


def _cuda_operands(framework: str, xr: str, wr: str, dtype: str, m: int = 200, k: int = 512, n: int = 384):
    backend = get_backend(framework)
    device = "cuda" if framework == "torch" else __import__("jax").devices("gpu")[0]
    x = backend.astype(to_framework(framework, _data((m, k), 30), device=device), dtype)
    w = backend.astype(to_framework(framework, _data((n, k), 31), device=device), dtype)
    return _cast(x, xr), _cast(w, wr)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("pair", CUDA_PAIRS, ids=["-".join(p) for p in CUDA_PAIRS])
@pytest.mark.parametrize("m", [200, 1, 4, 17], ids=lambda m: f"m{m}")
def test_torch_cuda_scaled_mm(pair, dtype, m):
    """Every scaled-GEMM kind, at a prefill size and at decode sizes (a few tokens: one row is the
    edge where a K-major scale's strides are ambiguous and cuBLAS has no block-wise kernel)."""
    from breccia.kernels import torch_gemm

    x, w = _cuda_operands("torch", *pair, dtype, m=m)
    fast = torch_gemm.fast_matmul(mm._operand(x, "x"), mm._operand(w, "w"), dtype, transpose_b=True)
    assert fast is not None, "the scaled-GEMM fast path was not taken"
    y = bc.linear(x, w)
    assert y.device.type == "cuda" and get_backend("torch").dtype_name(y) == dtype
    assert_within(y, x, w, True, dtype, gemm_error=CUDA_BOUND, roundings=2)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("recipe", ["fp8-tensor", "block-128x128-deepseek"])
def test_torch_cuda_matmul_form(recipe):
    """``matmul(a, b)`` with ``b`` [K, N]: per-tensor and 128x128 weights are constant along K-tiles."""
    from breccia.kernels import torch_gemm

    xr = "fp8-tensor" if recipe == "fp8-tensor" else "block-1x128"
    a, _ = _cuda_operands("torch", xr, recipe, "bfloat16")
    b = _cast(to_framework("torch", _data((512, 256), 32), device="cuda"), recipe)
    assert torch_gemm.fast_matmul(mm._operand(a, "a"), mm._operand(b, "b"), "float32", False) is not None
    assert_within(bc.matmul(a, b), a, b, False, "float32", gemm_error=CUDA_BOUND)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("pair", CUDA_PAIRS[:4], ids=["-".join(p) for p in CUDA_PAIRS[:4]])
def test_jax_cuda_fp8_gemm(pair, dtype):
    pytest.importorskip("jax")
    import jax

    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("needs JAX with a CUDA GPU")
    from breccia.kernels import jax_gemm

    x, w = _cuda_operands("jax", *pair, dtype, m=256)
    y = bc.linear(x, w)
    assert_within(y, x, w, True, dtype, gemm_error=CUDA_BOUND, roundings=2)
    hlo = jax_gemm._compiled(dtype, True).lower(x, w).compile().as_text()
    assert "__cublas$lt$matmul$f8" in hlo, "XLA did not rewrite the pattern into a cuBLASLt FP8 GEMM"


def _special_values(shape: tuple[int, ...]) -> np.ndarray:
    """Data with a NaN block, an Inf, a zero block and values past every format's range."""
    x = _data(shape, 40) * 8.0
    x[0, 5] = np.nan
    x[1, 0] = np.inf
    x[2, :] = 0.0
    x[3, 7] = -1e6
    return x


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("recipe", ["fp8-tensor", "block-1x128", "mxfp8", "mxfp4", "nvfp4", "int4-mlx-g64"])
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_cuda_cast_bits_equal_cpu(framework, recipe):
    """The CUDA cast (eager torch, jitted XLA) writes the CPU code's bits with NaN, Inf, zero and
    overflowing blocks (tests/test_quantize.py covers every recipe on ordinary data)."""
    from conftest import bits

    x = _special_values((256, 512))
    ref = _cast(x, recipe)
    device = "cuda" if framework == "torch" else __import__("jax").devices("gpu")[0]
    got = _cast(to_framework(framework, x, device=device), recipe)
    for field in ("data", "scale", "global_scale", "zero_point"):
        a, b = bits(getattr(ref, field)), bits(getattr(got, field))
        assert (a is None) == (b is None), field
        if a is not None:
            assert np.array_equal(a, b), f"{field}: {np.count_nonzero(a != b)} of {a.size} bytes differ"
    back = _f64(got.dequantize("float32"))
    assert np.array_equal(np.isnan(back), np.isnan(_f64(ref)))


GRAPH_RECIPES = {
    "deepseek-1x128": bc.Float8BlockScaling(convention="deepseek"),
    "mxfp8": bc.MXFP8BlockScaling(),
    "fp8-tensor": bc.Float8CurrentScaling(),
}


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("name", list(GRAPH_RECIPES))
def test_cast_and_linear_replay_from_a_cuda_graph(name):
    """``bc.cast`` then ``bc.linear`` captured in one ``torch.cuda.graph``: a replay gives the eager
    call's bits, and a replay after new values are copied into the input gives the new input's bits."""
    import torch

    recipe = GRAPH_RECIPES[name]
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn((4, 512), generator=gen, device="cuda", dtype=torch.bfloat16)
    weight = bc.Float8BlockScaling(block_m=128, convention="deepseek") if name == "deepseek-1x128" else recipe
    w = bc.cast(torch.randn((256, 512), generator=gen, device="cuda", dtype=torch.bfloat16), weight)
    fp8_pair = name != "mxfp8"  # MX products have no cuBLAS path on torch: only the cast is captured

    def step():
        st = bc.cast(x, recipe)
        return st, (bc.linear(st, w) if fp8_pair else None)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graph asks
        step()
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, captured_y = step()
    for values in (x.clone(), torch.randn(x.shape, generator=gen, device="cuda", dtype=torch.bfloat16)):
        x.copy_(values)
        graph.replay()
        torch.cuda.synchronize()
        eager, eager_y = step()
        assert_same_bits(captured, eager)
        if fp8_pair:
            assert torch.equal(captured_y, eager_y)
