"""Tensors in memory (a state dict) as a checkpoint source, so they convert like a model directory.

Values may be breccia ScaledTensors, arrays of any framework (numpy, JAX, MLX, torch) or torchao's
quantized tensor subclasses (read through :func:`breccia.bridges.from_torchao`, bit for bit). Each is
brought to numpy when a writer asks for it, one at a time. The format name is ``state-dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..bridges import from_torchao, is_torchao
from ..errors import NotAnArrayError
from ..tensor import ScaledTensor
from ._registry import Checkpoint

__all__ = ["StateDictCheckpoint"]


class StateDictCheckpoint(Checkpoint):
    """``tensors`` (name -> ScaledTensor | array | torchao tensor) with the model ``config``."""

    def __init__(self, tensors: Mapping[str, Any], config: dict[str, Any]) -> None:
        if not isinstance(tensors, Mapping):
            raise NotAnArrayError(
                f"tensors must be a mapping of name -> tensor; got {type(tensors).__name__}"
            )
        super().__init__(None, "state-dict", f"{len(tensors)} tensors in memory")
        self.tensors = tensors
        self._config = config

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    def _keys(self) -> list[str]:
        return [str(name) for name in self.tensors]

    def _read(self, name: str) -> Any:
        value = self.tensors[name]
        if is_torchao(value):
            value = from_torchao(value)
        if isinstance(value, ScaledTensor):
            return value.to("numpy")
        from ..backends import backend_for

        return backend_for(value, f"tensor {name!r}").to_numpy(value)
