"""ScaledTensor as a value: immutable, ``replace``, row slices ``st[a:b]`` and ``row_blocks``."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from conftest import FRAMEWORKS, assert_same_bits, bits, to_framework, to_numpy

import breccia as bc
from breccia.tensor import row_ranges

# (recipe, layout, shape): every element and scale format, every layout, a partial edge block row,
# 1-D packed data (its bytes are the rows) and a batch axis
CASES = [
    (bc.Float8CurrentScaling(), None, (70, 64)),
    (bc.Float8CurrentScaling(), bc.PerRow(), (70, 64)),
    (bc.DelayedScaling(amax_history_len=4), None, (70, 64)),
    (bc.Float8BlockScaling(block_m=32, block_k=32), None, (70, 64)),
    (bc.Float8BlockScaling(block_m=32, block_k=32), None, (4, 40, 64)),
    (bc.Float8BlockScaling(convention="deepseek"), None, (70, 256)),
    (bc.MXFP8BlockScaling(), None, (70, 64)),
    (bc.MXFP4BlockScaling(), None, (70, 64)),
    (bc.MXFP4BlockScaling(), None, (100,)),
    (bc.NVFP4BlockScaling(), None, (70, 64)),
    (bc.NVFP4BlockScaling(), None, (40,)),
    (bc.Int8Scaling(), None, (70, 64)),
    (bc.Int8Scaling(), bc.PerTensor(), (70, 64)),
    (bc.Int8Scaling(group_size=32, symmetric=False), None, (70, 64)),
    (bc.Int4Scaling(group_size=32), None, (70, 64)),
    (bc.Int4Scaling(group_size=3), None, (30,)),
    (bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"), None, (70, 64)),
]


def _case_id(case) -> str:
    recipe, layout, shape = case
    return f"{recipe.name}-{layout or recipe.default_layout()!r}-{'x'.join(map(str, shape))}"


def _scaled(framework: str, case) -> bc.ScaledTensor:
    recipe, layout, shape = case
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    return bc.cast(to_framework(framework, x), recipe, layout)


def _aligned_slices(st: bc.ScaledTensor) -> list[slice]:
    n, unit = st.shape[0], st.block_rows
    slices = [slice(0, unit), slice(unit, None), slice(-(n - unit), n), slice(unit, min(3 * unit, n)),
              slice(0, 0), slice(n, n), slice(unit, unit), slice(5, 2), slice(None), slice(None, None, 1)]
    if unit == 1:
        slices.append(slice(5, 17))
    return slices


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_row_slice_dequantizes_to_the_same_rows(framework, case):
    st = _scaled(framework, case)
    whole = to_numpy(bc.dequantize(st))
    for index in _aligned_slices(st):
        part = st[index]
        rows = range(st.shape[0])[index]
        assert part.shape == (len(rows), *st.shape[1:]) and part.framework == framework
        assert part.recipe == st.recipe and part.layout == st.layout and part.dtype_name == st.dtype_name
        got = to_numpy(bc.dequantize(part))
        assert np.array_equal(bits(got), bits(whole[index])), index
        assert part.global_scale is st.global_scale
    assert st[:] is st


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", [c for c in CASES if c[2][0] > 32], ids=_case_id)
def test_row_slice_that_cuts_a_block_or_is_no_row_slice_raises(framework, case):
    st = _scaled(framework, case)
    unit = st.block_rows
    if unit > 1:
        with pytest.raises(bc.LayoutError, match=f"multiple of {unit} rows"):
            st[1:unit]
        with pytest.raises(bc.LayoutError, match="the block height"):
            st[unit : unit + 1]
    for index in (0, -1, slice(0, 4, 2), slice(None, None, -1), (slice(0, 2), slice(0, 4)), Ellipsis, None):
        with pytest.raises(bc.ShapeError, match=r"slices only its first axis, with step 1 \(st\[a:b\]\)"):
            st[index]
    with pytest.raises(TypeError):
        iter(st)


@pytest.mark.parametrize(
    "case", [c for c in CASES if (c[1] or c[0].default_layout()) == bc.PerTensor()], ids=_case_id
)
def test_a_per_tensor_or_global_scale_passes_through_a_slice(case):
    st = _scaled("numpy", case)
    part = st[3:9]
    assert part.scale.shape == st.scale.shape and np.array_equal(bits(part.scale), bits(st.scale))


def test_nvfp4_slice_keeps_the_global_scale_and_packed_bytes():
    st = _scaled("numpy", (bc.NVFP4BlockScaling(), None, (70, 64)))
    part = st[10:20]
    assert part.global_scale is st.global_scale
    assert np.array_equal(part.data, st.data[10:20]) and part.data.shape == (10, 32)
    one_d = _scaled("numpy", (bc.NVFP4BlockScaling(), None, (40,)))
    assert one_d.block_rows == 16 and np.array_equal(one_d[16:40].data, one_d.data[8:20])
    odd = _scaled("numpy", (bc.Int4Scaling(group_size=3), None, (30,)))
    assert odd.block_rows == 6  # a block boundary at an odd index would split a byte
    with pytest.raises(bc.LayoutError, match="multiple of 6 rows"):
        odd[3:9]


def test_a_0d_tensor_has_no_rows():
    st = bc.cast(np.float32(3.0), bc.Float8CurrentScaling())
    with pytest.raises(bc.ShapeError, match="0-d"):
        st[0:1]
    with pytest.raises(bc.ShapeError, match="0-d"):
        st.row_blocks(10)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("budget", [1, 700, 10**9])
def test_row_blocks_cover_the_tensor_in_budget_on_block_rows(framework, case, budget):
    st = _scaled(framework, case)
    n, unit = st.shape[0], st.block_rows
    per_row = max(1, int(np.prod(st.shape[1:])))
    blocks = list(st.row_blocks(budget))
    assert [a for a, _, _ in blocks] == [0] + [b for _, b, _ in blocks[:-1]] and blocks[-1][1] == n
    for a, b, part in blocks:
        assert a % unit == 0 and (b % unit == 0 or b == n)
        assert (b - a) * per_row <= budget or b - a <= unit
        assert part.shape == (b - a, *st.shape[1:])
    if n * per_row <= budget:
        assert len(blocks) == 1 and blocks[0][2] is st
    whole = to_numpy(bc.dequantize(st))
    pieces = np.concatenate([to_numpy(bc.dequantize(part)) for _, _, part in blocks])
    assert np.array_equal(bits(pieces), bits(whole))


def test_row_ranges_of_an_empty_tensor_and_bad_budgets():
    assert list(row_ranges((0, 64), 32, 100)) == [(0, 0)]
    assert list(row_ranges((10, 0), 4, 1)) == [(0, 4), (4, 8), (8, 10)]
    for budget in (0, -1, 2.5, True):
        with pytest.raises(bc.ShapeError, match="max_elements"):
            row_ranges((10, 4), 1, budget)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_scaled_tensor_is_immutable(framework, case):
    st = _scaled(framework, case)
    before = [bits(a) for a in st.arrays]
    for field in ("data", "scale", "global_scale", "zero_point", "recipe", "layout", "shape", "dtype_name",
                  "framework", "anything"):
        with pytest.raises(bc.errors.FrozenError, match="immutable") as info:
            setattr(st, field, None)
        assert isinstance(info.value, AttributeError) and isinstance(info.value, bc.BrecciaError)
        with pytest.raises(bc.errors.FrozenError, match="immutable"):
            delattr(st, field)
    after = [bits(a) for a in st.arrays]
    assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(before, after))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_replace_makes_a_new_checked_tensor(framework, case):
    st = _scaled(framework, case)
    half = st.replace(dtype_name="bfloat16")
    assert half is not st and half.dtype_name == "bfloat16" and st.dtype_name == "float32"
    assert all(a is b for a, b in zip(half.arrays, st.arrays))
    assert (half.recipe, half.layout, half.shape) == (st.recipe, st.layout, st.shape)
    assert half.framework == st.framework == framework
    same = st.replace()
    assert same is not st
    assert_same_bits(same, st)
    with pytest.raises(bc.ShapeError, match="scale"):
        st.replace(scale=st.data)
    with pytest.raises(bc.DTypeError, match="logical dtype"):
        st.replace(dtype_name="int8")
    with pytest.raises(TypeError, match="unexpected keyword"):
        st.replace(scales=st.scale)


def test_constructor_takes_keywords_only():
    st = _scaled("numpy", CASES[0])
    with pytest.raises(TypeError):
        bc.ScaledTensor(st.data, st.scale, st.recipe, st.layout, st.shape, "float32", "numpy")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_pickle_and_copy_rebuild_the_same_tensor(case):
    st = _scaled("numpy", case)
    for other in (pickle.loads(pickle.dumps(st)), copy.deepcopy(st), copy.copy(st)):
        assert_same_bits(other, st)
        assert other.dtype_name == st.dtype_name and other.framework == st.framework
