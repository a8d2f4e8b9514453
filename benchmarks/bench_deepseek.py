"""DeepSeek-V3 FP8: weight dequantization and act_quant, breccia next to plain PyTorch, plus convert's memory.

    python benchmarks/bench_deepseek.py [--quick]         # CPU: dequant, act quant, convert peak memory
    python benchmarks/bench_deepseek.py --device cuda     # GPU: TB/s through jax and torch

The peer is DeepSeek's formula written plainly in PyTorch (its ``inference/kernel.py`` is Triton,
GPU only): ``weight_dequant`` = ``fp32(W).view(M/128, 128, N/128, 128) * S[:, None, :, None]``, and
``act_quant`` = ``s = max(amax, 1e-4) / 448``, ``y = e4m3(x / s)`` per 1x128 group. The weight is
dequantized to bfloat16 (DeepSeek's default dtype) on both sides. "x peer" = peer time / breccia time
(above 1: breccia is faster). Bandwidth counts bytes read and written once: dequant reads fp8 + fp32
scales and writes bf16; act quant reads bf16 and writes fp8 + fp32 scales.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from _timing import GPU_BATCH, median_seconds

import breccia as bc
from breccia.bridges import deepseek_recipe, from_deepseek_v3


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


def row(table: list[tuple], name: str, seconds: float, nbytes: int, peer: float | None) -> None:
    table.append((name, seconds * 1e3, nbytes / seconds / 1e12, None if peer is None else peer / seconds))


def print_table(title: str, table: list[tuple]) -> None:
    print(f"\n{title}")
    print(f"{'implementation':<44} {'ms':>9} {'TB/s':>8} {'x peer':>8}")
    for name, ms, tbs, ratio in table:
        print(f"{name:<44} {ms:>9.3f} {tbs:>8.3f} {'' if ratio is None else f'{ratio:.2f}x':>8}")


# --- CPU -------------------------------------------------------------------------------------------


def cpu_dequant(m: int, n: int) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    data, scale = weight((m, n))
    nbytes = m * n * (1 + 2) + scale.nbytes
    td = torch.from_numpy(data.view(np.uint8)).view(torch.float8_e4m3fn)
    ts = torch.from_numpy(scale)
    peer = median_seconds(lambda: torch_dequant(td, ts))
    table: list[tuple] = []
    row(table, "plain torch (DeepSeek's formula)", peer, nbytes, peer)
    st_t = from_deepseek_v3(td, ts)
    row(table, "breccia torch", median_seconds(lambda: bc.dequantize(st_t, "bfloat16")), nbytes, peer)
    st_n = from_deepseek_v3(data, scale)
    row(table, "breccia numpy", median_seconds(lambda: bc.dequantize(st_n, "bfloat16")), nbytes, peer)
    st_j = from_deepseek_v3(jnp.asarray(data), jnp.asarray(scale))
    jax_time = median_seconds(lambda: bc.dequantize(st_j, "bfloat16"), sync=jax.block_until_ready)
    row(table, "breccia jax (jit)", jax_time, nbytes, peer)
    ours = bc.dequantize(st_t, "bfloat16").view(torch.int16)
    same = torch.equal(ours, torch_dequant(td, ts).view(torch.int16))
    print_table(f"weight dequant {m}x{n} -> bf16, CPU (bits equal to the peer: {same})", table)


def cpu(shapes: list[tuple[int, int]]) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    for m, n in shapes:
        cpu_dequant(m, n)
    m, k = shapes[0][0], shapes[0][1]
    x = torch.randn(m, k).to(torch.bfloat16)
    nbytes = m * k * (2 + 1) + m * (k // 128) * 4
    peer = median_seconds(lambda: torch_act_quant(x))
    table = []
    row(table, "plain torch (DeepSeek's act_quant)", peer, nbytes, peer)
    recipe = deepseek_recipe("activation")
    row(table, "breccia torch", median_seconds(lambda: bc.cast(x, recipe)), nbytes, peer)
    xj = jnp.asarray(x.float().numpy()).astype(jnp.bfloat16)
    jax_time = median_seconds(lambda: bc.cast(xj, recipe), sync=jax.block_until_ready)
    row(table, "breccia jax (jit)", jax_time, nbytes, peer)
    q = bc.cast(x, recipe)
    yq, s = torch_act_quant(x)
    same = torch.equal(q.data.view(torch.uint8), yq.view(torch.uint8)) and torch.equal(q.scale, s)
    print_table(f"act_quant {m}x{k} bf16 -> fp8 1x128, CPU (bits equal to the peer: {same})", table)


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
        out = max(os.path.getsize(os.path.join(tmp, "bf16", f)) for f in files)
        src_size = max(os.path.getsize(os.path.join(src, f)) for f in files)
        print(f"\nconvert --to bf16: {n_shards} shards of {src_size / 2**20:.1f} MiB fp8 -> "
              f"{out / 2**20:.1f} MiB bf16, {per_shard} weights of {rows}x{rows} each, {seconds:.2f} s")
        print(f"peak traced memory {peak / 2**20:.1f} MiB = {peak / out:.2f}x the largest output shard "
              f"(one weight in float32: {rows * rows * 4 / 2**20:.1f} MiB)")


# --- CUDA ------------------------------------------------------------------------------------------


def cuda(shape: tuple[int, int], tokens: int) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    gpu = jax.devices("gpu")[0]
    m, n = shape
    data, scale = weight(shape)
    nbytes = m * n * (1 + 2) + scale.nbytes
    td = torch.from_numpy(data.view(np.uint8)).view(torch.float8_e4m3fn).cuda()
    ts = torch.from_numpy(scale).cuda()
    sync_t = lambda r: torch.cuda.synchronize()  # noqa: E731

    def bench(fn: Callable[[], Any], sync: Callable[[Any], Any] = sync_t) -> float:
        """Device throughput: GPU_BATCH calls back to back per sample (the host's dispatch overlapped)."""
        return median_seconds(fn, sync=sync, repeat=20, batch=GPU_BATCH)

    peer = bench(lambda: torch_dequant(td, ts))
    table: list[tuple] = []
    row(table, "plain torch eager (DeepSeek's formula)", peer, nbytes, peer)
    compiled_peer = torch.compile(torch_dequant)
    row(table, "plain torch.compile", bench(lambda: compiled_peer(td, ts)), nbytes, peer)
    st_t = from_deepseek_v3(td, ts)
    row(table, "breccia torch eager", bench(lambda: bc.dequantize(st_t, "bfloat16")), nbytes, peer)
    compiled = torch.compile(lambda d, s: bc.dequantize(from_deepseek_v3(d, s), "bfloat16"))
    row(table, "breccia torch under torch.compile", bench(lambda: compiled(td, ts)), nbytes, peer)
    st_j = from_deepseek_v3(jax.device_put(data, gpu), jax.device_put(scale, gpu))
    row(table, "breccia jax (jit)",
        bench(lambda: bc.dequantize(st_j, "bfloat16"), jax.block_until_ready), nbytes, peer)
    copy = bench(lambda: td.view(torch.uint8).clone())
    row(table, "device copy of the fp8 bytes (reference)", copy, 2 * m * n, None)
    print_table(f"weight dequant {m}x{n} -> bf16, {torch.cuda.get_device_name()}", table)

    x = torch.randn(tokens, n, device="cuda").to(torch.bfloat16)
    nbytes = tokens * n * (2 + 1) + tokens * (n // 128) * 4
    recipe = deepseek_recipe("activation")
    peer = bench(lambda: torch_act_quant(x))
    table = []
    row(table, "plain torch eager (DeepSeek's act_quant)", peer, nbytes, peer)
    compiled_peer = torch.compile(torch_act_quant)
    row(table, "plain torch.compile", bench(lambda: compiled_peer(x)), nbytes, peer)
    row(table, "breccia torch eager", bench(lambda: bc.cast(x, recipe)), nbytes, peer)
    compiled = torch.compile(lambda x: bc.cast(x, recipe).arrays[:2])
    row(table, "breccia torch under torch.compile", bench(lambda: compiled(x)), nbytes, peer)
    xj = jax.device_put(jnp.asarray(x.float().cpu().numpy()).astype(jnp.bfloat16), gpu)
    row(table, "breccia jax (jit)", bench(lambda: bc.cast(xj, recipe), jax.block_until_ready), nbytes, peer)
    print_table(f"act_quant {tokens}x{n} bf16 -> fp8 1x128, {torch.cuda.get_device_name()}", table)


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
