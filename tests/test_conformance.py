"""The conformance matrix (``scripts/conformance.py``, ``docs/conformance.md``) and MLX's E8M0 rules.

Every row the script produces here is asserted: equal where the page says equal, still different
where it documents a difference. The page's rows are checked against the same rule, so the page
cannot claim an equality that no test shows. MLX's two E8M0 rules are checked against golden bytes
written by MLX itself (0.32.1: round to nearest in log2; 0.32.4: round up).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import types

import numpy as np
import pytest
from conftest import FRAMEWORKS, requires_cuda, to_framework, to_numpy

import breccia as bc
from breccia import scaling
from breccia.backends import get_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_script():
    path = os.path.join(ROOT, "scripts", "conformance.py")
    spec = importlib.util.spec_from_file_location("conformance", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


conformance = _load_script()


@pytest.fixture(scope="module")
def table():
    return conformance.rows("cpu")


# --- the matrix ------------------------------------------------------------------------------------


def test_every_row_is_as_documented(table):
    assert table, "no peer produced a row (ml_dtypes at least is always installed)"
    wrong = [f"{r.key}: {r.result}, documented {r.expected or 'equal'}" for r in table if not r.as_documented]
    assert not wrong, "\n".join(wrong)


def test_equal_rows_compare_something(table):
    """An "equal" row over zero bytes would prove nothing."""
    assert all(r.total > 0 for r in table)
    assert {r.compared for r in table} == {"bytes", "values"}


def test_every_documented_difference_has_its_row(table):
    """No stale entry: each documented difference of a peer that ran here names a row it produced."""
    produced = {r.key for r in table} | {(*r.key, r.device.split()[0]) for r in table}
    ran = {r.peer for r in table}
    kinds = {r.device.split()[0] for r in table}
    stale = [key for key in conformance.DOCUMENTED
             if key[0] in ran and key not in produced and (len(key) == 4 or key[4] in kinds)]
    assert not stale, stale


def _page_rows() -> list[dict[str, str]]:
    with open(conformance.PAGE, encoding="utf-8") as f:
        text = f.read()
    header = ["peer", "version", "format", "direction", "device", "inputs", "result"]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|", 6)]  # a note may hold "|"
        if line.startswith("| ") and len(cells) == len(header) and cells[0] != "peer":
            rows.append(dict(zip(header, cells)))
    return rows


def test_the_page_claims_equal_only_where_a_test_asserts_it(table):
    _assert_page_matches(table, "cpu")


@pytest.mark.cuda
@requires_cuda
def test_the_cuda_rows_are_as_documented():
    """On the GPU: torch's and JAX's casts, and DeepSeek's own ``act_quant`` kernel against breccia's
    CUDA casts; every row as documented and as the page says."""
    table = conformance.rows("cuda")
    assert any(r.peer == "deepseek kernel.py" for r in table)
    assert [r for r in table if not r.as_documented] == []
    _assert_page_matches(table, "cuda")


def _assert_page_matches(table, kind: str) -> None:
    page = [row for row in _page_rows() if row["device"].split()[0] == kind]
    assert page, f"{conformance.PAGE} has no {kind} rows; regenerate it with scripts/conformance.py"
    for row in page:
        key = (row["peer"], row["format"], row["direction"], row["inputs"])
        documented = key in conformance.DOCUMENTED or (*key, kind) in conformance.DOCUMENTED
        equal = re.fullmatch(r"(bytes|values) equal", row["result"]) is not None
        assert equal == (not documented), f"page row {key} says {row['result']!r}"
    current = {(r.key, r.device, r.version): r for r in table}
    for row in page:
        key = (row["peer"], row["format"], row["direction"], row["inputs"])
        now = current.get((key, row["device"], row["version"]))
        if now is not None:  # the same peer version is installed here: the page must match it
            assert row["result"].startswith(now.result), f"{key}: page {row['result']!r}, now {now.result!r}"


def test_a_peer_is_one_function_in_a_list():
    """The script's extension point: a peer is a function (device) -> rows; a CPU-only peer gives
    no rows for another device."""
    assert all(callable(p) for p in conformance.PEERS)
    assert conformance.rows("cuda", [conformance.ml_dtypes_peer]) == []

    def fake(device):
        yield conformance.Row("fake", "1", "E4M3", "encode", device, "random", "bytes", 4, 1)

    (row,) = conformance.rows("cpu", [fake])
    assert not row.as_documented and row.result == "documented difference: 1 of 4 bytes"


def test_golden_inputs_cover_the_edges():
    from breccia.formats import E4M3, E5M2

    inputs = conformance.cases(E4M3)
    assert set(inputs) >= {"random", "ragged", "zeros", "ties", "subnormals", "max", "+-Inf", "NaN"}
    assert inputs["ragged"].shape[-1] % 32 != 0
    assert np.isnan(inputs["NaN"]).any() and np.isinf(inputs["+-Inf"]).any()
    assert np.any(np.signbit(inputs["zeros"])) and not np.any(inputs["zeros"])
    assert 464.0 in inputs["max"] and 2.0**-10 in inputs["subnormals"]  # E4M3's tie at max, a subnormal
    assert 61440.0 in conformance.cases(E5M2)["max"]  # E5M2's tie between max and 2**16


def test_the_inputs_gguf_rows_leave_out_are_refused():
    """The page says the gguf-py rows leave out +-Inf and NaN because breccia's ggml recipes refuse them."""
    pytest.importorskip("gguf")
    from breccia.bridges import GGML_RECIPES

    for kind, recipe in GGML_RECIPES.items():
        for name in conformance.GGML_REFUSED:
            with pytest.raises(bc.RecipeError, match="ggml's quantizer, which has no rule for NaN"):
                bc.cast(conformance.cases(recipe.element_format)[name], recipe)
            assert name in conformance.cases(recipe.element_format), kind


