"""breccia on MLX: layers that run a ScaledTensor weight, and PyTorch -> MLX model directories.

Two rooms, one import path (``breccia.mlx``) for users:

* :mod:`breccia.mlx.layers`: :class:`QuantizedLinear` (``mx.quantized_matmul`` over a weight MLX can
  hold) and :class:`Float8Linear` (FP8 weights decoded from their bits), ``mlx.nn`` modules.
* :mod:`breccia.mlx.directory`: :func:`export_mlx_model` (a state dict as an mlx-lm directory,
  written through the checkpoint layer's shard writer) and :func:`load_mlx_model` (read back as
  ScaledTensors), with :func:`parse_mode` and :class:`ExportReport`.

Both are model-level code and sit at the checkpoint layer (``docs/architecture.md``); the arithmetic
they use lives below them in the MLX and torchao bridges. Importing ``breccia.mlx`` needs MLX
(``pip install 'breccia[mlx]'``).
"""

from __future__ import annotations

from ..errors import missing_dependency

try:
    import mlx.nn  # noqa: F401 - MLX present (mlx.nn imports mlx.core), else the pip extra is named
except ImportError as _exc:  # pragma: no cover - exercised only without MLX
    raise missing_dependency("mlx", "mlx", str(_exc)) from _exc

from .directory import ExportReport, export_mlx_model, load_mlx_model, parse_mode
from .layers import Float8Linear, QuantizedLinear

__all__ = [
    "QuantizedLinear",
    "Float8Linear",
    "export_mlx_model",
    "load_mlx_model",
    "ExportReport",
    "parse_mode",
]
