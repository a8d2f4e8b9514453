"""Recipes and layouts: validation, versioned dict round trips, and strict rejection of bad dicts."""

from __future__ import annotations

import json

import pytest

import breccia as bc
from breccia.layouts import layout_from_dict, scale_shape

ALL_RECIPES = [
    bc.Float8CurrentScaling(),
    bc.Float8CurrentScaling(fp8_format="E5M2", power_2_scale=True, amax_epsilon=1e-12, convention="torchao"),
    bc.DelayedScaling(margin=1, amax_history_len=16, amax_compute_algo="most_recent"),
    bc.Float8BlockScaling(),
    bc.Float8BlockScaling(block_m=128, convention="deepseek", power_2_scale=True),
    bc.MXFP8BlockScaling(fp8_format="E5M2", scale_rounding="ceil"),
    bc.MXFP4BlockScaling(scale_rounding="ceil"),
    bc.NVFP4BlockScaling(),
    bc.Int8Scaling(group_size=64, symmetric=False),
    bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"),
]


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=repr)
def test_recipe_dict_round_trip_through_json(recipe):
    d = json.loads(json.dumps(recipe.to_dict()))
    assert d["version"] == 1 and d["name"] == recipe.name
    assert bc.recipe_from_dict(d) == recipe
    assert type(recipe).from_dict(d) == recipe


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: bc.Float8CurrentScaling(fp8_format="E3M4"), "fp8_format"),
        (lambda: bc.Float8CurrentScaling(power_2_scale=1), "power_2_scale"),
        (lambda: bc.Float8CurrentScaling(amax_epsilon=-1.0), "amax_epsilon"),
        (lambda: bc.DelayedScaling(margin=-1), "margin"),
        (lambda: bc.DelayedScaling(amax_history_len=0), "amax_history_len"),
        (lambda: bc.DelayedScaling(amax_compute_algo="mean"), "amax_compute_algo"),
        (lambda: bc.Float8BlockScaling(block_k=0), "block_k"),
        (lambda: bc.Float8BlockScaling(block_m=True), "block_m"),
        (lambda: bc.Float8BlockScaling(convention="torchao"), "convention"),
        (lambda: bc.MXFP8BlockScaling(scale_rounding="round"), "scale_rounding"),
        (lambda: bc.MXFP4BlockScaling(scale_rounding="up"), "scale_rounding"),
        (lambda: bc.Int8Scaling(group_size=-4), "group_size"),
        (lambda: bc.Int4Scaling(symmetric="no"), "symmetric"),
        (lambda: bc.Int4Scaling(convention="mlx"), "asymmetric"),
    ],
)
def test_invalid_recipe_fields_raise_recipe_error(make, message):
    with pytest.raises(bc.RecipeError, match=message) as info:
        make()
    assert isinstance(info.value, ValueError) and isinstance(info.value, bc.BrecciaError)


@pytest.mark.parametrize(
    ("d", "message"),
    [
        ("MXFP8BlockScaling", "JSON object"),
        ({"version": 1, "name": "os.system", "fields": {}}, "unknown recipe"),
        ({"version": 1, "name": "MXFP8BlockScaling", "fields": {"evil": 1}}, "no field"),
        ({"version": 2, "name": "MXFP8BlockScaling", "fields": {}}, "newer"),
        ({"version": "1", "name": "MXFP8BlockScaling", "fields": {}}, "version"),
        ({"version": 1, "name": "MXFP8BlockScaling", "fields": {"fp8_format": ["E4M3"]}}, "JSON scalar"),
        ({"version": 1, "name": "MXFP8BlockScaling", "fields": []}, "fields"),
        ({"version": 1, "name": "MXFP8BlockScaling", "fields": {}, "code": "x"}, "unexpected"),
        ({"version": 1, "name": "Int4Scaling", "fields": {"group_size": "__import__('os')"}}, "group_size"),
    ],
)
def test_recipe_from_dict_rejects_bad_input(d, message):
    with pytest.raises(bc.RecipeError, match=message):
        bc.recipe_from_dict(d)


def test_recipe_from_dict_checks_the_class():
    with pytest.raises(bc.RecipeError, match="expected a MXFP8BlockScaling"):
        bc.MXFP8BlockScaling.from_dict(bc.NVFP4BlockScaling().to_dict())


@pytest.mark.parametrize(
    "layout", [bc.PerTensor(), bc.PerRow(), bc.PerBlockK(32), bc.PerBlock2D(128, 64)], ids=repr
)
def test_layout_dict_round_trip(layout):
    assert layout_from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


