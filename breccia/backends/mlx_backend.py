"""MLX backend: a small array-API shim over ``mlx.core``.

Casts run op by op (MLX is lazy, so they still form one graph) with a data-dependent check for
non-finite input, and each format's encode is one ``mx.compile``d elementwise kernel: compiling the
whole cast instead would take the non-finite branch always, which is slower on the CPU (RESULTS.md).

MLX has no fp8 dtype: E4M3/E5M2/E8M0 codes are held as uint8 bits (``mx.from_fp8`` reads E4M3).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import FrameworkError, ShapeError
from ..formats import ElementFormat
from . import _mlx_namespace
from ._base import Backend

#: MLX's array dimensions are int32
MAX_DIM = 2**31 - 1


class MlxBackend(Backend):
    name = "mlx"
    extra = "mlx"

    @property
    def xp(self) -> Any:
        return _mlx_namespace

    def is_array(self, x: Any) -> bool:
        return isinstance(x, mx.array)

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).rsplit(".", 1)[-1]

    def dtype(self, name: str) -> Any:
        return getattr(mx, "bool_" if name == "bool" else name)

    def native_float8(self, fmt: ElementFormat) -> str | None:
        return None

    def bitcast(self, x: Any, name: str) -> Any:
        return x.view(self.dtype(name))

    def pow2(self, e: Any) -> Any:
        return mx.power(2.0, e)

    def encode(self, x: Any, fmt: ElementFormat, *, consume: bool = False) -> Any:
        """E4M3 through ``mx.to_fp8`` after clamping (proven equal to the shared code); the other
        formats through the shared code compiled into one fused elementwise kernel."""
        return self._cached_compile(("encode", fmt.name), lambda v: self._encode(v, fmt), mx.compile)(x)

    def _encode(self, x: Any, fmt: ElementFormat) -> Any:
        if fmt.name == "E4M3":
            return mx.to_fp8(mx.clip(x, -fmt.max_value, fmt.max_value))
        return super().encode(x, fmt)

    def decode(self, codes: Any, fmt: ElementFormat) -> Any:
        if fmt.name == "E4M3":
            return mx.from_fp8(codes, dtype=mx.float32)
        return super().decode(codes, fmt)

    def to_numpy(self, x: Any) -> np.ndarray:
        if x.dtype == mx.bfloat16:
            import ml_dtypes

            return np.array(x.view(mx.uint16)).view(ml_dtypes.bfloat16)
        return np.array(x)

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        if np.dtype(a.dtype).name == "bfloat16":
            return mx.array(np.asarray(a, order="C").view(np.uint16)).view(mx.bfloat16)
        return mx.array(a)

    host_only = True

    def from_host(self, a: np.ndarray, device: Any = None) -> Any:
        """A copy in MLX, fp8 as its uint8 bits (MLX has no fp8 dtype); ``device`` is MLX's default."""
        if any(d > MAX_DIM for d in a.shape):
            raise ShapeError(f"shape {list(a.shape)} has a dim beyond MLX's limit of 2**31 - 1")
        name = a.dtype.name
        if name.startswith("float8"):
            return mx.array(a.view(np.uint8))
        if name == "bfloat16":
            return mx.array(a.view(np.uint16)).view(mx.bfloat16)
        return mx.array(a, dtype=self.dtype(name))

    def check_device(self, device: Any) -> None:
        if device is not None:
            raise FrameworkError(f"MLX arrays live in unified memory; device must be None, got {device!r}")

    def known_true(self, predicate: Any) -> bool:
        """Inside ``mx.compile`` (a user's), nothing can be evaluated: take the general branch."""
        try:
            return bool(predicate)
        except ValueError:
            return False

    dlpack_shares = False

    def dlpack_native(self, name: str) -> bool:
        """Imports go through numpy (below), so only numpy's DLPack dtypes travel as they are."""
        return name != "bfloat16"

    def dlpack_export(self, x: Any) -> Any:
        mx.eval(x)  # a lazy array has no buffer until it is evaluated
        return x

    def dlpack_import(self, producer: Any, copy: bool | None) -> Any:
        """One copy, always: MLX has no way to wrap memory it did not allocate."""
        return mx.array(np.from_dlpack(producer))

    def data_pointer(self, x: Any) -> int:
        mx.eval(x)
        bits = x.view(mx.uint16) if x.dtype == mx.bfloat16 else x
        return int(np.from_dlpack(bits).__array_interface__["data"][0])
