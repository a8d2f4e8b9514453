"""The DLPack hub: move a ScaledTensor between numpy, JAX, MLX and PyTorch with its bits unchanged.

Each array of the tensor (data, scale, and NVFP4's global scale or an asymmetric zero point) crosses
as one DLPack export, so the two frameworks share the buffer wherever they can. DLPack cannot name
every dtype on every side: numpy knows no bfloat16, fp8 or E8M0, and MLX imports through numpy. Such
an array crosses as unsigned-integer bits of the same width (uint8 for fp8/E8M0, uint16 for 16-bit
floats) and is viewed back as its dtype on arrival, which costs nothing in numpy, torch and MLX.
JAX's own bitcast copies outside ``jit``, so for JAX the view happens in the capsule instead: the
``dtype`` field of the exported ``DLTensor`` is rewritten (same width, same bytes) before JAX reads it.

Nothing is rounded or converted anywhere: every move is a byte-for-byte share or copy. Recipe,
layout, logical shape and logical dtype travel as Python values.

Which moves share memory (verified in ``tests/test_dlpack.py``): every pair among numpy,
torch and JAX on the host (JAX only for 64-byte aligned buffers, which breccia's numpy casts are),
torch <-> JAX on one CUDA device, and MLX to numpy or torch. MLX cannot wrap memory it did not
allocate, so a move into MLX copies once; a move between host and GPU copies once, explicitly
(``Tensor.cpu()`` / ``jax.device_put``). ``docs/bridges/dlpack.md`` has the full matrix.
"""

from __future__ import annotations

import ctypes
from typing import Any

from ..backends import FRAMEWORKS, Backend, get_backend
from ..backends._base import DLPACK_CPU, DLPACK_CUDA
from ..errors import CopyError, DLPackError, DTypeError, FrameworkError
from ..tensor import ScaledTensor

__all__ = ["DLPackCapsule", "from_dlpack", "to_dlpack"]

#: the unsigned-integer carrier of each dtype that some framework's DLPack cannot name
_BITS = {
    "float8_e4m3fn": "uint8",
    "float8_e5m2": "uint8",
    "float8_e8m0fnu": "uint8",
    "bfloat16": "uint16",
    "float16": "uint16",
}
#: DLPack ``DLDataType`` (type code, bits) of the dtypes breccia relabels (dlpack.h, v1.1)
_DL_DTYPES = {
    "int8": (0, 8),
    "uint8": (1, 8),
    "uint16": (1, 16),
    "float16": (2, 16),
    "bfloat16": (4, 16),
    "float8_e4m3fn": (10, 8),
    "float8_e5m2": (12, 8),
    "float8_e8m0fnu": (14, 8),
}


