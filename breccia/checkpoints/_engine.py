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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..errors import RecipeError
from ._directory import ModelDirectory
from ._output import OutputDirectory
from ._registry import Checkpoint, detect
from ._targets import ConversionReport, Target, parse_target
from .hf import QUANTIZATION_SIDE_FILES

__all__ = ["convert", "convert_tensors"]


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
    source = convention.open(directory, convention.name, details, "numpy", None)
    return _write(source, directory, dst, target, overwrite, progress, dtype)


def convert_tensors(
    tensors: Mapping[str, Any],
    dst: str | os.PathLike,
    to: str,
    *,
    config: Mapping[str, Any] | None = None,
    files_from: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
    dtype: str | None = None,
) -> ConversionReport:
    """Write ``tensors`` (a state dict: ScaledTensors, arrays of any framework, torchao tensors) as the
    model directory ``dst`` in target ``to``, exactly as :func:`convert` writes a directory.

    ``config`` is the model config (e.g. ``model.config.to_dict()``; an mlx target needs its
    ``model_type``); ``files_from`` a model directory whose side files (tokenizer, chat template,
    generation config) are copied, and whose config.json is used when ``config`` is None. Quantized
    tensors are repacked where the target holds them exactly, else requantized and reported.
    """
    from .state_dict import StateDictCheckpoint

    target = parse_target(to)
    directory = None if files_from is None else ModelDirectory(files_from)
    if config is None:
        config = {} if directory is None else directory.config
    source = StateDictCheckpoint(tensors, dict(config))
    return _write(source, directory, dst, target, overwrite, progress, dtype)


def _write(
    source: Checkpoint,
    side_files: ModelDirectory | None,
    dst: str | os.PathLike,
    target: Target,
    overwrite: bool,
    progress: bool,
    dtype: str | None,
) -> ConversionReport:
    """Steps 3 to 6 of the module docstring, for any source."""
    report = ConversionReport(source_format=source.format, target=target.name)
    options = dict(target.options)
    if dtype is not None:
        if target.convention != "mlx-lm":
            raise RecipeError(
                "dtype= chooses the float dtype of an mlx target; the other targets name theirs"
            )
        options["dtype"] = dtype
    protected = source.directory.root if source.directory is not None else None
    try:
        with OutputDirectory(dst, protected, overwrite=overwrite) as out:
            target.write(source, out, report, progress=_progress(progress, "convert"), **options)
            for name in [] if side_files is None else side_files.side_files():
                if name == "config.json" or name in QUANTIZATION_SIDE_FILES:
                    continue
                out.copy_file(side_files.file(name), name)
            out.commit()
    finally:
        source.close()
    return report
