"""The ``breccia`` command: ``demo``, ``inspect`` and ``convert``.

Errors a user can cause (a missing file, a malformed one, an unknown target) print one line to stderr
and exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .errors import BrecciaError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(sections=args.section, out=sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breccia",
        description="Block-scaled low-precision tensors for numpy, JAX, MLX and PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="quantize data it makes itself with every recipe on every installed backend",
        description="Quantize data breccia makes itself with every recipe on every installed "
        "framework and print what it costs and whether the bits agree.",
    )
    from .demo import SECTIONS

    demo.add_argument(
        "--section",
        action="append",
        choices=sorted(SECTIONS),
        help="run only this part of the demo (repeatable); default: all",
    )
    demo.set_defaults(run=_demo)
    for register in _command_registrars():
        register(commands)
    return parser


def _command_registrars():
    """Subcommands that live in their own modules (inspect, convert)."""
    from .commands import REGISTRARS

    return REGISTRARS


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # the reader went away (``breccia inspect ... | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (BrecciaError, OSError) as exc:
        print(f"breccia {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"breccia {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
