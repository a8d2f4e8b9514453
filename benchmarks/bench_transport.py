"""Transport through the DLPack hub: ``from_dlpack(st, dst)`` for every directed pair, by size.

The tensor is an MXFP8 ScaledTensor whose fp8 data is the stated size (its E8M0 scale adds 1/32).
Zero-copy moves are timed in microseconds and should not grow with size. Copying moves (into MLX,
MLX -> JAX, and every pair with ``copy=True``) are shown in GB/s of data + scale bytes, beside three
anchors on the same bytes, each timed right before the move (the machine may be shared):

- ``ready``: ``numpy.copyto`` into a buffer that already exists (the issue's target: ratio >= 0.8);
- ``fresh``: ``numpy.copyto`` into a new ``np.empty``, which, like every copying move, must first
  have the kernel map and zero its pages;
- ``own``: the destination's own host copy (``mx.array(ndarray)``, ``Tensor.clone()``,
  ``jnp.array(x, copy=True)``, ``ndarray.copy()``).

Ratios are anchor time / move time (higher is better; 1.0 = as fast as the anchor).

    python benchmarks/bench_transport.py            # 1 MiB, 64 MiB, 1 GiB
    python benchmarks/bench_transport.py --quick    # 1 MiB and 64 MiB
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from typing import Any

import numpy as np
from _timing import median_seconds

import breccia as bc
from breccia.backends import FRAMEWORKS, get_backend
from breccia.backends.numpy_backend import aligned_copy, aligned_empty
from breccia.bridges import from_dlpack

MiB = 1 << 20


def _sync(st: bc.ScaledTensor) -> None:
    """Wait for a result to exist (JAX dispatches asynchronously, MLX is lazy)."""
    if st.framework == "jax":
        for a in st.arrays:
            if a is not None:
                a.block_until_ready()
    elif st.framework == "mlx":
        import mlx.core as mx

        mx.eval(*(a for a in st.arrays if a is not None))


def _tensor(nbytes: int) -> bc.ScaledTensor:
    """An MXFP8 tensor of ``nbytes`` of data (rows of 4096), written once so its pages exist."""
    cols = 4096
    data = aligned_empty((nbytes // cols, cols), np.uint8)
    data[...] = np.arange(cols, dtype=np.uint8)
    scale = aligned_empty((nbytes // cols, cols // 32), np.uint8)
    scale[...] = 127
    return bc.from_buffer(data, scale, bc.MXFP8BlockScaling())


def _shares(src: bc.ScaledTensor, out: bc.ScaledTensor) -> bool:
    a, b = get_backend(src.framework), get_backend(out.framework)
    pairs = ((src.data, out.data), (src.scale, out.scale))
    return all(a.data_pointer(x) == b.data_pointer(y) for x, y in pairs)


def _own_copy(framework: str, st: bc.ScaledTensor) -> Callable[[], Any]:
    """The destination framework's own host copy of data and scale (its allocator, its memcpy)."""
    source = get_backend(st.framework)
    host = [aligned_copy(source.to_numpy(a)).view(np.uint8) for a in (st.data, st.scale)]
    if framework == "mlx":
        import mlx.core as mx

        def run() -> Any:
            out = [mx.array(a) for a in host]
            mx.eval(*out)
            return out

        return run
    if framework == "torch":
        import torch

        tensors = [torch.from_numpy(a) for a in host]
        return lambda: [t.clone() for t in tensors]
    if framework == "jax":
        import jax.numpy as jnp

        arrays = [jnp.asarray(a) for a in host]
        return lambda: [jnp.array(a, copy=True).block_until_ready() for a in arrays]
    return lambda: [a.copy() for a in host]


def run(sizes: list[int], frameworks: list[str]) -> None:
    print(f"# DLPack transport, MXFP8 data + E8M0 scale; {platform.machine()}, {platform.python_version()}")
    print("zero-copy moves: median microseconds per from_dlpack call")
    print("copying moves: GB/s of data+scale, then anchor time / move time for the anchors")
    print("               ready (numpy.copyto into an existing buffer), fresh (into a new np.empty),")
    print("               own (the destination framework's own host copy)\n")
    header = f"{'pair':<16}{'copy':>5}" + "".join(f"{_label(n):>36}" for n in sizes)
    print(header)
    print("-" * len(header))
    tensors = {n: _tensor(n) for n in sizes}
    sources = {n: {f: from_dlpack(tensors[n], f) for f in frameworks} for n in sizes}
    rows: dict[tuple[str, str, bool], list[str]] = {}
    for n in sizes:
        flat = np.concatenate([a.view(np.uint8).ravel() for a in (tensors[n].data, tensors[n].scale)])
        ready = aligned_copy(flat)
        reps = 3 if n >= 512 * MiB else 7
        anchors = {
            "ready": lambda ready=ready, flat=flat: np.copyto(ready, flat),
            "fresh": lambda flat=flat: np.copyto(np.empty_like(flat), flat),
        }
        for src in frameworks:
            st = sources[n][src]
            for dst in frameworks:
                for copy in (None, True):
                    if src == dst and copy is None:
                        continue  # the same framework returns the tensor itself

                    def move(st: bc.ScaledTensor = st, dst: str = dst, copy: bool | None = copy) -> Any:
                        out = from_dlpack(st, dst, copy=copy)
                        _sync(out)
                        return out

                    probe = move()
                    shared = _shares(st, probe)
                    del probe
                    cell_reps = 200 if shared and n <= 64 * MiB else 20 if shared else reps
                    seconds = median_seconds(move, repeat=cell_reps, warmup=1)
                    if shared:
                        cell = f"{seconds * 1e6:.0f} us zero-copy"
                    else:
                        ratios = [
                            median_seconds(anchor, repeat=reps, warmup=1) / seconds
                            for anchor in (anchors["ready"], anchors["fresh"], _own_copy(dst, st))
                        ]
                        gbps = st.nbytes / seconds / 1e9
                        cell = f"{gbps:.2f} GB/s " + " ".join(f"x{r:.2f}" for r in ratios)
                    rows.setdefault((src, dst, bool(copy)), []).append(cell)
        del flat, ready, anchors
    for (src, dst, copy), cells in rows.items():
        print(f"{src + ' -> ' + dst:<16}{'True' if copy else 'None':>5}" + "".join(f"{c:>36}" for c in cells))
    print("\ncopy cells: GB/s, then x ready, x fresh, x own (anchor time / move time)")


def _label(n: int) -> str:
    return f"{n // MiB} MiB" if n < 1024 * MiB else f"{n // (1024 * MiB)} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MiB and 64 MiB only")
    args = parser.parse_args()
    sizes = [MiB, 64 * MiB] if args.quick else [MiB, 64 * MiB, 1024 * MiB]
    run(sizes, list(FRAMEWORKS))


if __name__ == "__main__":
    main()
