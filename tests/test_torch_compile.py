"""bc.cast, bc.dequantize, bc.matmul and bc.linear under torch.compile(fullgraph=True): no graph
break, no Dynamo warning, no recompile on a repeat call, and the bits of the eager call
(breccia/torch_ops.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import breccia as bc

torch = pytest.importorskip("torch")
from torch._dynamo.utils import counters  # noqa: E402

from breccia.torch_ops import spec  # noqa: E402

RECIPES = [
    pytest.param(bc.Float8CurrentScaling(), None, id="fp8-tensor"),
    pytest.param(bc.Float8CurrentScaling(convention="torchao"), bc.PerRow(), id="fp8-row"),
    pytest.param(bc.Float8BlockScaling(), None, id="fp8-1x128"),
    pytest.param(bc.Float8BlockScaling(block_m=128), None, id="fp8-128x128"),
    pytest.param(bc.Float8BlockScaling(convention="deepseek"), None, id="fp8-deepseek"),
    pytest.param(bc.MXFP8BlockScaling(scale_rounding="ceil"), None, id="mxfp8"),
    pytest.param(bc.MXFP4BlockScaling(), None, id="mxfp4"),
    pytest.param(bc.NVFP4BlockScaling(), None, id="nvfp4"),
    pytest.param(bc.Int8Scaling(), None, id="int8"),
    pytest.param(bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"), None, id="int4-mlx"),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch and counts its own graphs."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _bits(a):
    """An array's bytes, to compare bit for bit (NaN included)."""
    return None if a is None else a.contiguous().view(-1).view(torch.uint8).numpy()


def assert_same_tensor(got: bc.ScaledTensor, want: bc.ScaledTensor) -> None:
    assert isinstance(got, bc.ScaledTensor)
    assert (got.recipe, got.layout, got.shape, got.dtype_name, got.framework) == (
        want.recipe,
        want.layout,
        want.shape,
        want.dtype_name,
        want.framework,
    )
    for g, w in zip(got.arrays, want.arrays):
        assert (g is None) == (w is None)
        if g is not None:
            assert (g.dtype, tuple(g.shape)) == (w.dtype, tuple(w.shape))
            np.testing.assert_array_equal(_bits(g), _bits(w))


def compiled(fn, backend="aot_eager"):
    """``fn`` compiled with fullgraph=True (a graph break raises), called under a warning recorder:
    returns ``(call, warnings seen)``."""
    seen: list = []
    graph = torch.compile(fn, fullgraph=True, backend=backend)

    def call(*args):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = graph(*args)
        seen.extend(caught)
        return out

    return call, seen


def assert_quiet(seen: list) -> None:
    """No warning from the trace: in particular none about lru_cache ("silent incorrectness")."""
    messages = [f"{w.category.__name__}: {w.message}" for w in seen]
    assert not [m for m in messages if "lru_cache" in m], messages
    assert not [w for w in seen if issubclass(w.category, UserWarning)], messages


def _input(shape=(4, 160), dtype=None):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=g) * 3).to(dtype or torch.bfloat16)


@pytest.mark.parametrize("recipe, layout", RECIPES)
def test_cast_and_dequantize_compile_to_the_eager_bits(recipe, layout):
    x = _input()
    x[1, 5] = float("nan")  # the NaN rule holds under compile: the op runs the eager path
    call, seen = compiled(lambda x: (st := bc.cast(x, recipe, layout), bc.dequantize(st, torch.float32)))
    st, y = call(x)
    want = bc.cast(x, recipe, layout)
    assert_same_tensor(st, want)
    np.testing.assert_array_equal(_bits(y), _bits(bc.dequantize(want, torch.float32)))
    call(_input().neg())  # same shapes and dtype: the graph is reused
    assert counters["stats"]["unique_graphs"] == 1
    assert_quiet(seen)


