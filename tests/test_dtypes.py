"""Every spelling of a dtype x every public function that takes one.

A dtype may be spelled as a name, a numpy or ml_dtypes type or dtype, a JAX scalar type or dtype, a
torch dtype, an MLX dtype, or Python's ``float`` (float64, numpy's meaning). Spellings of a framework
that is not installed are skipped; nothing else is.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
from conftest import to_framework, to_numpy

import breccia as bc
from breccia.backends import canonical_dtype_name, float_dtype_name
from breccia.bridges import from_deepseek_v3, load_deepseek_v3

E4M3 = ml_dtypes.float8_e4m3fn


def _framework(module: str):
    return pytest.importorskip(module)


# (id, factory of the spelling, the dtype it names)
SPELLINGS = [
    ("str-float32", lambda: "float32", "float32"),
    ("str-bfloat16", lambda: "bfloat16", "bfloat16"),
    ("str-f2", lambda: "f2", "float16"),
    ("str-torch.float16", lambda: "torch.float16", "float16"),
    ("str-mlx.core.bfloat16", lambda: "mlx.core.bfloat16", "bfloat16"),
    ("np.float32", lambda: np.float32, "float32"),
    ("np.float16", lambda: np.float16, "float16"),
    ("np.float64", lambda: np.float64, "float64"),
    ("np.dtype-float32", lambda: np.dtype("float32"), "float32"),
    ("np.dtype-float16", lambda: np.dtype(np.float16), "float16"),
    ("ml_dtypes.bfloat16", lambda: ml_dtypes.bfloat16, "bfloat16"),
    ("np.dtype-ml_dtypes.bfloat16", lambda: np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    ("jnp.float32", lambda: _framework("jax.numpy").float32, "float32"),
    ("jnp.bfloat16", lambda: _framework("jax.numpy").bfloat16, "bfloat16"),
    ("jnp.float16", lambda: _framework("jax.numpy").float16, "float16"),
    ("jnp.dtype-bfloat16", lambda: _framework("jax.numpy").dtype("bfloat16"), "bfloat16"),
    ("jnp.dtype-float32", lambda: _framework("jax.numpy").dtype(_framework("jax.numpy").float32), "float32"),
    ("torch.float32", lambda: _framework("torch").float32, "float32"),
    ("torch.bfloat16", lambda: _framework("torch").bfloat16, "bfloat16"),
    ("torch.half", lambda: _framework("torch").half, "float16"),
    ("torch.float64", lambda: _framework("torch").float64, "float64"),
    ("mx.float32", lambda: _framework("mlx.core").float32, "float32"),
    ("mx.bfloat16", lambda: _framework("mlx.core").bfloat16, "bfloat16"),
    ("mx.float16", lambda: _framework("mlx.core").float16, "float16"),
    ("float", lambda: float, "float64"),  # numpy's meaning: np.dtype(float) is float64
]

# spellings that name no float dtype breccia produces, or nothing at all
UNKNOWN = [
    ("np.int8", lambda: np.int8),
    ("int", lambda: int),
    ("str-float8_e4m3fn", lambda: "float8_e4m3fn"),
    ("str-nonsense", lambda: "fp32x"),
    ("np.floating", lambda: np.floating),
    ("number", lambda: 3),
    ("an-array", lambda: np.zeros(2, np.float32)),
    ("a-scalar", lambda: np.float32(1.0)),
    ("torch.int32", lambda: _framework("torch").int32),
    ("torch.float8_e4m3fn", lambda: _framework("torch").float8_e4m3fn),
    ("mx.uint8", lambda: _framework("mlx.core").uint8),
    ("mx.floating", lambda: _framework("mlx.core").floating),
    ("jnp.int8", lambda: _framework("jax.numpy").int8),
]


def _tensor() -> bc.ScaledTensor:
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    return bc.cast(x, bc.MXFP8BlockScaling())


def _name(x) -> str:
    return to_numpy(x).dtype.name


def _deepseek_pair():
    codes = np.random.default_rng(1).integers(0, 0x7E, (3, 130), dtype=np.uint8)
    return codes.view(E4M3), np.full((1, 2), 0.25, np.float32)


@pytest.fixture(scope="module")
def deepseek_file(tmp_path_factory):
    """A one-weight DeepSeek-V3 checkpoint written by safetensors' own torch writer."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    data, scale = _deepseek_pair()
    path = tmp_path_factory.mktemp("dtypes") / "model.safetensors"
    tensors = {
        "w.weight": torch.from_numpy(data.view(np.uint8).copy()).view(torch.float8_e4m3fn),
        "w.weight_scale_inv": torch.from_numpy(scale),
    }
    save_file(tensors, str(path))
    return str(path)