# --- MLX's E8M0 rules ------------------------------------------------------------------------------


def _golden(fmax: float) -> np.ndarray:
    """Four blocks of 32 with amax / max = 1.1, 1.3, 1.6 and 1 times 2**-3, alternating signs."""
    ratios = np.array([1.1, 1.3, 1.6, 1.0], np.float32) / np.float32(8)
    amax = ratios * np.float32(fmax)
    j = np.arange(32, dtype=np.float32)
    sign = np.where(j % 2 == 0, np.float32(1), np.float32(-1))
    return (amax[:, None] * ((j + 1) / np.float32(32))[None, :] * sign).astype(np.float32)


# mx.quantize's bytes of _golden: (data, E8M0 scales), written by MLX 0.32.1 (CPU: round to nearest
# in log2) and MLX 0.32.4 (CPU: round up). MLX's fp4 rounds ties toward zero, so for mxfp4 only the
# scales are breccia's bytes too.
GOLDEN = {
    ("mxfp8", "ceil"): (
        "4fd75cdf62e465e769ea6bec6ded6eef70f171f272f373f474f575f576f677f751d95ee163e668e96aeb6dee6ff071f1"
        "72f273f374f575f676f777f878f979f953db60e366e86aeb6dee6ff071f272f374f575f677f778f879f979fa7afa7bfb"
        "56de62e669ea6cee70f172f273f475f677f878f979fa7afa7bfb7cfc7dfd7efe",
        "7d7d7d7c",
    ),
    ("mxfp8", "nearest"): (
        "57df64e76aec6def71f273f475f576f778f979fa7afb7bfc7cfd7dfd7efe7efe59e166e96bee70f172f375f677f879f9"
        "7afa7bfb7cfd7dfe7efe7efe7efe7efe53db60e366e86aeb6dee6ff071f272f374f575f677f778f879f979fa7afa7bfb"
        "56de62e669ea6cee70f172f273f475f677f878f979fa7afa7bfb7cfc7dfd7efe",
        "7c7c7d7c",
    ),
    ("mxfp4", "ceil"): (
        "009191a1a2a2b3b3c4c4c4c4d5d5d5d5009191a2a2b3b3c4c4c4d5d5d5d5e6e69091a1a2b3c3c4c4d5d5d5e5e6e6e6e6"
        "9091a2b3c3c4d4d5d5e6e6e6e6f7f7f7",
        "7d7d7d7c",
    ),
    ("mxfp4", "nearest"): (
        "90a1a2b3c4c4d5d5e6e6e6e6f7f7f7f790a1b2c3c4d5d5e6e6e6f7f7f7f7f7f79091a1a2b3c3c4c4d5d5d5e5e6e6e6e6"
        "9091a2b3c3c4d4d5d5e6e6e6e6f7f7f7",
        "7c7c7d7c",
    ),
}
_MODES = {"mxfp8": (448.0, 8), "mxfp4": (6.0, 4)}


def _recipe(mode: str, rounding: str) -> bc.Recipe:
    if mode == "mxfp8":
        return bc.MXFP8BlockScaling(scale_rounding=rounding)
    return bc.MXFP4BlockScaling(scale_rounding=rounding)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("mode", "rounding"), list(GOLDEN))
def test_both_mlx_rules_give_mlxs_golden_bytes(framework, mode, rounding):
    pytest.importorskip({"numpy": "numpy", "jax": "jax", "mlx": "mlx.core", "torch": "torch"}[framework])
    data, scales = GOLDEN[(mode, rounding)]
    st = bc.cast(to_framework(framework, _golden(_MODES[mode][0])), _recipe(mode, rounding))
    assert to_numpy(st.scale).view(np.uint8).tobytes().hex() == scales
    if mode == "mxfp8":
        assert to_numpy(st.data).view(np.uint8).tobytes().hex() == data


