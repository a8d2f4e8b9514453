"""The registry of checkpoint conventions and the lazy :class:`Checkpoint` mapping they all return.

A convention is one module of ``breccia/checkpoints/`` that registers a :class:`Convention`: a name
(what ``inspect``'s first line and ``Checkpoint.format`` say), ``detect`` (does this model directory
follow me? the answer is a short description, e.g. ``"128x128 blocks, ue8m0 scales"``, or None) and
``open`` (a :class:`Checkpoint` over it). Detection asks the conventions in ``_builtin``'s
``DETECTION_ORDER`` (others after them, in registration order); the plain-float ``hf`` convention is
asked last and refuses tensors that look quantized, so a format breccia does not know stops with an
error instead of passing through as if it were float.

Conventions that can also be written register :class:`Target` parsers (see ``_targets``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..errors import FileFormatError
from ..tensor import ScaledTensor
from ._directory import ModelDirectory

__all__ = ["CONVENTIONS", "Checkpoint", "Convention", "StoredCheckpoint", "detect", "register"]


class Checkpoint(Mapping):
    """A read-only, lazy mapping ``name -> ScaledTensor | array`` over one model directory.

    ``format`` is the convention's name, ``details`` its description of this directory, ``config`` the
    model config (config.json), ``directory`` the :class:`ModelDirectory`. Values are read when asked
    for, as arrays of ``framework`` (on ``device``). Subclasses give ``_keys`` and ``_read`` (numpy).
    """

    def __init__(
        self,
        directory: ModelDirectory | None,
        fmt: str,
        details: str,
        framework: str = "numpy",
        device: Any = None,
    ) -> None:
        from ..backends import get_backend

        self.directory = directory
        self.format = fmt
        self.details = details
        self.framework = framework
        self.device = device
        self._backend = get_backend(framework)

    @property
    def config(self) -> dict[str, Any]:
        return self.directory.config if self.directory is not None else {}

    @property
    def where(self) -> str:
        """What this checkpoint is, for messages: its directory, or a description of what is in memory."""
        return self.directory.root if self.directory is not None else "the tensors in memory"

    def _keys(self) -> list[str]:
        raise NotImplementedError

    def _read(self, name: str) -> ScaledTensor | Any:
        """The value of ``name`` as numpy arrays (a ScaledTensor or an array)."""
        raise NotImplementedError

    def mlx_tensors(self, values: dict[str, Any]) -> dict[str, Any]:
        """One layer's ``values`` named (and split) as mlx-lm's loader wants them, where the convention
        can do it on ScaledTensors (so they are repacked, not requantized); by default unchanged."""
        return values

    def float_layout(self, name: str, array: Any) -> Any:
        """``array``, the float value of tensor ``name``, laid out as transformers' float model of this
        convention holds it (what the ``bf16``/``float16``/``float32`` targets write); by default as read."""
        return array

    def read_numpy(self, name: str) -> ScaledTensor | Any:
        """``self[name]`` with numpy arrays, whatever this mapping's framework (what conversions use)."""
        if name not in self:
            raise KeyError(name)
        return self._read(name)

    def __getitem__(self, name: str) -> ScaledTensor | Any:
        return self._in_framework(self.read_numpy(name))

    def _in_framework(self, value: ScaledTensor | Any) -> ScaledTensor | Any:
        """``value`` (a ScaledTensor or an array, of any framework) in this mapping's framework, on
        its device: moved by :meth:`ScaledTensor.to` or the backend's ``from_host``; as it is where
        it is there already."""
        from ..backends import host_array

        if isinstance(value, ScaledTensor):
            return value.to(self.framework, self.device)
        if self._backend.is_array(value):
            return value
        return self._backend.from_host(host_array(value), self.device)

    @cached_property
    def _key_order(self) -> dict[str, None]:
        """The keys, in order, as a dict (one lookup for ``in``), asked of ``_keys`` once."""
        return dict.fromkeys(self._keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self._key_order)

    def __len__(self) -> int:
        return len(self._key_order)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._key_order

    def release(self) -> None:
        """Let go of the file pages read so far, staying open (streaming writers call it between
        tensors, so resident memory does not grow with the checkpoint). Arrays already read stay valid."""

    def close(self) -> None:
        """Release the files (arrays already read stay valid)."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        details = f" ({self.details})" if self.details else ""
        return f"Checkpoint({self.directory.root!r}, format={self.format}{details}, tensors={len(self)})"


class StoredCheckpoint(Checkpoint):
    """A checkpoint over its directory's safetensors weights, ``self.raw`` (a lazy
    :class:`~breccia.bridges.SafetensorsCheckpoint`, numpy): every stored tensor under its own name,
    unless a subclass pairs them into ScaledTensors (its ``_keys`` and ``_read``)."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str = "numpy", device: Any = None
    ) -> None:
        super().__init__(directory, fmt, details, framework, device)
        self.raw = directory.open_safetensors()

    def _keys(self) -> list[str]:
        return self.raw.tensor_names()

    def _read(self, name: str) -> Any:
        return self.raw.read_tensor(name)

    def release(self) -> None:
        self.raw.unmap()

    def close(self) -> None:
        self.raw.close()


