"""What DeepSeek's Triton ``act_quant`` computes on this GPU, and what a CPU can reproduce of it.

Run on the CUDA machine from the repository root (``python scripts/probe_deepseek_division.py``); it
loads ``tests/data/deepseek_v3_kernel.py`` and prints, for the record in ``benchmarks/RESULTS.md``:

1. the PTX division instructions of the kernel (Triton compiles ``a / b`` to ``div.full.f32``);
2. ``rcp.approx.f32`` against the correctly rounded reciprocal over every float32 mantissa, and
   whether it scales exactly by powers of two (then it is a function of the mantissa alone);
3. ``div.full.f32(a, b)`` against ``a / b``, ``a * rcp.approx(b)`` and ``a * fl32(1/b)``;
4. the UE8M0 rule's ``ceil(log2 s)`` at every float32 just above a power of two;
5. ``act_quant`` at 4096x7168 and 16384x7168 against the candidate formulas.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from peers import deepseek_v3_kernel

DEVICE = "cuda"


@triton.jit
def _op_kernel(a_ptr, b_ptr, o_ptr, n, OP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    a = tl.load(a_ptr + offs, mask=m, other=1.0)
    b = tl.load(b_ptr + offs, mask=m, other=1.0)
    if OP == 0:
        o = tl.inline_asm_elementwise("div.full.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                      is_pure=True, pack=1)
    elif OP == 1:
        o = tl.inline_asm_elementwise("rcp.approx.f32 $0, $1;", "=r,r", [b], dtype=tl.float32,
                                      is_pure=True, pack=1)
    elif OP == 2:
        o = a / b
    else:
        o = tl.math.ceil(tl.math.log2(b))  # act_quant's ue8m0 exponent
    tl.store(o_ptr + offs, o, mask=m)


def _op(op: int, a: torch.Tensor, b: torch.Tensor):
    o = torch.empty_like(a)
    compiled = _op_kernel[(triton.cdiv(a.numel(), 1024),)](a, b, o, a.numel(), OP=op, BLOCK=1024)
    return o, compiled


def _f32_bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.int32)


def main() -> None:
    kernel = deepseek_v3_kernel()
    print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())
    kernel.act_quant(torch.randn(256, 7168, device=DEVICE, dtype=torch.bfloat16))
    compiled = next(iter(kernel.act_quant_kernel.device_caches[0][0].values()))
    divisions = [line.strip() for line in compiled.asm["ptx"].splitlines() if "div." in line]
    print("act_quant divisions:", divisions)

    mantissas = (np.arange(2**23, dtype=np.uint32) | np.uint32(127 << 23)).view(np.float32)
    m = torch.from_numpy(mantissas).to(DEVICE)
    rcp = _op(1, m, m)[0].cpu().numpy()
    exact = (1.0 / mantissas.astype(np.float64)).astype(np.float32)
    d = rcp.view(np.int32).astype(np.int64) - exact.view(np.int32)
    counts = {int(v): int((d == v).sum()) for v in np.unique(d)}
    print("rcp.approx - fl32(1/m) in ulps over 2**23 mantissas:", counts)
    for k in (-100, -20, 5, 60, 126):
        scaled = _op(1, m, m * 2.0**k)[0].cpu().numpy()
        differ = int((_f32_bits(scaled) != _f32_bits(rcp * 2.0**-k)).sum())
        print(f"  rcp(m * 2**{k}) != rcp(m) * 2**{-k}:", differ)

    g = np.random.default_rng(0)
    a = g.standard_normal(2**24).astype(np.float32) * np.float32(3.0)
    b = (np.abs(g.standard_normal(2**24)).astype(np.float32) + np.float32(1e-3)) * np.float32(0.01)
    at, bt = torch.from_numpy(a).to(DEVICE), torch.from_numpy(b).to(DEVICE)
    full = _f32_bits(_op(0, at, bt)[0].cpu().numpy())
    rb = _op(1, at, bt)[0].cpu().numpy().astype(np.float64)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    for name, c in (("a / b", a64 / b64), ("a * rcp.approx(b)", a64 * rb),
                    ("a * fl32(1/b)", a64 * (1.0 / b64).astype(np.float32))):
        print(f"div.full.f32 != {name}: {int((full != _f32_bits(c)).sum())} of {a.size}")
    print("Triton '/' is div.full.f32:", bool((_f32_bits(_op(2, at, bt)[0].cpu().numpy()) == full).all()))

    for k in (-20, -9, 0, 7):
        s = m * 2.0**k
        e = _op(3, s, s)[0].cpu().numpy()
        low = np.flatnonzero(e == k)
        print(f"ue8m0 ceil(log2 s) = {k} for s = 2**{k} * (1 + i * 2**-23), i in", low[:8].tolist(),
              f"({low.size} values); above {k + 1}:", int((e > k + 1).sum()))

    for rows in (4096, 16384):
        torch.manual_seed(rows)
        x = torch.randn(rows, 7168, device=DEVICE, dtype=torch.bfloat16)
        groups = x.float().view(rows, 56, 128)
        amax = groups.abs().amax(-1).clamp_min(1e-4)
        for fmt in (None, "ue8m0"):
            y, s = kernel.act_quant(x, 128, fmt)
            s_mul = amax * float(np.float32(1 / 448))
            s_div = amax / torch.full_like(amax, 448.0)
            if fmt:
                s_mul, s_div = (torch.exp2(torch.ceil(torch.log2(v))) for v in (s_mul, s_div))
            print(f"act_quant {rows}x7168 {fmt}: scales != amax * fl32(1/448): {int((s != s_mul).sum())},"
                  f" != amax / 448: {int((s != s_div).sum())} of {s.numel()}")
            codes = y.view(torch.uint8).view(rows, 56, 128)
            sk = s.view(rows, 56, 1)

            def e4m3(v):
                return v.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)

            full = _op(0, groups.reshape(-1).contiguous(), sk.expand_as(groups).reshape(-1).contiguous())[0]
            full = full.view_as(groups)
            print(f"   codes != e4m3(x / s): {int((codes != e4m3(groups / sk)).sum())},"
                  f" != e4m3(x * fl32(1/s)): {int((codes != e4m3(groups * (1.0 / sk))).sum())},"
                  f" != e4m3(div.full.f32): {int((codes != e4m3(full)).sum())} of {y.numel()}")


if __name__ == "__main__":
    main()
