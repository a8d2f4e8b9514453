"""A model directory as the conventions see it: config, weight files, tensor headers, side files.

:class:`ModelDirectory` is where a checkpoint's files are found, once, for every convention and for
``inspect``: the index (``model.safetensors.index.json``) is resolved here and only here, and every
file goes through :mod:`._paths`'s rules (real paths, regular files, links inside the tree).

Weight files are, in order of preference: the shards an index lists (then every ``model.safetensors``
or ``model-NNNNN-of-NNNNN.safetensors`` in the directory must be one of them: a shard left over from an
older output is an error, not a silent extra), or the one ``model.safetensors`` / lone
``*.safetensors``, or ``model*.safetensors`` shards without an index (what mlx-lm itself globs), or a
``.gguf`` file. A path to one ``.safetensors``, ``.gguf`` or index file is a directory of that file.

Side files are every other regular top-level file (tokenizer files, chat template, generation config,
special tokens, code, README, licence): a conversion copies them unchanged, except the ones a
convention owns (``config.json`` is rewritten, quantization side files are dropped by float targets).
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from typing import Any

from ..bridges._paths import read_json, real_directory, regular_file
from ..bridges._safetensors_format import Header, TensorEntry, read_header
from ..errors import FileFormatError

__all__ = ["INDEX_NAME", "ModelDirectory", "WEIGHT_SUFFIXES"]

INDEX_NAME = "model.safetensors.index.json"
#: files that hold weights: never copied as side files
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".safetensors.index.json",
    ".bin",
    ".bin.index.json",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".npz",
)
_SHARD = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")
_TEMPORARY = re.compile(r"\.(tmp|partial)$|^\.")


class ModelDirectory:
    """The files of one model directory (or of one file named directly). Reads only headers and JSON."""

    def __init__(self, path: str | os.PathLike, *, check_scales: bool = True) -> None:
        """``check_scales=False`` lets readers hand out quantized tensors whose stored scales are NaN,
        infinite, zero or negative (for inspection); by default such a tensor is an error."""
        self.check_scales = check_scales
        text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
        if not isinstance(text, str) or not text:
            raise FileFormatError(f"a checkpoint path must be a non-empty path; got {path!r}")
        self.path = text
        self.single: str | None = None  # the one file named directly, relative to root
        if os.path.isdir(text):
            self.root = real_directory(text)
        else:
            parent = os.path.dirname(os.path.abspath(text))
            self.root = real_directory(parent)
            self.single = os.path.basename(text)
            regular_file(self.root, self.single)

    # --- files ------------------------------------------------------------------------------------
    @cached_property
    def names(self) -> list[str]:
        """Top-level entries of the directory (sorted; for a single file, only that file)."""
        if self.single is not None:
            return [self.single]
        return sorted(os.listdir(self.root))

    def has(self, name: str) -> bool:
        return name in self.names or (
            self.single is not None and os.path.exists(os.path.join(self.root, name))
        )

    def file(self, name: str) -> str:
        """The checked real path of file ``name`` in the directory."""
        return regular_file(self.root, name)

    def json(self, name: str, what: str | None = None) -> Any:
        """JSON file ``name`` of the directory, or None if there is none."""
        if not os.path.lexists(os.path.join(self.root, name)):
            return None
        return read_json(self.file(name), what or name)

    @cached_property
    def config(self) -> dict[str, Any]:
        """``config.json`` ({} when there is none); an error if it is not a JSON object."""
        config = self.json("config.json", "config.json")
        if config is None:
            return {}
        if not isinstance(config, dict):
            raise FileFormatError(
                f"{self.root}/config.json: must be a JSON object; got {type(config).__name__}"
            )
        return config

    @cached_property
    def quantization_config(self) -> dict[str, Any]:
        """config.json's ``quantization_config`` (or the text config's), {} when absent."""
        quant = self.config.get("quantization_config")
        if quant is None and isinstance(self.config.get("text_config"), dict):
            quant = self.config["text_config"].get("quantization_config")
        if quant is None:
            return {}
        if not isinstance(quant, dict):
            raise FileFormatError(f"{self.root}/config.json: quantization_config must be an object")
        return quant

    # --- weights ----------------------------------------------------------------------------------
    @cached_property
    def weight_files(self) -> tuple[list[str], str | None]:
        """(weight files relative to root, the index they come from or None). See the module doc."""
        if self.single is not None:
            if self.single.endswith(".json"):
                return self._from_index(self.single), self.single
            return [self.single], None
        names = self.names
        if INDEX_NAME in names:
            return self._from_index(INDEX_NAME), INDEX_NAME
        shards = [n for n in names if _SHARD.match(n)]
        if shards:
            if "model.safetensors" in shards and len(shards) > 1:
                raise FileFormatError(
                    f"{self.root}: holds model.safetensors and model-NNNNN-of-NNNNN shards without an "
                    "index; remove the stale ones"
                )
            return shards, None
        loose = self._loose()
        if len(loose) == 1:
            return loose, None
        if not loose:
            other = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
            hint = f" (found {', '.join(other)}: breccia reads safetensors and GGUF)" if other else ""
            raise FileFormatError(
                f"{self.root}: no {INDEX_NAME} and no .safetensors files in this directory (no model "
                f"weights){hint}"
            )
        raise FileFormatError(
            f"{self.root}: several weight files ({', '.join(loose)}) and no {INDEX_NAME} to say which "
            "belong to the model; pass one file, or add the index"
        )

    def _loose(self) -> list[str]:
        return [n for n in self.names if n.endswith((".safetensors", ".gguf")) and not _TEMPORARY.search(n)]

    def separate_files(self) -> list[str] | None:
        """The weight files of a directory that holds several unrelated ones (no index, no model
        shards), which can only be read one by one; None for a model directory."""
        if self.single is not None or INDEX_NAME in self.names or any(_SHARD.match(n) for n in self.names):
            return None
        loose = self._loose()
        return loose if len(loose) > 1 else None

    def _from_index(self, index_name: str) -> list[str]:
        from ..bridges._huggingface import read_index

        files, _ = read_index(self.file(index_name))
        listed = sorted(os.path.relpath(f, self.root) for f in files)
        for shard in listed:
            self.file(shard)
        if self.single is None:
            stale = [n for n in self.names if _SHARD.match(n) and n not in listed]
            if stale:
                raise FileFormatError(
                    f"{self.root}: {', '.join(stale)} not listed in {index_name} (left from an older "
                    "checkpoint?); remove it or regenerate the index"
                )
        return listed

    @property
    def largest_weight_file(self) -> int:
        """Bytes of the largest weight file (a conversion's outputs are cut into shards this size)."""
        return max((os.path.getsize(self.file(f)) for f in self.weight_files[0]), default=1)

    @property
    def index_path(self) -> str | None:
        """The checked real path of the index, when the weights come from one."""
        index = self.weight_files[1]
        return None if index is None else self.file(index)

    @cached_property
    def headers(self) -> dict[str, Header]:
        """Each safetensors weight file's validated header, by file name."""
        return {
            name: read_header(self.file(name))
            for name in self.weight_files[0]
            if name.endswith(".safetensors")
        }

    @cached_property
    def entries(self) -> dict[str, TensorEntry]:
        """Every stored tensor (raw name -> header entry) of every safetensors weight file."""
        out: dict[str, TensorEntry] = {}
        for name, header in self.headers.items():
            for raw, entry in header.entries.items():
                if raw in out:
                    raise FileFormatError(
                        f"{self.root}: tensor {raw!r} is stored in two files (one is {name})"
                    )
                out[raw] = entry
        return out

    @cached_property
    def metadata(self) -> dict[str, str]:
        """``__metadata__`` of every safetensors weight file merged (the first file wins a key)."""
        merged: dict[str, str] = {}
        for header in self.headers.values():
            for key, value in header.metadata.items():
                merged.setdefault(key, value)
        return merged

    def open_safetensors(self) -> Any:
        """The safetensors weights as one lazy :class:`~breccia.bridges.SafetensorsCheckpoint` (numpy)."""
        from ..bridges import open_safetensors

        return open_safetensors(self.safetensors_source(), "numpy", check_scales=self.check_scales)

    def safetensors_source(self) -> str:
        """What :func:`breccia.bridges.open_safetensors` should open for these weights."""
        files, index = self.weight_files
        if index is not None:
            return self.file(index)
        if len(files) != 1:
            raise FileFormatError(
                f"{self.root}: {len(files)} shards without {INDEX_NAME}; breccia needs the index to read "
                "shards together"
            )
        return self.file(files[0])

    # --- side files -------------------------------------------------------------------------------
    def side_files(self) -> list[str]:
        """Top-level regular files that are not weights (copied by a conversion), links checked."""
        if self.single is not None and not self.single.endswith(".json"):
            return ["config.json"] if os.path.lexists(os.path.join(self.root, "config.json")) else []
        out = []
        for name in self.names:
            if name.endswith(WEIGHT_SUFFIXES) or _TEMPORARY.search(name):
                continue
            if os.path.isdir(os.path.join(self.root, name)):
                continue
            self.file(name)
            out.append(name)
        return out

    def __repr__(self) -> str:
        return f"ModelDirectory({self.root!r})"