@pytest.mark.parametrize(
    "d", [{"name": "PerBlockK"}, {"name": "PerBlockK", "k": 0}, {"name": "Eval", "k": 1},
          {"name": "PerRow", "k": 3}, [], {"k": 32}],
)
def test_layout_from_dict_rejects_bad_input(d):
    with pytest.raises(bc.LayoutError):
        layout_from_dict(d)


@pytest.mark.parametrize(
    ("layout", "shape", "expected"),
    [
        (bc.PerTensor(), (67, 300), (1, 1)),
        (bc.PerTensor(), (), ()),
        (bc.PerRow(), (3, 67, 300), (3, 67, 1)),
        (bc.PerRow(), (300,), (1,)),
        (bc.PerBlockK(128), (67, 300), (67, 3)),
        (bc.PerBlock2D(128, 128), (576, 7168), (5, 56)),
        (bc.PerBlock2D(128, 128), (2, 130, 129), (2, 2, 2)),
        (bc.PerBlockK(32), (0, 64), (0, 2)),
    ],
)
def test_scale_shape_is_ceil_of_dim_over_block(layout, shape, expected):
    assert scale_shape(layout, shape) == expected


def test_layout_that_does_not_fit_the_recipe_says_what_would():
    with pytest.raises(bc.LayoutError, match=r"PerBlockK\(32\)"):
        bc.MXFP8BlockScaling().check_layout(bc.PerRow())
    with pytest.raises(bc.LayoutError, match="needs a tensor of at least 2"):
        bc.PerBlock2D(128, 128).block_shape((300,))
    with pytest.raises(bc.LayoutError, match="breccia layout"):
        bc.Int8Scaling().check_layout("PerRow")


def test_default_layouts():
    assert bc.Float8BlockScaling().default_layout() == bc.PerBlockK(128)
    assert bc.Float8BlockScaling(block_m=128).default_layout() == bc.PerBlock2D(128, 128)
    assert bc.Int8Scaling().default_layout() == bc.PerRow()
    assert bc.Int4Scaling().default_layout() == bc.PerBlockK(128)
    assert bc.NVFP4BlockScaling().default_layout() == bc.PerBlockK(16)
    assert bc.MXFP4BlockScaling().default_layout() == bc.PerBlockK(32)


def test_string_fields_are_enums_that_equal_their_strings():
    r = bc.Float8BlockScaling(block_m=128, fp8_format="E4M3", convention="deepseek")
    assert r.convention is bc.RecipeConvention.DEEPSEEK and r.convention == "deepseek"
    assert r.fp8_format is bc.FP8Format.E4M3 and r.scale_format is bc.ScaleFormat.F32
    deepseek = bc.RecipeConvention.DEEPSEEK
    same = bc.Float8BlockScaling(block_m=128, fp8_format=bc.FP8Format.E4M3, convention=deepseek)
    assert same == r and hash(same) == hash(r) and {r: 1}[same] == 1
    assert repr(r) == (
        "Float8BlockScaling(block_k=128, block_m=128, fp8_format='E4M3', power_2_scale=False, "
        "amax_epsilon=0.0, convention='deepseek')"
    )
    assert r.to_dict()["fields"]["convention"] == "deepseek"
    assert type(r.to_dict()["fields"]["convention"]) is str
    assert f"{r.convention}" == str(r.convention) == "deepseek"
    assert bc.DelayedScaling().convention is bc.RecipeConvention.TE
    assert bc.MXFP8BlockScaling().convention is bc.RecipeConvention.OCP
    assert bc.NVFP4BlockScaling().scale_format == "E4M3" and bc.MXFP4BlockScaling().scale_format == "E8M0"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: bc.Float8BlockScaling(convention="torchao"), r"must be one of \('te', 'deepseek'\)"),
        (lambda: bc.NVFP4BlockScaling(convention=bc.RecipeConvention.TE), "'nvidia', 'compressed-tensors'"),
        (lambda: bc.MXFP8BlockScaling(fp8_format="e4m3"), r"fp8_format must be one of \('E4M3', 'E5M2'\)"),
        (lambda: bc.Int8Scaling(convention=None), "Int8Scaling.convention"),
    ],
)
def test_an_unknown_enum_value_lists_the_valid_ones(make, message):
    with pytest.raises(bc.RecipeError, match=message):
        make()
