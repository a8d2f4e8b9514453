"""Demo section "torch-to-mlx": a PyTorch MLP written as an MLX model directory and run by MLX.

For each MLX mode, the torch MLP's ``state_dict`` goes through :func:`breccia.mlx.export_mlx_model`
into a temporary directory; an MLX twin (``mlx.nn`` layers with the same names, quantized by
``mlx.nn.quantize``) loads it with ``load_weights`` and runs the same input. Two checks per mode:

* twin: MLX's output equals the torch MLP run on breccia's dequantized weights up to float32
  matmul rounding (``max |diff| <= 1e-4 * max |y|``): MLX reads exactly the weights breccia wrote;
* format: MLX's output is within the mode's error of the float torch MLP (relative L2 below
  ``BOUNDS[mode]``).
"""

from __future__ import annotations

import tempfile
from typing import IO, Any

import numpy as np

BOUNDS = {"mxfp8": 0.08, "affine8": 0.02, "affine4": 0.2, "mxfp4": 0.3, "nvfp4": 0.25}
SIZES = (256, 512, 128)  # in, hidden, out


def torch_mlp(seed: int = 0) -> Any:
    """A small torch MLP ``fc2(relu(fc1(x)))`` with fixed weights."""
    import torch

    torch.manual_seed(seed)

    class MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(SIZES[0], SIZES[1])
            self.fc2 = torch.nn.Linear(SIZES[1], SIZES[2])

        def forward(self, x: Any) -> Any:
            return self.fc2(torch.relu(self.fc1(x)))

    return MLP().eval()


def mlx_twin(config: dict) -> Any:
    """The MLX MLP with the torch MLP's parameter names, quantized as ``config["quantization"]`` says."""
    import mlx.nn as nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(SIZES[0], SIZES[1])
            self.fc2 = nn.Linear(SIZES[1], SIZES[2])

        def __call__(self, x: Any) -> Any:
            return self.fc2(nn.relu(self.fc1(x)))

    model = MLP()
    q = config["quantization"]
    nn.quantize(model, q["group_size"], q["bits"], mode=q["mode"])
    return model


def run_mode(target: str, model: Any, x: Any) -> dict[str, float]:
    """Export ``model`` for ``target`` (``mxfp8``, ``affine4``, ...), load it in MLX, compare outputs."""
    import mlx.core as mx
    import torch

    from ..backends import get_backend
    from ..mlx import export_mlx_model, load_mlx_model, parse_mode
    from ..quantize import dequantize
    from ..tensor import ScaledTensor

    mode, group, bits = parse_mode(target)
    with tempfile.TemporaryDirectory() as path:
        export_mlx_model(model.state_dict(), path, mode, group_size=group, bits=bits)
        loaded, config = load_mlx_model(path)
        twin = mlx_twin(config)
        twin.load_weights(f"{path}/model.safetensors")
        y_mlx = np.array(twin(mx.array(x.numpy())))
    mlx_backend = get_backend("mlx")
    dequantized = {
        name: torch.from_numpy(
            np.array(mlx_backend.to_numpy(dequantize(v, "float32") if isinstance(v, ScaledTensor) else v))
        )
        for name, v in loaded.items()
    }
    with torch.no_grad():
        y_float = model(x).numpy()
        model_q = torch_mlp()
        model_q.load_state_dict(dequantized)
        y_twin = model_q(x).numpy()
    return {
        "twin": float(np.max(np.abs(y_mlx - y_twin)) / np.max(np.abs(y_twin))),
        "format": float(np.linalg.norm(y_mlx - y_float) / np.linalg.norm(y_float)),
    }


def run(out: IO[str]) -> bool:
    import torch

    model = torch_mlp()
    x = torch.randn(16, SIZES[0], generator=torch.Generator().manual_seed(1))
    print(f"torch MLP {SIZES[0]}->{SIZES[1]}->{SIZES[2]} -> breccia.mlx.export_mlx_model -> "
          "mlx.nn twin (nn.quantize + load_weights)", file=out)
    header = f"{'target':<10} {'twin max|diff|':>15} {'vs float rel.err':>17} {'bound':>7}  ok"
    print(header, file=out)
    print("-" * len(header), file=out)
    all_ok = True
    for target, bound in BOUNDS.items():
        r = run_mode(target, model, x)
        ok = r["twin"] <= 1e-4 and r["format"] <= bound
        all_ok &= ok
        print(f"{target:<10} {r['twin']:>15.2e} {r['format']:>17.3e} {bound:>7.2f}  {'yes' if ok else 'NO'}",
              file=out)
    return all_ok
