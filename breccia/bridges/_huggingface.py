"""safetensors bridge: ScaledTensors (and plain arrays) to and from ``.safetensors`` files and shards.

File convention: a ScaledTensor ``name`` is stored as the tensors ``name.data``, ``name.scale``, plus
``name.global_scale`` (NVFP4) and ``name.zero_point`` (asymmetric ints), each with its real
safetensors dtype (``F8_E4M3``/``F8_E5M2`` FP8 data, ``U8`` packed 4-bit data with element ``2i`` in
the low nibble, ``I8`` int8 data, ``F8_E8M0`` MX scales, ``F8_E4M3`` NVFP4 scales, ``F32``/``BF16``/
``F16`` float scales), and the ``__metadata__`` entry ``name.config``, a JSON object::

    {"format": "breccia.ScaledTensor", "version": 1, "recipe": recipe.to_dict(),
     "layout": layout.to_dict(), "shape": [logical shape], "dtype": "bfloat16"}

Any safetensors reader sees ordinary tensors; breccia pairs them again. Plain arrays of any
framework are stored as they are under their own name. Bytes are copied, never converted, so a
round trip is bit for bit.

Reading parses and validates the header with :mod:`._safetensors_format` (safetensors' own numpy,
flax and MLX loaders fail on F8), maps the file copy-on-write (``mmap.ACCESS_COPY``: pages are read
when touched, writes never reach the file) and views the bytes as the stored dtype. numpy arrays are
**read-only** views of that map (zero-copy; they keep it alive after ``close()``), so no caller can
change what the next read returns; torch, which has no read-only tensors, gets a tensor of its own:
a private copy-on-write map of just that tensor's bytes (a copy for tensors under 64 KiB); JAX and
MLX copy out of it. :func:`load_safetensors` and :func:`load_plain_safetensors`, which read each
tensor once and close, return writable views of their own copy-on-write map (writes stay in
memory). MLX, which has no fp8 dtype, gets FP8/E8M0 tensors as uint8 bits. A memory-mapped array
reads whatever the file holds when it is touched: replacing the file (``os.replace``, as
:func:`save_safetensors` does) is safe, truncating it in place while arrays are alive is not (the
same holds for ``safetensors.torch.load_file``).

Scales read from a file are checked when their ScaledTensor is read: a NaN, +-Inf or zero scale, or
a negative one (except MLX's affine mode, whose scales are negative in about half the groups), and a
non-finite global scale or zero point raise :class:`~breccia.errors.ScaleValueError` naming the tensor
and its first bad block. ``check_scales=False`` keeps them (``breccia inspect`` counts them); breccia
writes a NaN scale for a block whose input held NaN, so such a tensor reads back only that way.

Writing goes to a temporary file beside the target, named with the process id, the thread id and
random bytes (created exclusively), renamed over the target when complete and removed on any error:
concurrent saves to one path never share a temporary file, and the last rename wins whole. A process
killed mid-save leaves at most its own ``.NAME.*.tmp`` file; the target is untouched.
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import Backend, backend_for, get_backend
from ..backends._base import FLOAT_DTYPES
from ..errors import (
    BrecciaError,
    DTypeError,
    FileAccessError,
    FileFormatError,
    FileMissingError,
    FrameworkError,
    NotAnArrayError,
    RecipeError,
    ScaleValueError,
    ShapeError,
)
from ..formats import packed_length
from ..layouts import Layout, layout_from_dict, oversized_axes, scale_shape
from ..quantize import checked_layout, from_buffer
from ..recipes import Recipe, recipe_from_dict
from ..scaling import decode_scale
from ..tensor import ScaledTensor
from ._paths import real_directory, regular_file
from ._safetensors_format import (
    DTYPES,
    Header,
    TensorEntry,
    dtype_for,
    encode_header,
    file_stamp,
    fspath,
    loads_strict,
    nbytes_of,
    numpy_dtype,
    open_regular,
    read_header,
    read_json_file,
)

__all__ = [
    "CONFIG_FORMAT",
    "CONFIG_VERSION",
    "INDEX_NAME",
    "SafetensorsCheckpoint",
    "load_plain_safetensors",
    "load_safetensors",
    "open_safetensors",
    "parse_size",
    "read_index",
    "save_safetensors",
    "scaled_parts",
    "stored_array",
]

CONFIG_FORMAT = "breccia.ScaledTensor"
CONFIG_VERSION = 1
CONFIG_SUFFIX = ".config"
PARTS = ("data", "scale", "global_scale", "zero_point")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_FLOAT_ST = ("F32", "BF16", "F16")
_MAX_NDIM = 32  # numpy 1.x holds at most 32 dimensions
_MAX_DIM = np.iinfo(np.intp).max
_PRIVATE_MAP_BYTES = 1 << 16  # torch tensors this large get a private map of their own, smaller ones a copy

# ==================================================================================================
# writing
# ==================================================================================================


@dataclass(frozen=True)
class _Part:
    """One raw tensor to write; ``host()`` gives its bytes (flat uint8, little-endian) when needed."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    host: Callable[[], np.ndarray]
    owner: str | None = None  # the ScaledTensor it belongs to

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)