@pytest.mark.parametrize("mode", list(_MODES))
def test_the_installed_mlx_writes_the_golden_bytes_of_the_rule_mlx_recipe_picks(mode):
    mx = pytest.importorskip("mlx.core")
    from breccia.bridges import mlx_recipe
    from breccia.bridges._mlx import mlx_e8m0_rounding

    fmax, bits = _MODES[mode]
    x = _golden(fmax)
    w, s = mx.quantize(mx.array(x), group_size=32, bits=bits, mode=mode)
    rule = mlx_e8m0_rounding(mode)
    data, scales = GOLDEN[(mode, rule)]
    assert np.array(s).tobytes().hex() == scales and np.array(w).view(np.uint8).tobytes().hex() == data
    recipe = mlx_recipe(mode)
    assert recipe.scale_rounding == rule
    st = bc.cast(mx.array(x), recipe)
    assert np.array(st.scale).tobytes().hex() == scales
    if mode == "mxfp8":
        assert np.array(st.data).tobytes().hex() == data


def test_a_rule_breccia_does_not_know_is_refused(monkeypatch):
    from breccia.bridges import _mlx

    floor_codes = np.array([[124], [125]], np.uint8)  # the OCP floor rule: neither of MLX's
    fake = types.SimpleNamespace(
        __version__="0.0-fake", array=np.asarray, quantize=lambda x, **kw: (None, floor_codes)
    )
    monkeypatch.setattr(_mlx, "_mx", lambda: fake)
    _mlx.mlx_e8m0_rounding.cache_clear()
    try:
        with pytest.raises(bc.RecipeError, match=r"\(124, 125\)"):
            _mlx.mlx_e8m0_rounding("mxfp8")
    finally:
        _mlx.mlx_e8m0_rounding.cache_clear()


# --- the round-to-nearest-in-log2 rule -----------------------------------------------------------------


def _reference_nearest(s: np.ndarray) -> np.ndarray:
    """round(log2 s) in float64: e = k + (m > sqrt(2)), s = m * 2**k, m in [1, 2)."""
    m, k = np.frexp(s.astype(np.float64))  # m in [0.5, 1)
    return (k - 1 + (2 * m > np.sqrt(2.0))).astype(np.float64)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_nearest_log2_is_exact_at_sqrt2(framework):
    pytest.importorskip({"numpy": "numpy", "jax": "jax", "mlx": "mlx.core", "torch": "torch"}[framework])
    backend = get_backend(framework)
    below = np.float32(np.sqrt(2.0))  # fl32(sqrt 2) < sqrt 2
    around = (below.view(np.int32) + np.arange(-3, 5, dtype=np.int32)).view(np.float32)
    ks = np.arange(-149 + 1, 127)
    s = (around[None, :].astype(np.float64) * np.exp2(ks[:, None].astype(np.float64))).astype(np.float32)
    s = np.concatenate([s.reshape(-1), [np.float32(2.0**-149), np.float32(1.0), np.float32(2.0**-126)]])
    s = s[(s > 0) & np.isfinite(s)]
    if framework == "jax":  # XLA's CPU flushes subnormal operands to zero (every MX rule shares this)
        s = s[s >= np.float32(2.0**-126)]
    got = to_numpy(scaling._nearest_log2(backend.xp, backend.pow2, to_framework(framework, s)))
    np.testing.assert_array_equal(got, _reference_nearest(s))
    assert _reference_nearest(np.array([below, np.nextafter(below, np.float32(2))])).tolist() == [0, 1]


def test_nearest_rule_saturates_a_block_whenever_it_rounds_down():
    """amax / max = 1.1 and 1.3 (times 2**-3) round down to 2**-3: those blocks' maxima saturate and
    lose more than half an E4M3 step (6.25%), as ml-explore/mlx#4353 measured; ceil never does."""
    x = _golden(448.0)
    for rounding, expected in (("nearest", [True, True, False, False]), ("ceil", [False] * 4)):
        y = np.asarray(bc.dequantize(bc.cast(x, bc.MXFP8BlockScaling(scale_rounding=rounding)), "float32"))
        loss = 1 - np.abs(y).max(axis=1) / np.abs(x).max(axis=1)
        assert list(loss > 0.0625) == expected, rounding


def test_scale_rounding_nearest_is_a_recipe_field():
    recipe = bc.MXFP4BlockScaling(scale_rounding="nearest")
    assert bc.recipe_from_dict(recipe.to_dict()) == recipe
    with pytest.raises(bc.RecipeError, match="nearest"):
        bc.MXFP8BlockScaling(scale_rounding="round")
