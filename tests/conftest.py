"""Shared test helpers: the frameworks under test and conversions to and from numpy."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

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


def assert_same_bits(a: bc.ScaledTensor, b: bc.ScaledTensor) -> None:
    """Data, scale, global scale and zero point of two ScaledTensors are byte-identical."""
    assert a.shape == b.shape and a.recipe == b.recipe and a.layout == b.layout
    for field in ("data", "scale", "global_scale", "zero_point"):
        x, y = bits(getattr(a, field)), bits(getattr(b, field))
        if x is None or y is None:
            assert x is None and y is None, field
        else:
            assert x.shape == y.shape, field
            mismatches = int(np.count_nonzero(x != y))
            assert mismatches == 0, f"{field}: {mismatches} of {x.size} bytes differ"


def numpy_copy(st: bc.ScaledTensor) -> bc.ScaledTensor:
    """A host copy of a ScaledTensor as numpy arrays, made without breccia's DLPack bridge."""
    arrays = [None if a is None else to_numpy(a) for a in st.arrays]
    return st.replace_arrays(*arrays, framework="numpy")
