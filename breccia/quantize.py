"""cast, cast_with_history, dequantize and requantize: the public numerics, and which code runs them.

A cast of ``x`` is checked (recipe, layout, dtype, DelayedScaling's history, ggml's finite-input
rule) and then computed by the first of these that takes it, all giving the same bits:

1. nothing, for a tensor with no elements (empty data and scales);
2. a one-pass CPU kernel of a host array (:func:`breccia.kernels.host_cast`, numba, opt-in);
3. a fused GPU kernel, where :func:`breccia.kernels.fused_cast` returns a launcher for the tensor's
   framework, device, recipe, layout, shape and dtype;
4. the shared code of :mod:`breccia.blockwise`, op by op (eagerly) or through the backend's
   compiler (JAX), where a traced JAX array chooses between 3 and 4 per platform
   (:meth:`Backend.by_platform`).

dequantize chooses likewise between :func:`breccia.kernels.fused_dequantize` and the shared code.
Under ``torch.compile`` both hand a torch tensor, before anything Dynamo cannot trace, to one custom
op that runs this eager path (:mod:`breccia.torch_ops`).
The backend, device and framework of the input are kept; the output's logical dtype is the input's.
:func:`~breccia.buffers.from_buffer` (wrapping existing arrays) is re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

from .backends import Backend, backend_for, float_dtype_name, torch_compiling
from .blockwise import as_float32, cast_arrays, dequantize_arrays
from .buffers import check_recipe, checked_layout, from_buffer
from .errors import DTypeError, NotAnArrayError, RecipeError, ShapeError
from .formats import packed_length
from .kernels import fused_cast, fused_dequantize, host_cast
from .layouts import Layout, scale_shape
from .recipes import DelayedScaling, Recipe
from .scaling import FLT_MAX
from .tensor import AmaxHistory, ScaledTensor

__all__ = ["cast", "cast_with_history", "checked_layout", "dequantize", "from_buffer", "requantize"]


def _cast_arrays(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any, eager: bool):
    """The arrays of a cast: (data, scale, global_scale, zero_point, new_history).

    On an NVIDIA GPU a fused one-pass kernel computes them where one applies (same bits)."""
    shape, dtype_name = tuple(x.shape), backend.dtype_name(x)
    fused = fused_cast(backend.name, backend.is_cuda(x), recipe, layout, shape, dtype_name)

    def shared() -> tuple:
        return cast_arrays(backend, recipe, layout, x, history, eager)

    if fused is None:
        return shared()
    return backend.by_platform(x, lambda: fused(backend, x, history), shared)


_OUTPUTS = ("data", "scale", "global_scale", "zero_point", "history")


def _compiled_cast(backend: Backend, recipe: Recipe, layout: Layout):
    """The cast as one compiled function of (x[, history]) returning only the arrays that exist."""
    present = [
        True,
        True,
        recipe.has_global_scale,
        recipe.zero_point_kind is not None,
        isinstance(recipe, DelayedScaling),
    ]

    def run(x: Any, history: Any = None) -> list[Any]:
        arrays = _cast_arrays(backend, recipe, layout, x, history, eager=False)
        return [a for a, keep in zip(arrays, present) if keep]

    compiled = backend.compile(("cast", recipe, layout), run)

    def call(x: Any, history: Any) -> dict[str, Any]:
        args = (x,) if history is None else (x, history)
        names = [n for n, keep in zip(_OUTPUTS, present) if keep]
        return dict(zip(names, compiled(*args)))

    return call


def _runs_eagerly(backend: Backend, x: Any) -> bool:
    """Whether to run the shared code op by op rather than through the backend's compiler.

    JAX compiles every cast (:meth:`Backend.compiles`); numpy, torch and MLX run op by op, as does
    an array already traced by its framework (a user's ``jax.jit``). Empty tensors always run
    eagerly: there is nothing to compile for.
    """
    if math.prod(x.shape) == 0:
        return True
    return not backend.compiles(x) and not backend.is_traced(x)


def _empty_cast(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any) -> dict[str, Any]:
    """The arrays of a cast of a tensor with no elements: empty data and scales, nothing computed."""
    import numpy as np

    fmt = recipe.element_format
    shape = tuple(x.shape)
    data_shape = (*shape[:-1], packed_length(shape[-1])) if fmt.packed else shape
    grid = scale_shape(layout, shape)
    device = backend.device(x)

    def empty(dims: tuple[int, ...], storage: str) -> Any:
        zeros = backend.from_numpy(np.zeros(dims, np.uint8 if storage != "int8" else np.int8), device=device)
        return zeros if storage in ("uint8", "int8") else backend.bitcast(zeros, storage)

    scale_fmt = recipe.scale_element_format
    if scale_fmt is None:
        scale = backend.from_numpy(np.zeros(grid, np.float32), device=device)
    else:
        scale = empty(grid, backend.storage_dtype(scale_fmt))
    out: dict[str, Any] = {"data": empty(data_shape, backend.storage_dtype(fmt)), "scale": scale}
    if recipe.has_global_scale:
        out["global_scale"] = backend.from_numpy(np.ones((), np.float32), device=device)
    if recipe.zero_point_kind is not None:
        out["zero_point"] = backend.from_numpy(np.zeros(grid, np.float32), device=device)
    if history is not None:
        newest = backend.xp.zeros((1,), dtype=history.dtype)  # an empty tensor's amax is 0
        out["history"] = backend.xp.concat([newest, history[:-1]], axis=0)
    return out


def _run_cast(backend: Backend, recipe: Recipe, layout: Layout, x: Any, history: Any) -> dict[str, Any]:
    """The cast's arrays by name, eagerly or through the backend's compiler."""
    if math.prod(x.shape) == 0:
        return _empty_cast(backend, recipe, layout, x, history)
    on_host = host_cast(backend, recipe, layout, x, history)  # a one-pass CPU kernel, same arrays
    if on_host is not None:
        return dict(zip(_OUTPUTS, on_host))
    if _runs_eagerly(backend, x):
        eager = not backend.is_traced(x)
        return dict(zip(_OUTPUTS, _cast_arrays(backend, recipe, layout, x, history, eager)))
    return _compiled_cast(backend, recipe, layout)(x, history)


def cast(
    x: Any, recipe: Recipe, layout: Layout | None = None, *, history: AmaxHistory | None = None
) -> ScaledTensor:
    """Quantize array ``x`` (numpy, jax, mlx or torch; float32, bfloat16, float16 or float64).

    Returns a :class:`ScaledTensor` in ``x``'s framework and on its device, whose logical dtype is
    ``x``'s. ``layout`` defaults to the recipe's. For :class:`DelayedScaling`, ``history`` is the
    :class:`AmaxHistory` to scale from (a fresh one, scale 1, if omitted); :func:`cast_with_history`
    is the same cast that also returns the next history.
    """
    return _cast(x, recipe, layout, history)[0]


def cast_with_history(
    x: Any, recipe: DelayedScaling, layout: Layout | None = None, *, history: AmaxHistory | None = None
) -> tuple[ScaledTensor, AmaxHistory]:
    """DelayedScaling's step: ``(cast(x, recipe, layout, history=history), next_history)``.

    The scale comes from ``history`` (a fresh one, scale 1, if omitted), and ``next_history`` is
    ``[amax(x), history[0], ..., history[-2]]``, computed in the same pass. Functional: ``history``
    is not changed, so a step runs under ``jax.jit``; pass ``next_history`` to the next step.
    """
    if not isinstance(recipe, DelayedScaling):
        raise RecipeError(
            f"cast_with_history is DelayedScaling's cast; {check_recipe(recipe).name} keeps no amax "
            "history: use cast"
        )
    return _cast(x, recipe, layout, history)  # type: ignore[return-value]


def _cast(
    x: Any, recipe: Recipe, layout: Layout | None, history: AmaxHistory | None
) -> tuple[ScaledTensor, AmaxHistory | None]:
    """The cast of ``x`` and, under DelayedScaling, the next amax history (else None)."""
    if torch_compiling(x):
        from .torch_ops import compiled_cast

        return compiled_cast(x, recipe, layout, history)
    recipe = check_recipe(recipe)
    backend = backend_for(x, "cast input")
    _check_dense(x)
    dtype_name = backend.check_float_input(x)
    if dtype_name == "float64" and not backend.is_traced(x):
        _check_float32_range(backend, x)
    shape = tuple(int(d) for d in x.shape)
    delayed = isinstance(recipe, DelayedScaling)
    if history is not None and not delayed:
        raise RecipeError(f"history= is DelayedScaling's state; {recipe.name} takes none")
    if delayed:
        history = _check_history(backend, recipe, history, x)
    layout = checked_layout(recipe, layout, shape)
    if recipe.finite_input_only and not backend.is_traced(x) and math.prod(shape):
        _check_ggml_input(backend, recipe, x)
    x_work = x if shape else backend.xp.reshape(x, (1,))  # a 0-d tensor is quantized as one element
    out = _run_cast(backend, recipe, layout, x_work, history.amax if delayed else None)
    data, scale = backend.finalize_output(out["data"]), backend.finalize_output(out["scale"])
    if not shape:
        data = backend.xp.reshape(data, ())
        scale = backend.xp.reshape(scale, ())
    st = ScaledTensor(
        data=data,
        scale=scale,
        recipe=recipe,
        layout=layout,
        shape=shape,
        dtype_name=dtype_name,
        framework=backend.name,
        global_scale=out.get("global_scale"),
        zero_point=out.get("zero_point"),
    )
    return st, AmaxHistory(out["history"]) if delayed else None


def _check_dense(x: Any) -> None:
    """Refuse arrays that hold no dense values to quantize: ``np.matrix`` (its operators are not the
    array API's), torch meta tensors (no values) and sparse tensors (COO, CSR, CSC, BSR, BSC)."""
    import numpy as np

    if isinstance(x, np.matrix):
        raise NotAnArrayError("cannot quantize an np.matrix; pass np.asarray(m), a plain ndarray")
    if getattr(x, "is_meta", False):
        raise NotAnArrayError("cannot quantize a meta tensor: it has a shape but no values")
    if str(getattr(x, "layout", "")).startswith("torch.sparse") or getattr(x, "is_sparse", False) is True:
        raise NotAnArrayError("cannot quantize a sparse tensor; densify it first (x.to_dense())")


def _check_ggml_input(backend: Backend, recipe: Recipe, x: Any) -> None:
    """ggml's quantizers (``convention="ggml"``) have no rule for NaN or Inf, and store Q8_0/Q4_0
    scales as fp16: refuse non-finite input, input whose scale ``amax / 127`` (``/ 8``) would
    overflow float16 (ggml would store an infinite scale), and MXFP4 input within 44 floats of
    float32's largest (where ggml's encoder overflows). One reduction over ``x``."""
    from .scaling import GGML_DIVISORS, GGML_MXFP4_LIMIT

    xp = backend.xp
    amax = as_float32(backend, xp.max(xp.abs(x)))
    if not backend.known_true(xp.isfinite(amax)):
        nan = int(xp.sum(xp.astype(xp.isnan(x), xp.int32)))
        inf = int(xp.sum(xp.astype(xp.isinf(x), xp.int32)))
        raise RecipeError(
            f"{recipe.label()} reproduces ggml's quantizer, which has no rule for NaN or Inf, and this "
            f"tensor holds {nan} NaN and {inf} Inf values; replace them (e.g. with nan_to_num) or use "
            "a recipe with breccia's NaN rule"
        )
    if recipe.element_format.kind != "int":
        if backend.known_true(amax >= GGML_MXFP4_LIMIT):
            raise RecipeError(
                f"{recipe.label()}: this tensor's largest magnitude {float(amax):.9g} rounds ggml's "
                f"float32 log2 up to 128, so ggml's exponent byte becomes 253, at which its encoder's "
                f"candidates 4 and 6 overflow float32 (a rule breccia does not copy); values must stay "
                f"below {GGML_MXFP4_LIMIT:.9g}"
            )
    else:
        divisor = abs(GGML_DIVISORS[recipe.element_format.bits])
        d = backend.round_to(backend.divide(xp.reshape(amax, (1,)), divisor), "float16")
        if not backend.known_true(xp.all(xp.isfinite(d))):
            raise RecipeError(
                f"{recipe.label()}: this tensor's largest magnitude {float(amax):.6g} makes ggml's block "
                f"scale amax / {divisor:g} overflow float16 (ggml would store an infinite scale); scale "
                "the tensor down first"
            )


def _check_float32_range(backend: Backend, x: Any) -> None:
    """float64 input is quantized in float32 (every scale rule is float32), so a finite value beyond
    float32's range would become +-Inf there and be saturated as Inf: refuse it instead."""
    xp = backend.xp
    magnitude = xp.abs(x)
    finite = xp.where(magnitude < math.inf, magnitude, 0.0)
    if backend.known_true(xp.any(finite > FLT_MAX)):
        raise DTypeError(
            f"this float64 tensor holds finite values up to {float(xp.max(finite)):.3g}, beyond "
            f"float32's range ({FLT_MAX:.4g}); breccia computes scales in float32. Divide the "
            "tensor by a power of two first (and multiply the dequantized result back)"
        )


def _check_history(backend: Backend, recipe: DelayedScaling, history: Any, like: Any) -> AmaxHistory:
    if history is None:
        return AmaxHistory.zeros(recipe, like)
    if not isinstance(history, AmaxHistory):
        raise RecipeError(f"history must be a bc.AmaxHistory; got {type(history).__name__}")
    if backend_for(history.amax, "history").name != backend.name:
        raise RecipeError("history must be in the same framework as the input; move it with .to()")
    if backend.dtype_name(history.amax) != "float32":
        raise DTypeError(
            f"history amaxes must be float32; got {backend.dtype_name(history.amax)} "
            "(start one with bc.AmaxHistory.zeros(recipe, like=x), or pass the one cast returned)"
        )
    if tuple(history.amax.shape) != (recipe.amax_history_len,):
        raise ShapeError(
            f"history has shape {tuple(history.amax.shape)}; this DelayedScaling keeps "
            f"{recipe.amax_history_len} amaxes (amax_history_len)"
        )
    return history


def _dequantize_arrays(backend: Backend, st: ScaledTensor, dtype_name: str) -> Any:
    """``dequantize(st, dtype_name)``: by a fused kernel on an NVIDIA GPU where one applies (same
    bits), else by the shared code."""
    on_cuda = backend.is_cuda(st.data)
    fused = fused_dequantize(backend.name, on_cuda, st.recipe, st.layout, st.shape, dtype_name)

    def shared() -> Any:
        return dequantize_arrays(backend, st, dtype_name)

    if fused is None:
        return shared()
    return backend.by_platform(st.data, lambda: fused(backend, st.data, st.scale), shared)


def dequantize(st: ScaledTensor, dtype: Any = None) -> Any:
    """The values ``st`` stands for, as an array of ``st``'s framework and device.

    ``dtype`` defaults to ``st.dtype`` (the dtype the tensor was cast from); float32, bfloat16,
    float16 or float64 in any framework's spelling: ``"bfloat16"``, ``np.float32``,
    ``ml_dtypes.bfloat16``, ``jnp.bfloat16``, ``torch.float16``, ``mx.bfloat16``, or Python's
    ``float`` (float64, as in numpy). Anything else raises DTypeError.
    """
    if not isinstance(st, ScaledTensor):
        raise DTypeError(f"dequantize needs a ScaledTensor; got {type(st).__name__}")
    if torch_compiling(st.data):
        from .torch_ops import compiled_dequantize

        return compiled_dequantize(st, st.dtype_name if dtype is None else float_dtype_name(dtype))
    from .backends import get_backend

    backend = get_backend(st.framework)
    dtype_name = st.dtype_name if dtype is None else float_dtype_name(dtype)
    if _runs_eagerly(backend, st.data) or backend.is_traced(st.data):
        return _dequantize_arrays(backend, st, dtype_name)
    present = tuple(a is not None for a in st.arrays)

    def run(*arrays: Any) -> Any:
        given = iter(arrays)
        return _dequantize_arrays(
            backend, st.replace_arrays(*(next(given) if p else None for p in present)), dtype_name
        )

    key = ("dequantize", st.recipe, st.layout, st.shape, dtype_name, present)
    return backend.compile(key, run)(*(a for a in st.arrays if a is not None))


def requantize(
    st: ScaledTensor, recipe: Recipe, layout: Layout | None = None, *, history: AmaxHistory | None = None
) -> ScaledTensor:
    """``st`` under another recipe: dequantized in float32 and cast again, keeping ``st.dtype``.

    The error this adds is that of a fresh cast of the dequantized values; nothing else changes.
    ``history`` is as in :func:`cast` (DelayedScaling's scale comes from it).
    """
    recipe = check_recipe(recipe)
    values = dequantize(st, "float32")
    return cast(values, recipe, layout, history=history).replace(dtype_name=st.dtype_name)
