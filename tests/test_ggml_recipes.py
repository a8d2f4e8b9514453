"""ggml's own quantizers as breccia recipes (``convention="ggml"``): Q8_0, Q4_0 and GGUF's MXFP4.

The reference is gguf-py's ``gguf.quants.quantize`` (bit-exact with ggml's ``quantize_row_*_ref``):
a float tensor cast with the recipe on every backend, written by ``save_gguf``, must hold exactly its
bytes, on golden inputs chosen where the rules are delicate (ties, the format's edges, amax just
below a power of two, subnormals, signed zeros).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import FRAMEWORKS, to_framework

import breccia as bc
from breccia.bridges import GGML_RECIPES, save_gguf
from breccia.bridges._gguf import _encode
from breccia.errors import RecipeError
from breccia.kernels._cast_plan import cast_plan
from breccia.scaling import GGML_LOG2_BUMPS

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
F32 = np.float32
KINDS = list(GGML_RECIPES)


def _backend(name: str):
    if name != "numpy":
        pytest.importorskip(name if name != "mlx" else "mlx.core")
    return name


def _below(p: float, n: int = 1) -> np.float32:
    """The float32 ``n`` steps below ``p``."""
    a = F32(p) if p < 2.0**128 else np.float32(np.inf)
    for _ in range(n):
        a = np.nextafter(a, F32(0))
    return a


def _golden(kind: str) -> np.ndarray:
    """Rows of 32-blocks where ggml's rules are delicate (each row one case or a mix of them)."""
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal(256) * 10.0 ** rng.uniform(-3, 3, 256 // 32).repeat(32)]
    rows.append(rng.standard_normal(256) * 1e-3)
    special = np.zeros((6, 32), np.float64)
    special[1, 0] = -0.0  # an all-zero block whose first element is -0
    special[2, :] = -0.0
    special[3, :4] = [3.0, -3.0, 1.0, -1.0]  # equal magnitudes, positive first
    special[4, :4] = [-3.0, 3.0, 2.0, -1.0]  # equal magnitudes, negative first
    special[5, :] = rng.standard_normal(32)
    rows.append(special.reshape(-1)[:192].tolist() + [0.0] * 64)
    # ties: scale 1 blocks (Q8_0 amax 127, Q4_0 max -8, MXFP4 amax 6) holding every .5 / E2M1 midpoint
    if kind == "Q8_0":
        ties = np.concatenate([[127.0], np.arange(-15.5, 16.0, 1.0)])[:32]
    elif kind == "Q4_0":
        ties = np.concatenate([[-8.0], np.arange(-7.5, 8.0, 0.5)])[:32]
    else:
        mid = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
        ties = np.array([6.0, -6.0, *mid, *(-m for m in mid), 0.2, -0.2, 7.0, -7.5, 6.9, *([0.0] * 11)])
    rows.append(np.tile(ties, 8))
    # the format's edges: Q8_0's fp16 scale at 65504, Q4_0's at -65504, MXFP4 at float32's max
    edge = {"Q8_0": 127.0 * 65504.0, "Q4_0": 8.0 * 65504.0, "MXFP4": float(_below(2.0**128, 45))}[kind]
    rows.append(np.concatenate([[edge, -edge / 3, edge / 7], rng.standard_normal(253) * edge / 10]))
    # amax just below a power of two, at every bump range of ggml's float32 log2 (and around it)
    powers = sorted({k + 1 for low, high, _ in GGML_LOG2_BUMPS for k in (low, high)} | {-2, 0, 1, 2})
    steps = (1, 2, 5, 12, 23, 45, 89)
    amaxes = [a for p in powers if -125 < p < 128 for n in steps if (a := _below(2.0**p, n)) <= edge]
    blocks = [np.concatenate([[a], rng.uniform(-1, 1, 31) * float(a)]) for a in amaxes]
    while len(blocks) % 8:
        blocks.append(np.zeros(32))
    rows.extend(np.concatenate(blocks[i : i + 8]) for i in range(0, len(blocks), 8))
    # subnormals and tiny blocks: ggml's 1/d overflows (codes 0) and MXFP4's exponent byte wraps
    tiny = [2.0**-149, 2.0**-140, 2.0**-130, 2.0**-127, 2.0**-124, 2.0**-122, 2.0**-121, 2.0**-119]
    rows.append(np.concatenate([np.concatenate([[t], rng.uniform(-1, 1, 31) * t]) for t in tiny]))
    return np.array(rows, dtype=F32)


def _gguf_bytes(kind: str, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # gguf-py's own 1/0 and inf*0 on tiny blocks
        return gguf.quants.quantize(x, T[kind])


def _mxfp4_nan_blocks(x: np.ndarray) -> np.ndarray:
    """Blocks ggml gives E8M0 byte 255 (amax in [2**-126, 2**-125)): breccia's NaN code."""
    amax = np.abs(x.reshape(*x.shape[:-1], -1, 32)).max(-1)
    return (amax >= 2.0**-126) & (amax < 2.0**-125)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("kind", KINDS)
def test_cast_gives_gguf_quants_bytes_on_every_backend(kind, framework):
    _backend(framework)
    x = _golden(kind)
    if framework == "jax":  # XLA's CPU flushes float32 subnormals to zero (see docs/numerics.md)
        tiny = np.any((np.abs(x) < 2.0**-100) & (x != 0), axis=-1)
        assert tiny.sum() in (1, 2, 3)
        x = x[~tiny]
    if kind == "MXFP4":
        assert not _mxfp4_nan_blocks(x).any()
    st = bc.cast(to_framework(framework, x), GGML_RECIPES[kind])
    got_kind, raw = _encode("t", st)
    expected = _gguf_bytes(kind, x)
    assert got_kind == kind
    differ = np.argwhere(raw.reshape(expected.shape) != expected)
    assert differ.size == 0, f"{len(differ)} bytes differ, first at {differ[0].tolist()}"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", KINDS)
def test_half_input_quantizes_as_its_float32_values(kind, dtype):
    import ml_dtypes

    x = np.random.default_rng(3).standard_normal((4, 128)).astype(getattr(ml_dtypes, dtype, dtype))
    _, raw = _encode("t", bc.cast(x, GGML_RECIPES[kind]))
    assert np.array_equal(raw, _gguf_bytes(kind, x.astype(F32)))


@pytest.mark.parametrize("kind", KINDS)
def test_save_gguf_writes_floats_as_ggml_does_and_reads_back(tmp_path, kind):
    rng = np.random.default_rng(5)
    weights = {"w": rng.standard_normal((3, 64)).astype(F32), "norm": rng.standard_normal(64).astype(F32)}
    save_gguf(weights, tmp_path / "a.gguf", types=kind)
    save_gguf(weights, tmp_path / "b.gguf", types={"w": kind})
    for name in ("a.gguf", "b.gguf"):
        tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / name)).tensors}
        assert tensors["w"].tensor_type == T[kind] and tensors["norm"].tensor_type == T.F32
        expected = _gguf_bytes(kind, weights["w"])
        assert np.array_equal(np.asarray(tensors["w"].data).reshape(expected.shape), expected)
        back = bc.open_checkpoint(tmp_path / name)["w"]
        decoded = gguf.quants.dequantize(expected, T[kind]) + F32(0)  # -0 read as +0: see _gguf's doc
        ours = np.asarray(bc.dequantize(back, "float32")) + F32(0)
        assert np.array_equal(ours.view(np.uint32), decoded.view(np.uint32))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused(kind, framework, bad):
    _backend(framework)
    x = np.ones((2, 64), F32)
    x[1, 5] = bad
    with pytest.raises(RecipeError, match="no rule for NaN or Inf"):
        bc.cast(to_framework(framework, x), GGML_RECIPES[kind])