@pytest.mark.parametrize("recipe, layout", RECIPES[4:8])
def test_dequantize_of_a_scaled_tensor_argument(recipe, layout):
    a, b = bc.cast(_input(), recipe, layout), bc.cast(_input().neg(), recipe, layout)
    call, seen = compiled(lambda st: bc.dequantize(st))
    for st in (a, b):
        np.testing.assert_array_equal(_bits(call(st)), _bits(bc.dequantize(st)))
    assert counters["stats"]["unique_graphs"] == 1
    assert_quiet(seen)


@pytest.mark.parametrize("recipe, layout", [RECIPES[3], RECIPES[6], RECIPES[7], RECIPES[9]])
def test_linear_and_matmul_compile_to_the_eager_bits(recipe, layout):
    x = _input((8, 160))
    w = bc.cast(_input((40, 160)), recipe, layout)
    call, seen = compiled(
        lambda x, w: (bc.linear(x, w), bc.matmul(bc.cast(x, bc.MXFP8BlockScaling()), bc.dequantize(w).T))
    )
    y, z = call(x, w)
    np.testing.assert_array_equal(_bits(y), _bits(bc.linear(x, w)))
    want = bc.matmul(bc.cast(x, bc.MXFP8BlockScaling()), bc.dequantize(w).T)
    np.testing.assert_array_equal(_bits(z), _bits(want))
    assert (y.dtype, z.dtype) == (torch.bfloat16, torch.bfloat16)
    call(x.neg(), bc.cast(_input((40, 160)).neg(), recipe, layout))
    assert counters["stats"]["unique_graphs"] == 1
    assert_quiet(seen)
    args = (x, None, None, None, "", "", [8, 160], "bfloat16")
    side = (*w.arrays, spec(w.recipe), spec(w.layout), list(w.shape), w.dtype_name)
    torch.library.opcheck(
        torch.ops.breccia.matmul.default, (*args, *side, True), test_utils="test_faketensor"
    )


@pytest.mark.parametrize("shape", [(), (0, 32), (7,), (3, 5, 33)], ids=str)
def test_edge_shapes_compile(shape):
    recipe = bc.MXFP4BlockScaling() if shape else bc.Float8CurrentScaling()
    x = _input(shape, torch.float32)
    call, seen = compiled(lambda x: bc.cast(x, recipe))
    assert_same_tensor(call(x), bc.cast(x, recipe))
    assert_quiet(seen)
    layout = recipe.default_layout()
    torch.library.opcheck(
        torch.ops.breccia.cast.default, (x, spec(recipe), spec(layout), None), test_utils="test_faketensor"
    )


def test_delayed_scaling_steps_its_history_under_compile():
    recipe = bc.DelayedScaling(amax_history_len=4)
    x = _input()
    call, seen = compiled(lambda x, h: bc.cast_with_history(x, recipe, history=h))
    history = bc.AmaxHistory.zeros(recipe, x)
    eager_history = history
    for step in range(3):
        st, history = call(x * (step + 1), history)
        want, eager_history = bc.cast_with_history(x * (step + 1), recipe, history=eager_history)
        assert_same_tensor(st, want)
        np.testing.assert_array_equal(_bits(history.amax), _bits(eager_history.amax))
    assert counters["stats"]["unique_graphs"] == 1
    assert_quiet(seen)


def test_a_layout_that_changes_between_calls_recompiles_with_its_value():
    """Dynamo makes an int that changed between calls symbolic; the op still receives the value."""
    recipe = bc.Float8CurrentScaling()
    x = _input((2, 128))
    call, _ = compiled(lambda x, layout: bc.cast(x, recipe, layout))
    for k in (32, 64, 128, 64):
        assert_same_tensor(call(x, bc.PerBlockK(k)), bc.cast(x, recipe, bc.PerBlockK(k)))


def test_dynamic_shapes_compile_one_graph():
    recipe = bc.MXFP4BlockScaling()
    graph = torch.compile(lambda x: bc.cast(x, recipe), fullgraph=True, backend="aot_eager", dynamic=True)
    for width in (64, 96, 130):
        x = _input((3, width), torch.float32)
        st = graph(x)
        assert all(type(d) is int for d in st.shape)
        assert_same_tensor(st, bc.cast(x, recipe))
    assert counters["stats"]["unique_graphs"] == 1


