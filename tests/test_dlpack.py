"""The DLPack hub: every recipe's bits survive every directed pair among numpy, JAX, MLX and torch,
and the pairs that docs/bridges/dlpack.md says are shared share the data and scale buffers
(pointer-equal)."""

from __future__ import annotations

import functools
import importlib.util
import sys

import ml_dtypes
import numpy as np
import pytest

import breccia as bc
from breccia.backends import FRAMEWORKS, get_backend
from breccia.bridges import from_dlpack, to_dlpack
from breccia.errors import DLPackError

RECIPES = {
    "fp8-tensor": (bc.Float8CurrentScaling(), "float32"),
    "fp8-e5m2": (bc.Float8CurrentScaling(fp8_format="E5M2"), "float32"),
    "delayed": (bc.DelayedScaling(), "float32"),
    "fp8-block-1x128": (bc.Float8BlockScaling(), "bfloat16"),
    "fp8-block-128x128": (bc.Float8BlockScaling(block_m=128, convention="deepseek"), "float32"),
    "mxfp8": (bc.MXFP8BlockScaling(), "float32"),
    "mxfp8-e5m2": (bc.MXFP8BlockScaling(fp8_format="E5M2", scale_rounding="ceil"), "float32"),
    "mxfp4": (bc.MXFP4BlockScaling(), "float32"),
    "nvfp4": (bc.NVFP4BlockScaling(), "float32"),
    "int8-row": (bc.Int8Scaling(), "float32"),
    "int8-asym": (bc.Int8Scaling(group_size=64, symmetric=False), "float32"),
    "int4": (bc.Int4Scaling(), "float32"),
    "int4-mlx-bf16": (bc.Int4Scaling(group_size=64, symmetric=False, convention="mlx"), "bfloat16"),
}
# docs/bridges/dlpack.md, "The copy matrix": zero copy among numpy, torch and JAX; MLX as a source to
# numpy and torch
ZERO_COPY = {(s, d) for s in ("numpy", "torch", "jax") for d in ("numpy", "torch", "jax")}
ZERO_COPY |= {("mlx", "numpy"), ("mlx", "torch"), ("mlx", "mlx")}
PAIRS = [(s, d) for s in FRAMEWORKS for d in FRAMEWORKS]


def _input(framework: str, dtype: str, shape: tuple[int, ...] = (8, 256)):
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32) * 3.0
    if dtype == "bfloat16":
        x = x.astype(ml_dtypes.bfloat16)
    if framework == "jax":  # on the host even where JAX's default device is a GPU
        return get_backend("jax").from_numpy(x, device=_cpu_device("jax"))
    return get_backend(framework).from_numpy(x)


@functools.cache
def _cast(recipe_id: str, framework: str) -> bc.ScaledTensor:
    """A tensor cast natively in ``framework`` (so its buffers are that framework's own)."""
    recipe, dtype = RECIPES[recipe_id]
    return bc.cast(_input(framework, dtype), recipe)


def _bits(framework: str, a) -> bytes | None:
    """The raw bytes of an array, read through the framework's own host transfer (not the hub)."""
    if a is None:
        return None
    host = np.ascontiguousarray(get_backend(framework).to_numpy(a))
    return host.view(np.uint8).tobytes()


def _pointers(st: bc.ScaledTensor) -> tuple[int, int]:
    backend = get_backend(st.framework)
    return backend.data_pointer(st.data), backend.data_pointer(st.scale)


def _assert_same_tensor(src: bc.ScaledTensor, out: bc.ScaledTensor, framework: str) -> None:
    assert out.framework == framework
    for field in ("recipe", "layout", "shape", "dtype_name"):
        assert getattr(out, field) == getattr(src, field)
    for before, after in zip(src.arrays, out.arrays):
        assert _bits(src.framework, before) == _bits(framework, after)
    dst = get_backend(framework)
    assert dst.dtype_name(out.data) == dst.storage_dtype(out.recipe.element_format)


@pytest.mark.parametrize("recipe_id", RECIPES)
@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_every_pair_keeps_bits_and_shares_where_promised(src, dst, recipe_id):
    st = _cast(recipe_id, src)
    if (src, dst) in ZERO_COPY:
        out = from_dlpack(st, dst, copy=False)
        assert _pointers(out) == _pointers(st)
    else:
        out = st.to(dst)
        if dst == "mlx":  # MLX cannot wrap foreign memory: exactly the copy it makes
            assert set(_pointers(out)).isdisjoint(_pointers(st))
            with pytest.raises(bc.CopyError, match="mlx cannot wrap"):
                from_dlpack(st, dst, copy=False)
    _assert_same_tensor(st, out, dst)
    np.testing.assert_array_equal(
        get_backend(dst).to_numpy(bc.dequantize(out, "float32")),
        get_backend(src).to_numpy(bc.dequantize(st, "float32")),
    )


