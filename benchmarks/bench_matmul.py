"""bc.matmul / bc.linear (and, on CUDA, bc.cast) beside the peer calls they should match in speed.

    python benchmarks/bench_matmul.py                 # CPU: every framework, reference path
    python benchmarks/bench_matmul.py --device cuda   # the H100 machine: FP8 GEMMs and GPU casts
    python benchmarks/bench_matmul.py --quick         # small sizes, a smoke test

CUDA rows (8192^3 GEMMs unless --quick; TFLOP/s = 2*M*N*K / time):
  anchors   torch bf16 matmul; jnp.dot on fp8 arrays; torch._scaled_mm tensor-wise / row-wise and
            PyTorch's block-wise scaled_mm (1x128 x 128x128) called directly on breccia's own data and
            scales (FP8 GEMM speed depends on the data: the same bits make the comparison fair)
  breccia   bc.linear on ScaledTensors: Float8CurrentScaling per-tensor and PerRow, DeepSeek
            Float8BlockScaling 1x128 activations x 128x128 weights (torch), and the same through JAX
  casts     bc.cast of a bf16 16384x8192 tensor, TB/s = (bytes read + bytes written) / time, beside a
            device-to-device copy; when TransformerEngine is importable, also beside TE's own quantizer
            for the same recipe, timed in this run (its TB/s counts breccia's bytes for the cast, so
            "x TE" is TE's time / breccia's); without TE those columns are left out
Timing: median over samples of calls back to back (GEMM_BATCH GEMMs, GPU_BATCH casts), CUDA events
(torch) or wall clock with block_until_ready (JAX), after warm-up; the anchors are timed the same way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from _timing import GPU_BATCH, median_seconds

import breccia as bc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from peers import load_transformer_engine_first

#: GEMMs back to back per timing sample: one 8192^3 FP8 GEMM takes ~1 ms, so the fixed host and
#: wait overhead of a sample is ~0.5% of 10 (casts take ~0.15 ms each and use _timing.GPU_BATCH)
GEMM_BATCH = 10

def _row(name: str, ours: float | None, anchor: float | None, anchor_name: str, unit: str) -> list[str]:
    ratio = f"{ours / anchor:.2f}" if ours and anchor else "-"
    cells = ["-" if v is None else f"{v:.3g}" for v in (ours, anchor)]
    return [name, *cells, anchor_name, ratio, unit]


HEAD = ["case", "breccia", "anchor", "anchor is", "ratio", "unit"]


def _print_table(title: str, rows: list[list[str]], head: list[str] = HEAD) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


# --- timers -------------------------------------------------------------------------------------------


def time_torch(fn: Callable[[], Any], batch: int, reps: int = 20) -> float:
    """Median seconds of one ``fn()`` on the current CUDA stream: CUDA events around ``batch`` calls
    back to back (the device's throughput, the host's dispatch overlapped), after warm-up."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(batch):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3 / batch)
    return statistics.median(times)


def _jax_sync(r: Any) -> Any:
    import jax

    return jax.block_until_ready(r)


JAX_TIMING = dict(sync=_jax_sync, repeat=20, warmup=3)


# --- CUDA ---------------------------------------------------------------------------------------------


def _check(y: Any, ref: Any, what: str) -> None:
    """Relative Frobenius error of a timed result against the dequantized operands' float32 product."""
    y64, r64 = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    rel = np.linalg.norm(y64 - r64) / np.linalg.norm(r64)
    if not rel < 1e-2:
        raise SystemExit(f"{what}: relative error {rel:.3g} against float32 math; timing not valid")


