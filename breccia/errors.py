"""breccia's exception types.

Every error breccia raises on purpose derives from :class:`BrecciaError`. Each subclass also derives
from the builtin that a caller would naturally catch (``ValueError``, ``TypeError``, ``ImportError``),
so ``except ValueError`` and ``except bc.BrecciaError`` both work.
"""

from __future__ import annotations

__all__ = [
    "BrecciaError",
    "RecipeError",
    "LayoutError",
    "ShapeError",
    "DTypeError",
    "NotAnArrayError",
    "FrameworkError",
    "FrozenError",
    "CopyError",
    "DLPackError",
    "FileFormatError",
    "FileAccessError",
    "FileMissingError",
    "ScaleValueError",
    "PathTypeError",
    "MissingDependencyError",
]


class BrecciaError(Exception):
    """Base class of every error breccia raises on purpose."""


class RecipeError(BrecciaError, ValueError):
    """A recipe is malformed, unknown, or cannot do what was asked of it."""


class LayoutError(BrecciaError, ValueError):
    """A layout is malformed, unknown, or does not fit the recipe or the tensor."""


class ShapeError(BrecciaError, ValueError):
    """An array's shape does not fit what it is combined with (scale grid, matmul, packing)."""


class DTypeError(BrecciaError, TypeError):
    """An array's dtype is not one this operation accepts."""


class NotAnArrayError(BrecciaError, TypeError):
    """An input is not an array of a supported framework (numpy, jax, mlx, torch)."""


class FrameworkError(BrecciaError, ValueError):
    """An unknown framework name, or a device the framework cannot use."""


class FrozenError(BrecciaError, AttributeError):
    """A field of an immutable object (a ScaledTensor) was assigned or deleted; ``replace`` makes a
    new one."""


class CopyError(BrecciaError, ValueError):
    """``copy=False`` was asked for where the two sides cannot share memory."""


class DLPackError(BrecciaError, ValueError):
    """A DLPack capsule was consumed a second time, or holds a dtype breccia cannot carry."""


class FileFormatError(BrecciaError, ValueError):
    """A file is malformed, truncated, or disagrees with itself; the message names file and tensor."""


class FileAccessError(BrecciaError, OSError):
    """A path cannot be read as a file: not a regular file (FIFO, socket, device, directory), a
    symlink loop, or the operating system refused (permissions)."""


class FileMissingError(FileAccessError, FileNotFoundError):
    """A path that should name a file or directory does not exist."""


class ScaleValueError(FileFormatError):
    """A file holds a scale that cannot be a dequantization multiplier (NaN, +-Inf, zero, or negative
    where the recipe's scales are positive); the message names the tensor and its first bad block."""


class PathTypeError(BrecciaError, TypeError):
    """A path argument is not a ``str`` or ``os.PathLike``."""


class MissingDependencyError(BrecciaError, ImportError):
    """An optional dependency is not installed; the message names the pip extra that installs it."""


def missing_dependency(module: str, extra: str, why: str = "") -> MissingDependencyError:
    """The error for an optional framework that is not installed, naming the pip extra."""
    reason = f" ({why})" if why else ""
    return MissingDependencyError(
        f"{module} is not installed{reason}; install it with: pip install 'breccia[{extra}]'"
    )
