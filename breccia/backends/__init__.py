"""Framework backends, discovered lazily from an array's type (as einops and array-api-compat do).

``import breccia`` imports no framework: a backend module, and with it its framework, is imported only
when an array of that framework arrives or a framework is named. A framework that is not installed
raises an ImportError naming the pip extra.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ..errors import FrameworkError, NotAnArrayError, missing_dependency
from ._base import Backend, host_order
from ._dtypes import canonical_dtype_name, float_dtype_name

__all__ = [
    "Backend",
    "FRAMEWORKS",
    "backend_for",
    "get_backend",
    "framework_of",
    "canonical_dtype_name",
    "float_dtype_name",
    "host_array",
    "torch_compiling",
]

FRAMEWORKS = ("numpy", "jax", "mlx", "torch")

# framework name -> (backend module, class, the top-level module it needs, pip extra)
_SPECS = {
    "numpy": ("numpy_backend", "NumpyBackend", "numpy", "numpy"),
    "jax": ("jax_backend", "JaxBackend", "jax", "jax"),
    "mlx": ("mlx_backend", "MlxBackend", "mlx.core", "mlx"),
    "torch": ("torch_backend", "TorchBackend", "torch", "torch"),
}
# first component of type(x).__module__ -> framework
_MODULE_ROOTS = {"numpy": "numpy", "jax": "jax", "jaxlib": "jax", "mlx": "mlx", "torch": "torch"}

_BACKENDS: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend of framework ``name``; FrameworkError for an unknown name, ImportError if absent."""
    backend = _BACKENDS.get(name)
    if backend is not None:
        return backend
    if name not in _SPECS:
        raise FrameworkError(
            f"unknown framework {name!r}; valid frameworks are {', '.join(FRAMEWORKS)}"
        )
    module, cls, needs, extra = _SPECS[name]
    try:
        importlib.import_module(needs)
    except ImportError as exc:
        raise missing_dependency(needs, extra, str(exc)) from exc
    backend = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    _BACKENDS[name] = backend
    return backend


def framework_of(x: Any) -> str | None:
    """The framework an array belongs to, from its type's module; None if it is no known array."""
    for klass in type(x).__mro__:
        root = _MODULE_ROOTS.get(klass.__module__.split(".", 1)[0])
        if root is not None and root in _frameworks_loaded():
            return root
    return None


def _frameworks_loaded() -> set[str]:
    loaded = {"numpy"}
    for name, (_, _, needs, _) in _SPECS.items():
        if needs in sys.modules or needs.split(".")[0] in sys.modules:
            loaded.add(name)
    return loaded


def backend_for(x: Any, what: str = "input") -> Backend:
    """The backend of array ``x``; NotAnArrayError if ``x`` is not an array of a supported framework."""
    name = framework_of(x)
    if name is not None:
        backend = get_backend(name)
        if backend.is_array(x):
            return backend
    raise NotAnArrayError(
        f"{what} must be a numpy, jax, mlx or torch array; got {type(x).__module__}.{type(x).__qualname__}"
    )


def torch_compiling(x: Any) -> bool:
    """Whether ``x`` is a torch tensor that torch.compile (Dynamo) is tracing now. Never imports torch
    (a torch tensor exists only once torch is imported), and Dynamo traces the check itself."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor) and torch.compiler.is_compiling()


def host_array(x: Any) -> Any:
    """``x`` (any framework's array) as a C-contiguous little-endian numpy array of the same dtype:
    the bytes a file writer stores (a view where ``x`` already is one, else one copy)."""
    import numpy as np

    if not isinstance(x, np.ndarray):
        x = backend_for(x, "tensor").to_numpy(x)
    return host_order(x)
