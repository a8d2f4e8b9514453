"""safetensors bridge: bit-exact round trips on every framework, peers reading our files and we theirs,
shards, laziness, bounded memory, and every malformed file answered with a FileFormatError."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from conftest import FRAMEWORKS, assert_same_bits, bits, requires_cuda, to_framework, to_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file as torch_save_file

import breccia as bc
from breccia.bridges import load_plain_safetensors, load_safetensors, open_safetensors, save_safetensors
from breccia.bridges._huggingface import parse_size
from breccia.bridges._safetensors_format import read_header

# one case per recipe kind, zero points and odd packed axes included: (recipe, layout, shape)
CASES = [
    (bc.Float8CurrentScaling(), None, (33, 70)),
    (bc.Float8CurrentScaling(fp8_format="E5M2"), bc.PerRow(), (33, 70)),
    (bc.DelayedScaling(amax_history_len=4), None, (16, 40)),
    (bc.Float8BlockScaling(block_m=128, convention="deepseek"), None, (130, 260)),
    (bc.Float8BlockScaling(), None, (3, 5, 200)),
    (bc.MXFP8BlockScaling(), None, (8, 96)),
    (bc.MXFP8BlockScaling(fp8_format="E5M2", scale_rounding="ceil"), None, (8, 70)),
    (bc.MXFP4BlockScaling(), None, (6, 45)),
    (bc.NVFP4BlockScaling(), None, (6, 47)),
    (bc.Int8Scaling(), None, (12, 40)),
    (bc.Int8Scaling(group_size=32, symmetric=False), None, (12, 64)),
    (bc.Int4Scaling(), None, (4, 257)),
    (bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"), None, (4, 64)),
]
IDS = [f"{r.name}-{'x'.join(map(str, s))}" for r, _, s in CASES]
ST_DTYPES = {
    "data": {"E4M3": "F8_E4M3", "E5M2": "F8_E5M2", "E2M1": "U8", "INT8": "I8", "INT4": "U8"},
    "scale": {"F32": "F32", "E8M0": "F8_E8M0", "E4M3": "F8_E4M3"},
}


@pytest.fixture
def tmp():
    """A scratch directory under /tmp, removed afterwards."""
    path = tempfile.mkdtemp(prefix="breccia-st-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def values(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2.0 ** rng.integers(-6, 7, shape)).astype(np.float32)


def scaled(framework, recipe, layout, shape, dtype="float32", seed=0) -> bc.ScaledTensor:
    x = to_framework(framework, values(shape, seed).astype(dtype))
    return bc.cast(x, recipe, layout)


def plain_arrays(framework) -> dict:
    """bf16, fp8 and int plain tensors of ``framework`` (MLX holds fp8 as uint8 bits)."""
    import ml_dtypes

    arrays = {
        "norm.weight": values((40,)).astype(ml_dtypes.bfloat16),
        "ids": np.arange(-5, 7, dtype=np.int32).reshape(3, 4),
    }
    if framework != "mlx":
        arrays["act.fp8"] = values((4, 8)).clip(-448, 448).astype(ml_dtypes.float8_e4m3fn)
    return {k: to_framework(framework, v) for k, v in arrays.items()}


def raw_bits(x) -> np.ndarray:
    """The bytes of any array (torch's fnuz fp8 included, which torch cannot hand to numpy)."""
    if isinstance(x, torch.Tensor):
        return x.contiguous().reshape(-1).view(torch.uint8).numpy()
    return bits(x)


def assert_same_array(a, b) -> None:
    np.testing.assert_array_equal(bits(a), bits(b))
    assert tuple(a.shape) == tuple(b.shape)


# --- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("saver", FRAMEWORKS)
@pytest.mark.parametrize(("recipe", "layout", "shape"), CASES, ids=IDS)
def test_round_trip_every_recipe_every_framework(tmp, saver, recipe, layout, shape):
    """Saved from one framework, loaded into each: same bits, recipe, layout, shape and dtype."""
    original = scaled(saver, recipe, layout, shape, dtype="bfloat16")
    plain = plain_arrays(saver)
    path = os.path.join(tmp, "m.safetensors")
    save_safetensors({"w": original, **plain}, path, {"note": "hi"})
    for loader in FRAMEWORKS:
        loaded = load_safetensors(path, loader)
        assert list(loaded) == ["w"]
        w = loaded["w"]
        assert w.framework == loader and w.dtype_name == "bfloat16"
        assert_same_bits(w, original)
        got = load_plain_safetensors(path, loader)
        assert sorted(got) == sorted(plain)
        for name, array in plain.items():
            assert_same_array(got[name], array)
        np.testing.assert_array_equal(
            to_numpy(bc.dequantize(w, "float32")), to_numpy(bc.dequantize(original, "float32"))
        )


@pytest.mark.parametrize(
    ("recipe", "layout", "shape"),
    [
        (bc.MXFP8BlockScaling(), None, (0, 64)),
        (bc.NVFP4BlockScaling(), None, (2, 0, 32)),
        (bc.Float8CurrentScaling(), None, ()),
        (bc.Int8Scaling(), bc.PerTensor(), ()),
    ],
)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_round_trip_empty_and_scalar(tmp, framework, recipe, layout, shape):
    original = scaled("numpy", recipe, layout, shape)
    path = os.path.join(tmp, "e.safetensors")
    save_safetensors({"e": original}, path)
    assert_same_bits(load_safetensors(path, framework)["e"], original)


# --- peers read our files, we read theirs ----------------------------------------------------------


@pytest.mark.parametrize(("recipe", "layout", "shape"), CASES, ids=IDS)
def test_safetensors_safe_open_reads_our_files(tmp, recipe, layout, shape):
    """Real safetensors dtypes: F8_E4M3 data, F8_E8M0 MX scales, U8 packed 4-bit; bytes unchanged."""
    st_ = scaled("torch", recipe, layout, shape)
    path = os.path.join(tmp, "ours.safetensors")
    save_safetensors({"w": st_}, path, {"format": "pt"})
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "pt"
        config = json.loads(meta["w.config"])
        assert config["recipe"] == recipe.to_dict() and config["shape"] == list(shape)
        assert f.get_slice("w.data").get_dtype() == ST_DTYPES["data"][recipe.element_format.name]
        assert f.get_slice("w.scale").get_dtype() == ST_DTYPES["scale"][recipe.scale_format]
        for part in ("data", "scale", "global_scale", "zero_point"):
            mine = getattr(st_, part)
            if mine is None:
                assert f"w.{part}" not in f.keys()
            else:
                assert_same_array(f.get_tensor(f"w.{part}"), mine)


TORCH_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.uint16,
    torch.int32,
    torch.uint32,
    torch.int64,
    torch.uint64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e8m0fnu,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_files_from_safetensors_torch_load(tmp, framework):
    """Every dtype torch's save_file writes is read back bit for bit (MLX gets fp8 as uint8 bits);
    64-bit tensors on JAX without x64 raise instead of narrowing silently."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for d in TORCH_DTYPES:
        name = str(d).removeprefix("torch.")
        raw = torch.randint(
            0, 2 if d == torch.bool else 256, (3, 8 * d.itemsize), dtype=torch.uint8, generator=g
        )
        tensors[name] = raw.view(d)
    tensors["scalar"] = torch.tensor(3.5)
    tensors["empty"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    path = os.path.join(tmp, "theirs.safetensors")
    torch_save_file(tensors, path, metadata={"format": "pt"})
    with open_safetensors(path, framework) as m:
        assert sorted(m) == sorted(tensors) and sorted(m.tensor_names()) == sorted(tensors)
        assert m.metadata == {"format": "pt"}
        for name, expected in tensors.items():
            if framework == "jax" and expected.dtype in (torch.int64, torch.uint64, torch.float64):
                with pytest.raises(bc.DTypeError, match="64-bit"):
                    m[name]
                continue
            got = m[name]
            assert tuple(got.shape) == tuple(expected.shape)
            np.testing.assert_array_equal(raw_bits(got), raw_bits(expected))
            if framework == "mlx" and expected.dtype.is_floating_point and expected.itemsize == 1:
                assert str(got.dtype) == "mlx.core.uint8"
            elif framework != "mlx":
                assert str(got.dtype).rsplit(".", 1)[-1] == str(expected.dtype).removeprefix("torch.")


def test_deepseek_style_file_reads_as_plain_fp8(tmp):
    """A checkpoint written by torch (fp8 weight + fp32 weight_scale_inv) has no configs: plain tensors."""
    w = torch.randn(256, 128).to(torch.float8_e4m3fn)
    s = torch.rand(2, 1)
    path = os.path.join(tmp, "ds.safetensors")
    torch_save_file({"layer.weight": w, "layer.weight_scale_inv": s}, path)
    assert load_safetensors(path) == {}
    got = load_plain_safetensors(path, "torch")
    assert got["layer.weight"].dtype == torch.float8_e4m3fn
    assert torch.equal(got["layer.weight"].view(torch.uint8), w.view(torch.uint8))
    assert torch.equal(got["layer.weight_scale_inv"], s)


# --- shards and laziness ---------------------------------------------------------------------------


def _model(framework="numpy") -> dict:
    return {
        "a": scaled(framework, bc.MXFP8BlockScaling(), None, (64, 128), seed=1),
        "b": scaled(framework, bc.NVFP4BlockScaling(), None, (32, 64), seed=2),
        "c": scaled(framework, bc.Int4Scaling(group_size=32, symmetric=False), None, (16, 64), seed=3),
        "emb": to_framework(framework, values((100, 10)).astype("float32")),
    }


def test_sharded_save_and_load(tmp):
    model = _model("torch")
    save_safetensors(model, tmp, {"format": "pt"}, max_shard_size="5KB")
    index = json.loads(Path(tmp, "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n >= 3 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(os.listdir(tmp)) == sorted([*shards, "model.safetensors.index.json"])
    raw_names = {f"{k}.{p}" for k in "abc" for p in ("data", "scale")} | {
        "b.global_scale",
        "c.zero_point",
        "emb",
    }
    assert set(index["weight_map"]) == raw_names
    for shard in shards:
        with safe_open(os.path.join(tmp, shard), framework="pt") as f:  # a peer reads every shard
            assert f.metadata()["format"] == "pt"
            assert all(index["weight_map"][k] == shard for k in f.keys())
            sizes = [math.prod(f.get_slice(k).get_shape()) for k in f.keys()]  # all 1-byte dtypes but F32
        assert len(sizes) == 1 or sum(sizes) <= 5000 * 4  # over 5 kB only for a tensor alone in its shard
    assert index["metadata"]["total_size"] == sum(
        bits(v).size
        for st_ in model.values()
        for v in (st_.arrays if isinstance(st_, bc.ScaledTensor) else [st_])
        if v is not None
    )
    split = [k for k in "abc" if index["weight_map"][f"{k}.data"] != index["weight_map"][f"{k}.scale"]]
    assert split, "the test needs a ScaledTensor whose data and scale sit in different shards"
    for source in (tmp, os.path.join(tmp, "model.safetensors.index.json")):
        for framework in ("numpy", "torch"):
            with open_safetensors(source, framework) as m:
                assert sorted(m) == ["a", "b", "c", "emb"]
                assert sorted(m.tensor_names()) == sorted(raw_names)
                for k in "abc":
                    assert_same_bits(m[k], model[k])
                assert_same_array(m["emb"], model["emb"])
                assert m.metadata["format"] == "pt" and "a.config" in m.metadata


def test_open_reads_only_the_shards_it_needs(tmp):
    """After opening, deleting a shard breaks only the tensors it holds."""
    model = {"first": np.arange(1000, dtype=np.float32), "second": np.ones(1000, np.float32)}
    save_safetensors(model, tmp, max_shard_size=4000)
    index = json.loads(Path(tmp, "model.safetensors.index.json").read_text())
    with open_safetensors(tmp) as m:
        os.remove(os.path.join(tmp, index["weight_map"]["second"]))
        np.testing.assert_array_equal(m["first"], model["first"])
        with pytest.raises(OSError):
            m["second"]


def test_lazy_mapping_interface(tmp):
    model = _model()
    path = os.path.join(tmp, "m.safetensors")
    save_safetensors(model, path, {"k": "v"})
    m = open_safetensors(path, "torch")
    assert len(m) == 4 and set(m) == {"a", "b", "c", "emb"} and "a" in m and "a.data" not in m
    assert (
        m.metadata["k"] == "v" and json.loads(m.metadata["b.config"])["recipe"]["name"] == "NVFP4BlockScaling"
    )
    assert m.read_tensor("a.scale").dtype == torch.float8_e8m0fnu
    assert m.read_tensor("a.data").dtype == torch.float8_e4m3fn
    with pytest.raises(KeyError, match="read_tensor"):
        m["a.data"]
    with pytest.raises(KeyError):
        m["nope"]
    first = m["emb"]
    m.close()
    assert_same_array(first, model["emb"])  # arrays read before close() stay valid
    with pytest.raises(bc.FileFormatError, match="closed"):
        m["emb"]
    with open_safetensors(path, "mlx") as m2:
        assert str(m2.read_tensor("a.data").dtype) == "mlx.core.uint8"


def test_loaded_arrays_are_private_copy_on_write_views(tmp):
    path = os.path.join(tmp, "m.safetensors")
    save_safetensors({"x": np.zeros(8, np.float32)}, path)
    x = load_plain_safetensors(path)["x"]
    x[0] = 1.0  # writable, and the write stays in memory
    np.testing.assert_array_equal(load_plain_safetensors(path)["x"], np.zeros(8, np.float32))
    save_safetensors({"x": np.full(8, 2.0, np.float32)}, path)  # atomic replace: old views keep old bytes
    assert x[1] == 0.0


def test_a_file_replaced_after_opening_is_not_read_with_the_old_header(tmp):
    path = os.path.join(tmp, "m.safetensors")
    save_safetensors({"x": np.zeros(8, np.float32)}, path)
    with open_safetensors(path) as m:
        save_safetensors({"y": np.zeros(2, np.float32)}, path)
        with pytest.raises(bc.FileFormatError, match="replaced or modified"):
            m["x"]


def test_parse_size():
    assert parse_size(123) == 123
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2MiB") == 2 * 2**20 and parse_size("1.5kb") == 1500
    for bad in ("5 parsecs", "", -1, 0, True, 1.5):
        with pytest.raises(bc.FileFormatError, match="max_shard_size"):
            parse_size(bad)


# --- memory ----------------------------------------------------------------------------------------


def test_save_holds_at_most_one_tensor_copy(tmp):
    """Non-contiguous inputs need a copy each; peak extra memory stays near one tensor, not all."""
    base = np.ones((1024, 2048), np.float32)  # 8 MiB
    tensors = {f"t{i}": base[:, i % 2 :: 2] for i in range(8)}  # 4 MiB each once made contiguous
    one = 1024 * 1024 * 4
    tracemalloc.start()
    try:
        save_safetensors(tensors, os.path.join(tmp, "big.safetensors"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * one, f"peak {peak / 2**20:.1f} MiB; one tensor is {one / 2**20:.0f} MiB"


# --- bad inputs on save ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensors", "extra", "error", "match"),
    [
        ({"w": np.zeros(2, np.float32), "w.data": np.zeros(1, np.float32)}, None, None, None),
        ({"w": None}, None, bc.NotAnArrayError, "ScaledTensors and arrays"),
        ({"w": np.zeros(2, np.complex128)}, None, bc.DTypeError, "complex128"),
        ({"__metadata__": np.zeros(2)}, None, bc.FileFormatError, "reserved"),
        ({1: np.zeros(2)}, None, bc.FileFormatError, "names must be strings"),
        ({"x": np.zeros(2)}, {"k": 1}, bc.FileFormatError, "strings to strings"),
    ],
)
def test_save_rejects_what_it_cannot_write(tmp, tensors, extra, error, match):
    path = os.path.join(tmp, "bad.safetensors")
    if error is None:  # a ScaledTensor "w" next to a plain "w.data"
        tensors = {**tensors, "w": scaled("numpy", bc.MXFP8BlockScaling(), None, (2, 32))}
        error, match = bc.FileFormatError, "both be stored as 'w.data'"
    with pytest.raises(error, match=match):
        save_safetensors(tensors, path, extra)
    assert os.listdir(tmp) == []  # nothing half-written is left behind


def test_save_rejects_metadata_that_clashes_with_a_config(tmp):
    w = scaled("numpy", bc.MXFP8BlockScaling(), None, (2, 32))
    with pytest.raises(bc.FileFormatError, match=r"w\.config"):
        save_safetensors({"w": w}, os.path.join(tmp, "x.safetensors"), {"w.config": "{}"})


# --- malformed files -------------------------------------------------------------------------------


def _file(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def T(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


GOOD = {"a": T("F32", [2], 0, 8), "b": T("U8", [4], 8, 12)}
HEADER_CASES = {
    "too short": (b"\x01\x00\x00", "too short"),
    "header length past the end": (_file(GOOD, bytes(12), length=10**6), "runs past the end"),
    "header too large": (_file(GOOD, bytes(12), length=100_000_001), "exceeds"),
    "not utf-8": (_file(b'{"\xff":1}'), "UTF-8"),
    "not json": (_file(b"{'a': 1}"), "not valid JSON"),
    "nan literal": (_file(b'{"__metadata__":{"x":NaN}}'), "not valid JSON"),
    "not an object": (_file(b"[1, 2]"), "JSON object"),
    "metadata not strings": (_file({"__metadata__": {"x": 1}, **GOOD}, bytes(12)), "__metadata__"),
    "unknown dtype": (_file({"a": T("F31", [2], 0, 8)}, bytes(8)), "unknown dtype"),
    "negative shape": (_file({"a": T("F32", [-2], 0, 8)}, bytes(8)), "shape must be"),
    "float shape": (_file({"a": T("F32", [2.0], 0, 8)}, bytes(8)), "shape must be"),
    "minus zero is a float": (_file(b'{"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}}'), "-0"),
    "three offsets": (
        _file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, bytes(8)),
        "data_offsets",
    ),
    "entry not an object": (_file({"a": 3}), "JSON object"),
    "overlap": (_file({"a": T("F32", [2], 0, 8), "b": T("U8", [4], 4, 8)}, bytes(8)), "overlaps"),
    "gap": (_file({"a": T("F32", [2], 0, 8), "b": T("U8", [4], 12, 16)}, bytes(16)), "gap"),
    "size disagrees with shape": (_file({"a": T("F32", [3], 0, 8)}, bytes(8)), "needs 12 bytes"),
    "end before begin": (_file({"a": T("F32", [0], 8, 0)}), "ends before it begins"),
    "truncated data": (_file(GOOD, bytes(11)), "truncated"),
    "trailing bytes": (_file(GOOD, bytes(13)), "trailing"),
    "shape overflows": (_file({"a": T("F32", [2**40, 2**40], 0, 4)}, bytes(4)), "overflows"),
    "F4 off a byte boundary": (_file({"a": T("F4", [3], 0, 2)}, bytes(2)), "byte boundary"),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_malformed_headers_are_rejected_like_safetensors_does(tmp, case):
    content, match = HEADER_CASES[case]
    path = os.path.join(tmp, "bad.safetensors")
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(bc.FileFormatError, match=match) as info:
        open_safetensors(path)
    assert path in str(info.value)
    with pytest.raises(safetensors.SafetensorError):
        safe_open(path, framework="np")


ACCEPTED = {
    "leading and trailing spaces": _file(
        b'  {"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}  ', bytes(2)
    ),
    "extra entry fields": _file({"a": {**T("U8", [2], 0, 2), "extra": [1]}}, bytes(2)),
    "unaligned F32": _file(
        {"a": T("U8", [1], 0, 1), "b": T("F32", [2], 1, 9)}, bytes(1) + struct.pack("<2f", 1.5, -2)
    ),
    "zero-size and scalar": _file(
        {"z": T("F32", [0, 5], 0, 0), "s": T("F32", [], 0, 4)}, struct.pack("<f", 7)
    ),
    "no tensors": _file({}),
    "null metadata": _file({"__metadata__": None, "a": T("I8", [1], 0, 1)}, b"\x80"),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_edge_files_safetensors_accepts_load(tmp, case):
    path = os.path.join(tmp, "edge.safetensors")
    with open(path, "wb") as f:
        f.write(ACCEPTED[case])
    with safe_open(path, framework="np") as f:
        expected = {k: f.get_tensor(k) for k in f.keys()}
    got = load_plain_safetensors(path)
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype and got[k].flags.aligned


def test_duplicate_keys_are_rejected(tmp):
    """Stricter than safetensors: JSON leaves which of two equal keys counts undefined."""
    path = os.path.join(tmp, "dup.safetensors")
    with open(path, "wb") as f:
        entry = b'{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
        f.write(_file(b'{"a":' + entry + b',"a":' + entry + b"}", b"\x00"))
    with pytest.raises(bc.FileFormatError, match="twice"):
        open_safetensors(path)


def _rewrite(path, edit) -> None:
    """Apply ``edit(header_dict)`` to a file's header and write it back (data unchanged)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body + raw[8 + n :])


def _config_edit(change):
    def edit(header):
        config = json.loads(header["__metadata__"]["w.config"])
        change(config)
        header["__metadata__"]["w.config"] = json.dumps(config)

    return edit


def _set(header, key, value):
    header["__metadata__"][key] = value


CONFIG_CASES = {
    "config not json": (lambda h: _set(h, "w.config", "{not json"), "not valid JSON"),
    "config not an object": (lambda h: _set(h, "w.config", "[1]"), "JSON object"),
    "unknown recipe": (_config_edit(lambda c: c["recipe"].update(name="os.system")), "unknown recipe"),
    "bad recipe field": (
        _config_edit(lambda c: c["recipe"]["fields"].update(scale_rounding="up")),
        "scale_rounding",
    ),
    "unknown layout": (_config_edit(lambda c: c["layout"].update(name="PerGalaxy")), "unknown layout"),
    "layout does not fit": (
        _config_edit(lambda c: c.update(layout={"name": "PerBlockK", "k": 16})),
        "cannot use",
    ),
    "shape disagrees with data": (_config_edit(lambda c: c.update(shape=[8, 64])), "need"),
    "newer version": (_config_edit(lambda c: c.update(version=2)), "newer"),
    "unknown key": (_config_edit(lambda c: c.update(code="print(1)")), "keys"),
    "bad dtype": (_config_edit(lambda c: c.update(dtype="object")), "dtype"),
    "missing part": (lambda h: h.update({"w.scale2": h.pop("w.scale")}), "no 'w.scale'"),
    "wrong data dtype": (lambda h: h["w.data"].update(dtype="I8"), "F8_E4M3"),
    "stray part": (lambda h: h.update({"w.zero_point": h.pop("extra")}), "zero_point"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_configs_are_rejected(tmp, case):
    edit, match = CONFIG_CASES[case]
    path = os.path.join(tmp, "cfg.safetensors")
    w = scaled("numpy", bc.MXFP8BlockScaling(), None, (4, 64))
    save_safetensors({"w": w, "extra": np.zeros(4, np.float32)}, path)
    _rewrite(path, edit)
    with pytest.raises(bc.FileFormatError, match=match) as info:
        load_safetensors(path)
    assert path in str(info.value) and "'w" in str(info.value)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fp8_parts_stored_as_uint8_bits_load(tmp, framework):
    """A writer without fp8 dtypes may store FP8 data and E8M0 scales as U8: same bits, right dtypes."""
    path = os.path.join(tmp, "u8.safetensors")
    w = scaled("numpy", bc.MXFP8BlockScaling(), None, (4, 64))
    save_safetensors({"w": w}, path)
    _rewrite(path, lambda h: [h[k].update(dtype="U8") for k in ("w.data", "w.scale")])
    loaded = load_safetensors(path, framework)["w"]
    assert_same_bits(loaded, w)
    if framework != "mlx":
        assert str(loaded.data.dtype).endswith("float8_e4m3fn")
        assert str(loaded.scale.dtype).endswith("float8_e8m0fnu")


def _index_edit(tmp, edit):
    tensors = {"a": np.zeros(100, np.float32), "c": np.ones(100, np.float32), "b": np.ones(300, np.float32)}
    save_safetensors(tensors, tmp, max_shard_size=1000)  # shards: [a, c], [b]
    index_path = os.path.join(tmp, "model.safetensors.index.json")
    index = json.loads(Path(index_path).read_text())
    edit(index)
    with open(index_path, "w") as f:
        json.dump(index, f)
    return index_path


INDEX_CASES = {
    "path traversal": (
        lambda i: i["weight_map"].update(a="../../etc/passwd"),
        "inside the index's directory",
    ),
    "absolute path": (lambda i: i["weight_map"].update(a="/etc/passwd"), "inside the index's directory"),
    "missing shard": (
        lambda i: i["weight_map"].update(a="model-00009-of-00009.safetensors"),
        "does not exist",
    ),
    "wrong shard": (lambda i: i["weight_map"].update(a=i["weight_map"]["b"]), "does not hold"),
    "unlisted tensor": (lambda i: i["weight_map"].pop("a"), "does not list"),
    "no weight_map": (lambda i: i.pop("weight_map"), "weight_map"),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_bad_indexes_are_rejected(tmp, case):
    edit, match = INDEX_CASES[case]
    index_path = _index_edit(tmp, edit)
    with pytest.raises(bc.FileFormatError, match=match) as info:
        open_safetensors(tmp)
    assert index_path in str(info.value)


# --- fuzzing ---------------------------------------------------------------------------------------


def _fuzz_seed_file() -> bytes:
    path = tempfile.mktemp(suffix=".safetensors", dir="/tmp")
    try:
        save_safetensors(
            {
                "w": scaled("numpy", bc.NVFP4BlockScaling(), None, (2, 32)),
                "q": scaled("numpy", bc.Int8Scaling(group_size=16, symmetric=False), None, (2, 32)),
                "p": np.arange(6, dtype=np.float32),
            },
            path,
            {"note": "x"},
        )
        return Path(path).read_bytes()
    finally:
        os.remove(path)


SEED = _fuzz_seed_file()
HEADER_END = 8 + struct.unpack("<Q", SEED[:8])[0]

byte_edits = st.lists(
    st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=4
).map(lambda edits: ("bytes", edits))
header_edits = st.lists(
    st.tuples(st.integers(8, HEADER_END - 1), st.sampled_from(b'{}[]",:0123456789-.eE tnrufals\\')),
    min_size=1,
    max_size=3,
).map(lambda edits: ("bytes", edits))
truncations = st.integers(0, len(SEED) - 1).map(lambda n: ("cut", n))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
field_edits = st.tuples(
    st.integers(0, 100), st.sampled_from(["dtype", "shape", "data_offsets", "config"]), json_values
).map(lambda e: ("field", e))


def _mutate(kind_and_edit) -> bytes:
    kind, edit = kind_and_edit
    if kind == "cut":
        return SEED[:edit]
    if kind == "bytes":
        out = bytearray(SEED)
        for position, value in edit:
            out[position] = value
        return bytes(out)
    index, field, value = edit
    header = json.loads(SEED[8:HEADER_END])
    names = sorted(k for k in header if k != "__metadata__")
    name = names[index % len(names)]
    if field == "config":
        key = sorted(k for k in header["__metadata__"] if k.endswith(".config"))[index % 2]
        config = json.loads(header["__metadata__"][key])
        path = [("recipe",), ("recipe", "fields"), ("layout",), ("shape",), ("dtype",)][index % 5]
        target = config
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
        header["__metadata__"][key] = json.dumps(config)
    else:
        header[name][field] = value
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + SEED[HEADER_END:]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(byte_edits, header_edits, truncations, field_edits))
def test_fuzzed_files_raise_only_breccia_errors(tmp, mutation):
    """Mutated valid files: only breccia errors come out, and the header verdict is safetensors' own."""
    path = os.path.join(tmp, "fuzz.safetensors")
    with open(path, "wb") as f:
        f.write(_mutate(mutation))
    try:
        read_header(path)
        ours = "accepts"
    except bc.FileFormatError as exc:
        ours = "duplicate" if "twice" in str(exc) else "rejects"
    try:
        safe_open(path, framework="np")
        theirs = "accepts"
    except safetensors.SafetensorError:
        theirs = "rejects"
    assert ours in (theirs, "duplicate"), f"breccia {ours}, safetensors {theirs}"
    try:
        with open_safetensors(path) as m:
            for name in m.tensor_names():
                m.read_tensor(name)
            for name in m:
                m[name]
        load_safetensors(path, "torch")
        load_plain_safetensors(path, "mlx")
    except bc.BrecciaError:
        pass


# --- CUDA ------------------------------------------------------------------------------------------


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_cuda_round_trip(tmp, framework):
    import jax

    original = scaled("torch", bc.MXFP8BlockScaling(), None, (64, 128))
    on_gpu = original.replace_arrays(*(None if a is None else a.cuda() for a in original.arrays))
    path = os.path.join(tmp, "gpu.safetensors")
    save_safetensors({"w": on_gpu}, path)
    device = "cuda" if framework == "torch" else jax.devices("gpu")[0]
    loaded = load_safetensors(path, framework, device=device)["w"]
    assert "cuda" in str(loaded.device).lower() or "gpu" in str(loaded.device).lower()
    assert_same_bits(loaded, original)
