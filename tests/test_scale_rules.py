"""The registry of scale rules (``breccia/scale_rules.py``): each rule's golden bytes, taken from the
peers that use it, and the page that lists them.

The golden input is one block of 32 per row (:func:`golden_blocks`) whose maximum sits on every edge
that tells the E8M0 rules apart, for the exponents -6..6: a power of two and the float below it,
``1.1`` and ``1.3`` times it (MLX's probe), where the element's mantissa rounded half up carries
(torchao's EVEN), ``sqrt(2)`` times it (round to nearest in log2), the element's max times it and the
float above; then a zero block, ``1e-30`` and ``3e38``. The golden bytes are the E8M0 scale codes the
peer wrote, at the version named; a test compares breccia's cast with them on every framework and,
where the peer is installed, the peer's own output with them (so a peer that changes its rule is
noticed). MLX's ``nearest`` (0.32.1 and before) has its golden bytes in ``test_conformance.py``, and
DeepSeek's UE8M0 edges in ``test_deepseek.py``.
"""

from __future__ import annotations

import importlib.metadata
import os

import numpy as np
import pytest
from conftest import FRAMEWORKS, to_framework, to_numpy

import breccia as bc
from breccia import scale_rules
from breccia.formats import E2M1, E4M3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = {"E4M3": E4M3, "E2M1": E2M1}


def golden_amax(fmt) -> np.ndarray:
    """The block maxima of the golden input (see the module docstring), float32."""
    m, fmax = fmt.mantissa_bits, np.float32(fmt.max_value)
    values = []
    for k in range(-6, 7):
        p = np.float32(2.0**k)
        even = p * np.float32(2 - 2.0 ** -(m + 1))
        root2 = p * np.float32(np.sqrt(2))
        values += [p, np.nextafter(p, np.float32(0)), p * np.float32(1.1), p * np.float32(1.3), even,
                   np.nextafter(even, np.float32(0)), root2, np.nextafter(root2, np.float32(0)), p * fmax,
                   np.nextafter(p * fmax, np.float32(np.inf))]
    return np.array([*values, 0.0, 1e-30, 3e38], np.float32)


def golden_blocks(fmt) -> np.ndarray:
    """``[blocks, 32]`` float32: each row's first element is its maximum, the rest smaller, signs mixed."""
    amax = golden_amax(fmt)
    j = np.arange(32, dtype=np.float32)
    x = amax[:, None] * ((j + 1) / np.float32(33))[None, :] * np.where(j % 2 == 0, 1, -1).astype(np.float32)
    x[:, 0] = amax
    return x.astype(np.float32)


