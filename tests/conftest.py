"""Shared test helpers: the frameworks under test and conversions to and from numpy."""

from __future__ import annotations

import importlib.util

import ml_dtypes
import numpy as np
import pytest
from peers import load_transformer_engine_first

import breccia as bc
from breccia.backends import get_backend

FRAMEWORKS = ["numpy", "jax", "mlx", "torch"]


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU (the device machine); never imports torch if absent."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")

if cuda_available():
    load_transformer_engine_first()


def to_framework(name: str, a: np.ndarray, device=None):
    """A numpy array as an array of framework ``name`` (bf16 included)."""
    return get_backend(name).from_numpy(np.asarray(a, order="C"), device=device)


def to_numpy(x) -> np.ndarray:
    """Any framework's array as a numpy array (bf16/fp8 as ml_dtypes)."""
    from breccia.backends import backend_for

    return backend_for(x).to_numpy(x)


def bits(x) -> np.ndarray | None:
    """The raw bytes of an array as uint8, for bit-for-bit comparison (None stays None)."""
    if x is None:
        return None
    a = np.ascontiguousarray(to_numpy(x))
    return a.reshape(-1).view(np.uint8)


ARRAY_FIELDS = ("data", "scale", "global_scale", "zero_point")


def assert_same_bits(a: bc.ScaledTensor, b: bc.ScaledTensor, fields: tuple[str, ...] = ARRAY_FIELDS) -> None:
    """Data, scale, global scale and zero point of two ScaledTensors are byte-identical."""
    assert a.shape == b.shape and a.recipe == b.recipe and a.layout == b.layout
    for field in fields:
        x, y = bits(getattr(a, field)), bits(getattr(b, field))
        if x is None or y is None:
            assert x is None and y is None, field
        else:
            assert x.shape == y.shape, field
            mismatches = int(np.count_nonzero(x != y))
            assert mismatches == 0, f"{field}: {mismatches} of {x.size} bytes differ"


def assert_same_cuda_bits(got: bc.ScaledTensor, reference: bc.ScaledTensor, x: np.ndarray) -> None:
    """A CUDA cast ``got`` of host input ``x`` has the CPU ``reference``'s bits, but for the deepseek
    convention's codes: its CUDA kernels divide as DeepSeek's does (``div.full.f32``, ``x *
    rcp.approx(s)``) where the CPU multiplies by ``fl32(1/s)``, and ``rcp.approx`` may be one ulp off.
    A code may then differ, by one step, only where the quotient lies within 3 float32 ulps of the
    E4M3 rounding boundary between the two codes."""
    on_gpu = any(name in str(got.device).lower() for name in ("cuda", "gpu"))
    if not on_gpu or getattr(got.recipe, "convention", None) != "deepseek":
        return assert_same_bits(got, reference)
    assert_same_bits(got, reference, fields=("scale", "global_scale", "zero_point"))
    a, b = bits(got.data), bits(reference.data)
    differ = np.flatnonzero(a != b)
    if differ.size == 0:
        return
    steps = np.abs(a[differ].astype(np.int16) - b[differ].astype(np.int16))
    assert np.all(steps == 1), "differing codes are one step apart"
    bm, bk = reference.layout.block_shape(reference.shape)
    rows, cols = reference.shape
    scale = to_numpy(reference.scale).astype(np.float64)
    s = np.repeat(np.repeat(scale, bm, axis=0), bk, axis=1)[:rows, :cols].reshape(-1)[differ]
    q = np.asarray(x, np.float32).astype(np.float64).reshape(-1)[differ] / s
    e4m3 = ml_dtypes.float8_e4m3fn
    boundary = (a[differ].view(e4m3).astype(np.float64) + b[differ].view(e4m3).astype(np.float64)) / 2
    ulps = np.abs(q - boundary) / np.spacing(np.abs(boundary).astype(np.float32)).astype(np.float64)
    assert np.all(ulps <= 3), f"{differ.size} codes differ, some {ulps.max():.1f} ulps from a boundary"


def numpy_copy(st: bc.ScaledTensor) -> bc.ScaledTensor:
    """A host copy of a ScaledTensor as numpy arrays, made without breccia's DLPack bridge."""
    arrays = [None if a is None else to_numpy(a) for a in st.arrays]
    return st.replace_arrays(*arrays, framework="numpy")