def _host_bytes(x: Any) -> np.ndarray:
    """The bytes of array ``x`` as a flat C-ordered little-endian uint8 numpy array (a view if possible)."""
    return backend_for(x).host_bytes(x)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def _plain_part(name: str, x: Any) -> _Part:
    try:
        backend = backend_for(x, f"tensor {name!r}")
    except NotAnArrayError as exc:
        raise NotAnArrayError(f"{exc}; save_safetensors stores ScaledTensors and arrays") from None
    dtype_name = backend.dtype_name(x)
    st_dtype = dtype_for(dtype_name)
    if st_dtype is None:
        supported = sorted({n for _, n in DTYPES.values() if n})
        raise DTypeError(
            f"tensor {name!r}: safetensors has no dtype for {dtype_name}; use one of {supported}"
        )
    return _Part(name, st_dtype, _shape(x), lambda: _host_bytes(x))


def _float_part(name: str, owner: str, x: Any) -> _Part:
    backend = backend_for(x, name)
    dtype = dtype_for(backend.dtype_name(x))
    if dtype not in _FLOAT_ST:
        raise DTypeError(f"{name}: expected float32, bfloat16 or float16; got {backend.dtype_name(x)}")
    return _Part(name, dtype, _shape(x), lambda: _host_bytes(x), owner)


