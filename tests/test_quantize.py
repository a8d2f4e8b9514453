"""cast / dequantize / from_buffer / requantize: same bits on every backend, bounded error, edge input."""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import pytest
from conftest import (
    FRAMEWORKS,
    assert_same_bits,
    assert_same_cuda_bits,
    bits,
    numpy_copy,
    requires_cuda,
    to_framework,
    to_numpy,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import breccia as bc
from breccia.backends import get_backend
from breccia.layouts import scale_shape

# every recipe with each layout it accepts (the default first)
CASES = [
    (bc.Float8CurrentScaling(), bc.PerTensor()),
    (bc.Float8CurrentScaling(), bc.PerRow()),
    (bc.Float8CurrentScaling(fp8_format="E5M2", power_2_scale=True), bc.PerBlockK(32)),
    (bc.Float8CurrentScaling(convention="torchao"), bc.PerBlock2D(16, 32)),
    (bc.DelayedScaling(amax_history_len=4), bc.PerTensor()),
    (bc.Float8BlockScaling(), None),
    (bc.Float8BlockScaling(block_m=128), None),
    (bc.Float8BlockScaling(convention="deepseek"), None),
    (bc.Float8BlockScaling(block_m=128, convention="deepseek", power_2_scale=True), None),
    (bc.MXFP8BlockScaling(), None),
    (bc.MXFP8BlockScaling(fp8_format="E5M2", scale_rounding="ceil"), None),
    (bc.MXFP4BlockScaling(), None),
    (bc.MXFP4BlockScaling(scale_rounding="ceil"), None),
    (bc.NVFP4BlockScaling(), None),
    (bc.Int8Scaling(), None),
    (bc.Int8Scaling(), bc.PerTensor()),
    (bc.Int8Scaling(group_size=64, symmetric=False), None),
    (bc.Int8Scaling(convention="torchao"), None),
    (bc.Int4Scaling(), None),
    (bc.Int4Scaling(group_size=32, symmetric=False, convention="torchao"), None),
    (bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"), None),
]
SHAPES = [(67, 300), (3, 40, 96), (1000,), (256, 256)]
# the recipes whose scale comes from the tensor itself (DelayedScaling's comes from its history)
FROM_DATA = [case for case in CASES if not isinstance(case[0], bc.DelayedScaling)]


def _case_id(case) -> str:
    recipe, layout = case
    fields = ",".join(str(v) for v in recipe.to_dict()["fields"].values())
    return f"{recipe.name}({fields})-{layout!r}"


@functools.cache
def _fits(recipe, layout, shape) -> bool:
    """Whether ``bc.cast`` takes a tensor of ``shape`` under ``recipe`` and ``layout``: it raises
    LayoutError where the layout cannot hold the shape (a 2-D block on a 1-D tensor, MLX's affine
    mode on a last axis that is no multiple of its group size; test_bad_input_raises_breccia_errors checks
    those errors)."""
    try:
        bc.cast(np.zeros(shape, np.float32), recipe, layout)
    except bc.LayoutError:
        return False
    return True


def wide_range(shape, seed=0) -> np.ndarray:
    """Values whose magnitudes span 2**-20 .. 2**20, with a few zero and constant blocks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 21, shape)
    flat = x.reshape(-1)
    flat[: min(40, flat.size)] = 0.0
    flat[40:72] = 3.0
    return x.astype(np.float32)


SAME_BITS_CASES = [
    (recipe, layout, shape) for recipe, layout in CASES for shape in SHAPES if _fits(recipe, layout, shape)
]


@pytest.mark.parametrize(
    ("recipe", "layout", "shape"),
    SAME_BITS_CASES,
    ids=[f"{_case_id((r, la))}-{'x'.join(map(str, s))}" for r, la, s in SAME_BITS_CASES],
)
def test_every_backend_gives_the_same_bits(recipe, layout, shape):
    x = wide_range(shape, seed=len(shape))
    reference = bc.cast(x, recipe, layout)
    expected = bc.dequantize(reference)
    assert reference.data.shape == (
        *shape[:-1],
        (shape[-1] + 1) // 2 if recipe.element_format.packed else shape[-1],
    )
    assert reference.scale.shape == scale_shape(reference.layout, shape)
    for framework in FRAMEWORKS[1:]:
        got = bc.cast(to_framework(framework, x), recipe, layout)
        assert got.framework == framework
        assert_same_bits(got, reference)
        np.testing.assert_array_equal(to_numpy(bc.dequantize(got)), expected)


SLAB_SHAPES = [(67, 300), (5, 40, 96), (1000,)]
SLAB_CASES = [
    (recipe, layout, shape)
    for recipe, layout in CASES
    for shape in SLAB_SHAPES
    if _fits(recipe, layout, shape)
]


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    ("recipe", "layout", "shape"),
    SLAB_CASES,
    ids=[f"{_case_id((r, la))}-{'x'.join(map(str, s))}" for r, la, s in SLAB_CASES],
)
def test_a_cast_in_cpu_slabs_gives_the_bits_of_one_pass(monkeypatch, framework, dtype, recipe, layout, shape):
    """Eager CPU casts go slab by slab (``blockwise._Slabs``); with slabs of 1024 elements these
    shapes cut into many (ragged last slab, slabs along block rows and inside the only block row),
    and a NaN, an Inf and zero blocks are among them."""
    x = wide_range(shape, seed=7).reshape(-1)
    x[100], x[-5] = np.nan, np.inf
    x = x.reshape(shape).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    backend_class = type(get_backend(framework))
    monkeypatch.setattr(backend_class, "chunk_elements", lambda self, a: 0)
    whole = bc.cast(to_framework(framework, x), recipe, layout)
    monkeypatch.setattr(backend_class, "chunk_elements", lambda self, a: 1024)
    slabbed = bc.cast(to_framework(framework, x), recipe, layout)
    assert_same_bits(slabbed, whole)


def _effective_scale(st_: bc.ScaledTensor) -> np.ndarray:
    """Each element's dequantization multiplier, computed independently of breccia (float64)."""
    scale = np.asarray(st_.scale)
    if st_.recipe.scale_format == "E8M0":
        scale = scale.view(ml_dtypes.float8_e8m0fnu)
    s = scale.astype(np.float64)
    if st_.global_scale is not None:
        s = s * float(np.asarray(st_.global_scale))
    block = st_.layout.block_shape(st_.shape)
    for axis, b in enumerate(block):
        s = np.repeat(s, b, axis=axis)
    return s[tuple(slice(0, n) for n in st_.shape)]


def _error_bound(st_: bc.ScaledTensor, x: np.ndarray) -> np.ndarray:
    """Half a step of the element format at each value (plus saturation past its max), times the scale."""
    fmt = st_.recipe.element_format
    s = np.abs(_effective_scale(st_))  # MLX's affine scales are negative in about half the groups
    y = np.abs(x.astype(np.float64)) / s
    if fmt.kind == "int":
        steps = 0.5 if st_.recipe.zero_point_kind is None else 1.0
        bound = steps + np.maximum(0.0, y - fmt.max_value) * (st_.recipe.zero_point_kind is None)
    else:
        clipped = np.minimum(y, fmt.max_value)
        exponent = np.floor(np.log2(np.maximum(clipped, 2.0**fmt.e_min)))
        bound = 2.0 ** (exponent - fmt.mantissa_bits - 1) + np.maximum(0.0, y - fmt.max_value)
    return s * bound * (1 + 2.0**-20) + np.abs(x) * 2.0**-22 + 1e-37


@pytest.mark.parametrize(("recipe", "layout"), FROM_DATA, ids=[_case_id(c) for c in FROM_DATA])
@settings(max_examples=12, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 300),
    spread=st.integers(0, 20),
    seed=st.integers(0, 2**16),
)
def test_round_trip_error_is_within_half_a_step(recipe, layout, rows, cols, spread, seed):
    if not _fits(recipe, layout, (rows, cols)):  # MLX's affine mode needs whole groups
        cols = max(32, cols - cols % 32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * 2.0 ** rng.integers(-spread, spread + 1, (rows, cols))
    x = x.astype(np.float32)
    quantized = bc.cast(x, recipe, layout)
    y = bc.dequantize(quantized).astype(np.float64)
    error = np.abs(y - x)
    bound = _error_bound(quantized, x)
    worst = np.unravel_index(np.argmax(error - bound), x.shape)
    assert np.all(error <= bound), f"at {worst}: x={x[worst]!r} y={y[worst]!r} bound={bound[worst]!r}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("recipe", "layout"), CASES, ids=[_case_id(c) for c in CASES])
def test_zero_blocks_get_a_finite_scale_and_decode_to_zero(framework, recipe, layout):
    x = np.zeros((4, 64), np.float32)
    quantized = bc.cast(to_framework(framework, x), recipe, layout)
    assert np.all(np.isfinite(_effective_scale(numpy_copy(quantized))))
    np.testing.assert_array_equal(to_numpy(bc.dequantize(quantized)), x)


def _block_mask(layout, shape, index) -> np.ndarray:
    """True on every element of the block that holds ``index``."""
    block = layout.block_shape(shape)
    grids = np.meshgrid(*(np.arange(n) // b for n, b in zip(shape, block)), indexing="ij")
    target = tuple(i // b for i, b in zip(index, block))
    return np.logical_and.reduce([g == t for g, t in zip(grids, target)])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("recipe", "layout"), CASES, ids=[_case_id(c) for c in CASES])
def test_nan_poisons_exactly_its_block(framework, recipe, layout):
    x = wide_range((8, 256), seed=3) * np.float32(2.0**-10)
    where = (5, 70)
    with_nan = x.copy()
    with_nan[where] = np.nan
    clean = x.copy()
    clean[where] = 0.0
    got = to_numpy(bc.dequantize(bc.cast(to_framework(framework, with_nan), recipe, layout)))
    expected = to_numpy(bc.dequantize(bc.cast(to_framework(framework, clean), recipe, layout)))
    st_ = bc.cast(clean, recipe, layout)
    block = _block_mask(st_.layout, x.shape, where)
    assert np.all(np.isnan(got[block]))
    np.testing.assert_array_equal(got[~block], expected[~block])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("recipe", "layout"), FROM_DATA, ids=[_case_id(c) for c in FROM_DATA])
def test_inf_saturates_and_leaves_the_rest_untouched(framework, recipe, layout):
    x = wide_range((8, 256), seed=4)
    where = (2, 10)
    with_inf = x.copy()
    with_inf[where] = -np.inf
    clean = x.copy()
    clean[where] = 0.0
    got = to_numpy(bc.dequantize(bc.cast(to_framework(framework, with_inf), recipe, layout)))
    expected = to_numpy(bc.dequantize(bc.cast(to_framework(framework, clean), recipe, layout)))
    others = np.ones(x.shape, bool)
    others[where] = False
    np.testing.assert_array_equal(got[others], expected[others])
    block = _block_mask(bc.cast(clean, recipe, layout).layout, x.shape, where)
    assert np.isfinite(got[where]) and got[where] < 0
    assert got[where] <= np.min(got[block & others]) + 0.0  # the most negative value the block can hold


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("shape", [(0, 64), (4, 0), (0,), (2, 0, 32)])
@pytest.mark.parametrize(
    "recipe",
    [
        bc.Float8CurrentScaling(),
        bc.MXFP8BlockScaling(),
        bc.NVFP4BlockScaling(),
        bc.Int4Scaling(group_size=32),
    ],
    ids=repr,
)
def test_empty_tensors(framework, shape, recipe):
    x = to_framework(framework, np.zeros(shape, np.float32))
    quantized = bc.cast(x, recipe)
    assert quantized.shape == shape
    assert tuple(quantized.scale.shape) == scale_shape(quantized.layout, shape)
    y = bc.dequantize(quantized)
    assert tuple(y.shape) == shape


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_scalar_tensor_per_tensor(framework):
    x = to_framework(framework, np.array(3.25, np.float32))
    quantized = bc.cast(x, bc.Float8CurrentScaling())
    assert quantized.shape == () and tuple(quantized.scale.shape) == ()
    assert float(to_numpy(bc.dequantize(quantized))) == 3.25


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dequantize_returns_the_input_dtype(framework, dtype):
    backend = get_backend(framework)
    fits_fp16 = wide_range((16, 64)) * np.float32(2.0**-6)
    x = backend.astype(to_framework(framework, fits_fp16), dtype)
    quantized = bc.cast(x, bc.MXFP8BlockScaling())
    assert quantized.dtype_name == dtype and quantized.dtype == backend.dtype(dtype)
    assert backend.dtype_name(bc.dequantize(quantized)) == dtype
    assert backend.dtype_name(bc.dequantize(quantized, "float32")) == "float32"
    assert backend.dtype_name(quantized.dequantize(backend.dtype("bfloat16"))) == "bfloat16"


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("bits", [4, 8])
def test_torchao_asymmetric_float16_group_wider_than_float16_keeps_a_finite_scale(framework, bits):
    """torchao computes ``max - min`` in float16, which overflows for a group spanning more than
    65504: its scale is +inf and the group decodes to NaN. breccia keeps that range in float32 there,
    so the group follows the NaN rule (finite values within a step: half for rounding, half for the
    rounded zero point that shifts torchao's grid; +inf saturated)."""
    recipe_type = bc.Int4Scaling if bits == 4 else bc.Int8Scaling
    recipe = recipe_type(group_size=32, symmetric=False, convention="torchao")
    host = np.zeros((2, 32), np.float16)
    host[0, :4] = [60000.0, -60000.0, 1.0, np.inf]
    host[1] = np.linspace(-3, 3, 32)
    st = bc.cast(to_framework(framework, host), recipe)
    scale = to_numpy(st.scale).astype(np.float32)
    assert np.all(np.isfinite(scale))
    y = to_numpy(bc.dequantize(st, "float32"))
    finite = np.isfinite(host)
    step = np.repeat(scale, 32, axis=1)
    assert np.all(np.abs(y[finite] - host[finite].astype(np.float32)) <= step[finite] * 1.01)
    assert y[0, 3] >= y[0, :3].max()  # +inf saturates to the group's largest value


def test_float64_numpy_input_keeps_its_dtype():
    x = wide_range((8, 64)).astype(np.float64)
    assert bc.dequantize(bc.cast(x, bc.Int8Scaling())).dtype == np.float64


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("recipe", "layout"), CASES, ids=[_case_id(c) for c in CASES])
def test_from_buffer_round_trip(framework, recipe, layout):
    shape = (64, 96)
    quantized = bc.cast(to_framework(framework, wide_range(shape)), recipe, layout)
    rebuilt = bc.from_buffer(
        quantized.data,
        quantized.scale,
        recipe,
        quantized.layout,
        shape=shape,
        dtype=quantized.dtype_name,
        global_scale=quantized.global_scale,
        zero_point=quantized.zero_point,
    )
    assert_same_bits(rebuilt, quantized)
    np.testing.assert_array_equal(to_numpy(bc.dequantize(rebuilt)), to_numpy(bc.dequantize(quantized)))


def test_from_buffer_accepts_uint8_bits_for_fp8():
    quantized = bc.cast(wide_range((4, 64)), bc.MXFP8BlockScaling())
    rebuilt = bc.from_buffer(
        np.asarray(quantized.data).view(np.uint8),
        np.asarray(quantized.scale).view(np.uint8),
        bc.MXFP8BlockScaling(),
    )
    assert rebuilt.data.dtype == ml_dtypes.float8_e4m3fn
    np.testing.assert_array_equal(bc.dequantize(rebuilt), bc.dequantize(quantized))


def test_from_buffer_rejects_what_does_not_fit():
    q = bc.cast(wide_range((4, 64)), bc.MXFP8BlockScaling())
    with pytest.raises(bc.ShapeError, match=r"needs \(4, 2\)"):
        bc.from_buffer(q.data, q.scale[:, :1], bc.MXFP8BlockScaling())
    with pytest.raises(bc.DTypeError, match="E4M3 data must be float8_e4m3fn or uint8 bits; got float32"):
        bc.from_buffer(np.zeros((4, 64), np.float32), q.scale, bc.MXFP8BlockScaling())
    with pytest.raises(bc.DTypeError, match="E8M0"):
        bc.from_buffer(q.data, np.ones((4, 2), np.float32), bc.MXFP8BlockScaling())
    with pytest.raises(bc.RecipeError, match="global_scale"):
        nv = bc.cast(wide_range((4, 64)), bc.NVFP4BlockScaling())
        bc.from_buffer(nv.data, nv.scale, bc.NVFP4BlockScaling())
    with pytest.raises(bc.RecipeError, match="takes no zero_point"):
        bc.from_buffer(q.data, q.scale, bc.MXFP8BlockScaling(), zero_point=np.zeros((4, 2), np.float32))
    with pytest.raises(bc.ShapeError, match="expected data shape"):
        i4 = bc.cast(wide_range((4, 64)), bc.Int4Scaling(group_size=32))
        bc.from_buffer(i4.data, i4.scale, bc.Int4Scaling(group_size=32), shape=(4, 66))
    import torch

    with pytest.raises(bc.FrameworkError, match="numpy array but scale is a torch"):
        bc.from_buffer(q.data, torch.zeros(4, 2, dtype=torch.uint8), bc.MXFP8BlockScaling())


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: bc.cast([1.0, 2.0], bc.MXFP8BlockScaling()),
            bc.NotAnArrayError,
            "must be a numpy, jax, mlx or torch",
        ),
        (lambda: bc.cast(np.arange(64), bc.MXFP8BlockScaling()), bc.DTypeError, "dtype int64"),
        (lambda: bc.cast(np.ones((4, 64), np.float32), "MXFP8"), bc.RecipeError, "breccia recipe"),
        (
            lambda: bc.cast(np.ones((4, 64), np.float32), bc.MXFP8BlockScaling(), bc.PerRow()),
            bc.LayoutError,
            r"PerBlockK\(32\)",
        ),
        (
            lambda: bc.cast(np.ones(64, np.float32), bc.Float8BlockScaling(block_m=128)),
            bc.LayoutError,
            "at least 2",
        ),
        (
            lambda: bc.cast(
                np.ones((4, 30), np.float32), bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx")
            ),
            bc.LayoutError,
            "multiple of the group size",
        ),
        (
            lambda: bc.cast(np.ones((4, 64), np.float32), bc.MXFP8BlockScaling(), history=object()),
            bc.RecipeError,
            "takes none",
        ),
        (lambda: bc.dequantize(np.ones(3)), bc.DTypeError, "needs a ScaledTensor"),
        (
            lambda: bc.dequantize(bc.cast(np.ones((2, 32), np.float32), bc.MXFP8BlockScaling()), "int8"),
            bc.DTypeError,
            "float32",
        ),
    ],
)
def test_bad_input_raises_breccia_errors(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert isinstance(info.value, bc.BrecciaError)


def test_delayed_scaling_scales_from_the_history_before_this_tensor():
    recipe = bc.DelayedScaling(amax_history_len=4)
    x = wide_range((8, 64)) * np.float32(2.0**-18)
    first, history = bc.cast_with_history(x, recipe)
    assert float(first.scale.reshape(())) == 1.0  # empty history: scale 1
    np.testing.assert_array_equal(history.amax, [np.abs(x).max(), 0, 0, 0])
    second, history2 = bc.cast_with_history(x, recipe, history=history)
    assert np.float32(second.scale.reshape(())) == np.float32(1) / (np.float32(448) / np.abs(x).max())
    np.testing.assert_array_equal(history2.amax, [np.abs(x).max()] * 2 + [0, 0])
    with pytest.raises(bc.ShapeError, match="amax_history_len"):
        bc.cast(x, bc.DelayedScaling(amax_history_len=8), history=history)
    with pytest.raises(bc.DTypeError, match="history amaxes must be float32; got float64"):
        bc.cast(x, recipe, history=bc.AmaxHistory(history.amax.astype(np.float64)))


def test_delayed_scaling_under_jax_jit_matches_numpy():
    import jax

    recipe = bc.DelayedScaling(amax_history_len=4)
    x = wide_range((8, 64))
    _, history = bc.cast_with_history(x, recipe)
    expected, expected_history = bc.cast_with_history(x, recipe, history=history)
    step = jax.jit(functools.partial(bc.cast_with_history, recipe=recipe))
    got, got_history = step(to_framework("jax", x), history=bc.AmaxHistory(to_framework("jax", history.amax)))
    assert_same_bits(got, expected)
    np.testing.assert_array_equal(np.asarray(got_history.amax), expected_history.amax)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_cast_returns_a_scaled_tensor_for_every_recipe_and_cast_with_history_adds_the_next(framework):
    recipe = bc.DelayedScaling(amax_history_len=4)
    x = to_framework(framework, wide_range((8, 64)))
    _, history = bc.cast_with_history(x, recipe)
    alone = bc.cast(x, recipe, history=history)
    st, next_history = bc.cast_with_history(x, recipe, history=history)
    assert isinstance(alone, bc.ScaledTensor) and isinstance(next_history, bc.AmaxHistory)
    assert_same_bits(alone, st)
    requantized = bc.requantize(st, recipe, history=history)
    assert isinstance(requantized, bc.ScaledTensor) and requantized.dtype_name == st.dtype_name
    for other, _ in CASES:
        if not isinstance(other, bc.DelayedScaling):
            assert isinstance(bc.cast(x, other), bc.ScaledTensor)
            with pytest.raises(bc.RecipeError, match="cast_with_history is DelayedScaling's cast"):
                bc.cast_with_history(x, other)


def test_scaled_tensor_is_a_jax_pytree():
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(wide_range((32, 64)))
    recipe = bc.NVFP4BlockScaling()
    quantized = jax.jit(lambda a: bc.cast(a, recipe))(x)
    assert isinstance(quantized, bc.ScaledTensor)
    assert_same_bits(quantized, bc.cast(wide_range((32, 64)), recipe))
    roundtrip = jax.jit(bc.dequantize)(quantized)
    np.testing.assert_array_equal(np.asarray(roundtrip), np.asarray(bc.dequantize(quantized)))
    leaves = jax.tree_util.tree_leaves(quantized)
    assert len(leaves) == 3  # data, scale, global_scale


def test_repr_and_nbytes():
    quantized = bc.cast(wide_range((128, 256)), bc.MXFP4BlockScaling())
    assert quantized.nbytes == 128 * 128 + 128 * 8
    text = repr(quantized)
    for part in ("MXFP4BlockScaling", "PerBlockK(32)", "shape=128x256", "KiB", "smaller than float32"):
        assert part in text


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_requantize_equals_a_cast_of_the_dequantized_values(framework):
    x = get_backend(framework).astype(to_framework(framework, wide_range((32, 128))), "bfloat16")
    mx8 = bc.cast(x, bc.MXFP8BlockScaling())
    nv4 = bc.requantize(mx8, bc.NVFP4BlockScaling())
    assert nv4.dtype_name == "bfloat16" and nv4.framework == framework
    assert_same_bits(nv4, bc.cast(bc.dequantize(mx8, "float32"), bc.NVFP4BlockScaling()))


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize(("recipe", "layout"), CASES, ids=[_case_id(c) for c in CASES])
def test_cuda_gives_the_same_bits_as_cpu(framework, recipe, layout, dtype):
    """Every recipe on the GPU, in every input dtype (torchao's conventions round to bfloat16/float16
    on the way, which a GPU compiler allowed excess precision may skip)."""
    shape = (67, 300) if _fits(recipe, layout, (67, 300)) else (64, 256)
    x = wide_range(shape, seed=7)
    if dtype != "float32":
        with np.errstate(over="ignore"):  # float16 holds +-Inf where float32 held large values
            x = x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)
    reference = bc.cast(x, recipe, layout)
    if framework == "torch":
        device_x = to_framework("torch", x, device="cuda")
    else:
        import jax

        device_x = jax.device_put(x, jax.devices("gpu")[0])
    got = bc.cast(device_x, recipe, layout)
    assert "cuda" in str(got.device).lower() or "gpu" in str(got.device).lower()
    assert_same_cuda_bits(got, reference, x)
    np.testing.assert_array_equal(to_numpy(bc.dequantize(got)), bc.dequantize(numpy_copy(got)))


@pytest.mark.parametrize(("recipe", "layout"), FROM_DATA, ids=[_case_id(c) for c in FROM_DATA])
def test_cast_inside_mx_compile_gives_the_same_bits(recipe, layout):
    """Inside a user's ``mx.compile`` nothing can be evaluated: the cast takes its general branch."""
    import mlx.core as mx

    x = wide_range((64, 128))
    x[3, 5] = np.nan
    compiled = mx.compile(lambda a: [t for t in bc.cast(a, recipe, layout).arrays if t is not None])
    got = compiled(to_framework("mlx", x))
    expected = [t for t in bc.cast(x, recipe, layout).arrays if t is not None]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(bits(g), bits(e))
