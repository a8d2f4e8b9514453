"""Which files of a model directory may be read, and where a conversion may write.

Rules (docs/checkpoints.md, "Safety"):

* Paths are compared after resolving symlinks (``os.path.realpath``), never by spelling.
* Only regular files are opened: a FIFO, socket or device where a shard, an index or a config should
  be is an error found by ``stat`` before any ``open`` (an ``open`` of a FIFO blocks forever).
* A link is followed only where its target stays inside the model directory, or where the directory
  is a Hugging Face hub cache snapshot (``models--org--name/snapshots/<rev>/``) whose files link to
  ``../../blobs/<hash>`` of the same repository cache. Any other link out of the tree is an error
  naming it; a link loop is an error too.
* JSON side files (config, index) are read with a size limit and breccia's strict parser, whose
  recursion limit turns absurd nesting into a :class:`~breccia.errors.FileFormatError`.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ..errors import FileFormatError
from ._safetensors_format import loads_strict

__all__ = ["MAX_JSON_BYTES", "inside", "read_json", "real_directory", "regular_file"]

MAX_JSON_BYTES = 100_000_000  # safetensors' own header limit; a config or index is far smaller


def inside(path: str, root: str) -> bool:
    """Whether real path ``path`` is ``root`` or lies under it (both already resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _resolve(path: str) -> str:
    """``realpath`` that reports a link loop as a breccia error instead of looping or raising ELOOP."""
    try:
        return os.path.realpath(path, strict=True)
    except FileNotFoundError:
        raise FileFormatError(f"{path}: No such file or directory") from None
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot resolve this path ({exc.strerror}; a symlink loop?)") from None


def real_directory(path: str | os.PathLike) -> str:
    """The resolved path of directory ``path``; an error naming it if it is missing or not a directory."""
    text = os.fspath(path)
    real = _resolve(text)
    if not os.path.isdir(real):
        raise FileFormatError(f"{text}: not a directory")
    return real


def _hub_blobs(root: str) -> str | None:
    """``<repo cache>/blobs`` when ``root`` is a hub cache snapshot (``.../snapshots/<rev>``), else None."""
    snapshots = os.path.dirname(root)
    if os.path.basename(snapshots) != "snapshots":
        return None
    blobs = os.path.join(os.path.dirname(snapshots), "blobs")
    return blobs if os.path.isdir(blobs) else None


def regular_file(root: str, name: str) -> str:
    """The real path of file ``name`` of model directory ``root`` (real), checked by the rules above.

    ``name`` is relative to ``root`` and may not climb out of it. Raises FileFormatError when the file is
    missing, is not a regular file, or is a link that leaves the directory (other than the hub cache's
    own blob links)."""
    parts = name.replace("\\", "/").split("/")
    if not name or os.path.isabs(name) or ".." in parts:
        raise FileFormatError(f"{root}: {name!r} is not a file name inside the model directory")
    path = os.path.join(root, name)
    real = _resolve(path)
    if not inside(real, root):
        blobs = _hub_blobs(root)
        if blobs is None or not inside(real, os.path.realpath(blobs)):
            raise FileFormatError(
                f"{path}: a symlink to {real}, outside the model directory; copy the file into the "
                "directory (breccia follows links only inside it, or into a Hugging Face cache's blobs)"
            )
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot stat it ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        raise FileFormatError(f"{path}: {kind}, not a regular file; only regular files are read")
    return real


def read_json(path: str, what: str) -> Any:
    """The JSON value in regular file ``path`` (already checked), strictly parsed; errors name ``what``."""
    size = os.path.getsize(path)
    if size > MAX_JSON_BYTES:
        raise FileFormatError(f"{path}: {size} bytes is too large for {what} (limit {MAX_JSON_BYTES})")
    with open(path, "rb") as f:
        raw = f.read(size + 1)  # never more than the file's size (a larger read preallocates it)
    try:
        return loads_strict(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: {what} is not valid JSON ({exc})") from None
