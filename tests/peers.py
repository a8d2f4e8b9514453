"""How the test suite, ``scripts/conformance.py`` and ``benchmarks/bench_convert.py`` drive a peer's
own code where the peer has no one-call API for it. Imported lazily: each function imports its peer.
"""

from __future__ import annotations

from typing import Any


def compressed_tensors_qparams(w: Any, args: Any, global_scale: Any = None) -> tuple[Any, Any]:
    """compressed-tensors' ``(scale, zero_point)`` for weight ``w`` under its ``QuantizationArgs``:
    its ``calculate_qparams`` on the minima and maxima its observers reduce (per tensor, per row, per
    group, or per zero-padded 2-D tile, as ``maybe_pad_tensor_for_block_quant`` pads ragged tiles)."""
    from compressed_tensors.quantization.utils import calculate_qparams, maybe_pad_tensor_for_block_quant

    strategy = args.strategy
    if strategy == "tensor":
        lo, hi = w.min(), w.max()
    elif strategy == "channel":
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    elif strategy in ("group", "tensor_group"):
        v = w.unflatten(-1, (w.shape[-1] // args.group_size, args.group_size))
        lo, hi = v.amin(-1), v.amax(-1)
    else:
        bm, bk = args.block_structure
        w = maybe_pad_tensor_for_block_quant(w, (bm, bk))
        v = w.reshape(w.shape[0] // bm, bm, w.shape[1] // bk, bk)
        lo, hi = v.amin((1, 3)), v.amax((1, 3))
    return calculate_qparams(lo, hi, args, global_scale=global_scale)


def deepseek_v3_kernel() -> Any:
    """DeepSeek-V3's ``inference/kernel.py`` (Triton; CUDA only), kept unchanged in ``tests/data``
    (``tests/data/README.md`` names its commit), imported as a module."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "deepseek_v3_kernel.py")
    spec = importlib.util.spec_from_file_location("deepseek_v3_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_transformer_engine_first() -> None:
    """Import TransformerEngine, if installed, before anything imports JAX: JAX's CUDA wheels load their
    own cuDNN, after which TE's core library fails to link against the system's (``undefined symbol
    ... libcudnn_graph.so.9``). The suite's conftest and ``scripts/conformance.py --device cuda`` call it."""
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is not None:
        import transformer_engine.pytorch  # noqa: F401
