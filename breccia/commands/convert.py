"""``breccia convert SRC DST --to TARGET``: rewrite a checkpoint in another format, shard by shard.

Targets come from converter modules, each registering a prefix in :data:`TARGETS`:

* ``mlx-<mode>`` (``mlx-mxfp8``, ``mlx-mxfp4``, ``mlx-nvfp4``, ``mlx-affine4``, ...): an mlx-lm
  directory (``breccia.commands._convert_mlx``);
* ``bf16`` or a recipe name (``Float8BlockScaling``, ``MXFP8BlockScaling``, ...): a safetensors
  checkpoint, DeepSeek-V3 FP8 included (``breccia.commands._convert_checkpoint``).
"""

from __future__ import annotations

import argparse
from importlib import import_module
from typing import Any

from ..errors import BrecciaError

# target prefix -> module that defines ``convert(src, dst, target, progress) -> None``; "" is the default
TARGETS: dict[str, str] = {
    "mlx-": "breccia.commands._convert_mlx",
    "": "breccia.commands._convert_checkpoint",
}


def _module_for(target: str) -> Any:
    for prefix, module in TARGETS.items():
        if prefix and target.startswith(prefix):
            return import_module(module)
    return import_module(TARGETS[""])


def _run(args: argparse.Namespace) -> int:
    try:
        module = _module_for(args.to)
    except ModuleNotFoundError as exc:
        raise BrecciaError(f"conversion target {args.to!r} is not available: {exc}") from None
    module.convert(args.src, args.dst, args.to, progress=not args.no_progress)
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert a checkpoint (file, directory or index) to another format",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src", help="source: a .safetensors file, a directory, or a model.safetensors.index.json"
    )
    parser.add_argument("dst", help="destination directory (or file for single-file targets)")
    parser.add_argument("--to", required=True, metavar="TARGET", help="bf16, a recipe name, or mlx-<mode>")
    parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    parser.set_defaults(run=_run)