@pytest.mark.parametrize(("src", "dst"), PAIRS)
def test_copy_true_always_copies(src, dst):
    st = _cast("nvfp4", src)
    out = from_dlpack(st, dst, copy=True)
    assert set(_pointers(out)).isdisjoint(_pointers(st))
    _assert_same_tensor(st, out, dst)


@pytest.mark.parametrize("recipe_id", RECIPES)
def test_numpy_cast_buffers_are_64_byte_aligned(recipe_id):
    st = _cast(recipe_id, "numpy")
    assert [p % 64 for p in _pointers(st)] == [0, 0]
    copied = from_dlpack(_cast(recipe_id, "torch"), "numpy", copy=True)
    assert [p % 64 for p in _pointers(copied)] == [0, 0]


def test_unaligned_numpy_to_jax_copies_or_refuses():
    ref = _cast("mxfp8", "numpy")
    raw = np.empty(ref.data.nbytes + 1, np.uint8)
    start = 1 if raw.ctypes.data % 64 == 0 else 0  # guarantee an unaligned start
    data = raw[start : start + ref.data.nbytes].reshape(ref.data.shape)
    data[...] = ref.data.view(np.uint8)
    st = bc.from_buffer(data, ref.scale, ref.recipe)
    assert get_backend("numpy").data_pointer(st.data) % 64
    with pytest.raises(bc.CopyError, match="64-byte"):
        from_dlpack(st, "jax", copy=False)
    out = from_dlpack(st, "jax")
    assert _pointers(out)[0] != _pointers(st)[0]
    _assert_same_tensor(st, out, "jax")


@pytest.mark.parametrize(
    ("recipe", "shape"),
    [(bc.MXFP4BlockScaling(), (0, 64)), (bc.Float8CurrentScaling(), ()), (bc.NVFP4BlockScaling(), (5,))],
    ids=["empty", "0-d", "1-d-odd"],
)
@pytest.mark.parametrize("dst", FRAMEWORKS)
def test_empty_scalar_and_1d_tensors_move(recipe, shape, dst):
    st = bc.cast(_input("numpy", "float32", shape), recipe)
    out = st.to(dst)
    _assert_same_tensor(st, out, dst)
    _assert_same_tensor(out, out.to("numpy"), "numpy")


# --- to_dlpack ------------------------------------------------------------------------------------
CONSUMERS = {
    "numpy": lambda c: np.from_dlpack(c),
    "torch": lambda c: __import__("torch").from_dlpack(c),
    "jax": lambda c: __import__("jax").numpy.from_dlpack(c),
}
_PORTABLE = {1: np.uint8, 2: np.uint16, 4: np.float32}


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("src", FRAMEWORKS)
@pytest.mark.parametrize("recipe_id", ["mxfp8", "int4-mlx-bf16", "int8-row"])
def test_to_dlpack_exports_portable_bits_without_copy(recipe_id, src, consumer):
    st = _cast(recipe_id, src)
    capsules = to_dlpack(st)
    assert len(capsules) == 2
    for array, capsule in zip((st.data, st.scale), capsules):
        received = CONSUMERS[consumer](capsule)
        backend = get_backend(consumer)
        host = np.asarray(backend.to_numpy(received))
        expected_dtype = "int8" if host.dtype == np.int8 else np.dtype(_PORTABLE[host.dtype.itemsize]).name
        assert backend.dtype_name(received) == capsule.dtype == expected_dtype
        assert host.tobytes() == _bits(src, array)
        if src != "mlx" or consumer != "jax":  # JAX copies MLX's unaligned buffers
            assert backend.data_pointer(received) == get_backend(src).data_pointer(array)


def test_capsule_consumed_twice_raises():
    data, _ = to_dlpack(_cast("mxfp8", "numpy"))
    np.from_dlpack(data)
    with pytest.raises(DLPackError, match="already consumed"):
        np.from_dlpack(data)
    with pytest.raises(bc.BrecciaError):
        data.__dlpack__()


