"""``breccia convert SRC DST --to TARGET``: the command-line face of :func:`breccia.convert`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]

DESCRIPTION = """\
Convert a model directory into another format, for the loader that will read it.

SRC is a model directory (or one .safetensors file, or its index). Its format is detected:
plain float (hf), DeepSeek-style FP8 (deepseek-fp8), mlx-lm quantized (mlx-lm) or breccia's own
files. DST is a new or empty directory (use --overwrite to replace one); it is written beside
itself in a hidden temporary directory and appears only when complete. SRC is never modified.

Targets:
  bf16, float16, float32        plain float weights for transformers
  deepseek-fp8                  FP8 with 128x128 weight_scale_inv (DeepSeek-V3 / FineGrainedFP8)
  deepseek-fp8-ue8m0            the same with power-of-two scales (DeepSeek-V3.1)
  mlx-affine2 ... mlx-affine8   mlx-lm affine quantization (2, 3, 4, 5, 6 or 8 bits)
  mlx-mxfp4, mlx-mxfp8          mlx-lm MX formats
  mlx-nvfp4                     mlx-lm NVFP4
  (an mlx target may end in -g32, -g64 or -g128 to choose the group size)
  a breccia recipe              e.g. MXFP8BlockScaling or "Int4Scaling(group_size=64)"

Every tokenizer, chat template and other side file is copied. A tensor that is already in the
target's format is repacked bit for bit; one that must be requantized is counted in the report
printed at the end, with the worst relative error added.

examples:
  breccia convert ./Llama-3.2-1B ./Llama-3.2-1B-mlx-4bit --to mlx-affine4
  breccia convert ./DeepSeek-V3 ./DeepSeek-V3-bf16 --to bf16
"""


def _run(args: argparse.Namespace) -> int:
    from ..checkpoints import convert

    report = convert(
        args.src,
        args.dst,
        to=args.to,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        dtype=args.dtype,
    )
    print(f"wrote {args.dst}: {report}", file=sys.stderr)
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert a model directory to another format (bf16, deepseek-fp8, mlx-*, ...)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="the model directory to read (never modified)")
    parser.add_argument("dst", help="the directory to create")
    parser.add_argument("--to", required=True, metavar="TARGET", help="the output format (see targets above)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists and is not empty")
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float16", "float32"), help="float dtype of an mlx output"
    )
    parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    parser.set_defaults(run=_run)
