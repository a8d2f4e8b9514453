"""ScaledTensor: quantized data, its scales, and what they mean, in one framework's arrays.

``x ~ decode(data) * scale [* global_scale]`` blockwise under ``layout`` (see ``blockwise.py`` for the
zero-point forms). The arrays belong to one framework (``framework``) and device; ``shape`` and
``dtype`` are the logical (dequantized) shape and dtype.

A ScaledTensor is immutable: its fields are set once, by keyword, and :meth:`ScaledTensor.replace`
makes a new one with some of them changed. It slices by rows (``st[a:b]``, the first axis, whole
block rows; see :meth:`ScaledTensor.__getitem__`) and walks its rows in runs that fit a memory
budget (:meth:`ScaledTensor.row_blocks`).

The constructor checks the invariants once, with breccia's errors: ``recipe`` a Recipe and
``layout`` a Layout that recipe takes and that fits ``shape`` (non-negative ints); ``dtype_name`` a
float dtype; ``framework`` a known one and every array one of its arrays; ``data`` of the recipe's
storage dtype and of ``shape`` (the last axis halved, rounded up, for packed 4-bit data); ``scale``
of the layout's grid shape (``ceil(dim / block)`` per axis; ``()`` for a 0-d tensor) and the scale
format's dtype; ``global_scale`` (one value) present exactly when the recipe has one (NVFP4);
``zero_point`` (grid-shaped, float) exactly when the recipe is asymmetric.

A ScaledTensor is a JAX pytree (its arrays are the leaves, everything else static), so it passes
through ``jax.jit``, ``jax.vmap`` and sharding. Unflattening does not check: JAX rebuilds pytrees
with placeholder leaves (``None``, ``object()``, in_axes integers) and, around ``vmap``, with leaves
that carry a batch axis the static shape does not. Registration happens as soon as JAX is in use by
breccia, or at import if JAX was imported first, so ``import breccia`` never imports JAX.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any

from .backends import backend_for, get_backend
from .errors import DTypeError, FrameworkError, FrozenError, LayoutError, RecipeError, ShapeError
from .layouts import Layout, PerTensor
from .recipes import DelayedScaling, Recipe

__all__ = ["AmaxHistory", "ScaledTensor", "register_jax_pytrees", "row_ranges"]

#: a ScaledTensor's fields, in the constructor's order
_FIELDS = (
    "data", "scale", "recipe", "layout", "shape", "dtype_name", "framework", "global_scale", "zero_point"
)


def _nbytes(a: Any) -> int:
    if a is None:
        return 0
    nbytes = getattr(a, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return int(math.prod(a.shape)) * int(a.dtype.itemsize)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{n} B"


class ScaledTensor:
    """A block-scaled low-precision tensor (see the module docstring for the meaning of fields).

    Immutable: assigning or deleting a field raises :class:`~breccia.errors.FrozenError`; use
    :meth:`replace`.
    """

    __slots__ = _FIELDS

    def __init__(
        self,
        *,
        data: Any,
        scale: Any,
        recipe: Recipe,
        layout: Layout,
        shape: tuple[int, ...],
        dtype_name: str,
        framework: str,
        global_scale: Any = None,
        zero_point: Any = None,
    ) -> None:
        shape, specs = _described(recipe, layout, shape, dtype_name, framework)
        _check_arrays(recipe, layout, shape, framework, specs, data, scale, global_scale, zero_point)
        self._set(data, scale, recipe, layout, shape, dtype_name, framework, global_scale, zero_point)

    def _set(
        self, data, scale, recipe, layout, shape, dtype_name, framework, global_scale, zero_point
    ) -> None:
        _SET_DATA(self, data)
        _SET_SCALE(self, scale)
        _SET_RECIPE(self, recipe)
        _SET_LAYOUT(self, layout)
        _SET_SHAPE(self, tuple(shape))
        _SET_DTYPE_NAME(self, dtype_name)
        _SET_FRAMEWORK(self, framework)
        _SET_GLOBAL_SCALE(self, global_scale)
        _SET_ZERO_POINT(self, zero_point)

    @classmethod
    def _unchecked(cls, data, scale, recipe, layout, shape, dtype_name, framework, global_scale, zero_point):
        """A ScaledTensor built without the constructor's checks: JAX's unflatten (its leaves may be
        placeholders, or carry a vmap batch axis) and the cast that torch.compile traces (its arrays
        are those the eager cast checked; see :mod:`breccia.torch_ops`).

        The fields are written by ``object.__setattr__``, which passes over ``__setattr__`` (it refuses
        every assignment) and which Dynamo traces, unlike a slot's own ``__set__`` (``_set``, faster)."""
        st = object.__new__(cls)
        values = (data, scale, recipe, layout, tuple(shape), dtype_name, framework, global_scale, zero_point)
        for name, value in zip(_FIELDS, values):
            object.__setattr__(st, name, value)
        return st

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenError(
            f"a ScaledTensor is immutable: cannot set {name!r}; st.replace({name}=...) makes a new one"
        )

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"a ScaledTensor is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple:
        """Pickle and copy by the fields (rebuilt through the constructor's checks)."""
        return _rebuilt, (self._fields(),)

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def replace(self, **changes: Any) -> ScaledTensor:
        """A new ScaledTensor with the fields named in ``changes`` replaced (any of ``data``,
        ``scale``, ``global_scale``, ``zero_point``, ``recipe``, ``layout``, ``shape``,
        ``dtype_name``, ``framework``) and the rest shared; checked as the constructor checks."""
        return ScaledTensor(**{**self._fields(), **changes})

    # --- derived properties -------------------------------------------------------------------------
    @property
    def dtype(self) -> Any:
        """The logical dtype as the framework's dtype object (e.g. ``torch.bfloat16``)."""
        from .backends import get_backend

        return get_backend(self.framework).dtype(self.dtype_name)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data, scales, global scale and zero points together."""
        return sum(_nbytes(a) for a in (self.data, self.scale, self.global_scale, self.zero_point))

    @property
    def device(self) -> Any:
        """The device of the data array (``None`` for numpy and MLX's unified memory)."""
        from .backends import get_backend

        return get_backend(self.framework).device(self.data)

    @property
    def arrays(self) -> tuple[Any, Any, Any, Any]:
        """``(data, scale, global_scale, zero_point)``; absent ones are None."""
        return self.data, self.scale, self.global_scale, self.zero_point

    def replace_arrays(
        self,
        data: Any,
        scale: Any,
        global_scale: Any = None,
        zero_point: Any = None,
        *,
        framework: str | None = None,
    ) -> ScaledTensor:
        """The same tensor description over other arrays (of ``framework``, by default this one's)."""
        return self.replace(
            data=data,
            scale=scale,
            global_scale=global_scale,
            zero_point=zero_point,
            framework=framework or self.framework,
        )

    # --- rows ---------------------------------------------------------------------------------------
    @property
    def block_rows(self) -> int:
        """The alignment of a row slice: ``st[a:b]`` needs ``a`` and ``b`` to be multiples of it (or
        the end of the first axis). It is the layout's block height along the first axis (1 for
        ``PerRow`` and for ``PerBlockK`` of 2-D and higher tensors, ``m`` for ``PerBlock2D(m, k)``),
        1 under ``PerTensor`` (its one scale covers any rows), made even for 1-D 4-bit data (two
        codes a byte)."""
        height = self._block_height()
        if len(self.shape) == 1 and self.recipe.element_format.packed:
            return math.lcm(height, 2)
        return height

    def _block_height(self) -> int:
        """Rows per block along the first axis; 1 under ``PerTensor``."""
        if not self.shape:
            raise ShapeError("a 0-d ScaledTensor has no rows")
        return 1 if isinstance(self.layout, PerTensor) else self.layout.block_shape(self.shape)[0]

    def __getitem__(self, index: slice) -> ScaledTensor:
        """Rows ``index`` (``st[a:b]``: a slice of the first axis with step 1) as a ScaledTensor over
        slices of this one's arrays (views where the framework's slicing makes views).

        Data rows are sliced directly (4-bit codes are packed along the last axis, so a row keeps its
        bytes; a 1-D tensor's bytes are ``a // 2 : ceil(b / 2)``). Scale and zero-point rows are
        the block rows that cover the slice: ``a // h : a // h + ceil((b - a) / h)`` for the block
        height ``h``; a per-tensor scale and NVFP4's global scale pass through unchanged. ``a`` and
        ``b`` must be multiples of :attr:`block_rows` (or the end of the axis), so no block is cut.
        Negative and omitted bounds mean what they mean for a list; an empty slice is ``st[0:0]``.
        """
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise ShapeError(
                "a ScaledTensor slices only its first axis, with step 1 (st[a:b]); "
                f"got st[{_index_text(index)}]"
            )
        if not self.shape:
            raise ShapeError("a 0-d ScaledTensor has no rows to slice")
        start, stop, _ = index.indices(self.shape[0])
        return self._rows(start, stop) if stop > start else self._rows(0, 0)

    __iter__ = None  # rows are sliced, not iterated (``st[0]`` is not a row)

    def _rows(self, start: int, stop: int) -> ScaledTensor:
        n = self.shape[0]
        if start == 0 and stop == n:
            return self
        height, unit = self._block_height(), self.block_rows
        if any(edge % unit and edge != n for edge in (start, stop)):
            why = "the block height" if unit == height else f"blocks of {height} in whole bytes"
            raise LayoutError(
                f"rows {start}:{stop} of a ScaledTensor of shape {self.shape} under {self.layout!r} cut "
                f"a block: a row slice begins and ends on a multiple of {unit} rows ({why}) or at the "
                f"end ({n})"
            )
        data_rows = slice(start, stop)
        if len(self.shape) == 1 and self.recipe.element_format.packed:
            data_rows = slice(start // 2, (stop + 1) // 2)
        if isinstance(self.layout, PerTensor):
            grid = slice(0, 1 if stop > start else 0)
        else:
            first = start // height
            grid = slice(first, first - (-(stop - start) // height))
        return self.replace(
            data=self.data[data_rows],
            scale=self.scale[grid],
            zero_point=None if self.zero_point is None else self.zero_point[grid],
            shape=(stop - start, *self.shape[1:]),
        )

    def row_blocks(self, max_elements: int) -> Iterator[tuple[int, int, ScaledTensor]]:
        """``(start, stop, self[start:stop])`` for runs of rows that cover the first axis in order:
        each a multiple of :attr:`block_rows` rows (the last one ends the axis), as many as fit in
        ``max_elements`` logical elements, and at least one block row even where that is more (see
        :func:`row_ranges`). A tensor that fits is one run, ``(0, n, self)``."""
        unit = self.block_rows
        return ((a, b, self._rows(a, b)) for a, b in row_ranges(self.shape, unit, max_elements))

    # --- operations ---------------------------------------------------------------------------------
    def dequantize(self, dtype: Any = None) -> Any:
        """Same as :func:`breccia.dequantize`."""
        from .quantize import dequantize

        return dequantize(self, dtype)

    def to(self, framework: str, device: Any = None, *, copy: bool | None = None) -> ScaledTensor:
        """This tensor in another framework (and/or on another device), bits unchanged.

        Moves go through the DLPack hub (:func:`breccia.bridges.from_dlpack`): zero-copy wherever the
        two frameworks can share memory.
        """
        from .bridges import from_dlpack

        return from_dlpack(self, framework, device=device, copy=copy)

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.shape) or "scalar"
        dense = self.size * {"float64": 8, "float32": 4}.get(self.dtype_name, 2)
        ratio = ""
        if self.nbytes and dense:
            ratio = f", {dense / self.nbytes:.2f}x smaller than {self.dtype_name}"
        return (
            f"ScaledTensor({self.recipe!r}, {self.layout!r}, shape={shape}, "
            f"dtype={self.dtype_name}, framework={self.framework}, "
            f"bytes={_human(self.nbytes)}{ratio})"
        )


# the slots' own setters: __setattr__ refuses every assignment, so ``_set`` writes through these
_SET_DATA = ScaledTensor.data.__set__
_SET_SCALE = ScaledTensor.scale.__set__
_SET_RECIPE = ScaledTensor.recipe.__set__
_SET_LAYOUT = ScaledTensor.layout.__set__
_SET_SHAPE = ScaledTensor.shape.__set__
_SET_DTYPE_NAME = ScaledTensor.dtype_name.__set__
_SET_FRAMEWORK = ScaledTensor.framework.__set__
_SET_GLOBAL_SCALE = ScaledTensor.global_scale.__set__
_SET_ZERO_POINT = ScaledTensor.zero_point.__set__


def _index_text(index: Any) -> str:
    """``index`` as it was written between brackets (``1:8:2``, ``0``, ``..., 0``)."""
    if isinstance(index, slice):
        bounds = (index.start, index.stop) if index.step is None else (index.start, index.stop, index.step)
        return ":".join("" if v is None else repr(v) for v in bounds)
    if isinstance(index, tuple):
        return ", ".join(_index_text(i) for i in index)
    return "..." if index is Ellipsis else repr(index)


def _rebuilt(fields: dict[str, Any]) -> ScaledTensor:
    return ScaledTensor(**fields)


def row_ranges(shape: tuple[int, ...], block_rows: int, max_elements: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` runs that cover the first axis of a tensor of ``shape``, in order: ``r``
    rows each (the last run the rest), ``r`` the largest multiple of ``block_rows`` whose rows hold
    at most ``max_elements`` elements, or ``block_rows`` if even one block row holds more. A tensor
    with no rows is one empty run ``(0, 0)``."""
    if not shape:
        raise ShapeError("a 0-d tensor has no rows")
    if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
        raise ShapeError(f"max_elements must be a positive int; got {max_elements!r}")
    rows = shape[0]
    step = max(block_rows, max_elements // max(1, math.prod(shape[1:])) // block_rows * block_rows)
    if rows == 0:
        return iter([(0, 0)])
    return ((start, min(start + step, rows)) for start in range(0, rows, step))


#: (id(recipe), id(layout), shape, dtype_name, framework) -> (recipe, layout, specs): descriptions
#: already checked. Keyed by identity because hashing a frozen dataclass rehashes every field, which
#: cost more than the checks themselves; the entry holds the objects, so their ids stay theirs.
_DESCRIBED: dict[tuple, tuple] = {}
_DESCRIBED_LIMIT = 4096


def _described(recipe: Any, layout: Any, shape: Any, dtype_name: Any, framework: Any) -> tuple[tuple, tuple]:
    """``(shape as a tuple of ints, the arrays' expectations)`` of a description, checked once: casts
    make ScaledTensors of a few descriptions over and over, so a repeat costs one dict lookup."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise ShapeError(f"a ScaledTensor's shape must be a tuple of ints; got {shape!r}") from None
    key = (id(recipe), id(layout), shape, dtype_name, framework)
    hit = _DESCRIBED.get(key)
    if hit is not None and hit[0] is recipe and hit[1] is layout:
        return shape, hit[2]
    _checked_description(recipe, layout, shape, dtype_name, framework)
    specs = _expected_arrays(recipe, layout, shape, framework)
    if len(_DESCRIBED) >= _DESCRIBED_LIMIT:
        _DESCRIBED.clear()
    _DESCRIBED[key] = (recipe, layout, specs)
    return shape, specs


def _checked_description(recipe: Any, layout: Any, shape: tuple, dtype_name: Any, framework: Any) -> None:
    from .backends import FRAMEWORKS
    from .backends._base import FLOAT_DTYPES

    if not isinstance(recipe, Recipe):
        raise RecipeError(f"a ScaledTensor's recipe must be a breccia recipe; got {type(recipe).__name__}")
    if not isinstance(layout, Layout):
        raise LayoutError(f"a ScaledTensor's layout must be a breccia layout; got {type(layout).__name__}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ShapeError(f"a ScaledTensor's shape must hold non-negative ints; got {shape!r}")
    recipe.check_layout(layout)
    layout.check_shape(shape)
    if dtype_name not in FLOAT_DTYPES:
        raise DTypeError(
            f"a ScaledTensor's logical dtype must be one of {', '.join(FLOAT_DTYPES)}; got {dtype_name!r}"
        )
    if framework not in FRAMEWORKS:
        raise FrameworkError(f"unknown framework {framework!r}; valid frameworks are {', '.join(FRAMEWORKS)}")


#: array type -> its framework (``framework_of`` depends on the type alone)
_FRAMEWORK_OF_TYPE: dict[type, str | None] = {}


def _framework(a: Any) -> str | None:
    kind = type(a)
    if kind not in _FRAMEWORK_OF_TYPE:
        from .backends import framework_of

        _FRAMEWORK_OF_TYPE[kind] = framework_of(a)
    return _FRAMEWORK_OF_TYPE[kind]


def _expected_arrays(recipe: Recipe, layout: Layout, shape: tuple[int, ...], framework: str) -> tuple:
    """``(what, dims, dtypes)`` of data and scale (``dims`` None: one value), then of the global scale
    and zero point where the recipe has them (the other two must be None)."""
    from .formats import packed_length
    from .layouts import scale_shape

    backend = get_backend(framework)
    fmt = recipe.element_format
    floats = ("float32", "bfloat16", "float16")

    def codes(fmt: Any) -> tuple[str, ...]:  # the storage dtype, or the uint8 bits of an 8-bit float
        native = backend.storage_dtype(fmt)
        return (native, "uint8") if fmt.kind != "int" and native != "uint8" else (native,)

    stored = (*shape[:-1], packed_length(shape[-1])) if fmt.packed and shape else shape
    grid = scale_shape(layout, shape) if shape else ()
    scale_fmt = recipe.scale_element_format
    return (
        ("data", stored, codes(fmt)),
        ("scale", grid, floats if scale_fmt is None else codes(scale_fmt)),
        ("global_scale", None, floats) if recipe.has_global_scale else None,
        ("zero_point", grid, floats) if recipe.zero_point_kind is not None else None,
    )


def _check_arrays(
    recipe: Recipe, layout: Layout, shape: tuple[int, ...], framework: str, specs: tuple,
    data: Any, scale: Any, global_scale: Any, zero_point: Any,
) -> None:
    """The arrays' half of the invariants (see the module docstring): ``specs`` (what each array must
    be, worked out once per description) against a few shapes and dtype names."""
    data_spec, scale_spec, global_spec, zero_spec = specs
    _check_array(recipe, layout, shape, framework, data, data_spec)
    _check_array(recipe, layout, shape, framework, scale, scale_spec)
    if global_spec is not None:
        if global_scale is None:
            raise RecipeError(f"{recipe.name} needs its global_scale (the fp32 second-level scale)")
        _check_array(recipe, layout, shape, framework, global_scale, global_spec)
    elif global_scale is not None:
        raise RecipeError(f"{recipe.name} has no global scale; only NVFP4BlockScaling does")
    if zero_spec is not None:
        if zero_point is None:
            raise RecipeError(f"{recipe!r} is asymmetric and needs its zero_point (shape {zero_spec[1]})")
        _check_array(recipe, layout, shape, framework, zero_point, zero_spec)
    elif zero_point is not None:
        raise RecipeError(f"{recipe!r} is symmetric and has no zero_point")


def _check_array(
    recipe: Recipe, layout: Layout, shape: tuple[int, ...], framework: str, a: Any, spec: tuple
) -> None:
    what, dims, dtypes = spec
    if _framework(a) != framework:
        raise FrameworkError(
            f"the ScaledTensor is a {framework} tensor but its {what} is not a {framework} array"
        )
    got = a.shape  # a tuple, or torch.Size (a tuple subclass): compared without a copy
    if dims is None:  # one value, any shape
        if math.prod(got) != 1:
            raise ShapeError(f"{recipe.name}'s {what} is one value; got shape {tuple(got)}")
    elif got != dims and tuple(got) != dims:
        raise ShapeError(
            f"{recipe.name} {what} of a tensor of shape {shape} under {layout!r} must have shape "
            f"{dims}; got {tuple(int(d) for d in got)}"
        )
    name = _dtype_name(framework, a)
    if name not in dtypes:
        raise DTypeError(f"{recipe.name} {what} must be {' or '.join(dtypes)}; got {name}")


#: (framework, array dtype) -> the backend's name for it (every backend names a dtype by itself alone)
_DTYPE_NAMES: dict[tuple, str] = {}


def _dtype_name(framework: str, a: Any) -> str:
    key = (framework, a.dtype)
    name = _DTYPE_NAMES.get(key)
    if name is None:
        name = _DTYPE_NAMES[key] = get_backend(framework).dtype_name(a)
    return name


class AmaxHistory:
    """DelayedScaling's state: the last ``amax_history_len`` amaxes, newest first.

    Functional: ``cast`` takes one and returns the next, so it works under ``jax.jit`` (it is a JAX
    pytree). ``amax`` is a float32 array of the input's framework.
    """

    __slots__ = ("amax",)

    def __init__(self, amax: Any) -> None:
        self.amax = amax

    @classmethod
    def zeros(cls, recipe: DelayedScaling, like: Any) -> AmaxHistory:
        """An empty history (scale 1 on the first cast) in the framework and device of ``like``."""
        import numpy as np

        backend = backend_for(like)
        zeros = np.zeros((recipe.amax_history_len,), dtype=np.float32)
        return cls(backend.from_numpy(zeros, device=backend.device(like)))

    def __repr__(self) -> str:
        return f"AmaxHistory(len={self.amax.shape[0]})"


_JAX_REGISTERED = False


def register_jax_pytrees() -> None:
    """Register ScaledTensor and AmaxHistory as JAX pytrees (idempotent; imports JAX)."""
    global _JAX_REGISTERED
    if _JAX_REGISTERED:
        return
    import jax

    def flatten(st: ScaledTensor):
        aux = (st.recipe, st.layout, st.shape, st.dtype_name, st.framework)
        return st.arrays, aux

    def unflatten(aux, children) -> ScaledTensor:
        recipe, layout, shape, dtype_name, framework = aux
        data, scale, global_scale, zero_point = children
        return ScaledTensor._unchecked(
            data, scale, recipe, layout, shape, dtype_name, framework, global_scale, zero_point
        )

    jax.tree_util.register_pytree_node(ScaledTensor, flatten, unflatten)
    jax.tree_util.register_pytree_node(
        AmaxHistory, lambda h: ((h.amax,), None), lambda _, children: AmaxHistory(children[0])
    )
    _JAX_REGISTERED = True


if sys.modules.get("jax") is not None:  # JAX came first: register now
    register_jax_pytrees()
