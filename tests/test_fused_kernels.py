"""The fused GPU cast/dequantize kernels give the bits of the shared (numpy) path.

Three places run them: Pallas' interpreter on the CPU (the JAX kernel bodies, so CI checks their
logic on every run), and on a CUDA GPU the Triton kernels through torch and the Pallas ones through
JAX (there the rounding of every instruction is checked too). Inputs carry what the kernels must get
right: ragged edges, batch axes, values over 2**-20..2**20, zero blocks, NaN and +-Inf.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_cuda_bits, bits, numpy_copy, requires_cuda, to_framework, to_numpy

import breccia as bc
from breccia.backends import get_backend
from breccia.formats import E2M1
from breccia.kernels._cast_plan import cast_plan, dequantize_plan

KERNEL_CASES = [
    (bc.Float8CurrentScaling(), bc.PerTensor(), (67, 300)),
    (bc.Float8CurrentScaling(fp8_format="E5M2"), bc.PerTensor(), (4, 64, 128)),
    (bc.DelayedScaling(amax_history_len=4), bc.PerTensor(), (67, 300)),
    (bc.DelayedScaling(amax_history_len=3), bc.PerTensor(), (33, 64)),
    (bc.DelayedScaling(amax_history_len=1500, margin=2), bc.PerTensor(), (33, 64)),
    (bc.DelayedScaling(amax_history_len=4), bc.PerTensor(), (512, 2048)),  # 256 programs, one amax
    (bc.DelayedScaling(amax_history_len=4, amax_compute_algo="most_recent", fp8_format="E5M2"),
     bc.PerTensor(), (33, 64)),
    (bc.Float8CurrentScaling(), bc.PerRow(), (67, 300)),
    (bc.Float8CurrentScaling(power_2_scale=True, amax_epsilon=1e-3), bc.PerBlockK(128), (3, 20, 256)),
    (bc.Float8BlockScaling(), None, (67, 300)),
    (bc.Float8BlockScaling(block_m=128), None, (200, 300)),
    (bc.Float8BlockScaling(convention="deepseek"), None, (67, 300)),
    (bc.Float8BlockScaling(convention="deepseek", power_2_scale=True), None, (2, 33, 256)),
    (bc.Float8BlockScaling(block_m=128, convention="deepseek"), None, (576, 400)),
    (bc.MXFP8BlockScaling(), None, (67, 300)),
    (bc.MXFP8BlockScaling(fp8_format="E5M2", scale_rounding="ceil"), None, (3, 5, 64)),
    (bc.MXFP4BlockScaling(), None, (67, 300)),
    (bc.MXFP4BlockScaling(scale_rounding="ceil"), None, (6, 96)),
]
# per-tensor scales from finite input (with a NaN anywhere the one scale is NaN whatever the rule)
FINITE_CASES = [
    (bc.Float8CurrentScaling(), bc.PerTensor(), (67, 300)),
    (bc.Float8CurrentScaling(power_2_scale=True, amax_epsilon=2.0**30), bc.PerTensor(), (33, 256)),
    (bc.Float8CurrentScaling(power_2_scale=True), bc.PerTensor(), (3, 40, 96)),
    (bc.DelayedScaling(amax_history_len=4), bc.PerTensor(), (67, 300)),
    (bc.DelayedScaling(amax_history_len=4), bc.PerTensor(), (512, 2048)),
]
CASES = [(case, False) for case in KERNEL_CASES] + [(case, True) for case in FINITE_CASES]


def _case_id(case) -> str:
    recipe, layout, shape = case
    return f"{recipe.label()}-{layout or recipe.default_layout()}-{'x'.join(map(str, shape))}"


def _input(shape: tuple[int, ...], finite: bool, seed: int = 3) -> np.ndarray:
    """Wide-range values, a zero run, and unless ``finite`` a NaN (in one block only) and +-Inf."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2.0 ** rng.integers(-20, 21, shape)).astype(np.float32)
    flat = x.reshape(-1)
    flat[:40] = 0.0
    if not finite:
        flat[flat.size // 2] = np.nan
        flat[flat.size // 3] = np.inf
        flat[-7] = -np.inf
    return x


def _on_device(where: str, a: np.ndarray):
    if where == "torch-cuda":
        return to_framework("torch", a, device="cuda")
    import jax

    if where == "jax-cuda":
        return jax.device_put(a, jax.devices("gpu")[0])
    return to_framework("jax", a)


@pytest.fixture
def pallas_interpreter(monkeypatch):
    """Route JAX's CPU casts through the Pallas kernels, run by Pallas' interpreter; yields the
    list of kernels launched."""
    from breccia.kernels import jax_cast

    launched = []

    def interpreted(launch, name):
        def run(*args, **kwargs):
            launched.append(name)
            return launch(*args, interpret=True, **kwargs)

        return run

    jax_backend = get_backend("jax")
    monkeypatch.setattr(jax_backend, "is_cuda", lambda x: True)
    monkeypatch.setattr(jax_backend, "by_platform", lambda x, cuda, other: cuda())
    monkeypatch.setattr(jax_backend, "_compiled", {})  # trace afresh, and keep these traces to this test
    monkeypatch.setattr(jax_cast, "launch_cast", interpreted(jax_cast.launch_cast, "cast"))
    monkeypatch.setattr(jax_cast, "launch_per_tensor", interpreted(jax_cast.launch_per_tensor, "cast"))
    monkeypatch.setattr(jax_cast, "launch_dequantize", interpreted(jax_cast.launch_dequantize, "dequantize"))
    return launched


WHERE = [
    pytest.param("pallas-interpret", id="pallas-interpret"),
    pytest.param("torch-cuda", id="torch-cuda", marks=[pytest.mark.cuda, requires_cuda]),
    pytest.param("jax-cuda", id="jax-cuda", marks=[pytest.mark.cuda, requires_cuda]),
]


# amax histories by length: short, with a NaN (the scale rule then gives 1), longer than a kernel chunk
_HISTORIES = {
    4: np.array([0.5, 8.0, 0.0, 2.0], np.float32),
    3: np.array([0.5, np.nan, 2.0], np.float32),
    1500: np.random.default_rng(5).uniform(0, 64, 1500).astype(np.float32),
}


def _cast(x, recipe, layout):
    if isinstance(recipe, bc.DelayedScaling):
        from breccia.backends import backend_for

        backend = backend_for(x)
        history = backend.from_numpy(_HISTORIES[recipe.amax_history_len], device=backend.device(x))
        st, new_history = bc.cast_with_history(x, recipe, layout, history=bc.AmaxHistory(history))
        return st, to_numpy(new_history.amax)
    return bc.cast(x, recipe, layout), None


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(
    ("case", "finite"), CASES, ids=[_case_id(c) + ("-finite" if f else "") for c, f in CASES]
)
def test_fused_kernels_give_the_shared_paths_bits(case, finite, dtype, where, request):
    launched = request.getfixturevalue("pallas_interpreter") if where == "pallas-interpret" else None
    recipe, layout, shape = case
    layout = layout or recipe.default_layout()
    assert cast_plan(recipe, layout, shape, dtype) is not None, "this case must take a fused kernel"
    host = _input(shape, finite)
    if dtype != "float32":
        import ml_dtypes

        with np.errstate(over="ignore"):  # float16 input holds +-Inf where float32 held large values
            host = host.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)
    reference, reference_history = _cast(host, recipe, layout)
    got, got_history = _cast(_on_device(where, host), recipe, layout)
    assert_same_cuda_bits(got, reference, host)
    if reference_history is not None:
        np.testing.assert_array_equal(got_history, reference_history)
    plan = dequantize_plan(got.recipe, got.layout, got.shape, dtype)
    assert plan is not None or recipe.element_format.packed
    for out_dtype in ("float32", "bfloat16", "float16"):
        _assert_same_values(bc.dequantize(got, out_dtype), bc.dequantize(numpy_copy(got), out_dtype))
    if launched is not None:
        assert "cast" in launched and ("dequantize" in launched or recipe.element_format.packed)


def _assert_same_values(got, expected) -> None:
    """Bit for bit, but NaN for any NaN (a GPU writes its canonical NaN, numpy keeps a payload)."""
    nan_got = np.isnan(to_numpy(got).astype(np.float32))
    nan_expected = np.isnan(to_numpy(expected).astype(np.float32))
    np.testing.assert_array_equal(nan_got, nan_expected)
    itemsize = to_numpy(got).itemsize
    keep = np.repeat(~nan_got.reshape(-1), itemsize)
    np.testing.assert_array_equal(bits(got)[keep], bits(expected)[keep])


@pytest.mark.parametrize(
    ("recipe", "layout", "shape", "dtype"),
    [
        (bc.Int8Scaling(), None, (64, 256), "float32"),
        (bc.NVFP4BlockScaling(), None, (64, 256), "float32"),
        (bc.Float8CurrentScaling(convention="torchao"), bc.PerRow(), (64, 256), "float32"),
        (bc.Float8BlockScaling(block_k=96), None, (64, 192), "float32"),
        (bc.Float8BlockScaling(block_m=128), None, (3, 100, 256), "float32"),
        (bc.MXFP4BlockScaling(), None, (4, 33), "float32"),
        (bc.MXFP8BlockScaling(), None, (64, 256), "float64"),
        (bc.Float8CurrentScaling(), bc.PerRow(), (4, 1 << 15), "float32"),
    ],
)
def test_what_the_fused_kernels_leave_to_the_shared_path(recipe, layout, shape, dtype):
    """Recipes, blocks and dtypes the kernels do not implement get no plan (the shared path)."""
    assert cast_plan(recipe, layout or recipe.default_layout(), shape, dtype) is None


def test_the_kernels_e2m1_rounding_on_float32_bits_equals_the_shared_encode():
    """The kernels' E2M1 encode (bit arithmetic, the JAX body's code, which the Triton kernel copies)
    against :func:`breccia.formats` on every code, every midpoint and the floats either side of them,
    both signs, +-Inf and values past the largest code."""
    import jax.numpy as jnp

    from breccia.kernels import jax_cast

    grid = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], np.float32)
    extremes = np.array([7.0, 1e30, np.inf, 2.0**-149], np.float32)
    points = np.concatenate([grid, (grid[1:] + grid[:-1]) / 2, extremes])
    below, above = np.nextafter(points, np.float32(0)), np.nextafter(points, np.float32(8))
    assert below.dtype == above.dtype == np.float32  # the float32 neighbours, not float64 ones
    points = np.concatenate([points, below, above])
    rng = np.random.default_rng(0)
    y = np.concatenate([points, -points, rng.uniform(-8, 8, 4096).astype(np.float32)])
    plan = cast_plan(bc.MXFP4BlockScaling(), bc.PerBlockK(32), (64,), "float32")
    got = np.asarray(jax_cast._Ops.encode(plan, jnp.asarray(y)))
    expected = get_backend("numpy").encode(y, E2M1)
    np.testing.assert_array_equal(got, expected)
