"""``breccia demo``: sections that each show one capability on data they make themselves.

A section is a function ``run(out) -> bool`` (True when everything it checked held) registered in
``SECTIONS``; later capabilities add their own module here and one line below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from . import checkpoints, core, deepseek, mlx_flow

SECTIONS: dict[str, Callable[[IO[str]], bool]] = {
    "recipes": core.run,
    "torch-to-mlx": mlx_flow.run,
    "deepseek": deepseek.run,
    "model-dirs": checkpoints.run,
}


def run_demo(sections: list[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the named sections (all by default); exit status 0 only if every check held."""
    import sys

    out = out or sys.stdout
    ok = True
    for name in sections or list(SECTIONS):
        print(f"\n== {name} ==", file=out)
        ok = SECTIONS[name](out) and ok
    print("\nall checks held" if ok else "\nSOME CHECKS FAILED", file=out)
    return 0 if ok else 1