@pytest.mark.parametrize("kind, amax", [("Q8_0", 127.0 * 65520.0), ("Q4_0", 8.0 * 65520.0)])
def test_scale_overflowing_float16_is_refused(kind, amax):
    x = np.ones((1, 32), F32)
    bc.cast(x * F32(amax / 65520.0 * 65504.0), GGML_RECIPES[kind])  # the largest fp16 scale is fine
    x[0, 3] = amax
    with pytest.raises(RecipeError, match="overflow float16"):
        bc.cast(x, GGML_RECIPES[kind])


def test_mxfp4_amax_where_ggml_encoder_overflows_is_refused():
    x = np.ones((1, 32), F32)
    bc.cast(x * _below(2.0**128, 45), GGML_RECIPES["MXFP4"])
    assert _gguf_bytes("MXFP4", x * _below(2.0**128, 44))[0, 0] == 253
    with pytest.raises(RecipeError, match="byte becomes 253"):
        bc.cast(x * _below(2.0**128, 44), GGML_RECIPES["MXFP4"])


def test_mxfp4_byte_255_block_reads_as_nan_and_is_not_written(tmp_path):
    x = np.zeros((1, 32), F32)
    x[0, 0] = 1.5 * 2.0**-126
    assert _gguf_bytes("MXFP4", x)[0, 0] == 255  # ggml's wrapped exponent byte
    st = bc.cast(x, GGML_RECIPES["MXFP4"])
    assert np.asarray(st.scale).view(np.uint8)[0, 0] == 255
    with pytest.raises(RecipeError, match="E8M0 code 255"):
        save_gguf({"t": st}, tmp_path / "t.gguf")


