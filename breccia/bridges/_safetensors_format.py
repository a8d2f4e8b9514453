"""The safetensors file format, read and written without the safetensors package.

A file is ``u64 little-endian N`` + ``N`` bytes of UTF-8 JSON (the header) + the data buffer. The
header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the
data buffer) and may hold ``"__metadata__"``, a str -> str object.

:func:`parse_header` validates a header exactly as safetensors 0.8 does, and raises
:class:`~breccia.errors.FileFormatError` naming the file (and tensor) for every way it can be wrong:

* the file is shorter than 8 bytes; ``N > 100_000_000``; ``8 + N`` runs past the end of the file;
* the header is not UTF-8, not JSON (``NaN``/``Infinity`` literals included), or not an object;
* ``__metadata__`` is not null or a str -> str object; a tensor entry is not an object with a known
  ``dtype``, a ``shape`` of non-negative ints and ``data_offsets`` of exactly two non-negative ints;
* sorted by offsets, each tensor does not start where the previous one ended (overlaps and gaps),
  ends before it starts, or has ``end - begin != prod(shape) * bits / 8`` (a sub-byte dtype must end
  on a byte boundary); the last tensor does not end exactly at the end of the file;
* ``prod(shape) * bits`` does not fit in 64 bits, or any partial product of the dims does not
  (safetensors' "overflow computing buffer size": ``[2**32, 2**32, 0]`` is refused although it holds
  no element); breccia also refuses a shape no array can hold: the product of its nonzero dims times
  the element size beyond ``2**63 - 1`` bytes (numpy's limit, also for empty arrays).

Only regular files are read: :func:`open_regular` stats what it opened (``O_NONBLOCK``, so a FIFO
never blocks the open) and refuses FIFOs, sockets, devices and directories with
:class:`~breccia.errors.FileAccessError`; a missing path is :class:`~breccia.errors.FileMissingError`
(also a ``FileNotFoundError``), a symlink loop a FileAccessError.

breccia is stricter than safetensors in one place: a header naming the same key twice is rejected
(JSON leaves which one counts undefined). Nothing in a header is evaluated; JSON is parsed with
Python's ``json`` module, whose recursion errors are turned into FileFormatError as well.

:func:`encode_header` writes a header the way safetensors does: tensors sorted by decreasing element
size, then name (so every tensor's offset is a multiple of its element size), and the JSON padded
with spaces to a multiple of 8 bytes (so the data buffer starts 8-byte aligned).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import stat as stat_module
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FileAccessError, FileFormatError, FileMissingError, PathTypeError

__all__ = [
    "DTYPES",
    "MAX_HEADER_SIZE",
    "Header",
    "TensorEntry",
    "dtype_for",
    "encode_header",
    "file_stamp",
    "fspath",
    "loads_strict",
    "open_regular",
    "read_json_file",
    "numpy_dtype",
    "parse_header",
    "read_header",
]

MAX_HEADER_SIZE = 100_000_000
_U64 = 2**64
_MAX_BYTES = int(np.iinfo(np.intp).max)  # the most bytes one numpy array can span

# safetensors dtype -> (bits per element, numpy/ml_dtypes dtype name; None for sub-byte packed kinds)
DTYPES: dict[str, tuple[int, str | None]] = {
    "BOOL": (8, "bool"),
    "U8": (8, "uint8"),
    "I8": (8, "int8"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "I16": (16, "int16"),
    "U16": (16, "uint16"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I32": (32, "int32"),
    "U32": (32, "uint32"),
    "F32": (32, "float32"),
    "C64": (64, "complex64"),
    "F64": (64, "float64"),
    "I64": (64, "int64"),
    "U64": (64, "uint64"),
    "F4": (4, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
}
_BY_NUMPY_NAME = {numpy_name: name for name, (_, numpy_name) in DTYPES.items() if numpy_name}


def numpy_dtype(st_dtype: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype (ml_dtypes for bf16/fp8); uint8 for sub-byte kinds."""
    name = DTYPES[st_dtype][1]
    if name is None:
        return np.dtype(np.uint8)
    if name.startswith(("float8", "bfloat16")):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def dtype_for(dtype_name: str) -> str | None:
    """The safetensors dtype of an array dtype called ``dtype_name`` (None if safetensors has none)."""
    return _BY_NUMPY_NAME.get(dtype_name)


def nbytes_of(st_dtype: str, shape: Iterable[int]) -> int:
    """Bytes of a tensor of ``shape`` (sub-byte dtypes packed densely)."""
    return math.prod(shape) * DTYPES[st_dtype][0] // 8


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a header: ``begin``/``end`` are offsets into the data buffer."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated header: ``data_start`` is the file offset of the data buffer."""

    path: str
    data_start: int
    file_size: int
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    stamp: tuple[int, ...] = ()  # (device, inode, size, mtime_ns) of the file the header was read from


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {twice!r} appears twice")
    return out


