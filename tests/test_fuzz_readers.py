"""Property-based fuzzing of the readers breccia owns, checking values, not only exception types.

For each reader (plain safetensors, breccia's ScaledTensor metadata, DeepSeek-V3 FP8 checkpoints) a
valid seed file is mutated (bytes flipped, the file cut or extended, header and config fields
rewritten). A mutated file may be refused, but only with a :class:`breccia.BrecciaError`; a file that
is accepted must decode to exactly what an independent reference decoder, written here with plain
json, numpy and ml_dtypes, says the bytes mean. The reference decoder knows the formats from their
specifications, not from breccia's code.

``BRECCIA_FUZZ_EXAMPLES`` sets the examples per reader (default 40, about 20 s in all); the counts of
a long run are in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import math
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import breccia as bc
from breccia.bridges import load_deepseek_v3, open_safetensors, save_safetensors

EXAMPLES = int(os.environ.get("BRECCIA_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)

# --- the reference decoder ------------------------------------------------------------------------

REF_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
}


class Invalid(Exception):
    """The reference decoder's verdict: these bytes are not a valid file."""


def _ref_json(text: str):
    def no_constants(token):
        raise Invalid(f"JSON constant {token}")

    def unique(pairs):
        if len({k for k, _ in pairs}) != len(pairs):
            raise Invalid("repeated key")
        return dict(pairs)

    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=unique)
    except (ValueError, RecursionError) as exc:
        raise Invalid(str(exc)) from None