# --- the capsule ---------------------------------------------------------------------------------
class _DLDataType(ctypes.Structure):
    _fields_ = (("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16))


class _DLTensor(ctypes.Structure):
    _fields_ = (
        ("data", ctypes.c_void_p),
        ("device_type", ctypes.c_int32),
        ("device_id", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("byte_offset", ctypes.c_uint64),
    )


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = (
        ("major", ctypes.c_uint32),
        ("minor", ctypes.c_uint32),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    )


_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = (ctypes.py_object,)
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = (ctypes.py_object, ctypes.c_char_p)


def _dl_tensor(capsule: Any) -> _DLTensor:
    """The ``DLTensor`` inside an unconsumed capsule (legacy ``dltensor`` or ``dltensor_versioned``)."""
    name = _capsule_name(capsule)
    if name not in (b"dltensor", b"dltensor_versioned"):
        raise DLPackError(f"expected an unconsumed DLPack capsule; got one named {name!r}")
    address = _capsule_pointer(capsule, name)
    if name == b"dltensor":  # DLManagedTensor starts with its DLTensor
        return _DLTensor.from_address(address)
    return _DLManagedTensorVersioned.from_address(address).dl_tensor


def _relabel(capsule: Any, exported: str, presented: str) -> None:
    """Rewrite the capsule's dtype from ``exported`` to ``presented`` (same width: a bit view)."""
    if exported == presented:
        return
    (code, bits), (new_code, new_bits) = _DL_DTYPES[exported], _DL_DTYPES[presented]
    tensor = _dl_tensor(capsule)
    if (tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes) != (code, bits, 1) or bits != new_bits:
        raise DLPackError(f"cannot view a DLPack export of {exported} as {presented}")
    tensor.dtype.code = new_code


class DLPackCapsule:
    """One array's single-use DLPack export, its dtype presented as :attr:`dtype` (same bytes).

    Any DLPack consumer takes it: ``np.from_dlpack(c)``, ``torch.from_dlpack(c)``,
    ``jax.numpy.from_dlpack(c)``, or ``c.__dlpack__()`` for the raw ``PyCapsule``. Like a
    ``PyCapsule`` it can be consumed once; a second ``__dlpack__`` raises
    :class:`~breccia.errors.DLPackError`.
    """

    __slots__ = ("_consumed", "_exported", "_source", "dtype", "what")

    def __init__(self, source: Any, exported: str, dtype: str, what: str = "array") -> None:
        self._source = source
        self._exported = exported
        self._consumed = False
        self.dtype = dtype
        self.what = what

    def __dlpack_device__(self) -> tuple[int, int]:
        kind, index = self._source.__dlpack_device__()
        return int(kind), int(index)

    def __dlpack__(self, **kwargs: Any) -> Any:
        if self._consumed:
            raise DLPackError(
                f"this DLPack capsule ({self.what}) was already consumed; a capsule can be imported "
                "once: call breccia.bridges.to_dlpack(st) again for a fresh pair"
            )
        capsule = self._source.__dlpack__(**kwargs)
        _relabel(capsule, self._exported, self.dtype)
        self._consumed = True
        self._source = None
        return capsule

    def __repr__(self) -> str:
        state = "consumed" if self._consumed else "unconsumed"
        return f"DLPackCapsule({self.what}, dtype={self.dtype}, {state})"


def _bits_of(name: str) -> str:
    bits = _BITS.get(name)
    if bits is None:
        raise DLPackError(f"DLPack cannot carry a {name} array between these frameworks")
    return bits


def _export(backend: Backend, x: Any, presented: str | None, what: str) -> DLPackCapsule:
    """A capsule over ``x`` without a copy, presented as ``presented`` (default: portable bits)."""
    name = backend.dtype_name(x)
    if not backend.dlpack_native(name):  # numpy/MLX: their bit views are free
        x, name = backend.bitcast(x, _bits_of(name)), _bits_of(name)
    return DLPackCapsule(backend.dlpack_export(x), name, presented or _BITS.get(name, name), what)


# --- public API ----------------------------------------------------------------------------------
def to_dlpack(st: ScaledTensor) -> tuple[DLPackCapsule, DLPackCapsule]:
    """``(data_capsule, scale_capsule)``: single-use DLPack exports of ``st.data`` and ``st.scale``.

    Nothing is copied. fp8 and E8M0 arrays are presented as uint8 bits and 16-bit float scales as
    uint16 bits, which every DLPack consumer can import; view them back on arrival, e.g.
    ``np.from_dlpack(data).view(ml_dtypes.float8_e4m3fn)`` or
    ``torch.from_dlpack(data).view(torch.float8_e4m3fn)``.
    Packed FP4/INT4 data is uint8 already (two codes a byte, element 2i in the low nibble) and INT8
    is int8. NVFP4's ``global_scale`` and asymmetric ``zero_point`` are not in the pair: move a whole
    tensor with :func:`from_dlpack`, which carries them too.
    """
    _check_tensor(st)
    backend = get_backend(st.framework)
    return (
        _export(backend, st.data, None, f"{st.recipe.name} data"),
        _export(backend, st.scale, None, f"{st.recipe.name} scale"),
    )


def from_dlpack(
    st: ScaledTensor, framework: str = "numpy", *, device: Any = None, copy: bool | None = None
) -> ScaledTensor:
    """``st`` in ``framework`` ("numpy", "jax", "mlx" or "torch"), bits, recipe, layout, shape and
    logical dtype unchanged.

    ``device``: None keeps a torch/JAX tensor where it is (numpy and MLX take the host); "cpu",
    "cuda", "cuda:N" or a torch/JAX device object moves it, which copies once. ``copy``: None copies
    only what cannot be shared, True always gives fresh buffers, False raises
    :class:`~breccia.errors.CopyError` if the data or scale cannot be shared. The small
    ``global_scale`` and ``zero_point`` travel the same way but are copied silently where needed,
    even under ``copy=False``.
    """
    _check_tensor(st)
    if copy not in (None, True, False):
        raise CopyError(f"copy must be None, True or False; got {copy!r}")
    if not isinstance(framework, str):
        raise FrameworkError(f"framework must be a name, one of {', '.join(FRAMEWORKS)}; got {framework!r}")
    dst = get_backend(framework)
    src = get_backend(st.framework)
    here = src.dlpack_device(st.data)
    target = _target_device(dst, device, here)
    if dst is src and here == target and not copy:
        return st
    if copy is False:
        _check_shareable(src, dst, st, here, target)
    data = _move(src, dst, st.data, dst.storage_dtype(st.recipe.element_format), copy, target, "data")
    scale_fmt = st.recipe.scale_element_format
    scale_dtype = src.dtype_name(st.scale) if scale_fmt is None else dst.storage_dtype(scale_fmt)
    scale = _move(src, dst, st.scale, scale_dtype, copy, target, "scale")
    small = None if copy is False else copy
    global_scale, zero_point = (
        None if a is None else _move(src, dst, a, src.dtype_name(a), small, target, what)
        for a, what in ((st.global_scale, "global_scale"), (st.zero_point, "zero_point"))
    )
    return st.replace_arrays(data, scale, global_scale, zero_point, framework=dst.name)


# --- the move ------------------------------------------------------------------------------------
def _move(
    src: Backend, dst: Backend, x: Any, want: str, copy: bool | None, target: tuple[int, int], what: str
) -> Any:
    """Array ``x`` of ``src`` as a ``dst`` array of dtype ``want`` on DLPack device ``target``.

    At most one copy is made. A device change copies explicitly (to the host in ``src`` before the
    export, or to the accelerator in ``dst`` after the import) and stands in for ``copy=True``. A copy
    in host memory (``copy=True``, or a buffer JAX cannot take as it is) goes into a 64-byte aligned
    numpy buffer, which ``dst`` then shares: numpy's allocator asks for huge pages, so this copy runs
    at ``numpy.copyto`` speed where torch's and JAX's own fresh buffers pay a page fault per 4 KiB.
    MLX cannot share, so it makes its own single copy.
    """
    here = src.dlpack_device(x)
    if here != target and target == DLPACK_CPU:
        x, here, copy = src.to_device(x, DLPACK_CPU), DLPACK_CPU, None
    to_accelerator = here != target
    if here == DLPACK_CPU and not to_accelerator and dst.dlpack_shares and _size(x):
        if copy or src.data_pointer(x) % dst.dlpack_alignment:
            x, src, copy = _host_copy(src, x, what), get_backend("numpy"), None
    presented = want if dst.dlpack_native(want) else _bits_of(want)
    y = dst.dlpack_import(_export(src, x, presented, what), copy=None if to_accelerator else copy)
    if presented != want:
        y = dst.bitcast(y, want)
    if to_accelerator:
        y = dst.to_device(y, target)
    if copy is False and _size(x) and src.data_pointer(x) != dst.data_pointer(y):
        raise CopyError(f"{src.name} -> {dst.name} copied the {what}, but copy=False was asked for")
    return y


def _host_copy(src: Backend, x: Any, what: str) -> Any:
    """A 64-byte aligned numpy copy of host array ``x``, same dtype name (bits as uint8/uint16)."""
    numpy = get_backend("numpy")
    name = src.dtype_name(x)
    carried = name if numpy.dlpack_native(name) else _bits_of(name)
    copied = numpy.dlpack_import(_export(src, x, carried, what), copy=True)
    return copied if carried == name else numpy.bitcast(copied, name)


def _check_shareable(
    src: Backend, dst: Backend, st: ScaledTensor, here: tuple[int, int], target: tuple[int, int]
) -> None:
    """CopyError, before anything moves, where ``copy=False`` cannot be honoured."""
    if here != target:
        raise CopyError(
            f"moving from {_device_name(here)} to {_device_name(target)} copies the tensor; "
            "pass copy=None (or True) to allow it"
        )
    if not dst.dlpack_shares:
        raise CopyError(
            f"{dst.name} cannot wrap memory it did not allocate, so {src.name} -> {dst.name} always "
            "copies once; pass copy=None (or True) to allow it"
        )
    if here == DLPACK_CPU:
        for what, a in (("data", st.data), ("scale", st.scale)):
            address = src.data_pointer(a)
            if _size(a) and address % dst.dlpack_alignment:
                raise CopyError(
                    f"{dst.name} imports host memory without a copy only at {dst.dlpack_alignment}-byte "
                    f"aligned addresses; this {what} starts at {address:#x}, "
                    f"{address % dst.dlpack_alignment} bytes past one. breccia's own numpy casts are "
                    "aligned; pass copy=None to allow the copy"
                )


def _size(x: Any) -> int:
    size = 1
    for n in x.shape:
        size *= int(n)
    return size


# --- devices -------------------------------------------------------------------------------------
def _device_name(device: tuple[int, int]) -> str:
    if device == DLPACK_CPU:
        return "the host"
    return f"cuda:{device[1]}" if device[0] == DLPACK_CUDA else f"DLPack device {device}"


def _target_device(dst: Backend, device: Any, here: tuple[int, int]) -> tuple[int, int]:
    """The DLPack device the result lives on."""
    if device is None:
        return DLPACK_CPU if dst.host_only or here[0] != DLPACK_CUDA else here
    target = _parse_device(device)
    if target != DLPACK_CPU and dst.host_only:
        raise FrameworkError(
            f"{dst.name} arrays live in host memory; use device='cpu' or None, not {device!r}"
        )
    return target


def _parse_device(device: Any) -> tuple[int, int]:
    """"cpu", "cuda", "cuda:N" ("gpu" for JAX's name), a ``torch.device`` or a JAX ``Device``."""
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        kind = kind.strip().lower()
    elif hasattr(device, "platform"):  # jax Device
        kind, index = str(device.platform), str(device.id)
    elif hasattr(device, "type") and hasattr(device, "index"):  # torch.device
        kind, index = str(device.type), "" if device.index is None else str(device.index)
    else:
        kind, index = "", ""
    if kind == "cpu" and index in ("", "0"):
        return DLPACK_CPU
    if kind in ("cuda", "gpu") and (index == "" or index.isdigit()):
        return DLPACK_CUDA, int(index or 0)
    raise FrameworkError(
        f"device must be None, 'cpu', 'cuda', 'cuda:N' or a torch/JAX device; got {device!r}"
    )


def _check_tensor(st: Any) -> None:
    if not isinstance(st, ScaledTensor):
        raise DTypeError(
            f"expected a breccia ScaledTensor (from bc.cast or bc.from_buffer); got {type(st).__name__}"
        )
