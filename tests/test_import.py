"""``import breccia`` imports no framework; a missing framework raises an ImportError naming the extra."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_import_breccia_imports_no_framework():
    result = _run(
        """
        import sys
        import breccia, breccia.bridges, breccia.cli, breccia.recipes, breccia.layouts
        import numpy as np
        st = breccia.cast(np.ones((4, 64), np.float32), breccia.MXFP8BlockScaling())
        breccia.dequantize(st)
        print(sorted(m for m in ("torch", "jax", "jaxlib", "mlx", "torchao", "safetensors",
                                 "transformer_engine") if m in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("framework", "module", "extra"),
    [("torch", "torch", "torch"), ("jax", "jax", "jax"), ("mlx", "mlx", "mlx")],
)
def test_missing_framework_names_the_pip_extra(framework, module, extra):
    result = _run(
        f"""
        import sys
        sys.modules[{module!r}] = None  # as if it were not installed
        import breccia
        from breccia.backends import get_backend
        try:
            get_backend({framework!r})
        except ImportError as exc:
            assert isinstance(exc, breccia.BrecciaError)
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install 'breccia[{extra}]'" in result.stdout


def test_unknown_framework_lists_the_valid_ones():
    import breccia as bc
    from breccia.backends import get_backend

    with pytest.raises(bc.FrameworkError, match="numpy, jax, mlx, torch"):
        get_backend("tensorflow")


def test_the_gpu_scripts_import_what_the_tests_still_define():
    """``scripts/gpu_bits_report.py`` runs only on the CUDA machine but borrows the test suite's
    cases: importing it here catches a name the tests no longer define before a device run does."""
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "scripts", "gpu_bits_report.py")
    spec = importlib.util.spec_from_file_location("gpu_bits_report", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
