"""Property-based fuzzing of ``breccia.mlx.load_mlx_model``: MLX model directories, values checked.

Seed directories are written by ``export_mlx_model`` (affine 4 and 8 bits, mxfp8, mxfp4, nvfp4; one
shard, or three with an index). Each example mutates config.json (its ``quantization`` fields, a
per-layer entry, its bytes, its type, its nesting), a shard (bytes flipped, cut or extended, header
entries rewritten) or the index. ``load_mlx_model`` may refuse the directory, but only with a
:class:`breccia.BrecciaError`; a directory it accepts must give exactly the values of an independent
reference: the safetensors reader of ``test_fuzz_readers`` (json and numpy) and ``mx.dequantize`` of
the stored arrays with the config's parameters, which is what mlx-lm runs.

``BRECCIA_FUZZ_EXAMPLES`` sets the examples (default 40, about 10 s); counts of a long run are in
``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from test_fuzz_readers import FUZZ, Invalid, _header_of, _ref_json, _with_header, ref_read

mx = pytest.importorskip("mlx.core")

import breccia as bc  # noqa: E402
from breccia.errors import FileMissingError, PathTypeError, ScaleValueError  # noqa: E402
from breccia.mlx import export_mlx_model, load_mlx_model  # noqa: E402

INDEX = "model.safetensors.index.json"
SEEDS = [("affine", 32, 4), ("affine", 64, 8), ("mxfp8", 32, 8), ("mxfp4", 32, 4), ("nvfp4", 16, 4)]


def _state() -> dict:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 128)).astype(np.float32) * rng.uniform(0.01, 10, (8, 1)).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero group
    return {
        "layers.0.q.weight": mx.array(w),
        "layers.0.o.weight": mx.array(w[:, :64] * 3).astype(mx.bfloat16),
        "layers.0.o.bias": mx.array(w[0, :8]),
        "norm.weight": mx.array(w[1]).astype(mx.bfloat16),
        "embed.weight": mx.array(w[:4, :24].astype(np.float16)),  # 24 columns: no group fits, kept
    }


def _seed(root, mode: str, group: int, bits: int, sharded: bool) -> None:
    export_mlx_model(
        _state(), root, mode, group_size=group, bits=bits, config={"model_type": "fuzz", "hidden_size": 128},
        max_shard_bytes=700 if sharded else 5 << 30,
    )


# --- the reference ----------------------------------------------------------------------------------


def _ref_config(root) -> dict:
    try:
        config = _ref_json((root / "config.json").read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise Invalid("config.json is not UTF-8") from None
    if not isinstance(config, dict):
        raise Invalid("config.json is not an object")
    return config


def _ref_tensors(root) -> dict[str, np.ndarray]:
    """Every stored tensor: the index's shards (each tensor where the index says, every tensor listed,
    no stray model shard beside them), or the one model.safetensors."""
    names = [p.name for p in root.iterdir()]
    shards = sorted(n for n in names if n.startswith("model-") or n == "model.safetensors")
    weight_map = None
    if (root / INDEX).exists():
        index = _ref_json((root / INDEX).read_bytes().decode("utf-8"))
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or sorted(set(weight_map.values())) != shards:
            raise Invalid("index")
    elif shards != ["model.safetensors"]:
        raise Invalid("shards")
    out: dict[str, np.ndarray] = {}
    for shard in shards:
        tensors, _ = ref_read((root / shard).read_bytes())
        for name, value in tensors.items():
            if name in out or (weight_map is not None and weight_map.get(name) != shard):
                raise Invalid(f"{name} misplaced")
            out[name] = value
    if weight_map is not None and set(weight_map) != set(out):
        raise Invalid("index lists a tensor no shard holds")
    return out


def _host(a) -> np.ndarray:
    """An MLX array as numpy, the same dtype (bfloat16 through its bits)."""
    if a.dtype == mx.bfloat16:
        return np.array(a.view(mx.uint16)).view(ml_dtypes.bfloat16)
    return np.array(a)


def _mx(a: np.ndarray):
    """A stored tensor as MLX holds it: bfloat16 through its bits, FP8 (which MLX lacks) as uint8 bits."""
    if a.dtype.name.startswith("float8"):
        return mx.array(a.view(np.uint8))
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return mx.array(a.view(np.uint16)).view(mx.bfloat16)
    return mx.array(a)


def ref_mlx(root) -> tuple[dict[str, np.ndarray], dict]:
    """(name -> values: mx.dequantize's for quantized layers, the stored array otherwise; the
    config), or Invalid."""
    config = _ref_config(root)
    tensors = _ref_tensors(root)
    quantized = [n for n in tensors if n.endswith(".weight") and n[: -len("weight")] + "scales" in tensors]
    parts = {n[: -len("weight")] + p for n in quantized for p in ("scales", "biases", "global_scale")}
    out = {n: v for n, v in tensors.items() if n not in parts}
    q = config.get("quantization")
    for name in quantized:
        if not isinstance(q, dict):
            raise Invalid("no quantization entry")
        prefix = name[: -len("weight")]
        layer = q.get(prefix[:-1])
        settings = layer if isinstance(layer, dict) else q
        mode, group, bits = settings.get("mode", "affine"), settings.get("group_size"), settings.get("bits")
        if not isinstance(mode, str) or type(group) is not int or type(bits) is not int:
            raise Invalid("quantization parameters")
        scales = tensors[prefix + "scales"]
        if mode in ("mxfp4", "mxfp8") and scales.itemsize == 1 and (scales.view(np.uint8) == 255).any():
            raise Invalid("E8M0 byte 255")  # NaN in OCP MX, +inf in MLX
        extra = {k: _mx(tensors[prefix + k]) for k in ("biases", "global_scale") if prefix + k in tensors}
        try:
            values = mx.dequantize(
                _mx(tensors[name]), _mx(tensors[prefix + "scales"]), extra.get("biases"),
                group_size=group, bits=bits, mode=mode, global_scale=extra.get("global_scale"),
            )
            out[name] = _host(values)
        except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
            raise Invalid(f"mx.dequantize: {exc}") from None
    return out, config


def _values(value) -> np.ndarray:
    """What breccia returned, as numpy: a ScaledTensor dequantized (in its own dtype) or the array."""
    return _host(bc.dequantize(value) if isinstance(value, bc.ScaledTensor) else value)


FLOATS = ("bfloat16", "float16", "float32", "float64")


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    """Same shape and dtype (FP8 as its uint8 bits), and the same values (floats) or bytes (the rest)."""
    if want.dtype.name.startswith("float8"):
        want = want.view(np.uint8)
    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if got.dtype.name in FLOATS:
        with np.errstate(invalid="ignore"):
            return np.array_equal(got.astype(np.float64), want.astype(np.float64), equal_nan=True)
    return got.tobytes() == want.tobytes()


# --- mutations ------------------------------------------------------------------------------------

VALUES = st.sampled_from(
    [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64, 128, 2**31, 2**64, "4", 4.0, 4.5, True, None, [], {},
     "affine", "mxfp4", "mxfp8", "nvfp4", "x"]
)
KEYS = st.sampled_from(["group_size", "bits", "mode"])
LAYERS = st.sampled_from(["layers.0.q", "layers.0.o", "norm", "embed"])


@st.composite
def config_mutations(draw):
    """A function config dict/text -> bytes."""
    kind = draw(st.sampled_from(["field", "field", "drop", "layer", "entry", "bytes", "shape"]))
    if kind in ("field", "drop"):
        key, value = draw(KEYS), draw(VALUES)

        def edit(config):
            q = config["quantization"]
            if kind == "drop":
                q.pop(key, None)
            else:
                q[key] = value
            return config
    elif kind == "layer":
        layer = draw(LAYERS)
        entry = draw(st.one_of(st.booleans(), st.dictionaries(KEYS, VALUES, max_size=3)))

        def edit(config):
            config["quantization"][layer] = entry
            return config
    elif kind == "entry":
        value = draw(st.sampled_from([None, [], "affine", 4, {}, {"bits": 4}]))

        def edit(config):
            config["quantization"] = value
            return config
    elif kind == "shape":
        text = draw(st.sampled_from(["[]", "4", '"x"', "null", "[" * 100_000 + "]" * 100_000, "", "{"]))
        return lambda raw: text.encode()
    else:
        flips = draw(st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), min_size=1, max_size=3))

        def flip(raw: bytes) -> bytes:
            b = bytearray(raw)
            for pos, value in flips:
                b[pos % len(b)] = value
            return bytes(b)

        return flip
    return lambda raw: json.dumps(edit(json.loads(raw))).encode()


@st.composite
def shard_mutations(draw):
    """A function bytes -> bytes for a safetensors shard."""
    kind = draw(st.sampled_from(["flip", "data", "data", "resize", "entry"]))
    if kind in ("flip", "data"):
        flips = draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))

        def mutate(raw: bytes) -> bytes:
            b = bytearray(raw)
            start = 8 + int.from_bytes(raw[:8], "little") if kind == "data" else 0
            for pos, value in flips:
                b[start + pos % (len(b) - start)] = value
            return bytes(b)

        return mutate
    if kind == "resize":
        delta = draw(st.integers(-64, 64))
        return lambda raw: raw[:delta] if delta < 0 else raw + b"\0" * delta
    pick, key = draw(st.integers(0, 100)), draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    value = draw(
        st.one_of(
            st.sampled_from(["U32", "U8", "I32", "F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E8M0", "XX"]),
            st.lists(st.integers(0, 300), max_size=3),
            st.lists(st.sampled_from([0, 1, 2**31, 2**32, 2**62]), max_size=3),
        )
    )

    def mutate(raw: bytes) -> bytes:
        header, rest = _header_of(raw)
        names = sorted(k for k in header if k != "__metadata__")
        header[names[pick % len(names)]][key] = value
        return _with_header(header, rest)

    return mutate


@st.composite
def index_mutations(draw):
    """A function index bytes -> bytes: a tensor dropped from the weight map, or put in another shard."""
    pick, shard = draw(st.integers(0, 100)), draw(st.one_of(st.none(), st.integers(0, 100)))

    def mutate(raw: bytes) -> bytes:
        weight_map = json.loads(raw)["weight_map"]
        names, shards = sorted(weight_map), sorted(set(weight_map.values()))
        name = names[pick % len(names)]
        if shard is None:
            del weight_map[name]
        else:
            weight_map[name] = shards[shard % len(shards)]
        return json.dumps({"metadata": {}, "weight_map": weight_map}).encode()

    return mutate


# --- the property ---------------------------------------------------------------------------------


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    sharded=st.booleans(),
    target=st.sampled_from(["config", "shard", "shard", "index"]),
    which=st.integers(0, 2),
    data=st.data(),
)
def test_mlx_directory_reader_values(tmp_path_factory, seed, sharded, target, which, data):
    root = tmp_path_factory.mktemp("mlx")
    _seed(root, *seed, sharded)
    shards = sorted(p.name for p in root.iterdir() if p.name.endswith(".safetensors"))
    assert (len(shards) > 1) == sharded
    if target == "config":
        path, mutation = root / "config.json", data.draw(config_mutations())
    elif target == "index" and sharded:
        path, mutation = root / INDEX, data.draw(index_mutations())
    else:
        path, mutation = root / shards[which % len(shards)], data.draw(shard_mutations())
    path.write_bytes(mutation(path.read_bytes()))
    try:
        got, config = load_mlx_model(root)
        values = {name: _values(value) for name, value in got.items()}
    except bc.BrecciaError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("accepted, values checked")
    want, want_config = ref_mlx(root)  # raises Invalid (the test fails) if breccia accepted a broken one
    assert config == want_config
    assert sorted(values) == sorted(want)
    for name, value in values.items():
        assert _same(value, want[name]), name


def test_reference_agrees_with_load_mlx_model_on_the_seeds(tmp_path):
    """Unmutated seeds: every value equals the reference's, each quantized layer is a ScaledTensor, and
    the reference refuses what mlx-lm could not load (so the property can fail)."""
    for i, seed in enumerate(SEEDS):
        for sharded in (False, True):
            root = tmp_path / f"{i}{sharded}"
            _seed(root, *seed, sharded)
            got, config = load_mlx_model(root)
            want, want_config = ref_mlx(root)
            assert config == want_config and sorted(got) == sorted(want)
            assert isinstance(got["layers.0.q.weight"], bc.ScaledTensor)
            assert not isinstance(got["embed.weight"], bc.ScaledTensor)
            assert all(_same(_values(v), want[k]) for k, v in got.items())
    (root / "config.json").write_text(json.dumps({**config, "quantization": {"bits": 4.0, "group_size": 32}}))
    with pytest.raises(Invalid):
        ref_mlx(root)


@pytest.mark.parametrize(
    ("quantization", "message"),
    [
        ({"bits": 4.5}, "needs integer group_size and bits"),
        ({"mode": ["affine"]}, "a string mode"),
        (None, "no 'quantization' entry"),
        ({"bits": 8}, "does not fit config.json's mode"),
        ({"bits": 3}, "does not fit config.json's mode"),
        ({"mode": "zz"}, "unknown MLX quantization mode"),
    ],
)
def test_malformed_quantization_entries_name_what_is_wrong(tmp_path, quantization, message):
    _seed(tmp_path, "affine", 32, 4, False)
    config = json.loads((tmp_path / "config.json").read_text())
    if quantization is None:
        del config["quantization"]
    else:
        config["quantization"].update(quantization)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(bc.FileFormatError, match=message):
        load_mlx_model(tmp_path)


def test_broken_directories_are_breccia_errors(tmp_path):
    _seed(tmp_path / "d", "mxfp8", 32, 8, False)
    root = tmp_path / "d"
    with pytest.raises(FileMissingError):
        load_mlx_model(tmp_path / "nowhere")
    with pytest.raises(bc.FileFormatError, match="not a directory"):
        load_mlx_model(root / "model.safetensors")
    with pytest.raises(PathTypeError):
        load_mlx_model(None)
    (root / "config.json").write_bytes(b'{"quantization": "\xff"}')
    with pytest.raises(bc.FileFormatError, match="not valid JSON"):
        load_mlx_model(root)
    (root / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(bc.FileFormatError, match="nested too deeply"):
        load_mlx_model(root)
    os.remove(root / "config.json")
    with pytest.raises(bc.FileFormatError, match=r"has no config\.json"):
        load_mlx_model(root)
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "config.json")
        with pytest.raises(bc.FileFormatError, match="FIFO"):
            load_mlx_model(root)


def test_mx_scale_byte_255_is_refused_unless_asked(tmp_path):
    _seed(tmp_path, "mxfp4", 32, 4, False)
    path = tmp_path / "model.safetensors"
    header, rest = _header_of(path.read_bytes())
    begin, _ = header["layers.0.q.scales"]["data_offsets"]
    data = bytearray(rest)
    data[begin + 1] = 255
    path.write_bytes(_with_header(header, bytes(data)))
    with pytest.raises(ScaleValueError, match=r"'layers.0.q.weight': scale at block \(0, 1\)"):
        load_mlx_model(tmp_path)
    got, _ = load_mlx_model(tmp_path, check_scales=False)
    assert np.isnan(_values(got["layers.0.q.weight"])[0, 32:64]).all()
