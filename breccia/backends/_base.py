"""The Backend interface: what the shared numerics need from one framework.

A backend is a small object per framework (numpy, jax, mlx, torch), created lazily the first time
one of its arrays arrives. It gives the shared code an array-API namespace (``xp``) and the few
things the array API lacks: bit views between codes and native low-precision dtypes, an exact power
of two, host transfer, and a compiler. A backend may override ``encode``/``decode`` with a native
cast only where ``tests/test_formats.py`` proves the bits identical to the shared code.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import formats
from ..errors import DTypeError, FrameworkError
from ..formats import ElementFormat
from ._dtypes import FLOAT_DTYPES

#: DLPack device of host memory, ``(kDLCPU, 0)``; a CUDA device is ``(kDLCUDA=2, index)``.
DLPACK_CPU = (1, 0)
DLPACK_CUDA = 2

#: Elements per slab of an eager CPU cast (4 MB of float32: temporaries stay in cache)
CPU_SLAB_ELEMENTS = 1 << 20


def host_order(a: np.ndarray) -> np.ndarray:
    """numpy array ``a`` C-contiguous and little-endian (``a`` itself where it is, else one copy)."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


class Backend:
    """Base class; subclasses fill in the framework-specific pieces."""

    name: str = ""
    extra: str = ""

    def __init__(self) -> None:
        self._constants: dict[tuple[str, Any], Any] = {}
        self._scratch = threading.local()
        self._compiled: dict[Any, Callable[..., Any]] = {}

    # --- arrays and dtypes -------------------------------------------------------------------
    @property
    def xp(self) -> Any:
        raise NotImplementedError

    def is_array(self, x: Any) -> bool:
        raise NotImplementedError

    def dtype_name(self, x: Any) -> str:
        """The array's dtype as a plain name: "float32", "bfloat16", "uint8", ..."""
        raise NotImplementedError

    def dtype(self, name: str) -> Any:
        """The framework dtype called ``name``."""
        raise NotImplementedError

    def check_float_input(self, x: Any) -> str:
        """The dtype name of a float input, or a DTypeError saying which dtypes work."""
        name = self.dtype_name(x)
        if name not in FLOAT_DTYPES:
            raise DTypeError(
                f"cannot quantize a {self.name} array of dtype {name}; cast it to one of "
                f"{', '.join(FLOAT_DTYPES)} first"
            )
        return name

    def storage_dtype(self, fmt: ElementFormat) -> str:
        """Name of the dtype that holds ``fmt``'s codes in this framework."""
        if fmt.packed:
            return "uint8"
        if fmt.kind == "int":
            return "int8"
        return self.native_float8(fmt) or "uint8"

    def native_float8(self, fmt: ElementFormat) -> str | None:
        """Name of the framework's own dtype for an 8-bit float format, if it has one."""
        return {"E4M3": "float8_e4m3fn", "E5M2": "float8_e5m2", "E8M0": "float8_e8m0fnu"}.get(
            fmt.name
        )

    def astype(self, x: Any, name: str) -> Any:
        return self.xp.astype(x, self.dtype(name))

    def round_to(self, x: Any, name: str) -> Any:
        """float32 ``x`` rounded once (RNE) to the dtype ``name``, as float32: how torch's bfloat16 and
        float16 arithmetic rounds, and how MLX rounds in a half-precision scale's dtype."""
        return self.astype(self.astype(x, name), "float32")

    def bitcast(self, x: Any, name: str) -> Any:
        """Reinterpret the bits of ``x`` as dtype ``name`` of the same width."""
        raise NotImplementedError

    def to_storage(self, codes: Any, fmt: ElementFormat) -> Any:
        """uint8/int8 codes -> the array that holds them (a native fp8 view where one exists)."""
        target = self.storage_dtype(fmt)
        return codes if self.dtype_name(codes) == target else self.bitcast(codes, target)

    def to_codes(self, data: Any, fmt: ElementFormat) -> Any:
        """Inverse of :meth:`to_storage`: the raw codes (:meth:`code_dtype`)."""
        target = self.code_dtype(fmt)
        return data if self.dtype_name(data) == target else self.bitcast(data, target)

    # --- exact helpers the array API lacks -------------------------------------------------------
    def pow2(self, e: Any) -> Any:
        """Exact ``2**e`` (float32) for integer-valued float32 ``e`` in [-126, 127]."""
        return self.xp.pow(2.0, e)

    def abs_max(self, x: Any, axes: tuple[int, ...]) -> Any:
        """``max(|x|)`` over ``axes`` (keepdims), propagating NaN and Inf.

        Computed as ``max(max(x), -min(x))``: two reductions read ``x`` without writing ``|x|``, which
        on torch and MLX costs more than both of them (``+ 0.0`` turns an all-zero block's ``-0.0``
        into the ``+0.0`` that ``max(|x|)`` gives).
        """
        xp = self.xp
        high = xp.max(x, axis=axes, keepdims=True)
        low = xp.min(x, axis=axes, keepdims=True)
        return xp.maximum(high, -low) + 0.0

    def pack_nibbles(self, codes: Any) -> Any:
        """:func:`breccia.formats.pack_nibbles` (two 4-bit codes per byte, element 2i low)."""
        return formats.pack_nibbles(self.xp, codes)

    def zeros(self, shape: tuple[int, ...], like: Any) -> Any:
        """Zeros of ``like``'s dtype, on ``like``'s device."""
        return self.xp.zeros(shape, dtype=like.dtype)

    def empty(self, shape: tuple[int, ...], name: str, like: Any) -> Any:
        """An uninitialised array of dtype ``name`` on ``like``'s device."""
        return self.xp.empty(shape, dtype=self.dtype(name))

    def scratch(self, shape: tuple[int, ...], like: Any) -> Any:
        """A float32 work array of ``shape`` on ``like``'s device that this thread's next call reuses
        (an eager CPU cast works in one slab after slab; see ``blockwise._Slabs``)."""
        n = math.prod(shape)
        buffers = self._scratch.__dict__.setdefault("buffers", {})
        device = self.device(like)
        buffer = buffers.get(device)
        if buffer is None or buffer.shape[0] < n:
            buffer = buffers[device] = self.empty((n,), "float32", like)
        return self.xp.reshape(buffer[:n], shape)

    def divide(self, a: Any, b: Any, out: Any = None) -> Any:
        """IEEE ``a / b`` rounded once (either side may be a Python float), into ``out`` if given."""
        return a / b if out is None else self.xp.divide(a, b, out=out)

    #: Whether :meth:`cond` branches at run time inside compiled code (``jax.lax.cond``).
    has_cond: bool = False

    def cond(
        self, pred: Any, true_fn: Callable[..., Any], false_fn: Callable[..., Any], *operands: Any
    ) -> Any:
        """``true_fn(*operands)`` if ``pred`` else ``false_fn(*operands)``, inside compiled code."""
        raise NotImplementedError(f"the {self.name} backend has no run-time conditional")

    def multiply_add(self, a: Any, b: Any, c: Any) -> Any:
        """``a * b + c`` with two roundings (no fused multiply-add), as MLX's dequantize computes it."""
        return a * b + c

    def constant(self, key: str, value: np.ndarray, like: Any) -> Any:
        """A cached framework copy of a numpy constant, on the device of ``like``."""
        device = self.device(like)
        cached = self._constants.get((key, device))
        if cached is None:
            cached = self.from_numpy(value, device=device)
            self._constants[(key, device)] = cached
        return cached

    def encode(self, x: Any, fmt: ElementFormat, *, consume: bool = False) -> Any:
        """Codes of float32 ``x`` (no NaN) in ``fmt``; the shared array-API implementation.

        ``consume=True`` says the caller will not use ``x`` again, so a backend may work in place.
        """
        return formats.encode(self.xp, self.pow2, x, fmt)

    def encode_into(self, x: Any, fmt: ElementFormat, out: Any) -> None:
        """:meth:`encode` of ``x`` (which the caller gives up) written into ``out``, an array of
        :meth:`code_dtype` (eager backends with item assignment only: numpy and torch)."""
        out[...] = self.encode(x, fmt, consume=True)

    def code_dtype(self, fmt: ElementFormat) -> str:
        """Name of the dtype of ``fmt``'s raw codes: int8 for INT8, else uint8 (nibbles unpacked)."""
        return "int8" if fmt.kind == "int" and not fmt.packed else "uint8"

    def decode(self, codes: Any, fmt: ElementFormat) -> Any:
        """float32 values of ``codes`` by the shared table lookup."""
        table = self.constant(f"decode:{fmt.name}", formats.decode_table(fmt), codes)
        return formats.decode(self.xp, codes, fmt, table)

    # --- host, devices, compilation ----------------------------------------------------------------
    #: True where the framework's arrays live in host memory only (numpy, MLX): no device to move to
    host_only: bool = False
    #: True where :meth:`from_host` wraps host memory in a writable array (torch has no read-only
    #: tensors): a reader hands such a backend memory of its own, never a view of a shared file map
    writable_host_views: bool = False

    def to_numpy(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        raise NotImplementedError

    def from_host(self, a: np.ndarray, device: Any = None) -> Any:
        """numpy array ``a`` (perhaps a read-only view of a file) as this framework's array on
        ``device``, the same bits: in the same dtype where the framework has it, else as unsigned
        bits of its width (MLX's fp8). Never an array that writes through to a read-only ``a``. A
        shape the framework cannot index is a ShapeError."""
        return self.from_numpy(a, device=device)

    def host_bytes(self, x: Any) -> np.ndarray:
        """The bytes of array ``x`` as a flat C-ordered little-endian uint8 numpy array (a view where
        ``x`` already is one in host memory, else one copy): what a file writer stores."""
        return host_order(self.to_numpy(x)).reshape(-1).view(np.uint8)

    def contiguous(self, x: Any) -> Any:
        """``x`` in row-major memory where the framework keeps strided views that its own writers
        refuse (torch: ``Tensor.contiguous()``); as it is elsewhere."""
        return x

    def check_device(self, device: Any) -> None:
        """FrameworkError, before anything is read, if this framework cannot place arrays on
        ``device`` (None: the framework's default)."""

    def device(self, x: Any) -> Any:
        return None

    def is_traced(self, x: Any) -> bool:
        """Whether ``x`` is a placeholder of a trace (no data to branch on)."""
        return False

    def is_cuda(self, x: Any) -> bool:
        """Whether ``x`` lives (or, traced, may run) on an NVIDIA GPU: the fused kernels' device."""
        return False

    def by_platform(self, x: Any, cuda: Callable[[], Any], other: Callable[[], Any]) -> Any:
        """``cuda()`` where ``x`` is on an NVIDIA GPU, else ``other()`` (both give the same arrays)."""
        return cuda() if self.is_cuda(x) else other()

    def known_true(self, predicate: Any) -> bool:
        """Whether a 0-d boolean array is true; False where its value cannot be read here (inside a
        framework's trace), so that the caller takes its general branch."""
        return bool(predicate)

    def chunk_elements(self, x: Any) -> int:
        """How many elements an eager cast handles at a time (0: all at once). CPU backends work in
        cache-sized slabs; see ``blockwise._Slabs``."""
        return 0

    def compiles(self, x: Any) -> bool:
        """Whether casts of ``x`` run through :meth:`compile` (jax: always; the others run eagerly)."""
        return False

    def compile(self, key: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` compiled by the framework's compiler (cached by ``key``); eager by default."""
        return fn

    def _cached_compile(
        self, key: Any, fn: Callable[..., Any], compiler: Callable[[Callable[..., Any]], Any]
    ) -> Callable[..., Any]:
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = compiler(fn)
            self._compiled[key] = compiled
        return compiled

    # --- DLPack and devices (used by the hub in breccia.bridges._dlpack) -----------------------------
    #: False where the framework cannot wrap memory it did not allocate (every import copies)
    dlpack_shares: bool = True
    #: the byte alignment a host buffer needs to be imported without a copy
    dlpack_alignment: int = 1

    def finalize_output(self, a: Any) -> Any:
        """A cast's output array as this backend keeps it (as is, unless a backend says otherwise)."""
        return a

    def dlpack_native(self, name: str) -> bool:
        """Whether DLPack carries dtype ``name`` into and out of this framework as it is. Other dtypes
        travel as unsigned-integer bits of the same width and are re-viewed on arrival."""
        return True

    def dlpack_export(self, x: Any) -> Any:
        """An object whose ``__dlpack__`` exports ``x`` without a copy."""
        return x

    def dlpack_import(self, producer: Any, copy: bool | None) -> Any:
        """This framework's array over ``producer``'s DLPack export (``copy`` as in the array API)."""
        raise NotImplementedError

    def dlpack_device(self, x: Any) -> tuple[int, int]:
        """``x``'s device as a DLPack ``(device_type, index)`` pair."""
        kind, index = x.__dlpack_device__()
        return int(kind), int(index)

    def data_pointer(self, x: Any) -> int:
        """Address of ``x``'s first element (to tell a shared buffer from a copy)."""
        raise NotImplementedError

    def to_device(self, x: Any, device: tuple[int, int]) -> Any:
        """``x`` on DLPack device ``device`` (a copy when it moves); host-only frameworks take the host."""
        if device != DLPACK_CPU:
            raise FrameworkError(f"{self.name} arrays live in host memory; use device='cpu' or None")
        return x