def scaled_parts(name: str, st: ScaledTensor) -> tuple[list[_Part], str]:
    """The raw tensors of ScaledTensor ``st`` stored as ``name`` (``name.data``, ``name.scale``, ...)
    and its ``.config`` JSON, after checking that they fit: what a writer of this file convention
    stores. Each part has ``name``, ``dtype`` (safetensors'), ``shape`` and ``host()`` (its bytes)."""
    checked = from_buffer(
        st.data,
        st.scale,
        st.recipe,
        st.layout,
        shape=st.shape,
        dtype=st.dtype_name,
        global_scale=st.global_scale,
        zero_point=st.zero_point,
    )
    backend = get_backend(checked.framework)
    fmt = st.recipe.element_format
    data = checked.data
    parts = [
        _Part(
            f"{name}.data",
            fmt.safetensors_dtype,
            _shape(data),
            lambda: _host_bytes(backend.to_codes(data, fmt)),
            name,
        )
    ]
    scale_fmt = st.recipe.scale_element_format
    scale = checked.scale
    if scale_fmt is None:
        parts.append(_float_part(f"{name}.scale", name, scale))
    else:
        parts.append(
            _Part(
                f"{name}.scale",
                scale_fmt.safetensors_dtype,
                _shape(scale),
                lambda: _host_bytes(backend.to_codes(scale, scale_fmt)),
                name,
            )
        )
    if checked.global_scale is not None:
        parts.append(_float_part(f"{name}.global_scale", name, checked.global_scale))
    if checked.zero_point is not None:
        parts.append(_float_part(f"{name}.zero_point", name, checked.zero_point))
    config = {
        "format": CONFIG_FORMAT,
        "version": CONFIG_VERSION,
        "recipe": st.recipe.to_dict(),
        "layout": st.layout.to_dict(),
        "shape": list(st.shape),
        "dtype": st.dtype_name,
    }
    try:
        text = json.dumps(config, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise RecipeError(
            f"tensor {name!r}: {st.recipe!r} has a non-finite field, which JSON cannot hold"
        ) from None
    return parts, text


def _collect(tensors: Mapping[str, Any]) -> tuple[list[_Part], dict[str, str]]:
    """Every raw tensor to write, in the caller's order, and the ``.config`` entry of each ScaledTensor."""
    if not isinstance(tensors, Mapping):
        raise NotAnArrayError(
            f"tensors must be a mapping of name -> ScaledTensor or array; got {type(tensors).__name__}"
        )
    parts: list[_Part] = []
    configs: dict[str, str] = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise FileFormatError(f"tensor names must be strings; got {name!r}")
        if isinstance(value, ScaledTensor):
            scaled, configs[name + CONFIG_SUFFIX] = scaled_parts(name, value)
            parts.extend(scaled)
        else:
            parts.append(_plain_part(name, value))
    seen: dict[str, str] = {}
    for part in parts:
        if part.name == "__metadata__":
            raise FileFormatError("'__metadata__' is reserved by safetensors; it cannot name a tensor")
        if part.name in seen:
            raise FileFormatError(
                f"two tensors would both be stored as {part.name!r} ({seen[part.name]} and "
                f"{part.owner or part.name}); rename one"
            )
        seen[part.name] = part.owner or part.name
    # a name the reader would pair with a ScaledTensor as one of its parts (one it has or not)
    scaled_names = [name for name, value in tensors.items() if isinstance(value, ScaledTensor)]
    reserved = {f"{name}.{part}": name for name in scaled_names for part in PARTS}
    for name in tensors:
        owner = reserved.get(name)
        if owner is not None:
            part = name[len(owner) + 1 :]
            raise FileFormatError(
                f"{name!r} is the name of ScaledTensor {owner!r}'s {part} part (a ScaledTensor "
                f"{owner!r} is stored as {', '.join(repr(owner + '.' + p) for p in PARTS)}); rename {name!r}"
            )
    return parts, configs


def _check_metadata(extra: Mapping[str, str] | None, configs: Mapping[str, str]) -> dict[str, str]:
    if extra is None:
        return {}
    if not isinstance(extra, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise FileFormatError("extra_metadata must map strings to strings (safetensors' __metadata__ rule)")
    clash = sorted(set(extra) & set(configs))
    if clash:
        raise FileFormatError(f"extra_metadata key(s) {clash} are the configs of ScaledTensors being saved")
    return dict(extra)


def _check_target(path: str) -> None:
    """A file may be written at ``path``: it is not a directory and its directory exists."""
    if os.path.isdir(path):
        raise FileAccessError(
            f"{path}: is a directory; save_safetensors writes one file (pass max_shard_size= to write "
            "shards into a directory)"
        )
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise FileMissingError(f"{path}: the directory {parent!r} does not exist")


def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    """Call ``write(f)`` on a new temporary file beside ``path``, then rename it over ``path``.

    The temporary name holds the process id, the thread id and random bytes and is created
    exclusively, so concurrent writers never share one; on any error it is removed and ``path`` is
    untouched. The rename is atomic: a reader sees the old file or the new one, never a mix."""
    directory, base = os.path.split(path)
    tmp = os.path.join(
        directory or ".", f".{base}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(6)}.tmp"
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_file(path: str, parts: list[_Part], metadata: Mapping[str, str]) -> None:
    """Write one file: the header first, then each tensor's bytes, one tensor in memory at a time.

    Written through :func:`_atomic_write`, so a failure never leaves a truncated file, readers that
    memory-mapped the old file keep its bytes, and of concurrent saves the last one wins whole."""
    header, order = encode_header(((p.name, p.dtype, p.shape) for p in parts), metadata)
    by_name = {p.name: p for p in parts}
    _check_target(path)

    def write(f: Any) -> None:
        f.write(header)
        for name, begin, end in order:
            data = by_name[name].host()
            if data.nbytes != end - begin:
                raise FileFormatError(f"tensor {name!r}: holds {data.nbytes} bytes, expected {end - begin}")
            f.write(data)
            del data

    _atomic_write(path, write)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``"5GB"`` (10**9) or ``"500MiB"`` (2**20)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.match(size) if isinstance(size, str) else None
        unit = (match.group(2) or "").upper() if match else ""
        if match is None or unit not in _UNITS:
            raise FileFormatError(
                f"max_shard_size must be bytes (int) or a size like '5GB' or '500MiB'; got {size!r}"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    if value < 1:
        raise FileFormatError(f"max_shard_size must be positive; got {size!r}")
    return value


def _shard_groups(parts: list[_Part], limit: int) -> list[list[_Part]]:
    """HF's greedy split: tensors in order; a new shard when the next would pass ``limit`` (a tensor
    larger than ``limit`` gets a shard of its own)."""
    groups: list[list[_Part]] = [[]]
    size = 0
    for part in parts:
        if groups[-1] and size + part.nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += part.nbytes
    return groups


def save_safetensors(
    tensors: Mapping[str, ScaledTensor | Any],
    path: str | os.PathLike,
    extra_metadata: Mapping[str, str] | None = None,
    *,
    max_shard_size: int | str | None = None,
) -> None:
    """Save ScaledTensors and plain arrays (numpy, JAX, MLX or torch; fp8/bf16 included) to ``path``.

    See the module docstring for the file convention. ``extra_metadata`` (str -> str) is stored in
    ``__metadata__`` beside the configs. Without ``max_shard_size``, ``path`` is one file. With it
    (bytes, or a string like ``"5GB"``), ``path`` is a directory that receives HF-style shards
    ``model-00001-of-0000N.safetensors`` (each at most that many bytes of tensors, unless one tensor
    is larger) and ``model.safetensors.index.json`` (``{"metadata": {"total_size": ..., **extra},
    "weight_map": {raw tensor: shard}}``); a ScaledTensor's config goes to the shard holding its
    ``.data``, and its parts may land in different shards.

    Memory: the header is written first, then each tensor's bytes; only one tensor is ever copied
    (a device-to-host transfer, or a non-contiguous input), so peak memory is at most one tensor
    above the inputs.
    """
    parts, configs = _collect(tensors)
    extra = _check_metadata(extra_metadata, configs)
    path = fspath(path)
    if max_shard_size is None:
        _write_file(path, parts, {**extra, **configs})
        return
    groups = _shard_groups(parts, parse_size(max_shard_size))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileAccessError(f"{path}: is a file; with max_shard_size= the target is a directory of shards")
    os.makedirs(path, exist_ok=True)
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        shard = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        owned = {
            p.owner + CONFIG_SUFFIX for p in group if p.owner is not None and p.name == p.owner + ".data"
        }
        _write_file(os.path.join(path, shard), group, {**extra, **{k: configs[k] for k in sorted(owned)}})
        weight_map.update((p.name, shard) for p in group)
    index = {"metadata": {"total_size": sum(p.nbytes for p in parts), **extra}, "weight_map": weight_map}
    text = json.dumps(index, indent=2).encode("utf-8")
    _atomic_write(os.path.join(path, INDEX_NAME), lambda f: f.write(text))


# ==================================================================================================
# reading
# ==================================================================================================


class _Shard:
    """One file: its validated header and, once a tensor is read, a copy-on-write map of it."""

    def __init__(self, header: Header) -> None:
        self.header = header
        self._map: mmap.mmap | None = None

    @property
    def path(self) -> str:
        return self.header.path

    def _open_checked(self) -> int:
        """A descriptor of the file, checked to be the version whose header was read."""
        fd, stat = open_regular(self.path)
        if file_stamp(stat) != self.header.stamp:
            os.close(fd)
            raise FileFormatError(
                f"{self.path}: the file was replaced or modified since its header was read; open it again"
            )
        return fd

    def buffer(self) -> mmap.mmap:
        if self._map is None:
            fd = self._open_checked()
            try:
                self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
            finally:
                os.close(fd)
        return self._map

    def array(self, entry: TensorEntry, private: bool = False, once: bool = False) -> np.ndarray:
        """Tensor ``entry`` as a numpy array of its stored dtype.

        By default a read-only view of the shared map (a read-only copy where the bytes are not
        aligned for the dtype). ``private=True`` gives a writable array no other read shares: a
        copy-on-write map of just this tensor's bytes (a plain copy under 64 KiB). ``once=True``
        (a caller that reads each tensor once, then closes) gives a writable view of the shared map:
        no other read will see its region, and writes stay in memory (the map is copy-on-write).
        Sub-byte dtypes come back as their bytes: F4 as uint8 ``[..., n/2]`` (when ``n`` is even),
        F6 (and an odd F4 last axis) as a flat uint8 array."""
        dtype = numpy_dtype(entry.dtype)
        shape = entry.shape
        bits = DTYPES[entry.dtype][0]
        if bits < 8:
            last_bits = shape[-1] * bits if shape else 0
            shape = (*shape[:-1], last_bits // 8) if shape and last_bits % 8 == 0 else (entry.nbytes,)
        where = f"{self.path}: tensor {entry.name!r}"
        if len(shape) > _MAX_NDIM or any(d > _MAX_DIM for d in shape):
            raise FileFormatError(f"{where}: shape {list(entry.shape)} is beyond what arrays can hold")
        if entry.nbytes == 0:
            out = np.zeros(shape, dtype)
            out.flags.writeable = private or once
            return out
        offset = self.header.data_start + entry.begin
        if once:
            private = False
        if private and entry.nbytes >= _PRIVATE_MAP_BYTES:
            raw = self._private_bytes(offset, entry.nbytes)
        else:
            raw = np.frombuffer(self.buffer(), np.uint8, entry.nbytes, offset)
            if private:
                raw = raw.copy()
        if offset % dtype.itemsize:
            raw = raw.copy()  # unaligned (a foreign writer): an aligned copy
        out = raw.view(dtype).reshape(shape)
        out.flags.writeable = private or once
        return out

    def _private_bytes(self, offset: int, nbytes: int) -> np.ndarray:
        """The file's bytes ``[offset, offset + nbytes)`` in a copy-on-write map of their own."""
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        fd = self._open_checked()
        try:
            region = mmap.mmap(fd, offset + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
        finally:
            os.close(fd)
        return np.frombuffer(region, np.uint8, nbytes, offset - start)

    def close(self) -> None:
        self._map = None  # arrays viewing the map keep it alive; it is unmapped with the last of them


def stored_array(a: np.ndarray, backend: Backend, device: Any, where: str) -> Any:
    """numpy array ``a`` read from a file (a map view; writable only if private to this read) as
    ``backend``'s array on ``device``, same bits (:meth:`~breccia.backends.Backend.from_host`). A
    shape the framework cannot hold is a FileFormatError naming ``where`` (the file and tensor)."""
    try:
        return backend.from_host(a, device)
    except ShapeError as exc:
        raise FileFormatError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class _Config:
    """A parsed ``.config``: what the ScaledTensor is and what its parts must look like."""

    recipe: Recipe
    layout: Layout
    shape: tuple[int, ...]
    dtype_name: str
    expected: dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]]  # see _expected_parts
    views: dict[str, np.dtype]  # part -> the numpy dtype it is read as (FP8 data / scales stored as U8)


@dataclass(frozen=True)
class _ScaledSpec:
    """A config checked against the tensors of one file: ``parts`` maps part -> raw tensor name."""

    config: _Config
    parts: dict[str, str]


def _expected_parts(recipe: Recipe, layout: Layout, shape: tuple[int, ...]):
    """part -> (allowed safetensors dtypes, stored shape; None for 'any shape of one element')."""
    fmt = recipe.element_format
    stored = (*shape[:-1], packed_length(shape[-1])) if fmt.packed and shape else shape
    grid = scale_shape(layout, shape) if shape else ()
    data_dtypes = (fmt.safetensors_dtype,) + (("U8",) if fmt.kind == "float" and not fmt.packed else ())
    scale_fmt = recipe.scale_element_format
    scale_dtypes = _FLOAT_ST if scale_fmt is None else (scale_fmt.safetensors_dtype, "U8")
    expected: dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]] = {
        "data": (data_dtypes, stored),
        "scale": (scale_dtypes, grid),
    }
    if recipe.has_global_scale:
        expected["global_scale"] = (_FLOAT_ST, None)
    if recipe.zero_point_kind is not None:
        expected["zero_point"] = (_FLOAT_ST, grid)
    return expected


def _parse_config(where: str, text: str) -> _Config:
    """The config ``text`` of the ScaledTensor at ``where`` (file and name), checked; FileFormatError
    naming ``where`` otherwise. Parsed configs are cached: checkpoint layers repeat a few configs."""
    try:
        return _config(text)
    except FileFormatError as exc:
        raise FileFormatError(f"{where}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _config(text: str) -> _Config:
    try:
        config = loads_strict(text)
    except ValueError as exc:
        raise FileFormatError(f"its config is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise FileFormatError(f"its config must be a JSON object; got {type(config).__name__}")
    keys = {"format", "version", "recipe", "layout", "shape", "dtype"}
    if set(config) != keys:
        raise FileFormatError(f"its config has keys {sorted(config)}; expected {sorted(keys)}")
    if config["format"] != CONFIG_FORMAT:
        raise FileFormatError(f"config format is {config['format']!r}; expected {CONFIG_FORMAT!r}")
    version = config["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FileFormatError(f"config version must be a positive int; got {version!r}")
    if version > CONFIG_VERSION:
        raise FileFormatError(
            f"config version {version} is newer than this breccia reads ({CONFIG_VERSION}); upgrade breccia"
        )
    shape = config["shape"]
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise FileFormatError(f"config shape must be a list of non-negative ints; got {shape!r}")
    if len(shape) > _MAX_NDIM or math.prod(max(d, 1) for d in shape) * 8 > _MAX_DIM:
        raise FileFormatError(f"config shape {shape} is larger than any array can be")
    if config["dtype"] not in FLOAT_DTYPES:
        raise FileFormatError(f"config dtype must be one of {FLOAT_DTYPES}; got {config['dtype']!r}")
    try:
        recipe = recipe_from_dict(config["recipe"])
        layout = checked_layout(recipe, layout_from_dict(config["layout"]), tuple(shape))
    except BrecciaError as exc:
        raise FileFormatError(str(exc)) from None
    oversized = oversized_axes(layout, tuple(shape))
    if oversized:
        raise FileFormatError(
            f"its layout {layout!r} has blocks far larger than the tensor of shape {tuple(shape)} along "
            f"axis {oversized}; a file's layout must describe its tensor"
        )
    fmt, scale_fmt = recipe.element_format, recipe.scale_element_format
    views = {}
    if fmt.kind == "float" and not fmt.packed:
        views["data"] = numpy_dtype(fmt.safetensors_dtype)
    if scale_fmt is not None:
        views["scale"] = numpy_dtype(scale_fmt.safetensors_dtype)
    shape = tuple(shape)
    return _Config(recipe, layout, shape, config["dtype"], _expected_parts(recipe, layout, shape), views)


def _check_part(
    where: str, part: str, entry: TensorEntry, dtypes: tuple[str, ...], shape: tuple[int, ...] | None
):
    if entry.dtype not in dtypes:
        raise FileFormatError(
            f"{where}: {entry.name!r} is {entry.dtype}; its config needs {' or '.join(dtypes)}"
        )
    if shape is None:
        if math.prod(entry.shape) != 1:
            raise FileFormatError(
                f"{where}: {entry.name!r} has shape {list(entry.shape)}; {part} is one value"
            )
    elif entry.shape != shape:
        raise FileFormatError(
            f"{where}: {entry.name!r} has shape {list(entry.shape)} but the config's recipe, layout and "
            f"shape need {list(shape)}"
        )


class SafetensorsCheckpoint(Mapping):
    """A read-only, lazy mapping over safetensors files (see :func:`open_safetensors`)."""

    def __init__(
        self,
        source: str,
        shards: list[Header],
        weight_map: dict[str, int],
        framework: str,
        device: Any,
        *,
        check_scales: bool = True,
    ):
        if not isinstance(framework, str):
            raise FrameworkError(f"framework must be a name such as 'numpy' or 'torch'; got {framework!r}")
        self._backend = get_backend(framework)  # unknown framework or missing dependency: fail now
        self._backend.check_device(device)
        self.source = source
        self.framework = framework
        self.device = device
        self.check_scales = check_scales
        self._once = False  # load_*: every tensor read once, then closed (see _Shard.array)
        self._shards = [_Shard(h) for h in shards]
        self._closed = False
        self._entries: dict[str, tuple[_Shard, TensorEntry]] = {}
        for raw, i in sorted(weight_map.items(), key=lambda kv: (kv[1], shards[kv[1]].entries[kv[0]].begin)):
            self._entries[raw] = (self._shards[i], shards[i].entries[raw])
        self.metadata: dict[str, str] = {}
        configs: dict[str, tuple[str, str]] = {}
        for header in shards:
            for key, value in header.metadata.items():
                self.metadata.setdefault(key, value)
                if key.endswith(CONFIG_SUFFIX) and key[: -len(CONFIG_SUFFIX)] + ".data" in self._entries:
                    if key in configs and configs[key][1] != value:
                        raise FileFormatError(f"{configs[key][0]} and {header.path} hold different {key!r}")
                    configs.setdefault(key, (header.path, value))
        self._scaled: dict[str, _ScaledSpec] = {}
        claimed: set[str] = set()
        for key, (path, text) in configs.items():
            name = key[: -len(CONFIG_SUFFIX)]
            self._scaled[name] = spec = self._spec(path, name, text)
            claimed.update(spec.parts.values())
        self._plain = {raw for raw in self._entries if raw not in claimed}
        for raw in self._plain:
            if raw in self._scaled:
                raise FileFormatError(f"{self.source}: {raw!r} names both a plain tensor and a ScaledTensor")
        order = {raw: i for i, raw in enumerate(self._entries)}
        keys = [(order[spec.parts["data"]], name) for name, spec in self._scaled.items()]
        keys += [(order[raw], raw) for raw in self._plain]
        self._keys = [name for _, name in sorted(keys)]

    def _spec(self, path: str, name: str, text: str) -> _ScaledSpec:
        where = f"{path}: ScaledTensor {name!r}"
        config = _parse_config(where, text)
        parts = {}
        for part, (dtypes, stored) in config.expected.items():
            raw = f"{name}.{part}"
            if raw not in self._entries:
                raise FileFormatError(f"{where}: the file has no {raw!r}, which {config.recipe.name} needs")
            _check_part(where, part, self._entries[raw][1], dtypes, stored)
            parts[part] = raw
        for part in PARTS:
            if part not in parts and f"{name}.{part}" in self._entries:
                raise FileFormatError(
                    f"{where}: {config.recipe!r} has no {part}, yet the file holds {name + '.' + part!r}"
                )
        return _ScaledSpec(config, parts)

    # Mapping --------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> ScaledTensor | Any:
        spec = self._scaled.get(name) if isinstance(name, str) else None
        if spec is not None:
            return self._read_scaled(spec)
        if isinstance(name, str) and name in self._entries and name in self._plain:
            return self.read_tensor(name)
        if isinstance(name, str) and name in self._entries:
            raise KeyError(
                f"{name!r} is part of a ScaledTensor; read the ScaledTensor, or this part with read_tensor()"
            )
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in self._scaled or (name in self._entries and name in self._plain)
        )

    # extras ---------------------------------------------------------------------------------------
    def tensor_names(self) -> list[str]:
        """Every raw tensor stored (parts of ScaledTensors included), in file order, all shards."""
        return list(self._entries)

    def scaled_names(self) -> list[str]:
        """The keys that are ScaledTensors."""
        return [k for k in self._keys if k in self._scaled]

    def plain_names(self) -> list[str]:
        """The keys that are plain tensors."""
        return [k for k in self._keys if k not in self._scaled]

    def read_tensor(self, raw_name: str) -> Any:
        """One raw tensor as a plain array of this mapping's framework (F8 in the framework's fp8
        dtype; uint8 bits on MLX). Reads only that tensor's bytes."""
        if self._closed:
            raise FileFormatError(f"{self.source}: this checkpoint is closed; open it again")
        found = self._entries.get(raw_name)
        if found is None:
            raise KeyError(raw_name)
        shard, entry = found
        where = f"{shard.path}: tensor {raw_name!r}"
        return stored_array(self._array(shard, entry), self._backend, self.device, where)

    def _array(self, shard: _Shard, entry: TensorEntry) -> np.ndarray:
        """A stored tensor as numpy: a read-only view, or for torch an array of this read's own."""
        return shard.array(entry, private=self._backend.writable_host_views, once=self._once)

    def _read_scaled(self, spec: _ScaledSpec) -> ScaledTensor:
        """The ScaledTensor of ``spec``, whose parts were checked against its config on opening (the
        checks of :func:`~breccia.from_buffer`); uint8-stored FP8 data or scales are viewed as FP8."""
        if self._closed:
            raise FileFormatError(f"{self.source}: this checkpoint is closed; open it again")
        config = spec.config
        host = {}
        for part, raw in spec.parts.items():
            shard, entry = self._entries[raw]
            a = self._array(shard, entry)
            if part in config.views and a.dtype != config.views[part]:
                a = a.view(config.views[part])
            if part == "global_scale":
                a = a.reshape(())
            host[part] = a
        if self.check_scales:
            name = spec.parts["data"][: -len(".data")]
            path = self._entries[spec.parts["scale"]][0].path
            check_scales(f"{path}: ScaledTensor {name!r}", config.recipe, host)
        arrays = {
            part: stored_array(a, self._backend, self.device, f"{self.source}: {spec.parts[part]!r}")
            for part, a in host.items()
        }
        return ScaledTensor(
            data=arrays["data"],
            scale=arrays["scale"],
            recipe=config.recipe,
            layout=config.layout,
            shape=config.shape,
            dtype_name=config.dtype_name,
            framework=self.framework,
            global_scale=arrays.get("global_scale"),
            zero_point=arrays.get("zero_point"),
        )

    def close(self) -> None:
        """Release the file maps (arrays already read keep what they view alive)."""
        self._closed = True
        self.unmap()

    def unmap(self) -> None:
        """Drop the file maps but stay open: the next read maps the file again. Pages already read
        stop counting in this process's memory once no array views them (a streaming reader calls
        this between tensors so resident memory does not grow with the checkpoint)."""
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SafetensorsCheckpoint({self.source!r}, framework={self.framework}, files={len(self._shards)}, "
            f"scaled={len(self._scaled)}, plain={len(self._plain)})"
        )


def check_scales(where: str, recipe: Recipe, parts: Mapping[str, np.ndarray]) -> None:
    """Raise ScaleValueError if a ScaledTensor's stored scales cannot be dequantization multipliers.

    ``parts`` are its numpy arrays (``scale``, and ``global_scale``/``zero_point`` where the recipe
    has them). A block scale must decode to a finite value ``> 0`` (``!= 0`` for MLX's affine mode,
    whose scales carry a sign); a global scale finite and ``> 0``; a zero point finite."""
    numpy = get_backend("numpy")
    scale = np.asarray(decode_scale(numpy, parts["scale"], recipe.scale_format), dtype=np.float32)
    signed = recipe.zero_point_kind == "float"
    checks = [("scale", scale, "finite and nonzero" if signed else "finite and positive")]
    if "global_scale" in parts:
        checks.append(("global scale", np.asarray(parts["global_scale"], np.float32), "finite and positive"))
    if "zero_point" in parts:
        checks.append(("zero point", np.asarray(parts["zero_point"], np.float32), "finite"))
    for what, values, rule in checks:
        with np.errstate(invalid="ignore"):
            if rule == "finite":
                good = np.isfinite(values)
            elif rule == "finite and nonzero":
                good = np.isfinite(values) & (values != 0)
            else:
                good = np.isfinite(values) & (values > 0)
        if good.all():
            continue
        bad = np.argwhere(~good.reshape(values.shape or (1,)))
        index = tuple(int(i) for i in bad[0]) if values.shape else ()
        value = float(values.reshape(-1)[np.flatnonzero(~good.reshape(-1))[0]])
        count = int(np.count_nonzero(~good))
        raise ScaleValueError(
            f"{where}: {what} at block {index} is {value!r} ({count} of {good.size} bad); a {what} must "
            f"be {rule}. The file is damaged, or (a NaN scale) breccia "
            "marked a block whose input held NaN; pass check_scales=False to read it anyway"
        )


def read_index(path: str) -> tuple[list[str], dict[str, str]]:
    """Shard paths and ``weight_map`` (raw name -> shard file) of an index, each checked: the one
    parser of ``model.safetensors.index.json`` (open_safetensors and the checkpoint layer use it)."""
    index = read_json_file(path, "JSON index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FileFormatError(
            f"{path}: an index must be an object whose 'weight_map' maps tensor names to files"
        )
    if not isinstance(index.get("metadata", {}), (dict, type(None))):
        raise FileFormatError(f"{path}: the index's 'metadata' must be an object")
    root = real_directory(os.path.dirname(os.path.abspath(path)))
    files = []
    for shard in sorted(set(weight_map.values())):
        parts = shard.replace("\\", "/").split("/")
        if not shard or os.path.isabs(shard) or ".." in parts:
            raise FileFormatError(f"{path}: shard {shard!r} is not a file name inside the index's directory")
        full = os.path.join(root, shard)
        if not os.path.lexists(full):
            raise FileFormatError(f"{path}: shard {shard!r} listed in weight_map does not exist")
        regular_file(root, shard)  # a link out of the directory (but a hub cache's blobs) is refused
        files.append(full)
    return files, weight_map


def open_safetensors(
    path_or_index: str | os.PathLike,
    framework: str = "numpy",
    *,
    device: Any = None,
    check_scales: bool = True,
) -> SafetensorsCheckpoint:
    """A read-only, lazy ``Mapping`` over a ``.safetensors`` file, a directory holding
    ``model.safetensors.index.json`` (or one ``model.safetensors``), or an index JSON.

    Only headers are read on opening (every header and every ScaledTensor config is validated then).
    Keys are ScaledTensor names and plain tensor names, in file order; ``m[name]`` reads only the
    tensors it needs (memory-mapped) and returns a ScaledTensor or a plain array of ``framework`` on
    ``device``. A ScaledTensor whose parts sit in different shards loads. Also: ``m.tensor_names()``
    (every raw tensor stored), ``m.read_tensor(raw_name)``, ``m.metadata`` (``__metadata__`` of all
    files merged; where files disagree on a key that is not a config, the first file wins), and
    ``m.close()`` / ``with``. An index must list every tensor of its shards, each in the shard that
    holds it.

    Arrays handed out never share writable memory with the mapping (numpy: read-only views; torch:
    tensors of their own), so editing one never changes what the next read returns. A ScaledTensor
    whose stored scales are NaN, +-Inf, zero or negative raises ScaleValueError when read, unless
    ``check_scales=False`` (see the module docstring). Only regular files are read; a missing path
    raises FileMissingError (a ``FileNotFoundError``).
    """
    path = fspath(path_or_index, "path_or_index")
    if not os.path.lexists(path):
        raise FileMissingError(f"{path}: No such file or directory")
    if os.path.isdir(path):
        path = _find_in_directory(path)
    if path.endswith(".json"):
        files, weight_map = read_index(path)
        headers = [read_header(f) for f in files]
        position = {f: i for i, f in enumerate(files)}
        root = os.path.dirname(os.path.abspath(path))
        owner: dict[str, int] = {}
        for raw, shard in weight_map.items():
            i = position[os.path.join(root, shard)]
            if raw not in headers[i].entries:
                raise FileFormatError(f"{path}: weight_map puts {raw!r} in {shard}, which does not hold it")
            owner[raw] = i
        for header in headers:
            for raw in header.entries:
                if raw not in owner:
                    raise FileFormatError(
                        f"{path}: {header.path} holds {raw!r}, which weight_map does not list"
                    )
    else:
        headers = [read_header(path)]
        owner = dict.fromkeys(headers[0].entries, 0)
    return SafetensorsCheckpoint(path, headers, owner, framework, device, check_scales=check_scales)


def _find_in_directory(directory: str) -> str:
    """The index or single file to open in ``directory``; a link out of it is refused (``_paths``)."""
    root = real_directory(directory)
    for name in (INDEX_NAME, SINGLE_NAME):
        if os.path.lexists(os.path.join(root, name)):
            regular_file(root, name)
            return os.path.join(root, name)
    for suffix in (".safetensors.index.json", ".safetensors"):
        found = sorted(f for f in os.listdir(root) if f.endswith(suffix))
        if len(found) == 1:
            regular_file(root, found[0])
            return os.path.join(root, found[0])
    raise FileFormatError(
        f"{directory}: expected {INDEX_NAME}, {SINGLE_NAME}, or exactly one .safetensors file or index"
    )


def load_safetensors(
    path: str | os.PathLike, framework: str = "numpy", *, device: Any = None, check_scales: bool = True
) -> dict[str, ScaledTensor]:
    """Every ScaledTensor in a file, directory or index (plain tensors are skipped; see
    :func:`load_plain_safetensors`), as arrays of ``framework`` on ``device``. ``check_scales``: as
    in :func:`open_safetensors`."""
    with open_safetensors(path, framework, device=device, check_scales=check_scales) as m:
        m._once = True  # each tensor is read once: writable private copy-on-write views, no copies
        return {name: m[name] for name in m.scaled_names()}


def load_plain_safetensors(
    path: str | os.PathLike, framework: str = "numpy", *, device: Any = None
) -> dict[str, Any]:
    """Every plain tensor (not part of a ScaledTensor) in a file, directory or index."""
    with open_safetensors(path, framework, device=device) as m:
        m._once = True  # each tensor is read once: writable private copy-on-write views, no copies
        return {name: m[name] for name in m.plain_names()}