#: (rule, element format) -> (peer, what wrote it, version, E8M0 scale bytes of golden_blocks, hex).
GOLDEN = {
    ("floor", "E4M3"): (
        "torchao", "MXTensor FLOOR", "0.18.0",
        "7170717171717171797972717272727272727a7a73727373737373737b7b74737474747474747c7c7574757575757575"
        "7d7d76757676767676767e7e77767777777777777f7f78777878787878788080797879797979797981817a797a7a7a7a"
        "7a7a82827b7a7b7b7b7b7b7b83837c7b7c7c7c7c7c7c84847d7c7d7d7d7d7d7d85850013f6",
    ),
    ("floor", "E2M1"): (
        "torchao", "MXTensor FLOOR", "0.18.0",
        "7776777777777777797978777878787878787a7a79787979797979797b7b7a797a7a7a7a7a7a7c7c7b7a7b7b7b7b7b7b"
        "7d7d7c7b7c7c7c7c7c7c7e7e7d7c7d7d7d7d7d7d7f7f7e7d7e7e7e7e7e7e80807f7e7f7f7f7f7f7f8181807f80808080"
        "808082828180818181818181838382818282828282828484838283838383838385850019fc",
    ),
    ("ceil_f32_log2", "E4M3"): (
        "torchao", "MXTensor RCEIL", "0.18.0",
        "7171717172727171797972727272737372727a7a73737373747473737b7c74747474757574747c7d7575757576767575"
        "7d7e76767676777776767e7f77777777787877777f8078787878797978788081797979797a7a797981827a7a7a7a7b7b"
        "7a7a82837b7b7b7b7c7c7b7b83837c7c7c7c7d7d7c7c84847d7d7d7d7e7e7d7d85850013f7",
    ),
    ("ceil_f32_log2", "E2M1"): (
        "torchao", "MXTensor RCEIL", "0.18.0",
        "7777777778787777797978787878797978787a7a797979797a7a79797b7c7a7a7a7a7b7b7a7a7c7d7b7b7b7b7c7c7b7b"
        "7d7e7c7c7c7c7d7d7c7c7e7f7d7d7d7d7e7e7d7d7f807e7e7e7e7f7f7e7e80817f7f7f7f80807f7f8182808080808181"
        "808082838181818182828181838382828282838382828484838383838484838385850019fd",
    ),
    ("even", "E4M3"): (
        "torchao", "MXTensor EVEN", "0.18.0",
        "7171717172717171797972727272737272727a7a73737373747373737b7b74747474757474747c7c7575757576757575"
        "7d7d76767676777676767e7e77777777787777777f7f78787878797878788080797979797a79797981817a7a7a7a7b7a"
        "7a7a82827b7b7b7b7c7b7b7b83837c7c7c7c7d7c7c7c84847d7d7d7d7e7d7d7d85850013f6",
    ),
    ("even", "E2M1"): (
        "torchao", "MXTensor EVEN", "0.18.0",
        "7777777778777777797978787878797878787a7a797979797a7979797b7b7a7a7a7a7b7a7a7a7c7c7b7b7b7b7c7b7b7b"
        "7d7d7c7c7c7c7d7c7c7c7e7e7d7d7d7d7e7d7d7d7f7f7e7e7e7e7f7e7e7e80807f7f7f7f807f7f7f8181808080808180"
        "808082828181818182818181838382828282838282828484838383838483838385850019fd",
    ),
    ("ceil", "E4M3"): (
        "mlx", "mx.quantize mxfp8", "0.32.4",
        "7171717172727171797a72727272737372727a7b73737373747473737b7c74747474757574747c7d7575757576767575"
        "7d7e76767676777776767e7f77777777787877777f8078787878797978788081797979797a7a797981827a7a7a7a7b7b"
        "7a7a82837b7b7b7b7c7c7b7b83847c7c7c7c7d7d7c7c84857d7d7d7d7e7e7d7d85867f13f7",
    ),
    ("ceil", "E2M1"): (
        "mlx", "mx.quantize mxfp4", "0.32.4",
        "7777777778787777797a78787878797978787a7b797979797a7a79797b7c7a7a7a7a7b7b7a7a7c7d7b7b7b7b7c7c7b7b"
        "7d7e7c7c7c7c7d7d7c7c7e7f7d7d7d7d7e7e7d7d7f807e7e7e7e7f7f7e7e80817f7f7f7f80807f7f8182808080808181"
        "808082838181818182828181838482828282838382828485838383838484838385867f19fd",
    ),
    ("ggml", "E2M1"): (
        "gguf", "gguf.quants MXFP4", "0.19",
        "7777777777777777797978787878787878787a7a79797979797979797b7b7a7a7a7a7a7a7a7a7c7c7b7b7b7b7b7b7b7b"
        "7d7d7c7b7c7c7c7c7c7c7e7e7d7c7d7d7d7d7d7d7f7f7e7d7e7e7e7e7e7e80807f7e7f7f7f7f7f7f8181808080808080"
        "808082828181818181818181838382828282828282828484838383838383838385850019",
    ),}

ZERO_BLOCK, TOP_BLOCK = 130, 132  # the indices of the zero block and of amax 3e38


def breccia_expects(rule: str, fmt_name: str) -> bytes:
    """The golden bytes as breccia writes them: the same, but where breccia's documented rules differ
    (docs/numerics.md): an all-zero block gets scale 1 (code 127; torchao writes 0, ggml too and
    breccia's ggml convention follows it), and no exponent exceeds ``127 - emax_elem``, so that every
    code decodes finite (torchao's and MLX's ceil go one above for amax 3e38)."""
    _, _, _, hexed = GOLDEN[(rule, fmt_name)]
    codes = bytearray(bytes.fromhex(hexed))
    if rule != "ggml":
        codes[ZERO_BLOCK] = 127
    top = 127 + 127 - FORMATS[fmt_name].e_max
    return bytes(min(c, top) for c in codes)