# --- bad input --------------------------------------------------------------------------------------
def test_unknown_framework_lists_valid_names():
    st = _cast("fp8-tensor", "numpy")
    for bad in ("tensorflow", 3):
        with pytest.raises(bc.FrameworkError) as info:
            from_dlpack(st, bad)
        assert all(name in str(info.value) for name in FRAMEWORKS)


def test_missing_framework_names_the_extra(monkeypatch):
    from breccia import backends

    monkeypatch.delitem(backends._BACKENDS, "mlx", raising=False)
    monkeypatch.setitem(sys.modules, "mlx.core", None)
    with pytest.raises(ImportError, match=r"breccia\[mlx\]"):
        _cast("fp8-tensor", "numpy").to("mlx")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"framework": "numpy", "device": "cuda"}, bc.FrameworkError, "host memory"),
        ({"framework": "mlx", "device": "cuda:0"}, bc.FrameworkError, "host memory"),
        ({"framework": "torch", "device": "tpu"}, bc.FrameworkError, "device must be"),
        ({"framework": "jax", "device": "cuda:x"}, bc.FrameworkError, "device must be"),
        ({"framework": "torch", "device": "cuda", "copy": False}, bc.CopyError, "copies"),
        ({"framework": "torch", "copy": "no"}, bc.CopyError, "copy must be"),
    ],
)
def test_bad_device_or_copy(kwargs, error, match):
    with pytest.raises(error, match=match):
        from_dlpack(_cast("fp8-tensor", "numpy"), **kwargs)


def test_not_a_scaled_tensor():
    with pytest.raises(bc.DTypeError, match="ScaledTensor"):
        from_dlpack(np.zeros(4), "torch")
    with pytest.raises(bc.DTypeError, match="ScaledTensor"):
        to_dlpack(np.zeros(4))


@pytest.mark.parametrize("dst", ["torch", "jax"])
def test_explicit_cpu_device_is_zero_copy(dst):
    st = _cast("mxfp4", "numpy")
    for device in ("cpu", _cpu_device(dst)):
        assert _pointers(from_dlpack(st, dst, device=device, copy=False)) == _pointers(st)


def _cpu_device(framework: str):
    if framework == "torch":
        return __import__("torch").device("cpu")
    return __import__("jax").devices("cpu")[0]


# --- CUDA (run on the GPU machine) -----------------------------------------------------------------
def _torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _jax_gpu() -> bool:
    if importlib.util.find_spec("jax") is None:
        return False
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


cuda_available = _torch_cuda() and _jax_gpu()
CUDA_RECIPES = ["fp8-tensor", "mxfp8", "mxfp4", "nvfp4", "int4-mlx-bf16"]
# MLX is a host framework; the GPU machine may not have it, and the CPU tests above cover it
HOST_FRAMEWORKS = [f for f in FRAMEWORKS if f != "mlx" or importlib.util.find_spec("mlx") is not None]


@pytest.mark.parametrize("recipe_id", CUDA_RECIPES)
@pytest.mark.parametrize(("src", "dst"), [("torch", "jax"), ("jax", "torch")])
@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available, reason="needs a CUDA GPU")
def test_cuda_torch_jax_zero_copy(src, dst, recipe_id):
    st = from_dlpack(_cast(recipe_id, src), src, device="cuda")
    out = from_dlpack(st, dst, copy=False)
    assert get_backend(dst).dlpack_device(out.data) == (2, 0)
    assert _pointers(out) == _pointers(st)
    _assert_same_tensor(st, out, dst)


@pytest.mark.parametrize("recipe_id", CUDA_RECIPES)
@pytest.mark.parametrize("src", HOST_FRAMEWORKS)
@pytest.mark.parametrize("dst", ["torch", "jax"])
@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available, reason="needs a CUDA GPU")
def test_cuda_host_to_device_and_back(src, dst, recipe_id):
    st = _cast(recipe_id, src)
    on_gpu = from_dlpack(st, dst, device="cuda")
    assert all(get_backend(dst).dlpack_device(a)[0] == 2 for a in on_gpu.arrays if a is not None)
    _assert_same_tensor(st, on_gpu, dst)
    for host in [f for f in HOST_FRAMEWORKS if f in ("numpy", "mlx")]:
        with pytest.raises(bc.CopyError, match="copies"):
            from_dlpack(on_gpu, host, copy=False)
        back = on_gpu.to(host)
        _assert_same_tensor(st, back, host)
