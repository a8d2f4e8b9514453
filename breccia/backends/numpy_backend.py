"""numpy backend: numpy 2 is itself an array-API namespace; ml_dtypes supplies fp8/fp4 dtypes."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from ..formats import ElementFormat
from ._base import Backend

_ML_DTYPES = {
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
    "float4_e2m1fn": ml_dtypes.float4_e2m1fn,
}
_NATIVE_ENCODE = {"E4M3": "float8_e4m3fn", "E5M2": "float8_e5m2", "E2M1": "float4_e2m1fn"}


class NumpyBackend(Backend):
    name = "numpy"
    extra = "numpy"

    @property
    def xp(self) -> Any:
        return np

    def is_array(self, x: Any) -> bool:
        return isinstance(x, (np.ndarray, np.generic))

    def dtype_name(self, x: Any) -> str:
        return np.dtype(x.dtype).name

    def dtype(self, name: str) -> Any:
        return np.dtype(_ML_DTYPES.get(name, name))

    def bitcast(self, x: Any, name: str) -> Any:
        return np.asarray(x).view(self.dtype(name))

    def pow2(self, e: Any) -> Any:
        return np.ldexp(np.float32(1.0), np.asarray(e).astype(np.int32))

    def encode(self, x: Any, fmt: ElementFormat) -> Any:
        """ml_dtypes' RNE cast after clamping to the format's range (proven equal to the shared code)."""
        native = _NATIVE_ENCODE.get(fmt.name)
        if native is None:
            return super().encode(x, fmt)
        clipped = np.clip(x, -fmt.max_value, fmt.max_value)
        return clipped.astype(_ML_DTYPES[native]).view(np.uint8)

    def decode(self, codes: Any, fmt: ElementFormat) -> Any:
        from ..formats import decode_table

        return np.take(decode_table(fmt), codes)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        return a
