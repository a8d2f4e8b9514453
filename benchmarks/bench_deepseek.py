"""DeepSeek-V3 FP8: weight dequant and act_quant beside DeepSeek's formula in torch, plus convert's memory.

    python benchmarks/bench_deepseek.py [--quick]         # CPU: dequant, act quant, convert peak memory
    python benchmarks/bench_deepseek.py --device cuda     # GPU: TB/s through jax and torch

The peers are DeepSeek's formula written plainly in PyTorch (its ``inference/kernel.py`` is Triton,
GPU only), run eagerly and under ``torch.compile`` (inductor: C++ on CPU, Triton on CUDA), both timed
in the same run as breccia: ``weight_dequant`` = ``fp32(W).view(M/128, 128, N/128, 128) *
S[:, None, :, None]``, and ``act_quant`` = ``s = max(amax, 1e-4) / 448``, ``y = e4m3(x / s)`` per 1x128
group. The weight is dequantized to bfloat16 (DeepSeek's default dtype) everywhere. "x eager" and
"x compiled" = that peer's time / this row's time (above 1: this row is faster). Each table's title
counts the elements whose bits differ between breccia's torch output and each peer's (on CUDA,
eager torch computes ``amax / 448.`` as ``amax * fl32(1/448)``: ATen multiplies by the reciprocal of
a Python-scalar divisor). Bandwidth counts bytes read and written once: dequant reads fp8 + fp32
scales and writes bf16; act quant reads bf16 and writes fp8 + fp32 scales. On CPU the rows of a
table are timed in turn, sample by sample (``_timing.interleaved_median_seconds``), so a shared
machine's drift falls on all of them alike.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from _timing import GPU_BATCH, interleaved_median_seconds, median_seconds

import breccia as bc
from breccia.bridges import deepseek_recipe, from_deepseek_v3

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from peers import deepseek_v3_kernel


def weight(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    data, scale = bc.bridges.to_deepseek_v3(bc.cast(w, deepseek_recipe("weight")))
    return data, scale


def torch_dequant(x: Any, s: Any) -> Any:
    """DeepSeek's ``weight_dequant`` formula in plain PyTorch, to bf16: a broadcast over 128x128
    tiles when 128 divides both dims, else the scale expanded with ``repeat_interleave`` (ragged)."""
    import torch

    m, n = x.shape
    if m % 128 or n % 128:
        expanded = s.repeat_interleave(128, 0)[:m].repeat_interleave(128, 1)[:, :n]
        return (x.to(torch.float32) * expanded).to(torch.bfloat16)
    y = x.to(torch.float32).view(m // 128, 128, n // 128, 128) * s[:, None, :, None]
    return y.view(m, n).to(torch.bfloat16)


def torch_act_quant(x: Any) -> tuple[Any, Any]:
    """DeepSeek's ``act_quant`` formula in plain PyTorch."""
    import torch

    g = x.float().view(*x.shape[:-1], x.shape[-1] // 128, 128)
    s = g.abs().amax(-1).clamp(min=1e-4) / 448.0
    return (g / s[..., None]).to(torch.float8_e4m3fn).view(x.shape), s


#: the names of the two peer rows, which open every table
EAGER, COMPILED = "DeepSeek's formula, torch eager", "DeepSeek's formula, torch.compile"
KERNEL = "DeepSeek's kernel.py (Triton)"


def print_table(title: str, rows: list[tuple[str, float, int, bool]], unit: str = "TB/s") -> None:
    """``rows``: (name, seconds, bytes moved, compared with the peers); the first two are the peers.
    ``unit``: "TB/s" or "GB/s"."""
    (_, eager, *_), (_, compiled, *_) = rows[:2]
    per_second = {"TB/s": 1e12, "GB/s": 1e9}[unit]
    print(f"\n{title}")
    print(f"{'implementation':<44} {'ms':>9} {unit:>8} {'x eager':>8} {'x compiled':>11}")
    for name, seconds, nbytes, compared in rows:
        ratios = f"{eager / seconds:>7.2f}x {compiled / seconds:>10.2f}x" if compared else ""
        print(f"{name:<44} {seconds * 1e3:>9.3f} {nbytes / seconds / per_second:>8.2f} {ratios}")


def differing(names: tuple[str, ...], ours: tuple, eager: tuple, compiled: tuple, kernel: tuple = ()) -> str:
    """How many elements of breccia's outputs (torch tensors, one per name) differ in their bits from
    each peer's (``kernel``: DeepSeek's own Triton kernel, on CUDA)."""
    import torch

    def bits(x: Any) -> Any:
        return x.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[x.element_size()])

    def count(a: tuple, b: tuple) -> str:
        diffs = [f"{int((bits(x) != bits(y)).sum())} of {x.numel()} {n}" for n, x, y in zip(names, a, b)]
        return ", ".join(diffs)

    text = f"bits differing from the eager peer: {count(ours, eager)}; the compiled: {count(ours, compiled)}"
    return text + (f"; DeepSeek's kernel: {count(ours, kernel)}" if kernel else "")




