"""PyTorch backend: array-api-compat's torch namespace plus torch's native fp8 casts."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from array_api_compat import torch as xp_torch

from ..errors import FrameworkError
from ..formats import ElementFormat
from ._base import CPU_SLAB_ELEMENTS, DLPACK_CPU, Backend

_NATIVE_FP8 = {"E4M3": torch.float8_e4m3fn, "E5M2": torch.float8_e5m2}
#: dtypes torch has that numpy holds only through ml_dtypes (they cross as unsigned bits)
_ML_DTYPES = (
    "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float8_e4m3fnuz", "float8_e5m2fnuz",
)


class TorchBackend(Backend):
    name = "torch"
    extra = "torch"

    @property
    def xp(self) -> Any:
        return xp_torch

    def is_array(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype).removeprefix("torch.")

    def dtype(self, name: str) -> Any:
        return getattr(torch, name)

    def bitcast(self, x: Any, name: str) -> Any:
        return x.view(self.dtype(name))

    def pow2(self, e: Any) -> Any:
        return torch.exp2(e)

    def multiply_add(self, a: Any, b: Any, c: Any) -> Any:
        """``a * b + c`` rounded twice for integer ``a`` of at most 8 bits, even where a compiler fuses
        it into an FMA (torch.compile, a user's Triton): ``b`` splits into 16 high bits and an exact
        rest, so both products are exact."""
        b_hi = (b.view(torch.int32) & -256).view(torch.float32)
        return (a * b_hi + a * (b - b_hi)) + c


    def zeros(self, shape: tuple[int, ...], like: Any) -> Any:
        """torch makes new tensors on the CPU unless told otherwise."""
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    def empty(self, shape: tuple[int, ...], name: str, like: Any) -> Any:
        return torch.empty(shape, dtype=self.dtype(name), device=like.device)

    def divide(self, a: Any, b: Any, out: Any = None) -> Any:
        """IEEE ``a / b``. torch turns a Python-number operand into ``reciprocal`` and a multiply
        (``scalar / t`` on every device, ``t / scalar`` on CUDA): two roundings. As 0-d tensors on
        the other operand's device, both sides go through the true division kernel."""
        like = a if isinstance(a, torch.Tensor) else b
        if not isinstance(a, torch.Tensor):
            a = torch.tensor(a, dtype=like.dtype, device=like.device)
        if not isinstance(b, torch.Tensor):
            b = torch.tensor(b, dtype=like.dtype, device=like.device)
        return torch.div(a, b, out=out)

    def encode(self, x: Any, fmt: ElementFormat, *, consume: bool = False) -> Any:
        """torch's RNE fp8 cast after clamping (proven equal to the shared code); the clamp works in
        place on a consumed input (a new 64 MB tensor costs torch's CPU more than the clamp)."""
        native = _NATIVE_FP8.get(fmt.name)
        if native is None:
            return super().encode(x, fmt)
        clamped = x.clamp_ if consume else x.clamp
        return clamped(-fmt.max_value, fmt.max_value).to(native).view(torch.uint8)

    def encode_into(self, x: Any, fmt: ElementFormat, out: Any) -> None:
        """The clamped values converted straight into ``out`` (torch's copy converts to fp8)."""
        native = _NATIVE_FP8.get(fmt.name)
        if native is None:
            return super().encode_into(x, fmt, out)
        out.view(native).copy_(x.clamp_(-fmt.max_value, fmt.max_value))

    def decode(self, codes: Any, fmt: ElementFormat) -> Any:
        native = _NATIVE_FP8.get(fmt.name)
        if native is not None:
            return codes.view(native).to(torch.float32)
        return super().decode(codes, fmt)

    def to_numpy(self, x: Any) -> np.ndarray:
        x = x.detach().cpu()
        name = self.dtype_name(x)
        if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu"):
            from .numpy_backend import NumpyBackend

            bits = x.view(torch.uint16 if name == "bfloat16" else torch.uint8).numpy()
            return bits.view(NumpyBackend().dtype(name))
        return x.numpy()

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        name = np.dtype(a.dtype).name
        if name in _ML_DTYPES:
            bits = torch.from_numpy(np.asarray(a, order="C").view(np.uint16 if a.itemsize == 2 else np.uint8))
            t = bits.view(self.dtype(name))
        else:
            a = np.asarray(a, order="C")
            t = torch.from_numpy(a if a.flags.writeable else a.copy())
        return t if device is None else t.to(device)

    writable_host_views = True

    def from_host(self, a: np.ndarray, device: Any = None) -> Any:
        """A tensor sharing ``a``'s memory where ``a`` is writable, else over a copy (torch has no
        read-only tensors); moved to ``device`` if given."""
        return self.from_numpy(a if a.flags.writeable else a.copy(), device=device)

    def host_bytes(self, x: Any) -> np.ndarray:
        """Made contiguous by torch (on the host), then viewed as bytes."""
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        return (t if t.dtype == torch.uint8 else t.view(torch.uint8)).numpy()

    def contiguous(self, x: Any) -> Any:
        return x.contiguous()

    def check_device(self, device: Any) -> None:
        """torch is asked to make an empty tensor there."""
        try:
            torch.empty(0, device=device)
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            raise FrameworkError(f"torch cannot use device {device!r}: {str(exc).splitlines()[0]}") from None

    def finalize_output(self, a: Any) -> Any:
        """Contiguous (a ragged cast ends in a slice), as safetensors and most kernels expect."""
        return a.contiguous()

    def device(self, x: Any) -> Any:
        return x.device

    def chunk_elements(self, x: Any) -> int:
        return CPU_SLAB_ELEMENTS if x.device.type == "cpu" else 0

    def is_cuda(self, x: Any) -> bool:
        return bool(x.is_cuda) and torch.version.hip is None

    def dlpack_export(self, x: Any) -> Any:
        return x.detach()

    def dlpack_import(self, producer: Any, copy: bool | None) -> Any:
        return torch.from_dlpack(producer, copy=copy)

    def data_pointer(self, x: Any) -> int:
        return int(x.data_ptr())

    def to_device(self, x: Any, device: tuple[int, int]) -> Any:
        target = torch.device("cpu") if device == DLPACK_CPU else torch.device("cuda", device[1])
        if x.device == target:
            return x
        try:
            return x.to(target)
        except (RuntimeError, AssertionError) as exc:  # torch without CUDA raises AssertionError
            raise FrameworkError(f"torch cannot place an array on {target}: {exc}") from exc
