"""Writing a model directory: streaming safetensors shards into a temporary directory, then one rename.

:class:`OutputDirectory` is the destination of a conversion. Everything is written into a hidden
temporary directory beside DST (same filesystem, so the final ``rename`` is atomic); it becomes DST
only when complete. Until then its shards are named ``*.partial`` and the directory holds no config
or index, so no reader (breccia's, transformers', mlx-lm's) accepts it as a model. On any error,
KeyboardInterrupt included, the temporary directory is removed; a killed process leaves only that
hidden directory. With ``overwrite``, an existing DST is moved aside, replaced, then deleted: a reader
sees the old checkpoint or the new one, never a mix.

:class:`ShardWriter` writes tensors as they are produced, one at a time, so memory never holds a
shard: each tensor's bytes are appended to a spool file per element size (8, 4, 2, 1 bytes), and a
shard is closed when its spools pass ``max_shard_bytes``: its header is written, then the spools are
copied after it by the kernel (``os.sendfile``), largest element size first. The header is padded to
8 bytes, so every tensor starts at a multiple of its element size, as safetensors itself lays out
files. Shards are named ``model-NNNNN-of-NNNNN.safetensors`` (``model.safetensors`` when there is
one) once their count is known, and an index is written whenever there is more than one shard (or
always, with ``always_index``, as mlx-lm does).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..backends import host_array
from ..bridges._paths import inside
from ..bridges._safetensors_format import DTYPES, dtype_for, nbytes_of
from ..errors import BrecciaError, DTypeError, FileFormatError
from ._directory import INDEX_NAME

__all__ = ["DEFAULT_SHARD_BYTES", "OutputDirectory", "ShardWriter", "like_source"]

DEFAULT_SHARD_BYTES = 5 << 30  # what transformers and mlx-lm write by default


class OutputDirectory:
    """DST of a conversion, built in a temporary directory (see the module docstring)."""

    def __init__(self, dst: str | os.PathLike, source_root: str | None, *, overwrite: bool = False) -> None:
        text = os.fspath(dst)
        if not isinstance(text, str) or not text:
            raise FileFormatError(f"the destination must be a non-empty path; got {dst!r}")
        self.dst = os.path.abspath(text)
        real = os.path.realpath(self.dst)
        if source_root is not None and (inside(real, source_root) or inside(source_root, real)):
            raise FileFormatError(
                f"{text}: the destination is the source, inside it, or contains it ({source_root}); "
                "choose a directory outside the source"
            )
        if os.path.islink(self.dst):
            raise FileFormatError(
                f"{text}: the destination is a symlink; breccia never writes through a link"
            )
        if os.path.lexists(self.dst):
            if not os.path.isdir(self.dst):
                raise FileFormatError(f"{text}: exists and is not a directory")
            if os.listdir(self.dst) and not overwrite:
                raise FileFormatError(
                    f"{text}: exists and is not empty; pass --overwrite (overwrite=True) to replace it"
                )
        parent = os.path.dirname(self.dst)
        if not os.path.isdir(parent):
            raise FileFormatError(f"{text}: its parent directory {parent} does not exist")
        self.overwrite = overwrite
        self.path = tempfile.mkdtemp(
            prefix=f".{os.path.basename(self.dst)}.", suffix=".breccia-tmp", dir=parent
        )

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name: str, value: Any, indent: int = 2) -> None:
        with open(self.join(name), "w", encoding="utf-8") as f:
            json.dump(value, f, indent=indent, ensure_ascii=False)
            f.write("\n")

    def copy_file(self, source: str, name: str) -> None:
        """Copy regular file ``source`` (a checked real path) as ``name``: a real file, never a link."""
        shutil.copyfile(source, self.join(name), follow_symlinks=True)

    def commit(self) -> None:
        """Move the finished directory into place (replacing DST's contents when overwriting). It is
        owner-only while written (``mkdtemp``) and gets the mode a plain ``mkdir`` would give it
        (``0o777`` less the umask) just before, as the directories of mlx-lm and transformers have."""
        os.chmod(self.path, 0o777 & ~_umask())
        if os.path.lexists(self.dst):
            if os.listdir(self.dst) and not self.overwrite:  # filled while we worked
                raise FileFormatError(f"{self.dst}: was filled while converting; nothing was replaced")
            aside = tempfile.mkdtemp(
                prefix=f".{os.path.basename(self.dst)}.", suffix=".old", dir=os.path.dirname(self.dst)
            )
            os.rmdir(aside)
            os.rename(self.dst, aside)
            try:
                os.rename(self.path, self.dst)
            except BaseException:
                os.rename(aside, self.dst)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(self.path, self.dst)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> OutputDirectory:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            return
        self.discard()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BrecciaError(
                f"{self.dst}: the disk filled up while converting; nothing was written (the partial output "
                "was removed). Free space and run again"
            ) from exc


class _Spool:
    """The open shard: one spool file per element size, and the entries written into each."""

    def __init__(self, directory: str, number: int) -> None:
        self.directory = directory
        self.number = number
        self.files: dict[int, Any] = {}
        self.entries: dict[int, list[tuple[str, str, tuple[int, ...]]]] = {}
        self.metadata: dict[str, str] = {}
        self.nbytes = 0

    def append(self, name: str, st_dtype: str, shape: tuple[int, ...], data: np.ndarray) -> None:
        size = max(1, DTYPES[st_dtype][0] // 8)
        if size not in self.files:
            self.files[size] = open(os.path.join(self.directory, f".spool-{self.number}-{size}"), "w+b")
            self.entries[size] = []
        self.files[size].write(memoryview(data.reshape(-1).view(np.uint8)))
        self.entries[size].append((name, st_dtype, shape))
        self.nbytes += data.nbytes

    def finish(self, path: str, metadata: Mapping[str, str]) -> list[str]:
        """Write the shard to ``path`` (header, then the spools by decreasing element size)."""
        sizes = sorted(self.files, reverse=True)
        ordered = [e for size in sizes for e in self.entries[size]]
        header, order = _header_in_order(ordered, {**metadata, **self.metadata})
        with open(path, "wb") as out:
            out.write(header)
            out.flush()
            for size in sizes:
                spool = self.files[size]
                spool.flush()
                length = spool.tell()
                offset = 0
                while offset < length:
                    sent = os.sendfile(out.fileno(), spool.fileno(), offset, length - offset)
                    if sent == 0:
                        raise OSError(errno.EIO, f"short copy into {path}")
                    offset += sent
                spool.close()
                os.remove(spool.name)
            os.fsync(out.fileno())
        return [name for name, _, _ in order]


def _header_in_order(
    entries: list[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str]
) -> tuple[bytes, list[tuple[str, int, int]]]:
    """Header bytes whose offsets follow ``entries``' order (the spools' order), padded to 8 bytes."""
    body: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    position = 0
    order = []
    for name, dtype, shape in entries:
        end = position + nbytes_of(dtype, shape)
        body[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, end]}
        order.append((name, position, end))
        position = end
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, order


def like_source(source: Any) -> dict[str, Any]:
    """``ShardWriter`` options that keep the source's layout: shards of its largest file's size, and an
    index when it had one."""
    directory = source.directory
    if directory is None:  # tensors in memory: the default shard size
        return {"max_shard_bytes": DEFAULT_SHARD_BYTES, "always_index": False}
    return {
        "max_shard_bytes": directory.largest_weight_file,
        "always_index": directory.weight_files[1] is not None,
    }


class ShardWriter:
    """Streams tensors into safetensors shards of an :class:`OutputDirectory` (see the module doc)."""

    def __init__(
        self,
        out: OutputDirectory,
        *,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        metadata: Mapping[str, str] | None = None,
        always_index: bool = False,
    ) -> None:
        self.out = out
        self.max_shard_bytes = max_shard_bytes
        self.metadata = dict(metadata or {})
        self.always_index = always_index
        self._spool: _Spool | None = None
        self._finished: list[tuple[str, list[str]]] = []  # (partial file, names)
        self._names: set[str] = set()
        self.total_bytes = 0

    def add(self, name: str, array: Any) -> None:
        """Append tensor ``name`` (any framework's array; a ScaledTensor's parts are added one by one)."""
        if name in self._names:
            raise FileFormatError(f"the output would hold two tensors named {name!r}")
        data = host_array(array)
        st_dtype = dtype_for(data.dtype.name)
        if st_dtype is None:
            raise DTypeError(f"tensor {name!r}: safetensors has no dtype for {data.dtype.name}")
        self.add_raw(name, st_dtype, tuple(int(d) for d in data.shape), data)

    def add_raw(
        self,
        name: str,
        st_dtype: str,
        shape: tuple[int, ...],
        data: np.ndarray,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Append bytes ``data`` as a tensor of safetensors dtype ``st_dtype`` and logical ``shape``;
        ``metadata`` goes into the ``__metadata__`` of the shard that receives it."""
        if data.nbytes != nbytes_of(st_dtype, shape):
            raise FileFormatError(f"tensor {name!r}: {data.nbytes} bytes do not hold {shape} of {st_dtype}")
        if (
            self._spool is not None
            and self._spool.nbytes
            and self._spool.nbytes + data.nbytes > self.max_shard_bytes
        ):
            self._close_spool()
        if self._spool is None:
            self._spool = _Spool(self.out.path, len(self._finished) + 1)
        self._names.add(name)
        self._spool.append(name, st_dtype, shape, data)
        self._spool.metadata.update(metadata or {})
        self.total_bytes += data.nbytes

    def _close_spool(self) -> None:
        spool, self._spool = self._spool, None
        if spool is None:
            return
        partial = self.out.join(f"shard-{spool.number:05d}.partial")
        names = spool.finish(partial, self.metadata)
        self._finished.append((partial, names))

    def finish(self, extra_index_metadata: Mapping[str, Any] | None = None) -> list[str]:
        """Close the last shard, write the index, give shards their final names; the file names."""
        self._close_spool()
        if not self._finished:
            _Spool(self.out.path, 1).finish(self.out.join("shard-00001.partial"), self.metadata)
            self._finished.append((self.out.join("shard-00001.partial"), []))
        count = len(self._finished)
        finals = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        if count > 1 or self.always_index:
            weight_map = {name: final for (_, names), final in zip(self._finished, finals) for name in names}
            index = {
                "metadata": {"total_size": self.total_bytes, **(extra_index_metadata or {})},
                "weight_map": dict(sorted(weight_map.items())),
            }
            self.out.write_json(INDEX_NAME, index, indent=4)
        for (partial, _), final in zip(self._finished, finals):
            os.replace(partial, self.out.join(final))
        return finals


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