# --- CPU -------------------------------------------------------------------------------------------


def cpu_table(impls: dict[str, Callable[[], Any]], nbytes: int) -> list[tuple[str, float, int, bool]]:
    """Median seconds of each implementation, their samples interleaved (compiling in the warm-up)."""
    seconds = interleaved_median_seconds(*impls.values())
    return [(name, t, nbytes, True) for name, t in zip(impls, seconds)]


def cpu_dequant(m: int, n: int) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    data, scale = weight((m, n))
    nbytes = m * n * (1 + 2) + scale.nbytes
    td = torch.from_numpy(data.view(np.uint8)).view(torch.float8_e4m3fn)
    ts = torch.from_numpy(scale)
    compiled = torch.compile(torch_dequant, dynamic=False)
    st_t = from_deepseek_v3(td, ts)
    st_n = from_deepseek_v3(data, scale)
    st_j = from_deepseek_v3(jnp.asarray(data), jnp.asarray(scale))
    table = cpu_table(
        {
            EAGER: lambda: torch_dequant(td, ts),
            COMPILED: lambda: compiled(td, ts),
            "breccia torch": lambda: bc.dequantize(st_t, "bfloat16"),
            "breccia numpy": lambda: bc.dequantize(st_n, "bfloat16"),
            "breccia jax (jit)": lambda: jax.block_until_ready(bc.dequantize(st_j, "bfloat16")),
        },
        nbytes,
    )
    ours = (bc.dequantize(st_t, "bfloat16"),)
    bits = differing(("values",), ours, (torch_dequant(td, ts),), (compiled(td, ts),))
    print_table(f"weight dequant {m}x{n} -> bf16, CPU\n{bits}", table, "GB/s")