def test_the_eager_checks_still_raise_under_compile():
    x = _input()
    x[0, 0] = float("inf")
    call, _ = compiled(lambda x: bc.cast(x, bc.Int8Scaling(group_size=32, convention="ggml")))
    with pytest.raises(bc.RecipeError, match="ggml"):
        call(x)
    history = bc.AmaxHistory(torch.zeros(4))
    call, _ = compiled(lambda x: bc.cast(x, bc.Float8CurrentScaling(), history=history))
    with pytest.raises(bc.RecipeError, match="history= is DelayedScaling's state"):
        call(x)


@pytest.mark.parametrize("recipe, layout", [RECIPES[3], RECIPES[7], RECIPES[9]])
def test_the_fake_implementations_match_the_eager_ones(recipe, layout):
    """torch.library.opcheck: the fake shapes, dtypes and strides against the real op's, also under
    AOT dispatch with dynamic shapes (its schema check multiplies outputs, which fp8 cannot)."""
    x = _input((3, 256))
    layout = recipe.check_layout(layout)
    checks = ("test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(
        torch.ops.breccia.cast.default, (x, spec(recipe), spec(layout), None), test_utils=checks
    )
    st = bc.cast(x, recipe, layout)
    args = (*st.arrays, spec(recipe), spec(layout), list(st.shape), st.dtype_name, "float32")
    torch.library.opcheck(torch.ops.breccia.dequantize.default, args, test_utils=checks)


def test_spec_strings_round_trip():
    from breccia.torch_ops import _layout, _recipe

    for recipe in [p.values[0] for p in RECIPES] + [bc.DelayedScaling(margin=2)]:
        assert _recipe(spec(recipe)) == recipe
        assert _layout(spec(recipe.default_layout())) == recipe.default_layout()


@pytest.mark.slow
def test_inductor_compiles_cast_and_dequantize_around_other_ops():
    """Inductor (C++ on the CPU, about 10 s cold) fuses the ops around the two breccia ops."""
    recipe = bc.MXFP8BlockScaling()
    x = _input((4, 64), torch.float32)
    call, seen = compiled(lambda x: bc.dequantize(bc.cast(x * 2, recipe), torch.float32) + 1, "inductor")
    want = bc.dequantize(bc.cast(x * 2, recipe), torch.float32) + 1
    np.testing.assert_array_equal(_bits(call(x)), _bits(want))
    assert_quiet(seen)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "recipe, layout, mode",
    [(*p.values, mode) for p in (RECIPES[2], RECIPES[4], RECIPES[5], RECIPES[7]) for mode in ("default",)]
    + [(*p.values, "reduce-overhead") for p in (RECIPES[2], RECIPES[4], RECIPES[5])],
)
def test_cuda_inductor_compiles_to_the_eager_bits(recipe, layout, mode):
    """On the GPU, with inductor, and with ``reduce-overhead`` (CUDA graphs) for the recipes that have
    a fused CUDA kernel: the ops run breccia's kernels inside the compiled program and give the eager
    call's bits, call after call. NVFP4 and the integer recipes take the shared path on CUDA, which
    reads values back to the host and copies host constants, so a CUDA graph cannot hold them yet."""
    from conftest import assert_same_bits

    fn = lambda x: (st := bc.cast(x, recipe, layout), bc.dequantize(st, torch.float32))  # noqa: E731
    call, seen = compiled(fn, "inductor") if mode == "default" else (
        torch.compile(fn, fullgraph=True, mode=mode), [])
    for seed in (0, 1, 2):
        g = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn((256, 512), generator=g, device="cuda", dtype=torch.bfloat16) * 3
        st, y = call(x)
        want = bc.cast(x, recipe, layout)
        assert_same_bits(st, want)
        np.testing.assert_array_equal(_bits(y.cpu()), _bits(bc.dequantize(want, torch.float32).cpu()))
    assert_quiet(seen)
