"""``breccia inspect FILE|DIR``: one row per tensor of a safetensors checkpoint.

Columns: name, recipe ("-" for a plain tensor, which shows its dtype instead), layout, shape, bytes
(as stored: data, scales, global scale and zero points), scale range (the smallest and largest finite
dequantization multiplier, block scale * global scale) and the number of NaN and Inf values the
tensor decodes to. --json prints the same as a JSON list.

The counts come from breccia's own dequantization in float32, so they follow breccia's NaN rule: a
block whose scale is NaN counts all its elements as NaN. Large tensors are dequantized a slab of rows
at a time, so memory stays near 2**24 float32 values whatever the tensor's size.

The first line names the checkpoint's format as breccia detects it (hf, breccia, deepseek-fp8,
mlx-lm, ...) with details, e.g. "format: deepseek-fp8 (128x128 blocks, ue8m0 scales)". FILE is a
.safetensors file, a model.safetensors.index.json or a .gguf file; DIR is a model directory (or a
directory of unrelated .safetensors files, each listed with its file name).

A GGUF tensor of a ggml type breccia does not decode (the K-quants, IQ types, ...) is listed by name,
shape, bytes and ggml type as "not decoded", with no scale range or counts: nothing is guessed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FileFormatError
from ..tensor import ScaledTensor

__all__ = ["register", "inspect_path", "describe"]

CHUNK_ELEMENTS = 1 << 24


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "inspect",
        help="list every tensor of a safetensors file or checkpoint directory",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path", metavar="FILE|DIR", help="a .safetensors file, an index.json, a .gguf file, or a directory"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    fmt, rows = inspect_checkpoint(args.path)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print(printable(fmt))
        print(format_table(rows))
    return 0


# --- reading ----------------------------------------------------------------------------------------


def _checkpoints(path: Path) -> list[Any]:
    """The checkpoints to list for ``path``: its model directory, or each file of a directory of
    unrelated .safetensors files (no index to tie them together)."""
    from ..checkpoints import ModelDirectory, open_checkpoint

    if not os.path.lexists(path):
        raise FileFormatError(f"{path}: no such file or directory")
    directory = ModelDirectory(path, check_scales=False)  # bad scales are listed and counted, not refused
    separate = directory.separate_files()
    if separate:
        return [open_checkpoint(path / f, check_scales=False) for f in separate]
    return [open_checkpoint(directory)]


def inspect_checkpoint(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """``(format line, rows)``: the convention of ``path`` and one :func:`describe` row per tensor."""
    checkpoints = _checkpoints(Path(path))
    rows = []
    formats = []
    for checkpoint in checkpoints:
        with checkpoint:
            formats.append(checkpoint.format + (f" ({checkpoint.details})" if checkpoint.details else ""))
            undecoded = _gguf_undecoded(checkpoint)
            for name in checkpoint:
                if name in undecoded:
                    row = _undecoded_row(name, undecoded[name], checkpoint)
                else:
                    row = describe(name, checkpoint[name])
                if len(checkpoints) > 1:
                    row["file"] = os.path.basename(checkpoint.directory.single or "")
                rows.append(row)
    return "format: " + ", ".join(dict.fromkeys(formats)), rows


def inspect_path(path: str | Path) -> list[dict[str, Any]]:
    """One :func:`describe` row per tensor under ``path`` (file, index or directory), in file order."""
    return inspect_checkpoint(path)[1]


def _gguf_undecoded(checkpoint: Any) -> dict[str, str]:
    """The tensors of a GGUF checkpoint that breccia does not decode (name -> ggml type); else none."""
    from ..checkpoints.gguf import GGUFCheckpoint

    return checkpoint.undecoded() if isinstance(checkpoint, GGUFCheckpoint) else {}


def _undecoded_row(name: str, kind: str, checkpoint: Any) -> dict[str, Any]:
    """The row of a GGUF tensor of ggml type ``kind``, which breccia lists but does not decode."""
    return {
        "name": name,
        "recipe": None,
        "layout": None,
        "shape": list(checkpoint.source.shape(name)),
        "dtype": kind,
        "bytes": checkpoint.source.nbytes(name),
        "scale_min": None,
        "scale_max": None,
        "nan": None,
        "inf": None,
        "recipe_dict": None,
        "decoded": False,
    }


# --- describing one tensor --------------------------------------------------------------------------


def describe(name: str, value: Any) -> dict[str, Any]:
    """The row for one tensor: a ScaledTensor or a plain numpy array (JSON-ready values only)."""
    if isinstance(value, ScaledTensor):
        low, high = _scale_range(value)
        nan, inf = _scaled_counts(value)
        return {
            "name": name,
            "recipe": value.recipe.label(),
            "layout": repr(value.layout),
            "shape": list(value.shape),
            "dtype": value.dtype_name,
            "bytes": int(value.nbytes),
            "scale_min": low,
            "scale_max": high,
            "nan": nan,
            "inf": inf,
            "recipe_dict": value.recipe.to_dict(),
        }
    array = np.asarray(value)
    nan, inf = _plain_counts(array)
    return {
        "name": name,
        "recipe": None,
        "layout": None,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "bytes": int(array.nbytes),
        "scale_min": None,
        "scale_max": None,
        "nan": nan,
        "inf": inf,
        "recipe_dict": None,
    }


def _scale_range(st: ScaledTensor) -> tuple[float | None, float | None]:
    from ..backends import get_backend
    from ..scaling import decode_scale

    backend = get_backend("numpy")
    scale = decode_scale(backend, np.asarray(st.scale), st.recipe.scale_format)
    if st.global_scale is not None:
        scale = scale * np.float32(np.asarray(st.global_scale, dtype=np.float32))
    finite = scale[np.isfinite(scale)]
    if finite.size == 0:
        return None, None
    return float(finite.min()), float(finite.max())


def _scaled_counts(st: ScaledTensor) -> tuple[int, int]:
    from ..quantize import dequantize

    nan = inf = 0
    slabs = (rows for _, _, rows in st.row_blocks(CHUNK_ELEMENTS)) if st.shape else (st,)
    for slab in slabs:
        values = np.asarray(dequantize(slab, "float32"))
        nan += int(np.count_nonzero(np.isnan(values)))
        inf += int(np.count_nonzero(np.isinf(values)))
    return nan, inf


def _plain_counts(array: np.ndarray) -> tuple[int, int]:
    if array.dtype.kind in "iub":
        return 0, 0
    flat = array.reshape(-1)
    nan = inf = 0
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        values = flat[start : start + CHUNK_ELEMENTS].astype(np.float32)
        nan += int(np.count_nonzero(np.isnan(values)))
        inf += int(np.count_nonzero(np.isinf(values)))
    return nan, inf


# --- printing ---------------------------------------------------------------------------------------


def _range_text(row: dict[str, Any]) -> str:
    if row["recipe"] is None:
        return "-"
    if row["scale_min"] is None:
        return "no finite scale"
    return f"{row['scale_min']:.3g} .. {row['scale_max']:.3g}"


def printable(text: str) -> str:
    """``text`` with every control or other non-printable character escaped (``\\x1b``, ``\\n``,
    ``\\u202e``...), as ``repr`` escapes it: a name read from a file cannot move the cursor, clear the
    screen, reorder the line or start a new row of the table."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table with a totals line."""
    header = ("name", "recipe", "layout", "shape", "bytes", "scale range", "NaN", "Inf")
    body = [
        (
            printable(row["name"] if "file" not in row else f"{row['file']}:{row['name']}"),
            row["recipe"] or f"- ({row['dtype']}{', not decoded' if row.get('decoded') is False else ''})",
            row["layout"] or "-",
            "x".join(str(d) for d in row["shape"]) or "scalar",
            f"{row['bytes']:,}",
            _range_text(row),
            "-" if row["nan"] is None else str(row["nan"]),
            "-" if row["inf"] is None else str(row["inf"]),
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    right = {4, 6, 7}

    def line(cells: tuple[str, ...]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded)

    scaled = sum(1 for row in rows if row["recipe"] is not None)
    undecoded = sum(1 for row in rows if row.get("decoded") is False)
    plain = len(rows) - scaled - undecoded
    total = sum(row["bytes"] for row in rows)
    lines = [line(header), "  ".join("-" * w for w in widths), *(line(cells) for cells in body)]
    kinds = f"{scaled} scaled, {plain} plain" + (f", {undecoded} not decoded" if undecoded else "")
    lines.append(f"{len(rows)} tensors ({kinds}), {total:,} bytes")
    return "\n".join(line.rstrip() for line in lines)
