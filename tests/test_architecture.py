"""The layers of docs/architecture.md: no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import breccia
import breccia.backends

#: rank -> the top-level names under breccia/ of that layer (docs/architecture.md's table)
LAYERS = (
    ("errors",),
    ("formats", "layouts", "scale_rules", "choices", "recipes"),
    ("backends",),
    ("scaling", "tensor"),
    ("quantize", "blockwise", "buffers", "matmul", "kernels", "sharding", "torch_ops"),
    ("bridges",),
    ("checkpoints", "mlx", "models"),
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


def _imports(path: Path, module: str, type_only: bool = True) -> list[tuple[str, int]]:
    """Every breccia module ``path`` imports (function-level imports included), with the line;
    without ``type_only``, not those inside ``if TYPE_CHECKING:`` (annotations, never run)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")), type_only):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                names = [".".join([*base, node.module])] if node.module else [
                    ".".join([*base, alias.name]) for alias in node.names
                ]
            else:
                names = [node.module or ""]
        else:
            names = [alias.name for alias in node.names]
        found += [(name, node.lineno) for name in names if name == "breccia" or name.startswith("breccia.")]
    return found


TYPE_CHECKING_TESTS = ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _import_nodes(tree: ast.AST, type_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements under ``tree``, skipping ``if TYPE_CHECKING:`` bodies unless ``type_only``."""
    if isinstance(tree, (ast.Import, ast.ImportFrom)):
        return [tree]
    type_checking = isinstance(tree, ast.If) and ast.unparse(tree.test) in TYPE_CHECKING_TESTS
    if type_checking and not type_only:
        return [node for child in tree.orelse for node in _import_nodes(child, type_only)]
    return [node for child in ast.iter_child_nodes(tree) for node in _import_nodes(child, type_only)]


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


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for imported in graph.get(todo.pop(), ()):
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


def test_no_kernels_module_is_in_an_import_cycle_with_quantize():
    """quantize asks the kernels for a launcher and runs it, or its own shared code: the kernels never
    reach quantize, not even through a function-level import (``ScaledTensor.dequantize`` is
    ``bc.dequantize``, so a kernel module that imports ``ScaledTensor`` at run time would). Imports
    inside ``if TYPE_CHECKING:`` never run and do not count."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        graph[module] = {imported for imported, _ in _imports(path, module, type_only=False)}
    kernels = [m for m in _reachable(graph, "breccia.quantize") if m.startswith("breccia.kernels")]
    cycles = sorted(m for m in kernels if "breccia.quantize" in _reachable(graph, m))
    assert cycles == [], "kernels modules quantize imports that import it back:\n" + "\n".join(cycles)


# --- one place names a framework ---------------------------------------------------------------------
FRAMEWORK_NAMES = frozenset(breccia.backends.FRAMEWORKS)
BACKENDS = ROOT / "backends"


def _names_a_framework(node: ast.AST) -> bool:
    """A framework's name as a literal, or a tuple/list/set literal holding one."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in FRAMEWORK_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_framework(e) for e in node.elts)
    return False


def _is_convention(node: ast.AST) -> bool:
    """A recipe's ``convention`` (``"mlx"`` there names MLX's quantization arithmetic, which any
    framework runs, not the framework): ``x.convention``, ``convention``, ``getattr(x, "convention", d)``."""
    if isinstance(node, ast.Attribute):
        return node.attr == "convention"
    if isinstance(node, ast.Name):
        return node.id == "convention"
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "getattr"
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value == "convention"
    )


def _framework_comparisons(source: str) -> list[int]:
    """Lines of ``source`` that compare something with a framework's name (``==``, ``!=``, ``in``,
    ``is``, a ``case``), but for a recipe's convention."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(_names_a_framework, operands)) and not any(map(_is_convention, operands)):
                lines.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and _names_a_framework(node.value):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize(
    "source, found",
    [
        ('if framework == "torch":\n    pass', True),
        ('ok = backend.name != "numpy"', True),
        ('host = dst.name in ("numpy", "mlx")', True),
        ('ok = framework_of(x) not in (None, "torch")', True),
        ('match framework:\n    case "jax":\n        pass', True),
        ('mlx = recipe.convention == "mlx"', False),
        ('mlx = getattr(recipe, "convention", None) == "mlx"', False),
        ('st = st.to("torch")', False),
        ('ok = backend.host_only', False),
    ],
)
def test_the_framework_comparison_finder(source, found):
    assert bool(_framework_comparisons(source)) is found


def test_no_module_outside_backends_compares_a_framework_name():
    """What differs between frameworks is a Backend attribute or method (docs/architecture.md): a
    ``framework == "torch"`` ladder elsewhere is one more place a new framework must be added."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if BACKENDS in path.parents:
            continue
        source = path.read_text(encoding="utf-8")
        found += [f"{path.relative_to(ROOT.parent)}:{line}" for line in _framework_comparisons(source)]
    assert found == [], "framework names compared outside breccia/backends:\n" + "\n".join(found)


# --- private names stay in their package -------------------------------------------------------------
#: cross-package imports of a private name that remain, each to be made its package's public surface
#: by the module's owner: (importer, imported) -> why it is still here
KNOWN_PRIVATE_IMPORTS: dict[tuple[str, str], str] = {}


def _package_of(module: str) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to the package itself)."""
    path = ROOT.parent.joinpath(*module.split("."))
    return module if path.is_dir() else module.rpartition(".")[0]


def _private_imports(path: Path, module: str) -> list[tuple[str, int]]:
    """``package.module._name`` for each underscore name ``path`` imports from another package."""
    package = _package_of(module)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            imported = [(source, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            imported = [tuple(alias.name.rsplit(".", 1)) for alias in node.names if "." in alias.name]
        else:
            continue
        for source, name in imported:
            if source.split(".")[0] != "breccia" or not name.startswith("_"):
                continue
            if _package_of(source) != package:
                found.append((f"{source}.{name}", node.lineno))
    return found


def test_no_module_imports_a_private_name_from_another_package():
    """What another package needs is that package's public surface (a name without an underscore,
    e.g. exported from ``breccia/bridges/__init__.py``); inside a package, private names are shared."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        for imported, line in _private_imports(path, module):
            if (module, imported) not in KNOWN_PRIVATE_IMPORTS:
                found.append(f"{module}:{line} imports {imported}")
    assert found == [], "private names imported from another package:\n" + "\n".join(found)


def test_the_known_private_imports_still_exist():
    """A listed private import that no module makes any more is removed from the list."""
    present = set()
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        present.update((module, imported) for imported, _ in _private_imports(path, module))
    assert set(KNOWN_PRIVATE_IMPORTS) <= present
