"""torchao bridge: breccia's torchao-convention cast beside torchao's own quantizer, and the cost of
moving a quantized weight across the bridge (``from_torchao``/``to_torchao``) beside one torchao
``dequantize()``.

    python benchmarks/bench_torchao.py           # 4096x4096 weight on the CPU
    python benchmarks/bench_torchao.py --quick   # 256x256, to smoke-test the script

Ratios: "x torchao" = torchao time / breccia time (higher is better).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _timing import median_seconds

import breccia as bc
from breccia.bridges import from_torchao, to_torchao

warnings.filterwarnings("ignore")


def cases(x: torch.Tensor) -> list[tuple[str, Callable[[], Any], Callable[[], Any], torch.Tensor]]:
    """(name, torchao quantize, breccia cast, dtype of x) for every reproduced torchao path."""
    from torchao.prototype.mx_formats.mx_tensor import MXTensor
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor
    from torchao.quantization import Float8Tensor, Int8Tensor, IntxUnpackedToInt8Tensor
    from torchao.quantization.granularity import PerRow

    xb = x.to(torch.bfloat16)
    return [
        (
            "Int8Tensor row",
            lambda: Int8Tensor.from_hp(xb, PerRow()),
            lambda: bc.cast(xb, bc.Int8Scaling(convention="torchao")),
            xb,
        ),
        (
            "Intx int4 g32",
            lambda: IntxUnpackedToInt8Tensor.from_hp(xb, (1, 32), torch.int4),
            lambda: bc.cast(xb, bc.Int4Scaling(group_size=32, convention="torchao")),
            xb,
        ),
        (
            "Float8Tensor row",
            lambda: Float8Tensor.from_hp(xb, granularity=PerRow()),
            lambda: bc.cast(xb, bc.Float8CurrentScaling(convention="torchao"), bc.PerRow()),
            xb,
        ),
        (
            "MXTensor fp8",
            lambda: MXTensor.to_mx(xb, torch.float8_e4m3fn, 32),
            lambda: bc.cast(xb, bc.MXFP8BlockScaling()),
            xb,
        ),
        (
            "NVFP4Tensor",
            lambda: NVFP4Tensor.to_nvfp4(xb, per_tensor_scale=xb.float().abs().amax() / 2688.0),
            lambda: bc.cast(xb, bc.NVFP4BlockScaling()),
            xb,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x256, few repeats")
    args = parser.parse_args()
    n, repeats = (256, 3) if args.quick else (4096, 5)
    torch.manual_seed(0)
    x = torch.randn(n, n)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 {n}x{n} weight")
    print(
        "| tensor | torchao quantize | bc.cast | x torchao | from_torchao | to_torchao | torchao dequantize |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, peer, ours, _ in cases(x):
        t_peer, t_ours = (
            1e3 * median_seconds(peer, repeat=repeats, warmup=1),
            1e3 * median_seconds(ours, repeat=repeats, warmup=1),
        )
        t = peer()
        st = from_torchao(t)
        t_from = 1e3 * median_seconds(lambda t=t: from_torchao(t), repeat=repeats, warmup=1)
        t_to = 1e3 * median_seconds(lambda st=st: to_torchao(st), repeat=repeats, warmup=1)
        t_deq = 1e3 * median_seconds(lambda t=t: t.dequantize(), repeat=repeats, warmup=1)
        print(
            f"| {name} | {t_peer:.2f} ms | {t_ours:.2f} ms | {t_peer / t_ours:.2f} | {t_from:.3f} ms "
            f"| {t_to:.3f} ms | {t_deq:.2f} ms |"
        )


if __name__ == "__main__":
    main()
