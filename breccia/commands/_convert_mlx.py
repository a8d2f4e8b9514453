"""``breccia convert SRC DST --to mlx-<mode>``: a safetensors state dict -> an MLX model directory.

``<mode>`` is ``mxfp8``, ``mxfp4``, ``nvfp4``, ``affine4`` or ``affine8``, optionally with a group size
(``mlx-affine4-g32``). SRC is a ``.safetensors`` file (a torch ``state_dict`` saved with safetensors,
or breccia ScaledTensors saved with ``save_safetensors``), a directory of shards, or an index. DST
receives ``model.safetensors`` in mlx-lm's layout and ``config.json`` with its ``"quantization"``
entry (merged into a ``config.json`` found next to SRC): see :func:`breccia.mlx.export_mlx_model`.
"""

from __future__ import annotations

import json
import os
import sys

__all__ = ["convert"]


def _source_config(src: str) -> dict:
    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        config = json.load(f)
    for key in ("quantization", "quantization_config"):
        config.pop(key, None)
    return config


def convert(src: str, dst: str, target: str, progress: bool = True) -> None:
    """Write the MLX model directory ``dst`` from the safetensors checkpoint ``src`` (see module doc)."""
    from ..bridges import open_safetensors
    from ..mlx import export_mlx_model, parse_mode

    mode, group, bits = parse_mode(target)

    def report(name: str, action: str) -> None:
        print(f"  {name}: {action}", file=sys.stderr)

    with open_safetensors(src, "numpy") as tensors:
        result = export_mlx_model(
            tensors, dst, mode, group_size=group, bits=bits, config=_source_config(src),
            progress=report if progress else None,
        )
    if progress:
        print(f"wrote {dst}: {result}", file=sys.stderr)