def _recipe(rule: str, fmt_name: str) -> bc.Recipe:
    if rule == "ggml":
        return bc.MXFP4BlockScaling(convention="ggml")
    cls = bc.MXFP8BlockScaling if fmt_name == "E4M3" else bc.MXFP4BlockScaling
    return cls(scale_rounding=rule)


def _input(rule: str, fmt_name: str) -> np.ndarray:
    x = golden_blocks(FORMATS[fmt_name])
    return x[:TOP_BLOCK] if rule == "ggml" else x  # ggml's encoder overflows at 3e38: breccia refuses it


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("rule", "fmt_name"), list(GOLDEN))
def test_breccia_writes_each_rules_golden_bytes(framework, rule, fmt_name):
    pytest.importorskip({"numpy": "numpy", "jax": "jax", "mlx": "mlx.core", "torch": "torch"}[framework])
    st = bc.cast(to_framework(framework, _input(rule, fmt_name)), _recipe(rule, fmt_name))
    assert to_numpy(st.scale).view(np.uint8).reshape(-1).tobytes() == breccia_expects(rule, fmt_name)


def _peer_bytes(rule: str, fmt_name: str, x: np.ndarray) -> bytes:
    """The E8M0 bytes the golden's own peer writes today for ``x``."""
    peer, how, _, _ = GOLDEN[(rule, fmt_name)]
    if peer == "torchao":
        import torch
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.mx_tensor import to_mx

        dtype = torch.float8_e4m3fn if fmt_name == "E4M3" else torch.float4_e2m1fn_x2
        mode = getattr(ScaleCalculationMode, how.split()[-1])
        scale, _ = to_mx(torch.from_numpy(x.copy()), dtype, 32, mode)
        return scale.view(torch.uint8).numpy().tobytes()
    if peer == "mlx":
        import mlx.core as mx

        mode = how.split()[-1]
        _, scales = mx.quantize(mx.array(x), group_size=32, bits=8 if mode == "mxfp8" else 4, mode=mode)
        return np.array(scales).tobytes()
    import gguf
    from gguf.quants import quantize

    return quantize(x, gguf.GGMLQuantizationType.MXFP4).reshape(len(x), -1)[:, 0].tobytes()


@pytest.mark.parametrize(("rule", "fmt_name"), list(GOLDEN))
def test_each_peer_still_writes_its_golden_bytes(rule, fmt_name):
    peer, _, version, hexed = GOLDEN[(rule, fmt_name)]
    modules = {"torchao": "torchao.prototype.mx_formats.mx_tensor", "mlx": "mlx.core", "gguf": "gguf.quants"}
    module = modules[peer]
    pytest.importorskip(module, reason=f"needs {peer} (pip install 'breccia[test]')")
    if peer == "mlx" and scale_rules.scale_rule("ceil") not in {
        rule for rule, _ in scale_rules.rules_used_by("MLX", importlib.metadata.version("mlx"))
    }:
        pytest.skip("the installed MLX rounds its E8M0 scales to nearest (0.32.1 or before)")
    assert _peer_bytes(rule, fmt_name, _input(rule, fmt_name)).hex() == hexed, f"{peer} {version}"


def test_compressed_tensors_mx_scales_are_even_for_fp4():
    """llm-compressor's observers take compressed-tensors' ``generate_mx_scales``: torchao's EVEN with
    the FP4 mantissa (for MXFP4; it keeps FP4's threshold for MXFP8 too, which breccia does not list)."""
    pytest.importorskip("compressed_tensors", reason="needs compressed-tensors (pip install 'breccia[test]')")
    import torch
    from compressed_tensors.quantization.utils.mxfp_utils import generate_mx_scales

    amax = golden_amax(E2M1)
    codes = generate_mx_scales(torch.from_numpy(amax.copy()), num_bits=4).numpy()
    expected = np.frombuffer(breccia_expects("even", "E2M1"), np.uint8)
    normal = (amax > 0) & (codes <= 127 + 127 - E2M1.e_max)
    assert normal.sum() == len(amax) - 2  # all but the zero block and 3e38
    np.testing.assert_array_equal(codes[normal].astype(np.uint8), expected[normal])


def test_every_e8m0_rounding_has_golden_bytes_from_a_peer():
    import test_conformance

    elsewhere = {rounding for _, rounding in test_conformance.GOLDEN}  # MLX 0.32.1 and 0.32.4
    for rounding in scale_rules.E8M0_ROUNDINGS:
        assert any(rule == rounding for rule, _ in GOLDEN) or rounding in elsewhere, rounding
        assert scale_rules.scale_rule(rounding).used_by, rounding


