"""JAX backend: jax.numpy is an array-API namespace; whole casts are compiled with ``jax.jit``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DTypeError, FrameworkError
from ..formats import FLOAT32, ElementFormat
from ._base import DLPACK_CPU, Backend

_NATIVE_FP8 = {"E4M3": jnp.float8_e4m3fn, "E5M2": jnp.float8_e5m2}


def _nvidia(device: Any) -> bool:
    return device.platform == "gpu" and device.device_kind.startswith("NVIDIA")


class JaxBackend(Backend):
    name = "jax"
    extra = "jax"

    def __init__(self) -> None:
        super().__init__()
        from ..tensor import register_jax_pytrees

        register_jax_pytrees()

    @property
    def xp(self) -> Any:
        return jnp

    def is_array(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def dtype_name(self, x: Any) -> str:
        return np.dtype(x.dtype).name

    def dtype(self, name: str) -> Any:
        return jnp.dtype(name)

    def bitcast(self, x: Any, name: str) -> Any:
        return jax.lax.bitcast_convert_type(x, self.dtype(name))

    def pow2(self, e: Any) -> Any:
        """Exact: the float32 whose exponent field is ``e + 127`` (XLA's exp2 is not exact); the
        kernels' ``pow2`` likewise (``docs/numerics.md``, "Exact log2 and powers of two")."""
        bits = (e.astype(jnp.int32) + FLOAT32.bias) << FLOAT32.mantissa_bits
        return jax.lax.bitcast_convert_type(bits, jnp.float32)

    def divide(self, a: Any, b: Any, out: Any = None) -> Any:
        """IEEE float32 ``a / b``, computed in float64 and rounded once to float32.

        XLA does not divide exactly in float32: on CUDA it emits the approximate ``div.full.f32``
        (off by an ulp in about a quarter of results; openxla/xla#37181), and on the CPU it rewrites
        ``a / broadcast(b)`` as ``a * (1 / b)``. A float64 quotient of two float32 values rounded to
        float32 is the correctly rounded float32 quotient (53 >= 2 * 24 + 2 bits, so the double
        rounding is innocuous), and stays so when XLA multiplies by a float64 reciprocal instead.
        XLA also demotes ``f32(f64(a) / f64(b))`` back to a float32 division, so the (small,
        per-block) divisor crosses an optimization barrier that hides where it came from.
        ``out`` is never given (JAX arrays are immutable, and JAX casts do not run in slabs).
        """
        with jax.enable_x64(True):
            divisor = jax.lax.optimization_barrier(jnp.asarray(b, jnp.float64))
            return (jnp.asarray(a, jnp.float64) / divisor).astype(jnp.float32)

    def pack_nibbles(self, codes: Any) -> Any:
        """The pair of nibbles summed as ``low + (high << 4)`` (they do not overlap, so the sum is
        the OR): XLA's CPU loop fuses this reduction form with the encode far better than the
        strided-read form (RESULTS.md, "Measurements behind code choices")."""
        if codes.shape[-1] % 2:
            codes = jnp.concatenate([codes, jnp.zeros((*codes.shape[:-1], 1), jnp.uint8)], axis=-1)
        pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
        return jnp.sum(pairs << jnp.array([0, 4], jnp.uint8), axis=-1, dtype=jnp.uint8)

    has_cond = True

    def cond(
        self, pred: Any, true_fn: Callable[..., Any], false_fn: Callable[..., Any], *operands: Any
    ) -> Any:
        """``jax.lax.cond``: the non-finite branch runs only when there is something non-finite."""
        return jax.lax.cond(pred, true_fn, false_fn, *operands)

    def multiply_add(self, a: Any, b: Any, c: Any) -> Any:
        """``a * b + c`` rounded twice, for integer ``a`` of at most 8 bits.

        XLA contracts ``a * b + c`` into one FMA (one rounding), and no barrier stops it. So ``b`` is
        split into ``b_hi`` (16 significant bits) and ``b_lo = b - b_hi`` (exact): both partial
        products are exact, their sum is the correctly rounded ``a * b`` whether or not it is fused,
        and a fused result cannot be contracted again with ``+ c``.
        """
        bits = jax.lax.bitcast_convert_type(b, jnp.uint32) & jnp.uint32(0xFFFFFF00)
        b_hi = jax.lax.bitcast_convert_type(bits, jnp.float32)
        return (a * b_hi + a * (b - b_hi)) + c

    def abs_max(self, x: Any, axes: tuple[int, ...]) -> Any:
        """``|max(max(x), -min(x))|``: the abs of the small result turns an all-zero block's ``-0.0``
        into the ``+0.0`` that ``max(|x|)`` gives (XLA may drop a ``where(m == 0, 0, m)``).

        XLA's CPU code reduces ``max(|x|)`` over small blocks far slower than the two plain reductions,
        which it fuses into one multi-output loop that reads ``x`` once; on the GPU the two forms run
        alike (RESULTS.md, "Measurements behind code choices").
        """
        high, low = jnp.max(x, axis=axes, keepdims=True), jnp.min(x, axis=axes, keepdims=True)
        return jnp.abs(jnp.maximum(high, -low))

    def encode(self, x: Any, fmt: ElementFormat, *, consume: bool = False) -> Any:
        """XLA's RNE fp8 convert after clamping (proven equal to the shared code)."""
        native = _NATIVE_FP8.get(fmt.name)
        if native is None:
            return super().encode(x, fmt)
        clipped = jnp.clip(x, -fmt.max_value, fmt.max_value)
        return jax.lax.bitcast_convert_type(clipped.astype(native), jnp.uint8)

    def decode(self, codes: Any, fmt: ElementFormat) -> Any:
        """XLA's exact fp8 -> float32 convert. The codes cross an optimization barrier: codes just
        encoded (NVFP4's E4M3 block scales) would otherwise be an f32 -> fp8 -> f32 convert pair,
        which XLA's GPU compiler removes (see :meth:`round_to`), keeping the unrounded value."""
        native = _NATIVE_FP8.get(fmt.name)
        if native is not None:
            codes = jax.lax.optimization_barrier(codes)
            return jax.lax.bitcast_convert_type(codes, native).astype(jnp.float32)
        return super().decode(codes, fmt)

    def round_to(self, x: Any, name: str) -> Any:
        """float32 ``x`` rounded once to ``name``, as float32, with the narrow value behind an
        optimization barrier: XLA's GPU compiler allows excess precision by default
        (``xla_allow_excess_precision``) and its ``SimplifyFPConversions`` pass then deletes an
        f32 -> bf16 -> f32 convert pair, skipping the rounding that torch's arithmetic does."""
        return jax.lax.optimization_barrier(x.astype(self.dtype(name))).astype(jnp.float32)

    def constant(self, key: str, value: np.ndarray, like: Any) -> Any:
        if self.is_traced(like):
            return jnp.asarray(value)
        return super().constant(key, value, like)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_numpy(self, a: np.ndarray, device: Any = None) -> Any:
        return jax.device_put(a, device) if device is not None else jnp.asarray(a)

    def from_host(self, a: np.ndarray, device: Any = None) -> Any:
        """A copy on ``device`` (JAX's default if None); a 64-bit ``a`` only where 64-bit JAX is on,
        rather than the silent narrowing to 32 bits JAX would do."""
        name = a.dtype.name
        if name in ("float64", "int64", "uint64") and not jax.config.jax_enable_x64:
            raise DTypeError(
                f"JAX would silently narrow this {name} tensor to 32 bits; enable 64-bit JAX "
                "(jax.config.update('jax_enable_x64', True)) or load it with framework='numpy'"
            )
        return jax.device_put(a, device)

    def device(self, x: Any) -> Any:
        if self.is_traced(x):
            return None
        devices = x.devices()
        return next(iter(devices)) if len(devices) == 1 else None

    def is_traced(self, x: Any) -> bool:
        return isinstance(x, jax.core.Tracer)

    def is_cuda(self, x: Any) -> bool:
        """A traced ``x`` may run on any device of the process: True if one is an NVIDIA GPU."""
        if self.is_traced(x):
            return any(_nvidia(d) for d in jax.devices())
        device = self.device(x)
        return device is not None and _nvidia(device)

    def by_platform(self, x: Any, cuda: Callable[[], Any], other: Callable[[], Any]) -> Any:
        """Traced, the choice is made when the computation is lowered for its device."""
        if not self.is_cuda(x):
            return other()
        return jax.lax.platform_dependent(cuda=cuda, default=other) if self.is_traced(x) else cuda()

    def compiles(self, x: Any) -> bool:
        return True

    def compile(self, key: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
        return self._cached_compile(key, fn, jax.jit)

    dlpack_alignment = 64

    def dlpack_import(self, producer: Any, copy: bool | None) -> Any:
        """JAX takes a host buffer without a copy only if it is 64-byte aligned (else it copies).

        ``jnp.from_dlpack(..., copy=True)`` shares host memory anyway (jax 0.10.2), so a requested
        copy is made here, after the import.
        """
        if copy:
            return jnp.array(jnp.from_dlpack(producer), copy=True)
        return jnp.from_dlpack(producer, copy=copy)

    def data_pointer(self, x: Any) -> int:
        return int(x.unsafe_buffer_pointer())

    def to_device(self, x: Any, device: tuple[int, int]) -> Any:
        platform = "cpu" if device == DLPACK_CPU else "gpu"
        try:
            devices = jax.devices(platform)
        except RuntimeError as exc:
            raise FrameworkError(f"JAX has no {platform} device here ({exc})") from exc
        index = 0 if device == DLPACK_CPU else device[1]
        if index >= len(devices):
            raise FrameworkError(f"JAX sees {len(devices)} {platform} device(s); there is no index {index}")
        target = devices[index]
        return x if self.device(x) == target else jax.device_put(x, target)
