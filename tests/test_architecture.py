"""The layers of docs/architecture.md: no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import breccia

#: rank -> the top-level names under breccia/ of that layer (docs/architecture.md's table)
LAYERS = (
    ("errors",),
    ("formats", "layouts", "scale_rules", "recipes"),
    ("backends",),
    ("scaling", "tensor"),
    ("quantize", "matmul", "kernels"),
    ("bridges",),
    ("checkpoints", "mlx"),
    ("commands", "cli", "demo", "__init__"),
)
#: the upward imports the page documents: (importer, imported) -> why
ALLOWED_UPWARD = {
    ("breccia.tensor", "breccia.quantize"): "ScaledTensor.dequantize is bc.dequantize",
    ("breccia.tensor", "breccia.bridges"): "ScaledTensor.to is the DLPack hub's from_dlpack",
    ("breccia.backends.jax_backend", "breccia.tensor"): "the JAX backend registers ScaledTensor as a pytree",
}
ROOT = Path(breccia.__file__).parent


def _rank(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    for rank, names in enumerate(LAYERS):
        if key in names:
            return rank
    raise AssertionError(f"{module} belongs to no layer of docs/architecture.md; add it to the table")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """Every breccia module ``path`` imports (function-level imports included), with the line."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                names = [".".join([*base, node.module])] if node.module else [
                    ".".join([*base, alias.name]) for alias in node.names
                ]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(name, node.lineno) for name in names if name == "breccia" or name.startswith("breccia.")]
    return found


def test_no_module_imports_upward():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        for imported, line in _imports(path, module):
            if _rank(imported) > _rank(module) and (module, imported) not in ALLOWED_UPWARD:
                upward.append(f"{module}:{line} imports {imported}")
    assert upward == [], "imports from a higher layer (docs/architecture.md):\n" + "\n".join(upward)


def test_the_documented_exceptions_still_exist():
    """An allowance that no import needs any more is removed from the list (and the page)."""
    present = set()
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        present.update((module, imported) for imported, _ in _imports(path, module))
    assert set(ALLOWED_UPWARD) <= present