@pytest.mark.parametrize(
    ("peer", "version", "expected"),
    [
        ("MLX", "0.32.1", {("nearest", "CPU, Metal"), ("ceil", "CUDA")}),
        ("mlx", "0.32.4", {("ceil", "CPU, Metal"), ("ceil", "CUDA")}),
        ("torchao", "0.18.0", {
            ("floor", "MXTensor FLOOR (default)"),
            ("even", "MXTensor EVEN (float32 input)"),
            ("ceil_f32_log2", "MXTensor RCEIL eager, and on the CPU (torch.log2)"),
        }),
    ],
)
def test_rules_used_by_a_peer_depend_on_its_version(peer, version, expected):
    found = {(rule.name, use.where) for rule, use in scale_rules.rules_used_by(peer, version)}
    assert expected <= found
    assert not ({("nearest", "CPU, Metal")} <= found and {("ceil", "CPU, Metal")} <= found)


def test_every_rule_is_listed_on_the_recipes_page():
    with open(os.path.join(ROOT, "docs", "recipes.md"), encoding="utf-8") as f:
        page = f.read()
    assert scale_rules.markdown_table() in page, "docs/recipes.md: paste scale_rules.markdown_table()"


def test_an_unknown_rule_names_the_known_ones():
    with pytest.raises(KeyError, match="floor"):
        scale_rules.scale_rule("round-half-up")
    with pytest.raises(bc.RecipeError, match="ceil_f32_log2"):
        bc.MXFP8BlockScaling(scale_rounding="round-half-up")


def _recipes_by_convention():
    """Every recipe class built with every convention it takes (symmetric or not, as each needs)."""
    built = []
    for cls in bc.recipes.RECIPES.values():
        for convention in bc.RecipeConvention:
            for fields in ({"convention": convention}, {"convention": convention, "symmetric": False}):
                try:
                    built.append(cls(**fields))
                except (bc.RecipeError, TypeError):
                    continue
        built.append(cls())
    return built


@pytest.mark.parametrize("recipe", _recipes_by_convention(), ids=repr)
def test_every_recipe_and_convention_has_one_rule_in_the_registry(recipe):
    from breccia import scaling

    entry = scaling.rule_for(recipe)
    assert (type(recipe), recipe.convention) in scaling.RULES
    assert entry is scaling.RULES[(type(recipe), recipe.convention)]


def test_the_kernel_rules_come_from_the_registry():
    from breccia import scaling
    from breccia.kernels._cast_plan import cast_plan

    rule = scaling.KernelRule
    cases = [
        (bc.Float8CurrentScaling(), bc.PerRow(), rule.TE),
        (bc.Float8CurrentScaling(), bc.PerTensor(), rule.GIVEN),
        (bc.DelayedScaling(), bc.PerTensor(), rule.GIVEN),
        (bc.Float8BlockScaling(convention="deepseek"), None, rule.DEEPSEEK),
        (bc.MXFP8BlockScaling(scale_rounding="ceil"), None, rule.MX_CEIL),
        (bc.MXFP4BlockScaling(), None, rule.MX_FLOOR),
        (bc.MXFP4BlockScaling(convention="mlx"), None, None),
        (bc.MXFP8BlockScaling(scale_rounding="even"), None, None),
        (bc.Float8CurrentScaling(convention="torchao"), bc.PerRow(), None),
        (bc.NVFP4BlockScaling(), None, None),
    ]
    for recipe, layout, expected in cases:
        plan = cast_plan(recipe, layout or recipe.default_layout(), (4, 256), "float32")
        assert (plan.rule if plan else None) == expected, recipe
    assert [r.code for r in rule] == list(range(len(rule)))


def test_a_recipe_without_a_registered_rule_is_refused():
    from breccia import scaling

    class Unregistered(bc.Int8Scaling):
        pass

    assert scaling.rule_for(Unregistered()) is scaling.RULES[(bc.Int8Scaling, bc.RecipeConvention.BRECCIA)]
    with pytest.raises(bc.RecipeError, match="no scale rule for Recipe"):
        scaling.rule_for(bc.Recipe())
