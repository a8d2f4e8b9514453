"""The one-pass CPU casts (breccia.kernels.cpu_cast, numba) give the shared code's bits exactly.

Every test casts the same input twice in the same framework: through the kernel (the default on a
host array) and through the shared array-API code (``quantize.host_cast`` patched to decline), and
compares data and scale bytes. Recipes x frameworks x input dtypes x shape classes (ragged edges,
one row, 1-D, batched, non-contiguous, NaN/Inf/zero/subnormal/huge values, 0-size).
"""

from __future__ import annotations

import numpy as np
import pytest

import breccia as bc
import breccia.quantize as quantize
from breccia.backends import get_backend
from breccia.formats import E2M1, E4M3, E5M2, encode
from breccia.kernels import _host
from breccia.layouts import PerBlock2D, PerBlockK, PerRow, PerTensor

numba = pytest.importorskip("numba")
ml_dtypes = pytest.importorskip("ml_dtypes")
cpu_encode = pytest.importorskip("breccia.kernels._cpu_scalar").encode

RECIPES = {
    "current-row": (bc.Float8CurrentScaling(), PerRow()),
    "current-row-eps-pow2": (bc.Float8CurrentScaling(amax_epsilon=1e-3, power_2_scale=True), PerRow()),
    "current-row-e5m2": (bc.Float8CurrentScaling(fp8_format="E5M2"), PerRow()),
    "current-1x128": (bc.Float8CurrentScaling(), PerBlockK(128)),
    "current-128x128": (bc.Float8CurrentScaling(), PerBlock2D(128, 128)),
    "current-tensor": (bc.Float8CurrentScaling(), PerTensor()),
    "current-tensor-pow2": (bc.Float8CurrentScaling(power_2_scale=True), PerTensor()),
    "te-1x128": (bc.Float8BlockScaling(), None),
    "te-128x128-pow2": (bc.Float8BlockScaling(block_m=128, power_2_scale=True), None),
    "deepseek-1x128": (bc.Float8BlockScaling(convention="deepseek"), None),
    "deepseek-128x128": (bc.Float8BlockScaling(convention="deepseek", block_m=128), None),
    "deepseek-1x128-ue8m0": (bc.Float8BlockScaling(convention="deepseek", power_2_scale=True), None),
    "mxfp8-floor": (bc.MXFP8BlockScaling(), None),
    "mxfp8-ceil": (bc.MXFP8BlockScaling(scale_rounding="ceil"), None),
    "mxfp8-e5m2": (bc.MXFP8BlockScaling(fp8_format="E5M2"), None),
    "mxfp4-floor": (bc.MXFP4BlockScaling(), None),
    "mxfp4-ceil": (bc.MXFP4BlockScaling(scale_rounding="ceil"), None),
}
FRAMEWORKS = ("numpy", "torch", "jax", "mlx")
DTYPES = ("float32", "bfloat16", "float16")
SHAPES = {
    "ragged": (130, 300),  # 128-row and 128/32-column blocks cut at both edges
    "one-row": (1, 300),
    "1-d": (96,),
    "batched": (2, 128, 160),
    "non-contiguous": (300, 130),  # cast as its transpose, a strided view
    "specials": (64, 256),  # zeros, -0, huge values, NaN and +-Inf
    "tiny": (64, 256),  # subnormals and blocks below 2**-126
}



@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
    """The kernels are opt-in (``BRECCIA_CPU_KERNELS=1``); every test here turns them on."""
    monkeypatch.setenv(_host.ENABLE, "1")

