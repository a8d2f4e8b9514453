"""numpy backend: numpy 2 is itself an array-API namespace; ml_dtypes supplies fp8/fp4 dtypes."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from ..errors import FrameworkError
from ..formats import ElementFormat
from ._base import CPU_SLAB_ELEMENTS, DLPACK_CPU, Backend

_ML_DTYPES = {
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
    "float4_e2m1fn": ml_dtypes.float4_e2m1fn,
}
#: JAX imports a host buffer through DLPack without a copy only at this alignment (bytes).
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array whose buffer starts at a multiple of :data:`ALIGNMENT` bytes."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` aligned to :data:`ALIGNMENT` bytes."""
    out = aligned_empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def aligned(a: Any) -> np.ndarray:
    """``a`` itself if it is C-contiguous and aligned to :data:`ALIGNMENT` bytes, else an aligned copy."""
    a = np.asarray(a)
    if a.flags.c_contiguous and a.ctypes.data % ALIGNMENT == 0:
        return a
    return aligned_copy(a)


_ENCODE_TABLES: dict[str, np.ndarray] = {}


def _encode_table(fmt: ElementFormat) -> np.ndarray:
    """Code of every (top 16 float32 bits, low 16 bits nonzero) pair, by the shared encode."""
    table = _ENCODE_TABLES.get(fmt.name)
    if table is None:
        from .. import formats

        high = np.arange(1 << 16, dtype=np.uint32) << 16
        values = np.stack([high, high | 1], axis=-1).reshape(-1).view(np.float32)
        values = np.where(np.isnan(values), np.float32(0), values)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            table = formats.encode(np, NumpyBackend.pow2, values, fmt)
        _ENCODE_TABLES[fmt.name] = table
    return table


def _table_index(x: Any) -> np.ndarray:
    """``(bits >> 16) * 2 + (low 16 bits != 0)`` of float32 ``x``: its row in :func:`_encode_table`."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    index = (bits >> 16) << 1
    index |= (bits & 0xFFFF) != 0
    return index


class NumpyBackend(Backend):
    name = "numpy"
    extra = "numpy"

    @property
    def xp(self) -> Any:
        return np

    def astype(self, x: Any, name: str) -> Any:
        """numpy's cast. A value beyond a narrower float's range becomes +-inf, the IEEE result every
        framework gives (dequantizing to float16, say); numpy's overflow warning is not raised."""
        with np.errstate(over="ignore"):
            return super().astype(x, name)

    def is_array(self, x: Any) -> bool:
        return isinstance(x, (np.ndarray, np.generic))

    def dtype_name(self, x: Any) -> str:
        return np.dtype(x.dtype).name

    def dtype(self, name: str) -> Any:
        return np.dtype(_ML_DTYPES.get(name, name))

    def bitcast(self, x: Any, name: str) -> Any:
        return np.asarray(x).view(self.dtype(name))

    @staticmethod
    def pow2(e: Any) -> Any:
        with np.errstate(over="ignore"):  # 2**128 is inf, which is what floor_log2 compares against
            return np.ldexp(np.float32(1.0), np.asarray(e).astype(np.int32))

    def abs_max(self, x: Any, axes: tuple[int, ...]) -> Any:
        """``max(|x|)`` directly: numpy's strided max/min over small blocks is slower than ``abs``.
        A slab's ``|x|`` goes to this thread's float32 scratch (exact for every float input but
        float64, which is converted before a cast and never gets here in slabs)."""
        small = x.size <= CPU_SLAB_ELEMENTS and x.dtype != np.float64
        magnitude = np.abs(x, out=self.scratch(x.shape, like=x)) if small else np.abs(x)
        with np.errstate(invalid="ignore"):  # NaN is the cast's business (blockwise._block_scales)
            return np.max(magnitude, axis=axes, keepdims=True)

    def chunk_elements(self, x: Any) -> int:
        """A quarter of torch's slab: numpy's passes run single-threaded, fastest out of L2."""
        return CPU_SLAB_ELEMENTS // 4

    def encode(self, x: Any, fmt: ElementFormat, *, consume: bool = False) -> Any:
        """Float formats by a lookup on the float32 bits (proven equal to the shared code).

        Round-to-nearest-even to at most 3 mantissa bits depends only on the top 16 bits of a float32
        (sign, exponent, 7 mantissa bits, which hold the round bit) and on whether the low 16 bits are
        zero (the rest of the sticky bit). So ``code = T[(bits >> 16) * 2 + (low16 != 0)]`` with a
        131072-entry table built once from the shared encode; saturation is in the table. Faster than
        ml_dtypes' element-by-element cast (RESULTS.md).
        """
        if fmt.kind != "float":
            return super().encode(x, fmt)
        return np.take(_encode_table(fmt), _table_index(x))

    def encode_into(self, x: Any, fmt: ElementFormat, out: Any) -> None:
        if fmt.kind != "float":
            return super().encode_into(x, fmt, out)
        np.take(_encode_table(fmt), _table_index(x), out=out)

    def empty(self, shape: tuple[int, ...], name: str, like: Any) -> Any:
        """64-byte aligned (what :meth:`finalize_output` would otherwise copy into)."""
        return aligned_empty(shape, self.dtype(name))

    def decode(self, codes: Any, fmt: ElementFormat) -> Any:
        from ..formats import decode_table

        return np.take(decode_table(fmt), codes)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        return a

    host_only = True

    def check_device(self, device: Any) -> None:
        if device not in (None, "cpu"):
            raise FrameworkError(
                f"numpy arrays live on the host; device must be None or 'cpu', got {device!r}"
            )

    def finalize_output(self, a: Any) -> Any:
        """64-byte aligned, so that JAX can import breccia's own buffers through DLPack without a copy."""
        return aligned(a)

    def dlpack_native(self, name: str) -> bool:
        """numpy's DLPack knows no ml_dtypes dtype (bfloat16, fp8, E8M0, fp4)."""
        return name not in _ML_DTYPES

    def dlpack_export(self, x: Any) -> Any:
        return np.asarray(x)

    def dlpack_import(self, producer: Any, copy: bool | None) -> Any:
        """A view of host memory; ``copy=True`` copies into a 64-byte aligned buffer."""
        a = np.from_dlpack(producer, copy=None if copy else copy)
        return aligned_copy(a) if copy else a

    def dlpack_device(self, x: Any) -> tuple[int, int]:
        return DLPACK_CPU

    def data_pointer(self, x: Any) -> int:
        return int(np.asarray(x).__array_interface__["data"][0])
