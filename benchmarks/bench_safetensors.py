"""safetensors bridge vs the safetensors package, on the same bytes, in one process.

A set of ScaledTensors (MXFP8, NVFP4 and DeepSeek-style 128x128 FP8 weights of 4096 x 8192, random
bits) of about 2 GB (``--quick``: 64 MB) is saved and loaded by breccia, and the very same raw tensors
(``name.data``, ``name.scale``, ...) by ``safetensors.torch.save_file``/``load_file`` and
``safetensors.numpy.save_file``/``load_file``. Then one tensor is read from a lazily opened file and
compared with a full load.

``load`` returns memory-mapped arrays for breccia (numpy and torch) and for ``safetensors.torch``
alike, so the table also gives ``load + touch``: the load plus reading one byte of every 4 KiB page
of every array (the pages come from the page cache: the files were just written). Every time is the
best of ``--repeat`` runs. Files are written under /tmp and deleted afterwards.

    python benchmarks/bench_safetensors.py [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import load_file as torch_load_file
from safetensors.torch import save_file as torch_save_file

import breccia as bc
from breccia.backends import get_backend
from breccia.bridges import load_safetensors, open_safetensors, save_safetensors

ROWS, COLS = 4096, 8192
RECIPES = [
    (bc.MXFP8BlockScaling(), bc.PerBlockK(32)),
    (bc.NVFP4BlockScaling(), bc.PerBlockK(16)),
    (bc.Float8BlockScaling(block_m=128, convention="deepseek"), bc.PerBlock2D(128, 128)),
]


def random_scaled(recipe, layout, rows: int, cols: int, gen: torch.Generator) -> bc.ScaledTensor:
    """A torch ScaledTensor of random bits with plausible scales (built directly, no cast)."""
    fmt = recipe.element_format
    data_cols = cols // 2 if fmt.packed else cols
    data = torch.randint(0, 256, (rows, data_cols), dtype=torch.uint8, generator=gen)
    grid = bc.layouts.scale_shape(layout, (rows, cols))
    if recipe.scale_format == "F32":
        scale = torch.rand(grid, generator=gen)
    else:  # E8M0 / E4M3 bits in a tame range
        scale = torch.randint(100, 120, grid, dtype=torch.uint8, generator=gen)
    global_scale = torch.tensor(0.5) if recipe.scale_format == "E4M3" else None
    return bc.from_buffer(data, scale, recipe, layout, shape=(rows, cols), global_scale=global_scale)


def make_set(total_bytes: int) -> dict[str, bc.ScaledTensor]:
    gen = torch.Generator().manual_seed(0)
    rows = ROWS if total_bytes >= 2**30 else 1024
    tensors: dict[str, bc.ScaledTensor] = {}
    size = 0
    while size < total_bytes:
        recipe, layout = RECIPES[len(tensors) % len(RECIPES)]
        st = random_scaled(recipe, layout, rows, COLS, gen)
        tensors[f"layers.{len(tensors)}.weight"] = st
        size += st.nbytes
    return tensors


def raw_parts(tensors: dict[str, bc.ScaledTensor]) -> dict[str, torch.Tensor]:
    """The same raw tensors breccia writes (a ScaledTensor's parts under ``name.part``)."""
    out = {}
    for name, st in tensors.items():
        for part, array in zip(("data", "scale", "global_scale", "zero_point"), st.arrays):
            if array is not None:
                out[f"{name}.{part}"] = array
    return out


def numpy_view(st: bc.ScaledTensor) -> bc.ScaledTensor:
    """The same ScaledTensor over numpy views of its torch arrays (no copy)."""
    arrays = [None if a is None else get_backend("torch").to_numpy(a) for a in st.arrays]
    return bc.from_buffer(arrays[0], arrays[1], st.recipe, st.layout, shape=st.shape, global_scale=arrays[2])


def touch(arrays) -> int:
    """Read one byte of every 4 KiB page of every array (faults a memory map in)."""
    total = 0
    for a in arrays:
        if isinstance(a, bc.ScaledTensor):
            total += touch(x for x in a.arrays if x is not None)
            continue
        if isinstance(a, torch.Tensor):
            a = a.reshape(-1).view(torch.uint8).numpy()
        else:
            a = a.reshape(-1).view(np.uint8)
        total += int(a[::4096].sum())
    return total


def timed(fn: Callable[[], object], before: Callable[[], object] | None) -> float:
    if before is not None:
        before()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def compare(
    ours: Callable[[], object], theirs: Callable[[], object], repeat: int, before=None, before_theirs=None
):
    """Best wall times of ``ours`` and ``theirs`` over ``repeat`` interleaved runs (so drifting load
    from other processes hits both alike); ``before*()`` run untimed ahead of each call."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        times[0].append(timed(ours, before))
        times[1].append(timed(theirs, before_theirs))
    return min(times[0]), min(times[1])


def fresh(path: str) -> Callable[[], None]:
    """Before a timed save: delete ``path`` and flush dirty pages to disk, so that every save starts
    from the same state (nobody pays inside the timer for freeing the previous file's page cache or
    for being throttled by the writeback of an earlier save)."""

    def prepare() -> None:
        if os.path.exists(path):
            os.remove(path)
        os.sync()

    return prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~64 MB instead of ~2 GB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    total = 64 * 2**20 if args.quick else 2 * 10**9
    tensors = make_set(total)
    raw = raw_parts(tensors)
    raw_np = {
        k: v.contiguous().view(-1).view(torch.uint8).numpy().reshape(v.shape)
        if v.dtype.itemsize == 1
        else v.numpy()
        for k, v in raw.items()
    }
    nbytes = sum(st.nbytes for st in tensors.values())
    one = next(iter(tensors))
    print(
        f"{len(tensors)} ScaledTensors ({len(raw)} raw tensors), {nbytes / 1e9:.2f} GB; "
        f"{platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )

    workdir = tempfile.mkdtemp(prefix="breccia-bench-", dir="/tmp")
    paths = {k: os.path.join(workdir, f"{k}.safetensors") for k in ("breccia", "torch", "numpy")}
    mine, peer = paths["breccia"], {"torch": paths["torch"], "numpy": paths["numpy"]}
    saved = {"torch": tensors, "numpy": {k: numpy_view(v) for k, v in tensors.items()}}
    peer_save = {
        "torch": lambda: torch_save_file(raw, peer["torch"]),
        "numpy": lambda: np_save_file(raw_np, peer["numpy"]),
    }
    peer_load = {
        "torch": lambda: torch_load_file(peer["torch"]),
        "numpy": lambda: np_load_file(peer["numpy"]),
    }
    r = args.repeat
    rows = []
    try:
        for fw in ("torch", "numpy"):
            name = f"safetensors.{fw}"
            save = compare(
                lambda fw=fw: save_safetensors(saved[fw], mine),
                peer_save[fw],
                r,
                fresh(mine),
                fresh(peer[fw]),
            )
            rows.append(("save", fw, *save, f"{name}.save_file"))
            load = compare(lambda fw=fw: load_safetensors(mine, fw), peer_load[fw], 4 * r)
            rows.append(("load", fw, *load, f"{name}.load_file"))
            load_touch = compare(
                lambda fw=fw: touch(load_safetensors(mine, fw).values()),
                lambda fw=fw: touch(peer_load[fw]().values()),
                r,
            )
            rows.append(("load + touch", fw, *load_touch, f"{name}.load_file"))

        def lazy_one():
            with open_safetensors(mine, "torch") as m:
                return touch([m[one]])

        lazy, full = compare(lazy_one, lambda: touch(load_safetensors(mine, "torch").values()), 4 * r)
    finally:
        for p in paths.values():
            if os.path.exists(p):
                os.remove(p)
        os.rmdir(workdir)

    print("\n| operation | framework | breccia (ms) | peer (ms) | breccia / peer | peer |")
    print("|---|---|---:|---:|---:|---|")
    for op, fw, ours, theirs, name in rows:
        print(f"| {op} | {fw} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} | {ours / theirs:.2f}x | {name} |")
    size = tensors[one].nbytes / 1e6
    print(f"\none tensor ({one}, {size:.1f} MB), lazily opened and touched: {lazy * 1e3:.2f} ms;")
    print(f"full load + touch (torch): {full * 1e3:.1f} ms -> {100 * lazy / full:.2f}% of a full load")


if __name__ == "__main__":
    main()
