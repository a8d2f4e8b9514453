"""The ``breccia`` command (demo, inspect, convert, --help, errors) and the runnable docs and README."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import breccia as bc
from breccia.cli import main
from breccia.commands.inspect import describe, format_table

ROOT = Path(__file__).resolve().parents[1]
BRECCIA = Path(sys.executable).parent / "breccia"

RECIPES = [
    bc.Float8CurrentScaling(),
    bc.Float8BlockScaling(block_m=128, convention="deepseek"),
    bc.MXFP8BlockScaling(),
    bc.MXFP4BlockScaling(scale_rounding="ceil"),
    bc.NVFP4BlockScaling(),
    bc.Int8Scaling(group_size=32),
    bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"),
]
IDS = [r.label() for r in RECIPES]


def _weight(shape=(256, 128), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    return w * (2.0 ** rng.uniform(-3, 3, (shape[0], 1))).astype(np.float32)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --- help and demo ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["demo"], ["inspect"], ["convert"]])
def test_help_for_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: breccia {' '.join(argv)}".rstrip())


@pytest.mark.parametrize("section", ["recipes", "model-dirs"])
def test_demo_section_checks_hold(capsys, section):
    rc, out, _ = _cli(capsys, "demo", "--section", section)
    assert rc == 0
    assert "all checks held" in out
    assert "DIFFERS" not in out and "TOO LARGE" not in out


# --- inspect: the statistics of one tensor ------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_describe_counts_follow_the_nan_rule(recipe):
    w = _weight()
    w[3, 5] = np.nan  # one NaN: exactly its block decodes to NaN
    w[200, 7] = np.inf  # one Inf: saturates, decodes finite
    st = bc.cast(w, recipe)
    row = describe("w", st)
    y = bc.dequantize(st, "float32")
    assert row["nan"] == int(np.isnan(y).sum()) > 0
    assert row["inf"] == int(np.isinf(y).sum()) == 0
    assert row["nan"] == math.prod(st.layout.block_shape(st.shape))
    assert row["recipe"] == recipe.label()
    assert bc.recipe_from_dict(row["recipe_dict"]) == recipe
    assert row["layout"] == repr(st.layout)
    assert row["shape"] == [256, 128]
    assert row["bytes"] == st.nbytes
    json.dumps(row)  # JSON-ready


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_describe_scale_range_is_the_finite_dequantization_multiplier(recipe):
    w = _weight()
    w[0, :] = np.nan  # NaN scales are left out of the range
    st = bc.cast(w, recipe)
    row = describe("w", st)
    multiplier = np.asarray(st.scale).astype(np.float32)  # ml_dtypes decodes E8M0 / E4M3
    if st.global_scale is not None:
        multiplier = multiplier * np.float32(st.global_scale)
    finite = multiplier[np.isfinite(multiplier)]
    if finite.size == 0:  # per-tensor: the NaN took the only scale
        assert (row["scale_min"], row["scale_max"]) == (None, None)
        assert "no finite scale" in format_table([row])
    else:
        assert (row["scale_min"], row["scale_max"]) == (float(finite.min()), float(finite.max()))


@pytest.mark.parametrize("recipe", [bc.Float8CurrentScaling(), bc.Float8BlockScaling(block_m=128),
                                    bc.MXFP8BlockScaling(), bc.Int4Scaling(group_size=32, symmetric=False)],
                         ids=["per-tensor", "128x128", "mxfp8", "int4-zp"])
def test_row_slabs_cover_the_tensor_exactly(recipe):
    w = _weight((300, 96))
    w[290, 1] = np.nan
    st = bc.cast(w, recipe)
    slabs = [rows for _, _, rows in st.row_blocks(96 * 50)]
    assert len(slabs) > 1
    assert sum(s.shape[0] for s in slabs) == 300
    whole = bc.dequantize(st, "float32")
    pieces = np.concatenate([bc.dequantize(s, "float32") for s in slabs])
    assert np.array_equal(np.isnan(whole), np.isnan(pieces))
    assert np.array_equal(whole[~np.isnan(whole)], pieces[~np.isnan(pieces)])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int64])
def test_describe_plain_tensor(dtype):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    if dtype is not np.int64:
        a[0, 0], a[1, 1], a[2, 2] = np.nan, np.inf, -np.inf
    row = describe("plain", a.astype(dtype) if dtype is not np.int64 else np.arange(12).reshape(3, 4))
    assert row["recipe"] is None and row["layout"] is None and row["scale_min"] is None
    assert row["shape"] == [3, 4]
    assert row["dtype"] == np.dtype(dtype).name
    assert (row["nan"], row["inf"]) == ((0, 0) if dtype is np.int64 else (1, 2))
    assert row["bytes"] == 12 * np.dtype(dtype).itemsize


def test_format_table_aligns_and_totals():
    rows = [describe("a.weight", bc.cast(_weight(), bc.MXFP8BlockScaling())),
            describe("a.bias", np.zeros(7, np.float32))]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:4] == ["name", "recipe", "layout", "shape"]
    assert lines[2].startswith("a.weight") and "MXFP8BlockScaling()" in lines[2] and "256x128" in lines[2]
    assert lines[3].startswith("a.bias") and "- (float32)" in lines[3]
    assert lines[-1] == f"2 tensors (1 scaled, 1 plain), {rows[0]['bytes'] + 28:,} bytes"


# --- inspect: errors --------------------------------------------------------------------------------


def test_inspect_missing_path_is_one_line_exit_2(tmp_path):
    result = subprocess.run([str(BRECCIA), "inspect", str(tmp_path / "nope.safetensors")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"breccia inspect: error: {tmp_path / 'nope.safetensors'}: no such file or directory"
    ]


def test_inspect_directory_without_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("nothing here")
    rc, out, err = _cli(capsys, "inspect", str(tmp_path))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "no model.safetensors.index.json and no .safetensors files" in err


# --- README and docs run as written -----------------------------------------------------------------


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_readme_quickstart_runs(capsys):
    blocks = _python_blocks(ROOT / "README.md")
    assert len(blocks) == 1
    assert len([line for line in blocks[0].splitlines() if line.strip()]) <= 10
    exec(compile(blocks[0], "README.md", "exec", dont_inherit=True), {"__name__": "__readme__"})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ScaledTensor(MXFP8BlockScaling(")
    assert 0 < float(out[1]) < 0.05


@pytest.mark.parametrize("page", ["index.md", "getting-started.md", "recipes.md", "layouts.md"])
def test_docs_examples_run(page, capsys):
    """Every ```python block of a page runs, in order, in one namespace (as a reader would type them)."""
    blocks = _python_blocks(ROOT / "docs" / page)
    assert blocks
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{page}[{i}]", "exec", dont_inherit=True), namespace)


# --- inspect: real files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def breccia_file(tmp_path_factory) -> tuple[Path, dict]:
    from breccia.bridges import save_safetensors

    w = _weight()
    w[3, 4] = np.nan
    tensors = {r.label(): bc.cast(w, r) for r in RECIPES}
    tensors["norm"] = np.ones(128, ml_dtypes.bfloat16)
    tensors["step"] = np.array([3], np.int64)
    path = tmp_path_factory.mktemp("inspect") / "model.safetensors"
    save_safetensors(tensors, path)
    return path, tensors


def test_inspect_json_lists_every_tensor(breccia_file, capsys):
    path, tensors = breccia_file
    rc, out, err = _cli(capsys, "inspect", "--json", str(path))
    assert rc == 0 and err == ""
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == set(tensors)
    for name, value in tensors.items():
        assert rows[name] == describe(name, value)


def test_inspect_table_and_sharded_directory_agree(breccia_file, tmp_path, capsys):
    from breccia.bridges import save_safetensors

    path, tensors = breccia_file
    rc, table, _ = _cli(capsys, "inspect", str(path))
    assert rc == 0
    assert table.strip().splitlines()[-1] == (
        f"{len(tensors)} tensors ({len(RECIPES)} scaled, 2 plain), "
        f"{sum(describe(n, v)['bytes'] for n, v in tensors.items()):,} bytes"
    )
    save_safetensors(tensors, tmp_path / "sharded", max_shard_size=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    rc, sharded, _ = _cli(capsys, "inspect", str(tmp_path / "sharded"))
    assert rc == 0
    assert sorted(sharded.splitlines()) == sorted(table.splitlines())


def test_inspect_directory_of_separate_files_names_the_file(tmp_path, capsys):
    from safetensors.numpy import save_file

    save_file({"x": np.array([1.0, np.nan], np.float32)}, str(tmp_path / "a.safetensors"))
    save_file({"x": np.array([np.inf], np.float32)}, str(tmp_path / "b.safetensors"))
    rc, out, _ = _cli(capsys, "inspect", "--json", str(tmp_path))
    assert rc == 0
    assert [(r["file"], r["name"], r["nan"], r["inf"]) for r in json.loads(out)] == [
        ("a.safetensors", "x", 1, 0), ("b.safetensors", "x", 0, 1)
    ]


def test_inspect_reads_a_deepseek_checkpoint_written_by_torch(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    weight = torch.randn(300, 200).to(torch.float8_e4m3fn)
    scale = torch.rand(3, 2) + 0.5
    scale[2, 1] = float("nan")
    save_file({"layers.0.mlp.weight": weight, "layers.0.mlp.weight_scale_inv": scale,
               "norm.weight": torch.ones(200, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    rc, out, _ = _cli(capsys, "inspect", "--json", str(tmp_path))
    assert rc == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(rows) == {"layers.0.mlp.weight", "norm.weight"}
    w = rows["layers.0.mlp.weight"]
    assert w["recipe_dict"]["fields"]["convention"] == "deepseek"
    assert (w["layout"], w["shape"]) == ("PerBlock2D(128, 128)", [300, 200])
    finite = scale[torch.isfinite(scale)]
    assert (w["scale_min"], w["scale_max"]) == (float(finite.min()), float(finite.max()))
    assert w["nan"] == 44 * 72  # the NaN tile: rows 256..299, columns 128..199
    assert rows["norm.weight"]["dtype"] == "bfloat16" and rows["norm.weight"]["recipe"] is None


def test_inspect_malformed_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    result = subprocess.run([str(BRECCIA), "inspect", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"breccia inspect: error: {bad}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("target", "missing_src", "message"), [
    ("mlx-mxfp8", True, "No such file or directory"),
    ("mlx-bogus", False, "unknown MLX target 'mlx-bogus'"),
    ("NotARecipe", False, "unknown conversion target 'NotARecipe'"),
])
def test_convert_errors_are_one_line_exit_2(breccia_file, tmp_path, capsys, target, missing_src, message):
    src = tmp_path / "nope.safetensors" if missing_src else breccia_file[0]
    rc, _, err = _cli(capsys, "convert", str(src), str(tmp_path / "out"), "--to", target, "--no-progress")
    assert rc == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("breccia convert: error: ") and message in err