def _values(shape: tuple[int, ...], dtype: str, kind: str = "") -> np.ndarray:
    """float32 values of many magnitudes (each row its own), rounded to ``dtype``; ``kind="specials"``
    adds rows of zeros, -0, huge values, and NaN/+-Inf scattered through blocks, ``"tiny"`` rows of
    subnormals and of values near 2**-130."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat *= np.float32(2.0) ** rng.integers(-30, 30, size=(flat.shape[0], 1)).astype(np.float32)
    if kind == "specials":
        big = np.float32(3e38) if dtype != "float16" else np.float32(60000.0)
        flat[0] = 0.0
        flat[1] = -0.0
        flat[3] = big * rng.uniform(-1, 1, size=shape[-1]).astype(np.float32)
        flat[4, 5], flat[5, 40], flat[6, 100], flat[7, :] = np.nan, np.inf, -np.inf, np.nan
        flat[8, 3], flat[8, 200], flat[9, 0] = np.inf, np.nan, -np.inf
    if kind == "tiny":
        smallest = np.float32(2.0**-149) if dtype == "float32" else np.float32(2.0**-24)
        flat[2] = smallest * rng.integers(-3, 4, size=shape[-1])
        flat[10] = np.float32(2.0**-130) * rng.standard_normal(shape[-1]).astype(np.float32)
    with np.errstate(over="ignore"):
        return x.astype(getattr(ml_dtypes, dtype) if dtype == "bfloat16" else dtype)


def _framework_array(framework: str, a: np.ndarray, transpose: bool):
    x = get_backend(framework).from_numpy(np.ascontiguousarray(a))
    if not transpose:
        return x
    if framework == "numpy":
        return x.T
    if framework == "torch":
        return x.t()
    if framework == "jax":
        return x.T
    import mlx.core as mx

    return mx.transpose(x)


def _bytes(framework: str, a) -> bytes:
    return np.ascontiguousarray(get_backend(framework).to_numpy(a)).tobytes()


def _shared(monkeypatch, *args):
    with monkeypatch.context() as m:
        m.setattr(quantize, "host_cast", lambda *a: None)
        return bc.cast(*args)


def _kernel_cast(monkeypatch, *args, taken_expected=True):
    """bc.cast by the CPU kernel, failing unless the kernel took it as ``taken_expected`` says."""
    taken = []

    def spy(*a):
        out = _host.host_cast(*a)
        taken.append(out is not None)
        return out

    with monkeypatch.context() as m:
        m.setattr(quantize, "host_cast", spy)
        st = bc.cast(*args)
    assert taken == [taken_expected], f"the CPU kernel's choice was {taken}, not {taken_expected}"
    return st


def _cases() -> list[tuple[str, str, str, str]]:
    """Every recipe x dtype x shape class on numpy; on torch, JAX and MLX (whose views and outputs
    differ, not their arithmetic) every recipe x dtype on the specials and non-contiguous classes,
    and every shape class for three recipes (one per kernel)."""
    cases = [(r, "numpy", d, s) for r in RECIPES for d in DTYPES for s in SHAPES]
    for framework in FRAMEWORKS[1:]:
        classes = ("specials", "non-contiguous")
        cases += [(r, framework, d, s) for r in RECIPES for d in DTYPES for s in classes]
        cases += [
            (r, framework, d, s)
            for r in ("deepseek-128x128", "mxfp4-ceil", "current-tensor")
            for d in DTYPES
            for s in SHAPES
            if s not in classes
        ]
    return cases


@pytest.mark.parametrize(("recipe_name", "framework", "dtype", "shape_class"), _cases())
def test_kernel_bits_equal_shared(monkeypatch, recipe_name, framework, dtype, shape_class):
    pytest.importorskip({"numpy": "numpy", "torch": "torch", "jax": "jax", "mlx": "mlx.core"}[framework])
    recipe, layout = RECIPES[recipe_name]
    shape = SHAPES[shape_class]
    if len(shape) < recipe.check_layout(layout).min_ndim:
        pytest.skip("a 2-D block layout takes no 1-D tensor")
    transpose = shape_class == "non-contiguous"
    values = _values(shape, dtype, shape_class)
    x = _framework_array(framework, values, transpose)
    # a framework that flushes subnormals (JAX) keeps tiny inputs on its own shared path
    magnitudes = np.abs(values.astype(np.float32))
    tiny = bool(np.any((magnitudes > 0) & (magnitudes < 2.0**-96)))
    flushes = _host._flushes_subnormals(get_backend(framework))
    got = _kernel_cast(monkeypatch, x, recipe, layout, taken_expected=not (tiny and flushes))
    if tiny and flushes:
        return  # the cast ran the shared code itself
    if framework == "jax":  # jit-compiling the reference per case is slow: numpy's shared path, which
        # JAX's equals (tests/test_quantize.py; subnormals aside, and those inputs never get here),
        # stands in, and test_jax_kernel_equals_jax_shared compares with JAX's own on a few cases
        want = _shared(monkeypatch, np.ascontiguousarray(values.T if transpose else values), recipe, layout)
        assert _bytes("jax", got.data) == _bytes("numpy", want.data)
        assert _bytes("jax", got.scale) == _bytes("numpy", want.scale)
        return
    want = _shared(monkeypatch, x, recipe, layout)
    assert got.shape == want.shape and got.framework == want.framework == framework
    assert get_backend(framework).dtype_name(got.data) == get_backend(framework).dtype_name(want.data)
    assert get_backend(framework).dtype_name(got.scale) == get_backend(framework).dtype_name(want.scale)
    assert tuple(got.data.shape) == tuple(want.data.shape)
    assert tuple(got.scale.shape) == tuple(want.scale.shape)
    assert _bytes(framework, got.data) == _bytes(framework, want.data)
    assert _bytes(framework, got.scale) == _bytes(framework, want.scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "recipe_name", ["current-row-eps-pow2", "deepseek-128x128", "mxfp4-ceil", "current-tensor"]
)
def test_jax_kernel_equals_jax_shared(monkeypatch, recipe_name, dtype):
    """The kernel on a JAX array against JAX's own (jit-compiled) shared path."""
    pytest.importorskip("jax")
    recipe, layout = RECIPES[recipe_name]
    x = _framework_array("jax", _values(SHAPES["ragged"], dtype), False)
    got = _kernel_cast(monkeypatch, x, recipe, layout)
    want = _shared(monkeypatch, x, recipe, layout)
    assert _bytes("jax", got.data) == _bytes("jax", want.data)
    assert _bytes("jax", got.scale) == _bytes("jax", want.scale)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("recipe_name", ["te-1x128", "mxfp8-ceil", "current-tensor"])