def cpu(shapes: list[tuple[int, int]]) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    for m, n in shapes:
        cpu_dequant(m, n)
    m, k = shapes[0][0], shapes[0][1]
    x = torch.randn(m, k).to(torch.bfloat16)
    nbytes = m * k * (2 + 1) + m * (k // 128) * 4
    recipe = deepseek_recipe("activation")
    compiled = torch.compile(torch_act_quant, dynamic=False)
    xj = jnp.asarray(x.float().numpy()).astype(jnp.bfloat16)
    table = cpu_table(
        {
            EAGER: lambda: torch_act_quant(x),
            COMPILED: lambda: compiled(x),
            "breccia torch": lambda: bc.cast(x, recipe),
            "breccia jax (jit)": lambda: jax.block_until_ready(bc.cast(xj, recipe)),
        },
        nbytes,
    )
    q = bc.cast(x, recipe)
    bits = differing(("codes", "scales"), (q.data, q.scale), torch_act_quant(x), compiled(x))
    print_table(f"act_quant {m}x{k} bf16 -> fp8 1x128, CPU\n{bits}", table, "GB/s")


def convert_memory(shard_mb: int, n_shards: int, rows: int) -> None:
    """Peak traced memory of ``breccia convert --to bf16`` against the largest output shard."""
    import json

    from breccia import convert
    from breccia.bridges import save_safetensors

    per_shard = max(1, shard_mb * 2**20 // (rows * rows))  # rows x rows fp8 weights per shard
    with tempfile.TemporaryDirectory(prefix="breccia-bench-") as tmp:
        src = os.path.join(tmp, "fp8")
        os.makedirs(src)
        files = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
        shards: list[dict[str, np.ndarray]] = [{} for _ in files]
        weight_map = {}
        for k in range(n_shards * per_shard):
            name, home = f"layers.{k}.weight", k // per_shard
            data, scale = weight((rows, rows), k)
            shards[home][name] = data
            shards[(home + 1) % n_shards][name + "_scale_inv"] = scale  # as in DeepSeek: another shard
            weight_map[name], weight_map[name + "_scale_inv"] = files[home], files[(home + 1) % n_shards]
        for file, tensors in zip(files, shards):
            save_safetensors(tensors, os.path.join(src, file))
        del shards
        with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
        convert(src, os.path.join(tmp, "warm"), to="bf16")  # imports, caches
        tracemalloc.start()
        start = time.perf_counter()
        convert(src, os.path.join(tmp, "bf16"), to="bf16")
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        outputs = glob.glob(os.path.join(tmp, "bf16", "*.safetensors"))  # convert keeps the shard size
        out = max(os.path.getsize(f) for f in outputs)
        src_size = max(os.path.getsize(os.path.join(src, f)) for f in files)
        print(f"\nconvert --to bf16: {n_shards} shards of {src_size / 2**20:.1f} MiB fp8 -> {len(outputs)} "
              f"of at most {out / 2**20:.1f} MiB bf16, {per_shard} weights of {rows}x{rows} per input shard, "
              f"{seconds:.2f} s")
        print(f"peak traced memory {peak / 2**20:.1f} MiB = {peak / out:.2f}x the largest output shard "
              f"(one weight in float32: {rows * rows * 4 / 2**20:.1f} MiB)")


# --- CUDA ------------------------------------------------------------------------------------------


def cuda(shape: tuple[int, int], tokens: int) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    gpu = jax.devices("gpu")[0]
    kernel = deepseek_v3_kernel()
    m, n = shape
    data, scale = weight(shape)
    nbytes = m * n * (1 + 2) + scale.nbytes
    td = torch.from_numpy(data.view(np.uint8)).view(torch.float8_e4m3fn).cuda()
    ts = torch.from_numpy(scale).cuda()
    sync_t = lambda r: torch.cuda.synchronize()  # noqa: E731

    def bench(fn: Callable[[], Any], sync: Callable[[Any], Any] = sync_t) -> float:
        """Device throughput: GPU_BATCH calls back to back per sample (the host's dispatch overlapped)."""
        return median_seconds(fn, sync=sync, repeat=20, batch=GPU_BATCH)

    compiled_peer = torch.compile(torch_dequant, dynamic=False)
    st_t = from_deepseek_v3(td, ts)
    compiled = torch.compile(lambda d, s: bc.dequantize(from_deepseek_v3(d, s), "bfloat16"))
    st_j = from_deepseek_v3(jax.device_put(data, gpu), jax.device_put(scale, gpu))
    jax_time = bench(lambda: bc.dequantize(st_j, "bfloat16"), jax.block_until_ready)
    copy = bench(lambda: td.view(torch.uint8).clone())
    torch.set_default_dtype(torch.bfloat16)  # weight_dequant writes it; DeepSeek's model sets bf16
    table = [
        (EAGER, bench(lambda: torch_dequant(td, ts)), nbytes, True),
        (COMPILED, bench(lambda: compiled_peer(td, ts)), nbytes, True),
        (KERNEL, bench(lambda: kernel.weight_dequant(td, ts)), nbytes, True),
        ("breccia torch eager", bench(lambda: bc.dequantize(st_t, "bfloat16")), nbytes, True),
        ("breccia torch under torch.compile", bench(lambda: compiled(td, ts)), nbytes, True),
        ("breccia jax (jit)", jax_time, nbytes, True),
        ("device copy of the fp8 bytes (reference)", copy, 2 * m * n, False),
    ]
    ours = (bc.dequantize(st_t, "bfloat16"),)
    theirs = (kernel.weight_dequant(td, ts),)
    torch.set_default_dtype(torch.float32)
    bits = differing(("values",), ours, (torch_dequant(td, ts),), (compiled_peer(td, ts),), theirs)
    print_table(f"weight dequant {m}x{n} -> bf16, {torch.cuda.get_device_name()}\n{bits}", table)

    x = torch.randn(tokens, n, device="cuda").to(torch.bfloat16)
    nbytes = tokens * n * (2 + 1) + tokens * (n // 128) * 4
    recipe = deepseek_recipe("activation")
    compiled_peer = torch.compile(torch_act_quant, dynamic=False)
    compiled = torch.compile(lambda x: bc.cast(x, recipe).arrays[:2])
    xj = jax.device_put(jnp.asarray(x.float().cpu().numpy()).astype(jnp.bfloat16), gpu)
    table = [
        (EAGER, bench(lambda: torch_act_quant(x)), nbytes, True),
        (COMPILED, bench(lambda: compiled_peer(x)), nbytes, True),
        (KERNEL, bench(lambda: kernel.act_quant(x)), nbytes, True),
        ("breccia torch eager", bench(lambda: bc.cast(x, recipe)), nbytes, True),
        ("breccia torch under torch.compile", bench(lambda: compiled(x)), nbytes, True),
        ("breccia jax (jit)", bench(lambda: bc.cast(xj, recipe), jax.block_until_ready), nbytes, True),
    ]
    q = bc.cast(x, recipe)
    bits = differing(("codes", "scales"), (q.data, q.scale), torch_act_quant(x), compiled_peer(x),
                     kernel.act_quant(x))
    print_table(f"act_quant {tokens}x{n} bf16 -> fp8 1x128, {torch.cuda.get_device_name()}\n{bits}", table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    if args.device == "cuda":
        cuda((2048, 7168) if args.quick else (18432, 7168), 1024 if args.quick else 16384)
        return 0
    cpu([(1024, 1024)] if args.quick else [(576, 7168), (2048, 7168), (7168, 2048)])
    convert_memory(4, 2, 512) if args.quick else convert_memory(64, 4, 2048)
    return 0


if __name__ == "__main__":
    sys.exit(main())