def _integer(literal: str) -> int:
    if literal == "-0":  # serde_json (safetensors) reads -0 as the float -0.0
        raise ValueError("-0 is not an integer")
    return int(literal)


def loads_strict(text: str | bytes) -> Any:
    """Standard JSON only: no ``NaN``/``Infinity`` literals, no repeated keys, and ``-0`` is not an
    integer (as in serde_json, which safetensors uses). ValueError otherwise."""
    try:
        return json.loads(
            text, parse_constant=_reject_constant, parse_int=_integer, object_pairs_hook=_unique_object
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _is_u64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U64


def _utf8(text: str) -> bool:
    """Whether ``text`` is encodable as UTF-8 (JSON escapes can smuggle in lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _entry(path: str, name: str, info: Any) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not _utf8(name):
        raise FileFormatError(
            f"{path}: tensor name {name!r} holds a lone UTF-16 surrogate, which is not Unicode"
        )
    if not isinstance(info, dict):
        raise FileFormatError(f"{where}: its header entry must be a JSON object; got {type(info).__name__}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            raise FileFormatError(f"{where}: its header entry has no {key!r}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise FileFormatError(f"{where}: unknown dtype {dtype!r}; safetensors dtypes are {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_u64(d) for d in shape):
        raise FileFormatError(f"{where}: shape must be a list of non-negative integers; got {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
        raise FileFormatError(
            f"{where}: data_offsets must be [begin, end] (two non-negative integers); got {offsets!r}"
        )
    _check_size(where, dtype, shape)
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _check_size(where: str, dtype: str, shape: list[int]) -> None:
    """safetensors' checked product of the dims (every partial product must fit in 64 bits), and
    numpy's: the nonzero dims times the element size must fit in ``intp`` (else no array holds it)."""
    count = 1
    for d in shape:
        count *= d
        if count >= _U64:
            break
    held = math.prod(max(d, 1) for d in shape) * max(DTYPES[dtype][0] // 8, 1)
    if count >= _U64 or held > _MAX_BYTES:
        raise FileFormatError(
            f"{where}: overflow computing buffer size: shape {list(shape)} of {dtype} overflows what any "
            "array can hold (the file is damaged or hostile)"
        )


def _check_offsets(path: str, entries: list[TensorEntry], buffer_size: int) -> None:
    """safetensors' ``Metadata::validate``: contiguous, non-overlapping, gap-free, sizes that fit."""
    position = 0
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        where = f"{path}: tensor {e.name!r}"
        if e.begin != position or e.end < e.begin:
            kind = "overlaps the tensor before it" if e.begin < position else "leaves a gap before it"
            if e.end < e.begin:
                kind = "ends before it begins"
            raise FileFormatError(
                f"{where}: data_offsets [{e.begin}, {e.end}] {kind}; tensors must tile the data buffer "
                f"(this one should begin at {position})"
            )
        bits = math.prod(e.shape) * DTYPES[e.dtype][0]
        if bits >= 8 * _U64:
            raise FileFormatError(f"{where}: shape {list(e.shape)} x {e.dtype} overflows 64 bits")
        if bits % 8:
            raise FileFormatError(
                f"{where}: {math.prod(e.shape)} elements of {e.dtype} do not end on a byte boundary"
            )
        if e.nbytes != bits // 8:
            raise FileFormatError(
                f"{where}: shape {list(e.shape)} of {e.dtype} needs {bits // 8} bytes but data_offsets "
                f"[{e.begin}, {e.end}] hold {e.nbytes}"
            )
        position = e.end
    if position != buffer_size:
        raise FileFormatError(
            f"{path}: the tensors cover {position} bytes of data but the file holds {buffer_size} after "
            "its header (truncated, or trailing bytes)"
        )


def parse_header(raw: bytes, file_size: int, path: str) -> Header:
    """Validate header bytes ``raw`` (``raw[:8]`` the length, then at least the JSON) of a file of
    ``file_size`` bytes. Raises FileFormatError for every malformed header (see the module docstring)."""
    if file_size < 8 or len(raw) < 8:
        raise FileFormatError(
            f"{path}: {file_size} bytes is too short for a safetensors file (8-byte length)"
        )
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER_SIZE:
        raise FileFormatError(
            f"{path}: header length {n} exceeds safetensors' limit of {MAX_HEADER_SIZE} bytes"
        )
    if 8 + n > file_size:
        raise FileFormatError(f"{path}: header length {n} runs past the end of the file ({file_size} bytes)")
    if len(raw) < 8 + n:
        raise FileFormatError(f"{path}: could read only {len(raw) - 8} of the {n} header bytes")
    try:
        text = raw[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(
            f"{path}: header is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        header = loads_strict(text)
    except ValueError as exc:
        raise FileFormatError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{path}: header must be a JSON object; got {type(header).__name__}")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FileFormatError(
            f"{path}: __metadata__ must be an object of string values; got {metadata!r:.200}"
        )
    if not all(_utf8(k) and _utf8(v) for k, v in metadata.items()):
        raise FileFormatError(f"{path}: __metadata__ holds a lone UTF-16 surrogate, which is not Unicode")
    entries = [_entry(path, name, info) for name, info in header.items()]
    _check_offsets(path, entries, file_size - 8 - n)
    return Header(path, 8 + n, file_size, {e.name: e for e in entries}, metadata)


def file_stamp(stat: os.stat_result) -> tuple[int, ...]:
    """What identifies one version of a file: device, inode, size, modification time."""
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def fspath(path: Any, what: str = "path") -> str:
    """``os.fspath(path)`` as a str; PathTypeError for anything that is not a path."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise PathTypeError(f"{what} must be a str or os.PathLike; got {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if "\0" in path:
        raise PathTypeError(f"{what} holds a NUL character, which no file name can: {path!r}")
    return path


_KINDS = (
    (stat_module.S_ISDIR, "a directory"),
    (stat_module.S_ISFIFO, "a FIFO (named pipe)"),
    (stat_module.S_ISSOCK, "a socket"),
    (stat_module.S_ISCHR, "a character device"),
    (stat_module.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike) -> tuple[int, os.stat_result]:
    """A read-only file descriptor of the regular file at ``path`` and its ``fstat``; the caller
    closes it. The open never blocks (``O_NONBLOCK``: a FIFO with no writer opens at once) and what
    was opened is checked, so a FIFO, socket, device or directory raises FileAccessError; a missing
    path raises FileMissingError; a symlink loop or a refused open raises FileAccessError."""
    path = fspath(path)
    flags = os.O_RDONLY
    for extra in ("O_NONBLOCK", "O_CLOEXEC", "O_BINARY"):  # the ones this platform has
        flags |= getattr(os, extra, 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileMissingError(f"{path}: No such file or directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileAccessError(f"{path}: too many levels of symbolic links (a symlink loop)") from None
        if exc.errno == errno.ENXIO:
            raise FileAccessError(
                f"{path}: not a regular file (a socket or device); breccia reads only regular files"
            ) from None
        raise FileAccessError(f"{path}: cannot be opened ({exc.strerror or exc})") from None
    stat = os.fstat(fd)
    if not stat_module.S_ISREG(stat.st_mode):
        os.close(fd)
        raise FileAccessError(
            f"{path}: is {_kind(stat.st_mode)}, not a regular file; breccia reads only regular files"
        )
    return fd, stat


def _read_exactly(fd: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``fd`` (fewer only at the end of the file), 1 MiB a call at most (each
    ``os.read`` allocates the size it is asked for)."""
    chunks = []
    while n > 0:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_json_file(path: str | os.PathLike, what: str = "JSON file", limit: int = MAX_HEADER_SIZE) -> Any:
    """The JSON value of the regular file at ``path`` (at most ``limit`` bytes), parsed by
    :func:`loads_strict`. FileFormatError when it is larger, not UTF-8, not JSON, or nested too
    deeply; the errors of :func:`open_regular` when it is not a readable regular file."""
    path = fspath(path)
    fd, stat = open_regular(path)
    try:
        # the file's own size (plus one byte, to see it grow), never the limit: os.read allocates it
        raw = b"" if stat.st_size > limit else _read_exactly(fd, min(stat.st_size + 1, limit + 1))
    finally:
        os.close(fd)
    if stat.st_size > limit or len(raw) > limit:
        size = max(stat.st_size, len(raw))
        raise FileFormatError(f"{path}: {size} bytes is too large for a {what} (limit {limit})")
    try:
        return loads_strict(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: not a valid {what} ({exc})") from None


def read_header(path: str | os.PathLike) -> Header:
    """Read and validate the header of the regular file at ``path`` (reads only the header bytes)."""
    path = fspath(path)
    fd, stat = open_regular(path)
    try:
        head = _read_exactly(fd, 8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if n <= MAX_HEADER_SIZE and 8 + n <= stat.st_size:
                head += _read_exactly(fd, n)
    finally:
        os.close(fd)
    header = parse_header(head, stat.st_size, path)
    return dataclasses.replace(header, stamp=file_stamp(stat))


def encode_header(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[tuple[str, int, int]]]:
    """The header bytes (length prefix included) for ``(name, dtype, shape)`` tensors, and the write
    order as ``(name, begin, end)``. ``metadata`` becomes ``__metadata__`` (omitted when empty)."""
    items = sorted(tensors, key=lambda t: (-DTYPES[t[1]][0], t[0]))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    order = []
    position = 0
    for name, dtype, shape in items:
        end = position + nbytes_of(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, end]}
        order.append((name, position, end))
        position = end
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body, order