@dataclass(frozen=True)
class Convention:
    """One checkpoint convention: ``detect(directory) -> description | None`` and ``open``."""

    name: str
    detect: Callable[[ModelDirectory], str | None]
    open: Callable[
        [ModelDirectory, str, str, str, Any], Checkpoint
    ]  # (directory, name, details, framework, device)
    fallback: bool = False  # asked only when no other convention claims the directory


CONVENTIONS: dict[str, Convention] = {}


def register(convention: Convention) -> Convention:
    """Add ``convention`` to the registry (its name must be new)."""
    if convention.name in CONVENTIONS:
        raise ValueError(f"a checkpoint convention named {convention.name!r} is already registered")
    CONVENTIONS[convention.name] = convention
    return convention


def detect(directory: ModelDirectory) -> tuple[Convention, str]:
    """The convention that ``directory`` follows and its description; an error if none does."""
    from ._builtin import DETECTION_ORDER  # importing it registers the built-in conventions

    def rank(convention: Convention) -> tuple[bool, int]:
        known = convention.name in DETECTION_ORDER
        return convention.fallback, DETECTION_ORDER.index(convention.name) if known else len(DETECTION_ORDER)

    ordered = sorted(CONVENTIONS.values(), key=rank)  # stable: others keep their registration order
    for convention in ordered:
        if not convention.fallback:
            details = convention.detect(directory)
            if details is not None:
                return convention, details
    method = directory.quantization_config.get("quant_method")
    if method is not None:
        known = ", ".join(CONVENTIONS)
        raise FileFormatError(
            f"{directory.root}: config.json's quantization_config says quant_method {method!r}, which no "
            f"breccia convention reads (breccia reads: {known}); nothing was converted"
        )
    for convention in ordered:
        if convention.fallback:
            details = convention.detect(directory)
            if details is not None:
                return convention, details
    raise FileFormatError(
        f"{directory.root}: no checkpoint convention breccia knows describes this directory"
    )


def open_checkpoint(
    path: str | os.PathLike | ModelDirectory,
    framework: str = "numpy",
    *,
    device: Any = None,
    check_scales: bool = True,
) -> Checkpoint:
    """A lazy mapping over the model directory (or file) ``path``, in whatever convention it follows.

    ``ck.format`` names the convention (``hf``, ``breccia``, ``deepseek-fp8``, ``mlx-lm``, ...),
    ``ck.details`` describes it, ``ck.config`` is the model config. ``ck[name]`` reads one tensor: a
    :class:`~breccia.ScaledTensor` for quantized weights, else an array, of ``framework`` on ``device``.
    A stored scale that is NaN, infinite, zero or negative is an error naming the tensor and block,
    unless ``check_scales=False`` (what ``breccia inspect`` uses to list and count such tensors).
    """
    directory = path if isinstance(path, ModelDirectory) else ModelDirectory(path, check_scales=check_scales)
    convention, details = detect(directory)
    return convention.open(directory, convention.name, details, framework, device)
