"""``gguf``: one GGUF file (llama.cpp's container) as a checkpoint source.

Read (lazily, memory-mapped through ``gguf.GGUFReader``, see :mod:`breccia.bridges._gguf`): Q8_0,
Q4_0, Q4_1, MXFP4 and NVFP4 tensors as ScaledTensors that decode bit for bit as ``gguf.quants``
does, F32/F16/BF16 (and F64, I8-I64) as arrays. Tensors of every other ggml type are listed (in
``details`` and as keys) by name and type, and reading one, hence converting the file, raises
FileFormatError naming it: nothing is guessed. GGUF keeps llama.cpp's tensor names
(``blk.0.attn_q.weight``) and no config.json, so a conversion writes those names and whatever
config.json lies beside the file. There is no GGUF conversion target; :func:`breccia.bridges.save_gguf`
writes GGUF tensors.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ._directory import ModelDirectory
from ._registry import Checkpoint, Convention, register

__all__ = ["GGUFCheckpoint"]


def _gguf_file(directory: ModelDirectory) -> str | None:
    files = directory.weight_files[0]
    return files[0] if len(files) == 1 and files[0].endswith(".gguf") else None


def _detect(directory: ModelDirectory) -> str | None:
    name = _gguf_file(directory)
    if name is None:
        return None
    from ..bridges._gguf import open_gguf

    source = open_gguf(directory.file(name))
    try:
        counts = Counter(source.types.values())
        undecoded = set(source.undecoded().values())
        types = ", ".join(
            f"{n} {kind}{' (not decoded by breccia)' if kind in undecoded else ''}"
            for kind, n in counts.most_common()
        )
        return f"GGUF v{source.version}, {len(source)} tensors: {types or 'none'}"
    finally:
        source.close()


class GGUFCheckpoint(Checkpoint):
    """The tensors of one GGUF file, by their GGUF names."""

    def __init__(
        self, directory: ModelDirectory, fmt: str, details: str, framework: str, device: Any
    ) -> None:
        from ..bridges._gguf import open_gguf

        super().__init__(directory, fmt, details, framework, device)
        self.source = open_gguf(directory.file(_gguf_file(directory)))

    def _keys(self) -> list[str]:
        return list(self.source)

    def _read(self, name: str) -> Any:
        return self.source[name]

    def undecoded(self) -> dict[str, str]:
        """The tensors whose ggml type breccia does not decode: name -> type name (reading one raises)."""
        return self.source.undecoded()

    def close(self) -> None:
        self.source.close()


register(Convention("gguf", _detect, GGUFCheckpoint))