def test_zero_size_and_0d(monkeypatch, recipe_name, framework):
    """0-size tensors never reach a kernel; a 0-d tensor (per-tensor layouts only) is one element,
    as in the shared code."""
    pytest.importorskip({"numpy": "numpy", "torch": "torch", "jax": "jax", "mlx": "mlx.core"}[framework])
    recipe, layout = RECIPES[recipe_name]
    empty = get_backend(framework).from_numpy(np.zeros((0, 64), np.float32))
    got, want = bc.cast(empty, recipe, layout), _shared(monkeypatch, empty, recipe, layout)
    assert tuple(got.data.shape) == tuple(want.data.shape)
    assert tuple(got.scale.shape) == tuple(want.scale.shape)
    if recipe.check_layout(layout).min_ndim:
        return
    scalar = get_backend(framework).from_numpy(np.array(-3.5, np.float32))
    got, want = bc.cast(scalar, recipe, layout), _shared(monkeypatch, scalar, recipe, layout)
    assert _bytes(framework, got.data) == _bytes(framework, want.data)
    assert _bytes(framework, got.scale) == _bytes(framework, want.scale)


@pytest.mark.parametrize("recipe_name", ["mxfp8-floor", "current-row", "current-tensor"])
def test_outputs_share_memory_with_the_kernel_buffers(recipe_name):
    """torch and JAX wrap the kernel's output buffers (no copy): data and scale are 64-byte aligned
    host memory (what JAX needs to import them without a copy through the DLPack hub)."""
    torch = pytest.importorskip("torch")
    recipe, layout = RECIPES[recipe_name]
    x = torch.randn(64, 256)
    st = bc.cast(x, recipe, layout)
    assert st.data.dtype == torch.float8_e4m3fn
    assert st.data.data_ptr() % 64 == 0 and st.scale.data_ptr() % 64 == 0
    jax = pytest.importorskip("jax")
    st = bc.cast(jax.numpy.asarray(x.numpy()), recipe, layout)
    assert st.data.unsafe_buffer_pointer() % 64 == 0 and st.scale.unsafe_buffer_pointer() % 64 == 0


def test_import_breccia_does_not_import_numba():
    import subprocess
    import sys

    code = "import sys, breccia; print('numba' in sys.modules, 'llvmlite' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_without_numba_the_shared_path_runs(monkeypatch):
    """numba is optional: where it cannot be imported the cast takes the shared path, same bits."""
    x = _values((40, 256), "float32", "specials")
    with monkeypatch.context() as m:
        m.setattr(_host, "_kernels", lambda: None)
        assert _host.host_cast(get_backend("numpy"), *RECIPES["mxfp8-floor"], x, None) is None
        without = bc.cast(x, bc.MXFP8BlockScaling())
    with_kernel = _kernel_cast(monkeypatch, x, bc.MXFP8BlockScaling(), None)
    assert without.data.tobytes() == with_kernel.data.tobytes()
    assert without.scale.tobytes() == with_kernel.scale.tobytes()


@numba.njit
def _encode_all(y, f):
    out = np.empty(y.size, np.uint8)
    for i in range(y.size):
        out[i] = cpu_encode(y[i], f)
    return out


@pytest.mark.parametrize("fmt", [E4M3, E5M2, E2M1], ids=lambda f: f.name)
def test_element_encode_exhaustive(fmt):
    """The kernel's bit-level encode equals formats.encode on every top half of a float32 pattern
    with low halves 0, 1, 0x8000 and 0xFFFF (the rounding depends on nothing else), NaN excepted."""
    high = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    bits = (high[:, None] | np.array([0, 1, 0x8000, 0xFFFF], np.uint32)).ravel()
    y = bits.view(np.float32)
    y = y[~np.isnan(y)]
    want = encode(np, get_backend("numpy").pow2, y, fmt)
    got = _encode_all(y, _host._encode_fields(fmt))
    np.testing.assert_array_equal(got, want)


def test_the_kernels_are_opt_in(monkeypatch):
    """Without ``BRECCIA_CPU_KERNELS=1`` every cast takes the shared code (a fresh machine would
    otherwise compile each kernel on its first cast)."""
    x = np.ones((4, 256), np.float32)
    recipe = bc.MXFP8BlockScaling()
    layout = recipe.default_layout()
    assert _host.host_cast(get_backend("numpy"), recipe, layout, x, None) is not None
    monkeypatch.delenv(_host.ENABLE)
    assert _host.host_cast(get_backend("numpy"), recipe, layout, x, None) is None