def cuda_gemms(n: int) -> list[list[str]]:
    import torch
    import torch.nn.functional as F

    flop = 2.0 * n**3
    tf = lambda s: flop / s / 1e12  # noqa: E731
    torch.manual_seed(0)
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    rows = []
    bf16 = tf(time_torch(lambda: x @ w.t(), GEMM_BATCH))
    rows.append(_row("torch bf16 matmul (no breccia)", bf16, None, "-", "TFLOP/s"))

    current = bc.Float8CurrentScaling()
    deepseek_x = bc.Float8BlockScaling(convention="deepseek")
    deepseek_w = bc.Float8BlockScaling(block_m=128, convention="deepseek")
    bf, kinds = torch.bfloat16, F.ScalingType

    def peer_tensorwise(xs, ws):
        sa, sb = xs.scale.reshape(()), ws.scale.reshape(())
        return lambda: torch._scaled_mm(xs.data, ws.data.t(), scale_a=sa, scale_b=sb, out_dtype=bf)

    def peer_rowwise(xs, ws):
        sa, sb = xs.scale.reshape(-1, 1), ws.scale.reshape(1, -1)
        return lambda: torch._scaled_mm(xs.data, ws.data.t(), scale_a=sa, scale_b=sb, out_dtype=bf)

    def peer_blockwise(xs, ws):
        sa = xs.scale.t().contiguous().t()
        sb = torch.zeros(ws.scale.shape[0], -(-ws.scale.shape[1] // 4) * 4, device="cuda")
        sb[:, : ws.scale.shape[1]] = ws.scale
        sb = sb.t()
        return lambda: F.scaled_mm(
            xs.data, ws.data.t(), sa, kinds.BlockWise1x128, sb, kinds.BlockWise128x128, output_dtype=bf
        )

    cases = [
        (
            "torch FP8 per-tensor",
            current,
            None,
            current,
            None,
            peer_tensorwise,
            "torch._scaled_mm tensor-wise",
        ),
        (
            "torch FP8 row-wise",
            current,
            bc.PerRow(),
            current,
            bc.PerRow(),
            peer_rowwise,
            "torch._scaled_mm row-wise",
        ),
        (
            "torch DeepSeek 1x128 x 128x128",
            deepseek_x,
            None,
            deepseek_w,
            None,
            peer_blockwise,
            "F.scaled_mm block-wise",
        ),
    ]
    anchors = {}
    for name, rx, lx, rw_, lw, peer, anchor_name in cases:
        xs, ws = bc.cast(x, rx, lx), bc.cast(w, rw_, lw)
        ref = (xs.dequantize("float32")[:256] @ ws.dequantize("float32").t()).cpu()
        _check(bc.linear(xs, ws)[:256].float().cpu(), ref, name)
        anchor = anchors[name] = tf(time_torch(peer(xs, ws), GEMM_BATCH))
        ours = tf(time_torch(lambda xs=xs, ws=ws: bc.linear(xs, ws), GEMM_BATCH))
        rows.append(_row(name, ours, anchor, f"{anchor_name}, same data", "TFLOP/s"))
    tw, rw = anchors["torch FP8 per-tensor"], anchors["torch FP8 row-wise"]
    rows.extend(_jax_gemms(n, tw, rw))
    return rows


def _jax_gemms(n: int, torch_tw: float, torch_rw: float) -> list[list[str]]:
    import jax
    import jax.numpy as jnp

    flop = 2.0 * n**3
    tf = lambda s: flop / s / 1e12  # noqa: E731
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (n, n), jnp.bfloat16)
    w = jax.random.normal(kw, (n, n), jnp.bfloat16)
    rows = []
    xq, wq = x.astype(jnp.float8_e4m3fn), w.astype(jnp.float8_e4m3fn)
    dot = jax.jit(lambda a, b: jnp.dot(a, b.T, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    plain = tf(median_seconds(lambda: dot(xq, wq), batch=GEMM_BATCH, **JAX_TIMING))
    rows.append(_row("jnp.dot on fp8 arrays (no breccia)", plain, None, "-", "TFLOP/s"))
    linear = bc.linear  # eager: the fast path compiles its own kernel with the cuBLASLt options
    for name, layout, anchor, anchor_name in [
        ("jax FP8 per-tensor", None, torch_tw, "torch._scaled_mm tensor-wise"),
        ("jax FP8 row-wise", bc.PerRow(), torch_rw, "torch._scaled_mm row-wise"),
    ]:
        xs, ws = bc.cast(x, bc.Float8CurrentScaling(), layout), bc.cast(w, bc.Float8CurrentScaling(), layout)
        ref = np.asarray(xs.dequantize("float32")[:256] @ ws.dequantize("float32").T)
        _check(np.asarray(linear(xs, ws)[:256].astype(jnp.float32)), ref, name)
        ours = tf(median_seconds(lambda xs=xs, ws=ws: linear(xs, ws), batch=GEMM_BATCH, **JAX_TIMING))
        rows.append(_row(name, ours, anchor, anchor_name, "TFLOP/s"))
    return rows


CAST_RECIPES = [
    ("Float8 per-tensor (2 passes)", bc.Float8CurrentScaling()),
    ("Float8 1x128", bc.Float8BlockScaling()),
    ("Float8 128x128", bc.Float8BlockScaling(block_m=128)),
    ("MXFP8", bc.MXFP8BlockScaling()),
    ("MXFP4", bc.MXFP4BlockScaling()),
]


def te_quantizers() -> tuple[str, dict[str, Any]]:
    """("TE <version>", TransformerEngine's own quantizer for each cast recipe it has on this GPU,
    with breccia's recipe's settings: E4M3, row-wise only, no power-of-2 scales), or (why, {}) where
    TransformerEngine cannot be imported. MXFP8 needs sm_100 (on sm_90 TE 2.20 returns unwritten
    buffers); TE has no MXFP4 quantizer."""
    import torch

    try:
        import transformer_engine
        import transformer_engine_torch as tex
        from transformer_engine.pytorch.tensor.float8_blockwise_tensor import Float8BlockQuantizer
        from transformer_engine.pytorch.tensor.float8_tensor import Float8CurrentScalingQuantizer
        from transformer_engine.pytorch.tensor.mxfp8_tensor import MXFP8Quantizer
    except (ImportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}", {}
    e4m3 = tex.DType.kFloat8E4M3
    block = dict(rowwise=True, columnwise=False, force_pow_2_scales=False)
    quantizers: dict[str, Any] = {
        "Float8 per-tensor (2 passes)": Float8CurrentScalingQuantizer(
            e4m3, torch.device("cuda"), rowwise=True, columnwise=False
        ),
        "Float8 1x128": Float8BlockQuantizer(e4m3, block_scaling_dim=1, **block),
        "Float8 128x128": Float8BlockQuantizer(e4m3, block_scaling_dim=2, **block),
    }
    if torch.cuda.get_device_capability() >= (10, 0):
        quantizers["MXFP8"] = MXFP8Quantizer(e4m3, rowwise=True, columnwise=False)
    return f"TE {transformer_engine.__version__}", quantizers


def cuda_casts(shape: tuple[int, int]) -> tuple[list[str], list[list[str]]]:
    """The cast rows and their header: breccia against a device copy, and against TE's quantizer for
    the same recipe where TransformerEngine is importable (else the TE columns are left out and a
    note says why)."""
    import jax
    import jax.numpy as jnp
    import torch

    te_name, te = te_quantizers()
    if not te:
        print(f"\nTransformerEngine not importable ({te_name}): no TE columns in the cast table.")
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    x_bytes = x.numel() * 2
    copy_s = time_torch(lambda: x.clone(), GPU_BATCH)
    copy = 2 * x_bytes / copy_s / 1e12
    te_cells = ["-", "-"] if te else []
    rows = [_row("device copy (torch clone)", copy, None, "-", "TB/s") + te_cells]
    xj = jax.random.normal(jax.random.key(1), shape, jnp.bfloat16)
    cast_j = jax.jit(bc.cast, static_argnums=(1,))
    for name, recipe in CAST_RECIPES:
        nbytes = x_bytes + bc.cast(x, recipe).nbytes
        t = time_torch(lambda recipe=recipe: bc.cast(x, recipe), GPU_BATCH)
        tj = median_seconds(lambda recipe=recipe: cast_j(xj, recipe), batch=GPU_BATCH, **JAX_TIMING)
        if name in te:
            quantize = te[name]
            y = quantize(x).dequantize(dtype=torch.float32)
            rel = float(torch.linalg.norm(y - x.float()) / torch.linalg.norm(x.float()))
            if not rel < 0.1:
                raise SystemExit(f"{te_name} {name}: relative error {rel:.3g}; timing not valid")
            te_tbs = nbytes / time_torch(lambda quantize=quantize: quantize(x), GPU_BATCH) / 1e12
        for framework, seconds in (("torch", t), ("jax", tj)):
            tbs = nbytes / seconds / 1e12
            cells = _row(f"{framework} {name}", tbs, copy, "device copy", "TB/s")
            if te:
                cells += [f"{te_tbs:.3g}", f"{tbs / te_tbs:.2f}"] if name in te else ["-", "-"]
            rows.append(cells)
    head = [*HEAD, te_name, f"x {te_name}"] if te else HEAD
    return head, rows


# --- CPU ----------------------------------------------------------------------------------------------


def cpu_rows(n: int) -> list[list[str]]:
    """bc.linear on the reference path beside the framework's own float32 matmul of the same size."""
    from breccia.backends import get_backend

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n)).astype(np.float32)
    w = rng.standard_normal((n, n)).astype(np.float32)
    flop = 2.0 * n**3
    rows = []
    for framework in ("numpy", "torch", "jax", "mlx"):
        try:
            backend = get_backend(framework)
        except ImportError:
            continue
        fx, fw = backend.from_numpy(x), backend.from_numpy(w)
        sync = (
            _jax_sync
            if framework == "jax"
            else ((lambda r: __import__("mlx.core").core.eval(r)) if framework == "mlx" else None)
        )
        plain = median_seconds(lambda fx=fx, fw=fw: fx @ fw.T, repeat=5, warmup=3, sync=sync)
        recipes = [
            ("MXFP8", bc.MXFP8BlockScaling()),
            ("Float8 128x128", bc.Float8BlockScaling(block_m=128)),
            ("MXFP4", bc.MXFP4BlockScaling()),
        ]
        for name, recipe in recipes:
            xs, ws = bc.cast(fx, recipe), bc.cast(fw, recipe)
            t = median_seconds(lambda xs=xs, ws=ws: bc.linear(xs, ws), repeat=5, warmup=3, sync=sync)
            rows.append(
                _row(
                    f"{framework} {name} linear",
                    flop / t / 1e9,
                    flop / plain / 1e9,
                    f"{framework} f32 matmul",
                    "GFLOP/s",
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        load_transformer_engine_first()  # before JAX loads its cuDNN (TE's library then fails to link)
        name = torch.cuda.get_device_name()
        n = 2048 if args.quick else 8192
        shape = (2048, 1024) if args.quick else (16384, 8192)
        _print_table(f"FP8 GEMM {n}^3 on {name}", cuda_gemms(n))
        head, rows = cuda_casts(shape)
        _print_table(f"GPU casts of a bf16 {shape[0]}x{shape[1]} tensor on {name}", rows, head)
    else:
        n = 256 if args.quick else 1024
        _print_table(f"linear {n}^3 on CPU (reference path: dequantize tile by tile)", cpu_rows(n))


if __name__ == "__main__":
    main()
