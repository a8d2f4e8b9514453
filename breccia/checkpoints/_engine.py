"""The one conversion engine: a model directory in, a model directory out, for every convention.

``convert(src, dst, to=...)``:

1. parses the target (an unknown one is an error before anything is touched);
2. opens the source (:class:`ModelDirectory`: real paths, regular files, links inside the tree) and
   detects its convention (an unexplained quantized tensor is an error);
3. checks the destination (not the source, not inside it, not containing it; empty unless
   ``overwrite``) and builds the output in a temporary directory beside it (:class:`OutputDirectory`);
4. lets the target write weights and config.json, streaming tensor by tensor;
5. copies every side file (tokenizer, chat template, generation config, code...) except config.json,
   the weights, and quantization side files (``hf_quant_config.json``...), which the target writes
   itself when it has them;
6. renames the finished directory into place and returns the :class:`ConversionReport`.

Nothing under the source is written, renamed or deleted: every write goes into the temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from ._directory import ModelDirectory
from ._output import OutputDirectory
from ._registry import detect
from ._targets import ConversionReport, parse_target
from .hf import QUANTIZATION_SIDE_FILES

__all__ = ["convert"]


def _progress(enabled: bool, description: str) -> Any:
    """A function wrapping an iterable in a tqdm bar when ``enabled`` (plain iteration otherwise, or
    when tqdm is not installed). tqdm is imported either way, so both cost the same memory."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None

    def bar(items: Iterable[Any]) -> Iterator[Any]:
        if not enabled or tqdm is None:
            return iter(items)
        return iter(tqdm(items, desc=description, unit="tensor"))

    return bar


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str,
    overwrite: bool = False,
    progress: bool = False,
    *,
    dtype: str | None = None,
) -> ConversionReport:
    """Convert the model directory (or checkpoint file) ``src`` into the directory ``dst``.

    ``to`` is a target: ``bf16``, ``float16``, ``float32``, ``deepseek-fp8``, ``deepseek-fp8-ue8m0``,
    ``mlx-affine{2,3,4,5,6,8}``, ``mlx-mxfp4``, ``mlx-mxfp8``, ``mlx-nvfp4`` (``-g<group>`` optional), or a
    breccia recipe (``"MXFP8BlockScaling"``, ``"Int4Scaling(group_size=64)"``). ``dtype`` overrides
    the float dtype of an mlx output (mlx_lm.convert's ``--dtype``). See the module docstring for what
    is checked and written. Returns what was done to each tensor.
    """
    target = parse_target(to)
    directory = ModelDirectory(src)
    convention, details = detect(directory)
    report = ConversionReport(source_format=convention.name, target=target.name)
    options = dict(target.options)
    if dtype is not None:
        if target.convention != "mlx-lm":
            from ..errors import RecipeError

            raise RecipeError(
                "dtype= chooses the float dtype of an mlx target; the other targets name theirs"
            )
        options["dtype"] = dtype
    source = convention.open(directory, convention.name, details, "numpy", None)
    try:
        with OutputDirectory(dst, directory.root, overwrite=overwrite) as out:
            target.write(source, out, report, progress=_progress(progress, "convert"), **options)
            for name in directory.side_files():
                if name == "config.json" or name in QUANTIZATION_SIDE_FILES:
                    continue
                out.copy_file(directory.file(name), name)
            out.commit()
    finally:
        source.close()
    return report
