"""Placing a JAX ScaledTensor on a device mesh so that no scale block is cut.

A block-scaled tensor splits across devices only along block boundaries. When axis ``a`` (length
``n``, blocks of ``b`` along it) is split into ``p`` equal parts, each device holds ``n / p``
elements, and ``(n / p) / b`` whole blocks, exactly when ``n`` divides by ``p * b``. The scale's axis
``a`` has ``ceil(n / b) = p * (n / p) / b`` entries, so the same ``PartitionSpec`` splits it into the
same ``p`` parts and part ``k`` holds exactly the scales of part ``k``'s elements: every device
dequantizes its own elements from its own scales, ``W[i, j] = decode(Wq[i, j]) * S[i // b, j // b]``
with local indices, and no block crosses a device boundary.

A ragged axis (``n`` not a multiple of ``b``, such as DeepSeek-V3's 576-row ``kv_a_proj_with_mqa``:
4.5 tiles of 128) never splits into equal whole-block parts; it stays unsplit (replicated), as
DeepSeek's own inference code keeps that projection on every device.

This is not DeepSeek-specific: any layout's block shape (:meth:`Layout.block_shape`) is checked the
same way. It sits with the numerics (it needs only ScaledTensor and the layouts) and imports JAX
inside its functions, so ``import breccia.sharding`` imports no framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import DTypeError, ShapeError
from .tensor import ScaledTensor

__all__ = ["check_block_split", "shard_jax"]


def _axis_names(entry: Any) -> tuple[str, ...]:
    """The mesh axis names of one ``PartitionSpec`` entry (``None``, a name, or a tuple of names)."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def check_block_split(
    shape: Sequence[int],
    block: Sequence[int],
    spec: Sequence[Any],
    mesh_shape: Mapping[str, int],
    what: str = "the tensor",
) -> None:
    """Raise ShapeError unless ``spec`` splits a tensor of ``shape`` into whole blocks of ``block``.

    ``spec`` is a ``PartitionSpec`` (or a sequence of its entries) over the mesh whose axis sizes are
    ``mesh_shape`` (``mesh.shape``). Axis ``a`` split over mesh axes of sizes ``p1, p2, ...`` needs
    ``shape[a] % (p1 * p2 * ... * block[a]) == 0`` (see the module docstring); an axis name the mesh
    does not have, or more entries than ``shape`` has axes, is a ShapeError too. ``what`` names the
    tensor in the message.
    """
    shape, block = tuple(shape), tuple(block)
    if len(spec) > len(shape):
        raise ShapeError(
            f"{what}: PartitionSpec {tuple(spec)} has {len(spec)} entries but the tensor has "
            f"{len(shape)} axes (shape {shape})"
        )
    for axis, entry in enumerate(spec):
        parts = 1
        for name in _axis_names(entry):
            if name not in mesh_shape:
                raise ShapeError(
                    f"{what}: PartitionSpec {tuple(spec)} names mesh axis {name!r}, but the mesh has "
                    f"axes {tuple(mesh_shape)}"
                )
            parts *= mesh_shape[name]
        size = shape[axis]
        if parts > 1 and size % (parts * block[axis]):
            raise ShapeError(
                f"{what}: axis {axis} (length {size}, blocks of {block[axis]}, so "
                f"{-(-size // block[axis])} blocks) does not split into {parts} whole-block shards; "
                f"each device needs a multiple of {block[axis]} elements. Leave that axis unsplit "
                "(None in the PartitionSpec) or use a mesh axis that divides its block count"
            )


def shard_jax(st: ScaledTensor, mesh: Any, spec: Any) -> ScaledTensor:
    """Place a JAX ScaledTensor on ``mesh``, data and scale split by the same ``PartitionSpec``.

    Every sharded axis must split into whole blocks (:func:`check_block_split`), so each device
    holds its elements and exactly their scales and dequantizes locally. A spec that would cut a
    block raises ShapeError. The result is an ordinary ScaledTensor (a JAX pytree), usable inside
    ``jax.jit`` where XLA's SPMD partitioner handles the rest. A global scale (NVFP4's second level)
    is replicated.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    if not isinstance(st, ScaledTensor) or not isinstance(st.data, jax.Array):
        raise DTypeError("shard_jax needs a JAX ScaledTensor; move one with st.to('jax')")
    spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec(*spec)
    check_block_split(st.shape, st.layout.block_shape(st.shape), spec, mesh.shape)
    sharding = NamedSharding(mesh, spec)
    data, scale, global_scale, zero_point = st.arrays
    place = lambda a, s: None if a is None else jax.device_put(a, s)  # noqa: E731
    return st.replace_arrays(
        place(data, sharding),
        place(scale, sharding),
        place(global_scale, NamedSharding(mesh, PartitionSpec())),
        place(zero_point, sharding),
    )