def test_log2_bump_table_is_float32_log2_floor():
    """GGML_LOG2_BUMPS is what correctly rounded float32 log2 gives, and what numpy's float32 log2
    (gguf-py's) gives, on the top 100 floats of every binade (past every bump range)."""
    for k in range(-149, 128):
        n = next((n for low, high, n in GGML_LOG2_BUMPS if low <= k <= high), 0)
        a, low = _below(2.0 ** (k + 1)), F32(2.0**k)
        for _ in range(100):
            if a < low:
                break
            ours = k + 1 if float(a) / 2.0**k >= 2.0 - n * 2.0**-23 else k
            assert math.floor(float(F32(math.log2(float(a))))) == ours, (k, float(a))
            assert int(np.floor(np.log2(np.array([a], F32)))[0]) == ours, (k, float(a))
            a = np.nextafter(a, F32(0))


@pytest.mark.parametrize("kind", KINDS)
def test_fused_kernels_leave_ggml_recipes_to_the_shared_code(kind):
    recipe = GGML_RECIPES[kind]
    assert cast_plan(recipe, recipe.default_layout(), (64, 256), "float32") is None


def test_ggml_recipes_refuse_what_ggml_does_not_do():
    with pytest.raises(RecipeError, match="symmetric"):
        bc.Int4Scaling(group_size=32, symmetric=False, convention="ggml")
    with pytest.raises(RecipeError, match="scale_rounding must be 'floor'"):
        bc.MXFP4BlockScaling(scale_rounding="ceil", convention="ggml")
    with pytest.raises(RecipeError, match="ggml types"):
        save_gguf({"w": np.ones((2, 32), F32)}, "unused.gguf", types="Q4_K")
    with pytest.raises(RecipeError, match="whole 32-element blocks"):
        save_gguf({"w": np.ones((2, 48), F32)}, "unused.gguf", types={"w": "Q8_0"})


def test_ragged_rows_cast_like_zero_padded_blocks():
    """The recipes take rows that are not whole blocks (GGUF does not): the last block is padded
    with zeros, which change no amax and no first-largest element."""
    x = np.random.default_rng(9).standard_normal((3, 70)).astype(F32)
    padded = np.concatenate([x, np.zeros((3, 26), F32)], axis=1)
    for recipe in GGML_RECIPES.values():
        ours = np.asarray(bc.dequantize(bc.cast(x, recipe), "float32"))
        full = np.asarray(bc.dequantize(bc.cast(padded, recipe), "float32"))[:, :70]
        assert np.array_equal(ours.view(np.uint32), full.view(np.uint32))