def _from_mlx_quantized(dtype):
    mx = _framework("mlx.core")
    from breccia.bridges import from_mlx_quantized

    w, scales = mx.quantize(mx.array(np.ones((2, 64), np.float32)), group_size=32, bits=8, mode="mxfp8")
    return from_mlx_quantized(w, scales, mode="mxfp8", dtype=dtype).dtype_name


def _mlx_quantized_dequantize(dtype):
    _framework("mlx.core")
    from breccia.bridges import to_mlx_quantized

    q = to_mlx_quantized(bc.cast(to_framework("mlx", np.ones((2, 64), np.float32)), bc.MXFP8BlockScaling()))
    return _name(q.dequantize(dtype))


# every public function that takes a dtype: (id, fn(dtype) -> the dtype name it produced)
FUNCTIONS = [
    ("bc.dequantize", lambda d: _name(bc.dequantize(_tensor(), dtype=d))),
    ("ScaledTensor.dequantize", lambda d: _name(_tensor().dequantize(d))),
    ("bc.from_buffer", lambda d: bc.from_buffer(*_tensor().arrays[:2], _tensor().recipe, dtype=d).dtype_name),
    ("from_deepseek_v3", lambda d: from_deepseek_v3(*_deepseek_pair(), dtype=d).dtype_name),
    ("from_mlx_quantized", _from_mlx_quantized),
    ("MLXQuantized.dequantize", _mlx_quantized_dequantize),
]


@pytest.mark.parametrize(("spelling", "expected"), [pytest.param(f, e, id=i) for i, f, e in SPELLINGS])
def test_every_spelling_is_parsed(spelling, expected):
    assert canonical_dtype_name(spelling()) == expected
    assert float_dtype_name(spelling()) == expected


@pytest.mark.parametrize("function", [pytest.param(f, id=i) for i, f in FUNCTIONS])
@pytest.mark.parametrize(("spelling", "expected"), [pytest.param(f, e, id=i) for i, f, e in SPELLINGS])
def test_every_function_takes_every_spelling(function, spelling, expected):
    assert function(spelling()) == expected


@pytest.mark.parametrize(("spelling", "expected"), [pytest.param(f, e, id=i) for i, f, e in SPELLINGS])
def test_load_deepseek_v3_takes_every_spelling(deepseek_file, spelling, expected):
    model = load_deepseek_v3(deepseek_file, dtype=spelling())
    st = model["w.weight"]
    assert st.dtype_name == expected and _name(bc.dequantize(st)) == expected


@pytest.mark.parametrize("function", [pytest.param(f, id=i) for i, f in FUNCTIONS])
@pytest.mark.parametrize("spelling", [pytest.param(f, id=i) for i, f in UNKNOWN])
def test_unknown_spellings_raise_naming_the_accepted_ones(function, spelling):
    with pytest.raises(bc.DTypeError, match=r"float32, bfloat16, float16, float64.*torch\.dtype"):
        function(spelling())


def test_load_deepseek_v3_refuses_an_unknown_dtype_before_reading(deepseek_file):
    with pytest.raises(bc.DTypeError, match="float32, bfloat16"):
        load_deepseek_v3(deepseek_file, dtype=np.int8)


def test_the_dequantized_values_do_not_depend_on_the_spelling():
    st = _tensor()
    expected = np.asarray(bc.dequantize(st, "bfloat16")).view(np.uint16)
    got = np.asarray(bc.dequantize(st, ml_dtypes.bfloat16)).view(np.uint16)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("framework", ["jax", "torch", "mlx"])
def test_a_framework_spelling_works_on_another_frameworks_tensor(framework):
    """A torch dtype asks for bfloat16 of a numpy tensor (and so on): the name is what counts."""
    module = {"jax": "jax.numpy", "torch": "torch", "mlx": "mlx.core"}[framework]
    spelled = _framework(module).bfloat16
    st = _tensor()
    assert _name(bc.dequantize(st, spelled)) == "bfloat16"
    moved = st.to(framework)
    assert _name(bc.dequantize(moved, np.float16)) == "float16"


def test_parsing_a_dtype_imports_no_framework():
    code = textwrap.dedent(
        """
        import sys
        import ml_dtypes, numpy as np
        from breccia.backends import float_dtype_name
        spellings = (np.float32, "bfloat16", ml_dtypes.bfloat16, float, "torch.float16")
        names = [float_dtype_name(d) for d in spellings]
        assert names == ["float32", "bfloat16", "bfloat16", "float64", "float16"], names
        loaded = sorted(m for m in ("jax", "torch", "mlx") if m in sys.modules)
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_framework_spellings_are_told_by_their_module_not_their_name():
    """An object whose str() looks like a dtype but comes from no framework is refused."""

    class Impostor:
        def __str__(self) -> str:
            return "torch.float32"

    assert canonical_dtype_name(Impostor()) is None
    with pytest.raises(bc.DTypeError):
        bc.dequantize(_tensor(), Impostor())
