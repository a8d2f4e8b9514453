"""Decode-shaped FP8 linears and small casts on CUDA: where the host's time per call is the latency.

    python benchmarks/bench_decode.py --device cuda   # the H200 machine
    python benchmarks/bench_decode.py --device cuda --quick

Rows, DeepSeek's shape (K = 7168 -> N = 18432) at M = 1, 4, 16, 64 tokens, bf16 activations:
  bf16      ``F.linear(x, w)`` on bf16 weights (no breccia)
  scaled_mm ``F.scaled_mm`` block-wise (1x128 activations x 128x128 weights) on breccia's own data and
            scales, the activation cast done by breccia outside the timed call (the GEMM alone)
  breccia   ``bc.linear(bc.cast(x, act), w_st)``: the bf16 activations cast 1x128 (DeepSeek's rule),
            then the FP8 GEMM: what a decode step calls
Each is timed eagerly (calls back to back between CUDA events: when the host is slower than the GPU
this is the host's time per call) and replayed from a CUDA graph (``torch.cuda.graph``) that holds
the same calls: the GPU's time alone. A call that cannot be captured prints why instead of a time.

Host time per call (wall clock over many calls, then one synchronize): ``bc.cast`` of a
``[M, 7168]`` bf16 activation (DeepSeek 1x128) beside DeepSeek-V3's own Triton ``act_quant``
(``tests/data/deepseek_v3_kernel.py``) and ``F.scaled_mm`` alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import breccia as bc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from peers import deepseek_v3_kernel

K, N = 7168, 18432
TOKENS = (1, 4, 16, 64)
CALLS = 50  # calls per sample, eager or replayed


def _events_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds per call of ``CALLS`` calls back to back between two CUDA events."""
    import torch

    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(CALLS):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3 / CALLS)
    return statistics.median(times)


def eager_seconds(fn: Callable[[], Any], reps: int) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    return _events_seconds(fn, reps)


def graphed_seconds(fn: Callable[[], Any], reps: int) -> float | str:
    """Seconds per call replayed from a CUDA graph of ``CALLS`` calls, or why it cannot be captured."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graph asks
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(CALLS):
                fn()
    except Exception as exc:
        torch.cuda.synchronize()
        return f"not capturable: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3 / CALLS)
    return statistics.median(times)


def host_seconds(fn: Callable[[], Any], calls: int = 2000) -> float:
    """Wall seconds per call of ``calls`` calls back to back (the host's dispatch), one final sync."""
    import torch

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls // 5):
            fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / (calls // 5))
    return statistics.median(samples)


def _us(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v * 1e6:.1f}"


def decode_rows(tokens: tuple[int, ...], reps: int) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
    w_st = bc.cast(w, bc.Float8BlockScaling(block_m=128, convention="deepseek"))
    act = bc.Float8BlockScaling(convention="deepseek")
    sb = torch.zeros(w_st.scale.shape[0], -(-w_st.scale.shape[1] // 4) * 4, device="cuda")
    sb[:, : w_st.scale.shape[1]] = w_st.scale
    sb = sb.t()
    kinds = F.ScalingType
    uncapturable: dict[str, str] = {}
    print(f"\n### Decode-shaped linears, {K} -> {N}, bf16 activations (µs per call)\n")
    print("| tokens | bf16 F.linear eager | graphed | F.scaled_mm eager | graphed | cast + bc.linear eager "
          "| graphed | breccia / F.scaled_mm eager |")
    print("|---|---|---|---|---|---|---|---|")
    for m in tokens:
        x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
        xs = bc.cast(x, act)
        sa = torch.empty(xs.scale.shape[::-1], device="cuda").t()  # column-major, as scaled_mm asks
        sa.copy_(xs.scale)

        def bf16(x=x):
            return F.linear(x, w)

        def scaled(xs=xs, sa=sa):
            return F.scaled_mm(
                xs.data, w_st.data.t(), sa, kinds.BlockWise1x128, sb, kinds.BlockWise128x128,
                output_dtype=torch.bfloat16,
            )

        def ours(x=x):
            return bc.linear(bc.cast(x, act), w_st)

        cells: list[float | str] = []
        for name, fn in (("bf16", bf16), ("scaled_mm", scaled), ("breccia", ours)):
            try:
                eager = eager_seconds(fn, reps)
            except RuntimeError as exc:  # e.g. cuBLAS has no block-wise FP8 GEMM for this M
                cells += [f"fails: {str(exc).splitlines()[0][:60]}", "-"]
                continue
            graphed = uncapturable.get(name) or graphed_seconds(fn, reps)
            if isinstance(graphed, str):  # a failed capture is not retried at the next size
                uncapturable[name] = graphed
            cells += [eager, graphed]
        numbers = isinstance(cells[4], float) and isinstance(cells[2], float)
        ratio = f"{cells[4] / cells[2]:.2f}" if numbers else "-"
        print(f"| {m} | " + " | ".join(_us(c) for c in cells) + f" | {ratio} |")


def host_rows(tokens: tuple[int, ...]) -> None:
    import torch

    kernel = deepseek_v3_kernel()
    act = bc.Float8BlockScaling(convention="deepseek")
    print("\n### Host time per call, activation cast [M, 7168] bf16 (µs, wall clock)\n")
    print("| tokens | bc.cast | DeepSeek act_quant (Triton) | bc.cast / act_quant |")
    print("|---|---|---|---|")
    for m in tokens:
        x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
        ours = host_seconds(lambda x=x: bc.cast(x, act))
        theirs = host_seconds(lambda x=x: kernel.act_quant(x, 128, None))
        print(f"| {m} | {_us(ours)} | {_us(theirs)} | {ours / theirs:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (this benchmark has no CPU rows)")
    parser.add_argument("--quick", action="store_true", help="two token counts, fewer samples")
    args = parser.parse_args()
    import torch

    if args.device != "cuda" or not torch.cuda.is_available():
        raise SystemExit("bench_decode.py measures CUDA calls: run it with --device cuda on a CUDA machine")
    tokens = TOKENS[:2] if args.quick else TOKENS
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, breccia {bc.__version__}")
    host_rows(tokens)
    decode_rows(tokens, reps=5 if args.quick else 20)


if __name__ == "__main__":
    main()
