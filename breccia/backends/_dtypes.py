"""One parser for every spelling of a dtype that a caller may hand to breccia.

A dtype argument (``bc.dequantize(st, dtype=...)``, ``from_buffer(dtype=...)``, ...) may be spelled

* a name: ``"float32"``, ``"bfloat16"``, anything ``numpy.dtype`` reads (``"f4"``, ``"half"``), or the
  ``str()`` of a framework dtype (``"torch.float32"``, ``"mlx.core.bfloat16"``);
* a numpy or ml_dtypes scalar type or dtype: ``np.float32``, ``np.dtype("float16")``,
  ``ml_dtypes.bfloat16``, ``np.dtype(ml_dtypes.bfloat16)``;
* a JAX scalar type or dtype: ``jnp.float32``, ``jnp.bfloat16``, ``jnp.dtype("bfloat16")``;
* a ``torch.dtype`` (``torch.float32``) or an ``mlx.core.Dtype`` (``mx.bfloat16``);
* a Python type: ``float`` means float64, as it does in numpy (``np.dtype(float)``), not float32.

The framework an object comes from is told by ``type(obj).__module__`` (as einops and
array-api-compat do), so parsing a dtype never imports a framework that the caller has not imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DTypeError

__all__ = ["canonical_dtype_name", "float_dtype_name", "FLOAT_DTYPES", "SPELLINGS"]

#: The logical (dequantized) dtypes breccia produces.
FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")

#: What an error message lists as the accepted spellings.
SPELLINGS = (
    "a name ('float32'), a numpy or ml_dtypes type or dtype (np.float32, ml_dtypes.bfloat16), "
    "a jax.numpy type or dtype (jnp.bfloat16), a torch.dtype, an mlx.core.Dtype, or Python's float "
    "(= float64, numpy's meaning)"
)

# str() prefixes of framework dtypes: torch.float32, mlx.core.float32 (also accepted as strings)
_PREFIXES = ("torch.", "mlx.core.")


def _root(obj: Any) -> str:
    return (type(obj).__module__ or "").split(".", 1)[0]


def _from_string(spelling: str) -> str | None:
    name = spelling.strip()
    for prefix in _PREFIXES:
        name = name.removeprefix(prefix)
    if name == "bfloat16":  # numpy reads it only once ml_dtypes is imported
        return name
    try:
        return np.dtype(name).name
    except TypeError:
        return None


def canonical_dtype_name(dtype: Any) -> str | None:
    """numpy's name of the dtype ``dtype`` spells (``"float32"``, ``"bfloat16"``, ...), or None.

    None means the object is no dtype spelling at all; a spelling of a dtype breccia cannot produce
    (``np.int8``) gives its name, and the caller decides (see :func:`float_dtype_name`).
    """
    if isinstance(dtype, str):
        return _from_string(dtype)
    if isinstance(dtype, np.dtype):
        return dtype.name
    if isinstance(dtype, type):
        if dtype in (float, int, bool, complex) or issubclass(dtype, np.generic):
            try:  # numpy and ml_dtypes scalar types, Python's builtin types
                return np.dtype(dtype).name
            except TypeError:  # an abstract type: np.floating
                return None
        inner = getattr(dtype, "dtype", None)  # a jax.numpy scalar type is a class with .dtype
        return inner.name if isinstance(inner, np.dtype) else None
    root = _root(dtype)
    if root == "jax":  # jnp.float32 and friends are instances of jax's _ScalarMeta
        inner = getattr(dtype, "dtype", None)
        return inner.name if isinstance(inner, np.dtype) else None
    if root == "torch" and type(dtype).__name__ == "dtype":
        return _from_string(str(dtype))
    if root == "mlx" and type(dtype).__name__ == "Dtype":
        return _from_string(str(dtype))
    return None


def float_dtype_name(dtype: Any, what: str = "dtype") -> str:
    """The name (one of :data:`FLOAT_DTYPES`) of the float dtype that ``dtype`` spells.

    Raises DTypeError naming the dtypes and spellings accepted when ``dtype`` is not a spelling of
    float32, bfloat16, float16 or float64.
    """
    name = canonical_dtype_name(dtype)
    if name not in FLOAT_DTYPES:
        got = f"{dtype!r}" if name is None else f"{dtype!r} ({name})"
        raise DTypeError(
            f"{what} must be one of {', '.join(FLOAT_DTYPES)}, spelled as {SPELLINGS}; got {got}"
        )
    return name