def ref_read(raw: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors (byte-dtype tensors only) and ``__metadata__`` of a safetensors file, per the spec:
    u64 length, UTF-8 JSON header, tensors tiling the rest of the file exactly."""
    if len(raw) < 8:
        raise Invalid("short")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > 100_000_000 or 8 + n > len(raw):
        raise Invalid("header length")
    try:
        header = _ref_json(raw[8 : 8 + n].decode("utf-8"))
    except UnicodeDecodeError:
        raise Invalid("utf-8") from None
    if not isinstance(header, dict):
        raise Invalid("header not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise Invalid("metadata")
    data = raw[8 + n :]
    spans = []
    out = {}
    for name, info in header.items():
        if not isinstance(info, dict) or info.get("dtype") not in REF_DTYPES:
            raise Invalid(f"entry {name!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        ints = lambda v: isinstance(v, list) and all(type(d) is int and d >= 0 for d in v)  # noqa: E731
        if not ints(shape) or not ints(offsets) or len(offsets) != 2:
            raise Invalid(f"entry {name!r}")
        dtype = REF_DTYPES[info["dtype"]]
        begin, end = offsets
        if math.prod(shape) * dtype.itemsize != end - begin or end > len(data):
            raise Invalid(f"size of {name!r}")
        spans.append((begin, end))
        out[name] = np.frombuffer(data[begin:end], dtype).reshape(shape)
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise Invalid("offsets do not tile")
        position = end
    if position != len(data):
        raise Invalid("trailing bytes")
    return out, metadata


def _bits(a) -> bytes:
    return np.ascontiguousarray(np.asarray(a)).tobytes()


def _same_values(got: np.ndarray, want: np.ndarray) -> bool:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return got.shape == want.shape and np.array_equal(got, want, equal_nan=True)


# --- mutations ------------------------------------------------------------------------------------


def _header_of(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _with_header(header: dict, rest: bytes) -> bytes:
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body + rest


FIELD_VALUES = st.one_of(
    st.integers(-2, 300),
    st.sampled_from([0, 1, 2, 3, 4, 16, 32, 64, 128, 2**16, 2**31, 2**40, 2**63, 2**64, -1]),
    st.sampled_from(
        ["E4M3", "E5M2", "floor", "ceil", "te", "mlx", "torchao", "breccia", "deepseek", "x", None]
    ),
    st.sampled_from([True, False, 1.5, [], {}]),
)


@st.composite
def mutations(draw, entry_keys: tuple[str, ...] = ("dtype", "shape", "data_offsets")):
    """A function bytes -> bytes: one of byte flips, a cut or an extension, or a header field edit."""
    kind = draw(st.sampled_from(["flip", "data", "data", "resize", "entry", "config"]))
    if kind in ("flip", "data"):  # anywhere, or only in the tensor bytes after the header
        flips = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))

        def mutate(raw: bytes) -> bytes:
            b = bytearray(raw)
            start = 8 + struct.unpack("<Q", raw[:8])[0] if kind == "data" else 0
            for pos, value in flips:
                b[start + pos % (len(b) - start)] = value
            return bytes(b)

        return mutate
    if kind == "resize":
        delta = draw(st.integers(-64, 64))
        return lambda raw: raw[:delta] if delta < 0 else raw + b"\0" * delta
    pick = draw(st.integers(0, 100))
    if kind == "entry":
        key = draw(st.sampled_from(entry_keys))
        value = draw(
            st.one_of(
                st.sampled_from([*list(REF_DTYPES), "F4", "F6_E2M3", "XX"]),
                st.lists(st.integers(0, 70), max_size=4),
                st.lists(st.sampled_from([0, 1, 2**31, 2**32, 2**62, 2**64 - 1]), max_size=3),
            )
        )

        def mutate(raw: bytes) -> bytes:
            header, rest = _header_of(raw)
            names = sorted(k for k in header if k != "__metadata__")
            header[names[pick % len(names)]][key] = value
            return _with_header(header, rest)

        return mutate
    path = draw(st.sampled_from(["recipe", "layout", "shape", "dtype"]))
    value = draw(FIELD_VALUES)
    sub = draw(st.integers(0, 100))

    def mutate(raw: bytes) -> bytes:
        header, rest = _header_of(raw)
        metadata = header.get("__metadata__") or {}
        keys = sorted(metadata)
        if not keys:
            return raw
        config = json.loads(metadata[keys[pick % len(keys)]])
        target = config[path]
        if isinstance(target, dict):
            fields = sorted(target)
            target[fields[sub % len(fields)]] = value
        elif isinstance(target, list) and target:
            target[sub % len(target)] = value
        else:
            config[path] = value
        metadata[keys[pick % len(keys)]] = json.dumps(config)
        return _with_header(header, rest)

    return mutate


# --- reader 1: plain safetensors ------------------------------------------------------------------


def _plain_seed(tmp_path) -> bytes:
    rng = np.random.default_rng(7)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "bf16": rng.standard_normal((4,)).astype(ml_dtypes.bfloat16),
        "i8": rng.integers(-128, 127, (2, 3), dtype=np.int8),
        "e4m3": rng.standard_normal((2, 4)).astype(ml_dtypes.float8_e4m3fn),
        "u16": rng.integers(0, 2**16, (3,), dtype=np.uint16),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.float64(2.5).reshape(()),
    }
    path = tmp_path / "seed.safetensors"
    save_safetensors(tensors, path)
    return path.read_bytes()


@FUZZ
@given(mutation=mutations())
def test_plain_safetensors_reader_values(tmp_path, mutation):
    raw = mutation(_plain_seed(tmp_path))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(raw)
    try:
        with open_safetensors(path) as m:
            got = {name: m.read_tensor(name) for name in m.tensor_names()}
    except bc.BrecciaError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted, values checked")
    want, _ = ref_read(raw)  # raises Invalid (the test fails) if breccia accepted a broken file
    assert sorted(got) == sorted(want)
    for name, array in got.items():
        assert array.shape == want[name].shape and _bits(array) == _bits(want[name]), name


# --- reader 2: breccia's ScaledTensor metadata ----------------------------------------------------

_ELEMENT = {  # recipe name -> how the data part decodes
    "Float8CurrentScaling": "fp8",
    "DelayedScaling": "fp8",
    "Float8BlockScaling": "fp8",
    "MXFP8BlockScaling": "fp8",
    "MXFP4BlockScaling": "e2m1",
    "NVFP4BlockScaling": "e2m1",
    "Int8Scaling": "int8",
    "Int4Scaling": "int4",
}
_SCALE = {
    "MXFP8BlockScaling": ml_dtypes.float8_e8m0fnu,
    "MXFP4BlockScaling": ml_dtypes.float8_e8m0fnu,
    "NVFP4BlockScaling": ml_dtypes.float8_e4m3fn,
}


def _ref_block(layout: dict, shape: list[int]) -> list[int]:
    name, n = layout["name"], len(shape)
    if name == "PerTensor":
        return [max(d, 1) for d in shape]
    if name == "PerRow":
        return [1] * (n - 1) + [max(shape[-1], 1)]
    if name == "PerBlockK":
        return [1] * (n - 1) + [layout["k"]]
    if name == "PerBlock2D":
        return [1] * (n - 2) + [layout["m"], layout["k"]]
    raise Invalid(f"layout {name}")


def _ref_elements(kind: str, recipe: dict, data: np.ndarray, shape: list[int]) -> np.ndarray:
    if kind == "fp8":
        fmt = (
            ml_dtypes.float8_e5m2
            if recipe.get("fields", {}).get("fp8_format") == "E5M2"
            else ml_dtypes.float8_e4m3fn
        )
        return data.view(np.uint8).view(fmt).astype(np.float32)
    if kind == "int8":
        return data.view(np.int8).astype(np.float32)
    codes = data.view(np.uint8)
    nibbles = np.stack([codes & 15, codes >> 4], axis=-1).reshape(*codes.shape[:-1], -1)[..., : shape[-1]]
    if kind == "e2m1":
        return nibbles.astype(np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    return ((nibbles.astype(np.int16) ^ 8) - 8).astype(np.float32)  # two's complement int4


def _spread(values: np.ndarray, block: list[int], shape: list[int]) -> np.ndarray:
    for axis, (b, n) in enumerate(zip(block, shape)):
        values = np.repeat(values, b, axis=axis).take(np.arange(n), axis=axis)
    return values


def ref_scaled(tensors: dict[str, np.ndarray], name: str, config_text: str) -> np.ndarray:
    """The float32 values of ScaledTensor ``name``, from its parts and its ``.config`` JSON."""
    config = _ref_json(config_text)
    recipe, layout, shape = config["recipe"], config["layout"], config["shape"]
    kind = _ELEMENT.get(recipe.get("name"))
    if kind is None:
        raise Invalid("recipe")
    fields = recipe.get("fields", {})
    shape = list(shape) if shape else [1]
    data, scale = tensors[name + ".data"], tensors[name + ".scale"]
    stored = [*shape[:-1], (shape[-1] + 1) // 2] if kind in ("e2m1", "int4") else shape
    if list(data.reshape(stored).shape) != stored:
        raise Invalid("data shape")
    block = _ref_block(layout, shape)
    grid = [-(-n // b) for n, b in zip(shape, block)]
    if list(scale.shape if config["shape"] else [1]) != grid:
        raise Invalid("scale shape")
    values = _ref_elements(kind, recipe, data.reshape(stored), shape)
    scale_dtype = _SCALE.get(recipe["name"])
    s = (scale.view(np.uint8).view(scale_dtype) if scale_dtype else scale).astype(np.float32).reshape(grid)
    if recipe["name"] == "NVFP4BlockScaling":
        s = s * np.float32(tensors[name + ".global_scale"].astype(np.float32).reshape(()))
    if fields.get("convention") == "mlx":  # MLX affine: q_u * s + bias, rounded in the scale's dtype
        zp = tensors[name + ".zero_point"].astype(np.float32).reshape(grid)
        q_u = values + np.float32(8 if kind == "int4" else 128)
        product = q_u * _spread(s, block, shape)
        half = scale.dtype if scale.dtype != np.float32 else None
        if half is not None:
            product = product.astype(half).astype(np.float32)
        out = product + _spread(zp, block, shape)
        return out.astype(half).astype(np.float32) if half is not None else out
    if name + ".zero_point" in tensors:
        zp = tensors[name + ".zero_point"].astype(np.float32).reshape(grid)
        return (values - _spread(zp, block, shape)) * _spread(s, block, shape)
    return values * _spread(s, block, shape)


def _scaled_seed(tmp_path) -> bytes:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 70)).astype(np.float32)
    recipes = {
        "cur": (bc.Float8CurrentScaling(), None),
        "tile": (bc.Float8BlockScaling(block_k=32, block_m=32), bc.PerBlock2D(32, 32)),
        "mx8": (bc.MXFP8BlockScaling(), None),
        "mx4": (bc.MXFP4BlockScaling(), None),
        "nv": (bc.NVFP4BlockScaling(), None),
        "i8": (bc.Int8Scaling(), None),
        "i4": (bc.Int4Scaling(group_size=32, symmetric=False), None),
        "mlx": (bc.Int4Scaling(group_size=32, symmetric=False, convention="mlx"), None),
    }
    tensors = {}
    for name, (recipe, layout) in recipes.items():
        src = x[:, :64] if name == "mlx" else x
        tensors[name] = bc.cast(src.astype(ml_dtypes.bfloat16) if name == "mlx" else src, recipe, layout)
    path = tmp_path / "scaled.safetensors"
    save_safetensors(tensors, path)
    return path.read_bytes()


def _frameworks() -> list[str]:
    import importlib.util

    return ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])


@FUZZ
@given(mutation=mutations(), framework=st.sampled_from(_frameworks()))
def test_breccia_metadata_reader_values(tmp_path, mutation, framework):
    raw = mutation(_scaled_seed(tmp_path))
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(raw)
    try:
        with open_safetensors(path, framework) as m:
            got = {name: m[name] for name in m.scaled_names()}
            values = {name: np.asarray(bc.dequantize(st_, "float32")) for name, st_ in got.items()}
    except bc.BrecciaError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted, values checked")
    tensors, metadata = ref_read(raw)
    for name, value in values.items():
        want = ref_scaled(tensors, name, metadata[name + ".config"])
        assert _same_values(value.reshape(want.shape) if want.size == value.size else value, want), name


# --- reader 3: DeepSeek-V3 FP8 checkpoints --------------------------------------------------------


def _deepseek_seed(root) -> None:
    rng = np.random.default_rng(5)
    weight = (rng.standard_normal((70, 150)) * 40).astype(ml_dtypes.float8_e4m3fn)
    scale = rng.uniform(0.001, 0.01, (1, 2)).astype(np.float32)
    root.mkdir(exist_ok=True)
    save_safetensors(
        {
            "w.weight": weight,
            "w.weight_scale_inv": scale,
            "norm": rng.standard_normal(8).astype(ml_dtypes.bfloat16),
        },
        root / "model.safetensors",
    )


def ref_deepseek(tensors: dict[str, np.ndarray], block: int) -> dict[str, np.ndarray]:
    """DeepSeek's ``weight_dequant``: ``W[i, j] = fp32(Wq[i, j]) * S[i // b, j // b]`` for every FP8
    tensor with a positive, finite ``*_scale_inv`` of shape ``ceil(M/b) x ceil(K/b)``."""
    out = {}
    for name, value in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if value.dtype != np.dtype(ml_dtypes.float8_e4m3fn):
            out[name] = value.astype(np.float32)
            continue
        scale = tensors[name + "_scale_inv"].astype(np.float32)
        if value.ndim != 2 or list(scale.shape) != [-(-d // block) for d in value.shape]:
            raise Invalid("scale shape")
        if not (np.isfinite(scale) & (scale > 0)).all():
            raise Invalid("bad scale")
        full = np.repeat(np.repeat(scale, block, 0), block, 1)[: value.shape[0], : value.shape[1]]
        out[name] = value.astype(np.float32) * full
    return out


@FUZZ
@given(
    mutation=mutations(("dtype", "shape")),
    block=st.one_of(st.none(), st.sampled_from([128, 64, 256, 1, 2**20, 0, -1, "128", [1, 2]])),
)
def test_deepseek_reader_values(tmp_path, mutation, block):
    root = tmp_path / "ds"
    _deepseek_seed(root)
    raw = mutation((root / "model.safetensors").read_bytes())
    (root / "model.safetensors").write_bytes(raw)
    config = {"quantization_config": {"quant_method": "fp8"}}
    if block is not None:
        config["quantization_config"]["weight_block_size"] = [block, block]
    (root / "config.json").write_text(json.dumps(config))
    try:
        with load_deepseek_v3(root) as m:
            got = {
                name: np.asarray(bc.dequantize(v, "float32") if isinstance(v, bc.ScaledTensor) else v)
                for name, v in ((n, m[n]) for n in m)
            }
    except bc.BrecciaError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted, values checked")
    tensors, _ = ref_read(raw)
    want = ref_deepseek(tensors, 128 if block is None else block)
    assert sorted(got) == sorted(want)
    for name in got:
        assert _same_values(got[name], want[name]), name


def test_reference_decoders_agree_with_breccia_on_the_seeds(tmp_path):
    """The seeds themselves: every reader's values equal the reference's (so the fuzz tests can fail)."""
    raw = _scaled_seed(tmp_path)
    tensors, metadata = ref_read(raw)
    with open_safetensors(tmp_path / "scaled.safetensors") as m:
        assert len(m.scaled_names()) == 8
        for name in m.scaled_names():
            assert _same_values(
                bc.dequantize(m[name], "float32"), ref_scaled(tensors, name, metadata[name + ".config"])
            )
    _deepseek_seed(tmp_path / "ds")
    tensors, _ = ref_read((tmp_path / "ds" / "model.safetensors").read_bytes())
    want = ref_deepseek(tensors, 128)
    with load_deepseek_v3(tmp_path / "ds") as m:
        assert _same_values(bc.dequantize(m["w.weight"], "float32"), want["w.weight"])
    with pytest.raises(Invalid):
        ref_read(raw[:-1])
