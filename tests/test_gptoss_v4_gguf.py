"""gpt-oss MXFP4, DeepSeek-V4 and GGUF: read against each format's own decoder, write, transcode, refuse.

References: ``gguf.quants`` (gguf-py, bit-exact with ggml), transformers' gpt-oss CPU decoder
(``integrations/mxfp4.py``), mlx-lm's own loading of a gpt-oss directory, and DeepSeek's reference
dequantization (``W * 2**(S - 127)`` per tile, an E2M1 table per 32) written out below.
"""

from __future__ import annotations

import itertools
import json
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import deepseek_v4_config, deepseek_v4_tensors

import breccia as bc
from breccia.bridges import open_gguf, save_gguf
from breccia.checkpoints.deepseek_v4 import mxfp8_blocks
from breccia.errors import BrecciaError, FileFormatError, RecipeError

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
FUZZ_EXAMPLES = int(os.environ.get("BRECCIA_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _bits(a) -> np.ndarray:
    """float32 bits with -0 read as +0 (GGUF's E2M1 table has no -0; see _gguf's module doc)."""
    a = np.asarray(a, np.float32) + np.float32(0.0)
    return a.view(np.uint32)


def _write_raw_gguf(path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """A GGUF file written by gguf-py itself: name -> (type, float values to quantize or raw bytes)."""
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (kind, value) in tensors.items():
        if kind in ("F32", "F16"):
            w.add_tensor(name, value)
        elif value.dtype == np.uint8:
            w.add_tensor(name, value, raw_dtype=T[kind])
        else:
            w.add_tensor(name, gguf.quants.quantize(value, T[kind]), raw_dtype=T[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _nvfp4_bytes(rng, rows: int, k: int) -> np.ndarray:
    blocks = rng.integers(0, 256, (rows, k // 64, 36), dtype=np.uint8)
    blocks[..., :4] = rng.integers(0, 0x7F, (rows, k // 64, 4))  # ggml's UE4M3 bytes, 0x7F included
    blocks[0, 0, 0] = 0x7F
    return blocks.reshape(rows, -1)


@pytest.fixture
def values():
    x = np.random.default_rng(0).standard_normal((2, 3, 128)).astype(np.float32) * 3
    x[0, 0, :32] = 0.0
    x[1, 2, 64:96] *= 1e-30
    return x


# --- GGUF -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "MXFP4", "NVFP4", "F32", "F16", "BF16"])
def test_gguf_reads_as_gguf_quants_decodes_and_writes_the_same_bytes(tmp_path, values, kind):
    rng = np.random.default_rng(1)
    if kind == "NVFP4":
        value = _nvfp4_bytes(rng, 6, 128)
    elif kind == "BF16":
        value = gguf.quants.quantize(values, T.BF16)
    else:
        value = values.astype(np.float16) if kind == "F16" else values
    _write_raw_gguf(tmp_path / "a.gguf", {"t": (kind, value)})
    reference = gguf.GGUFReader(str(tmp_path / "a.gguf")).tensors[0]
    expected = gguf.quants.dequantize(reference.data, reference.tensor_type)
    got = open_gguf(tmp_path / "a.gguf")["t"]
    decoded = bc.dequantize(got, "float32") if isinstance(got, bc.ScaledTensor) else got
    assert np.array_equal(_bits(decoded).reshape(expected.shape), _bits(expected))
    save_gguf({"t": got}, tmp_path / "b.gguf")
    again = gguf.GGUFReader(str(tmp_path / "b.gguf")).tensors[0]
    assert again.tensor_type == reference.tensor_type
    assert np.array_equal(_bits(gguf.quants.dequantize(again.data, again.tensor_type)), _bits(expected))
    if kind != "NVFP4":  # NVFP4's UE4M3 byte 0x7F (read by ggml as 0) comes back as byte 0
        assert np.array_equal(
            np.asarray(again.data).view(np.uint8), np.asarray(reference.data).view(np.uint8)
        )


def test_gguf_checkpoint_lists_unknown_types_and_convert_refuses_them(tmp_path, values):
    rng = np.random.default_rng(2)
    q4k = rng.integers(0, 256, (2, 144), dtype=np.uint8)  # two rows of one Q4_K super-block
    (tmp_path / "src").mkdir()
    _write_raw_gguf(tmp_path / "src" / "m.gguf", {"a": ("Q8_0", values), "b": ("Q4_K", q4k)})
    ck = bc.open_checkpoint(tmp_path / "src" / "m.gguf")
    assert ck.format == "gguf" and "Q4_K (not decoded by breccia)" in ck.details
    assert list(ck) == ["a", "b"] and isinstance(ck["a"], bc.ScaledTensor)
    with pytest.raises(FileFormatError, match=r"'b' is Q4_K, a ggml type breccia does not decode"):
        ck["b"]
    with pytest.raises(FileFormatError, match="Q4_K"):
        bc.convert(tmp_path / "src" / "m.gguf", tmp_path / "out", to="bf16")
    assert not (tmp_path / "out").exists()
    (tmp_path / "ok").mkdir()
    _write_raw_gguf(tmp_path / "ok" / "m.gguf", {"a": ("Q8_0", values)})
    report = bc.convert(tmp_path / "ok" / "m.gguf", tmp_path / "out", to="float32")
    assert report.count("dequantized") == 1
    from breccia.bridges import load_plain_safetensors

    out = load_plain_safetensors(str(tmp_path / "out" / "model.safetensors"))
    assert np.array_equal(out["a"], gguf.quants.dequantize(gguf.quants.quantize(values, T.Q8_0), T.Q8_0))


def test_inspect_lists_gguf_types_it_does_not_decode_by_name(tmp_path, values, capsys):
    from breccia.cli import main
    from breccia.commands.inspect import inspect_checkpoint

    rng = np.random.default_rng(3)
    q4k = rng.integers(0, 256, (2, 2 * 144), dtype=np.uint8)  # [2, 512]: two Q4_K super-blocks per row
    q6k = rng.integers(0, 256, (3, 210), dtype=np.uint8)  # [3, 256]: one Q6_K super-block per row
    tensors = {"a": ("Q8_0", values), "k4": ("Q4_K", q4k), "b": ("F32", values[0]), "k6": ("Q6_K", q6k)}
    _write_raw_gguf(tmp_path / "m.gguf", tensors)
    fmt, rows = inspect_checkpoint(tmp_path / "m.gguf")
    assert fmt.startswith("format: gguf") and "Q4_K (not decoded by breccia)" in fmt and "Q6_K (not" in fmt
    by_name = {row["name"]: row for row in rows}
    assert list(by_name) == ["a", "k4", "b", "k6"]
    assert by_name["a"]["recipe"] is not None and by_name["a"]["nan"] == 0
    for name, kind, shape, raw in (("k4", "Q4_K", [2, 512], q4k), ("k6", "Q6_K", [3, 256], q6k)):
        row = by_name[name]
        assert row["decoded"] is False and row["dtype"] == kind and row["shape"] == shape
        assert row["bytes"] == raw.nbytes and row["recipe"] is None and row["nan"] is None
    rc = main(["inspect", str(tmp_path / "m.gguf")])
    out = capsys.readouterr().out
    assert rc == 0 and "- (Q4_K, not decoded)" in out and "- (Q6_K, not decoded)" in out
    total = sum(row["bytes"] for row in rows)
    assert out.rstrip().endswith(f"4 tensors (1 scaled, 1 plain, 2 not decoded), {total:,} bytes")
    rc = main(["inspect", "--json", str(tmp_path / "m.gguf")])
    assert rc == 0 and json.loads(capsys.readouterr().out) == rows


def _patch_first(path, old: bytes, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(old)
    data[at : at + len(old)] = new
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            (64).to_bytes(8, "little"),
            (48).to_bytes(8, "little"),
            r"tensor 't': .*rows of 48 .*Q8_0.*1.5 blocks",
        ),
        (
            int(T.Q8_0).to_bytes(4, "little") + b"\0" * 8,
            (77).to_bytes(4, "little") + b"\0" * 8,
            "ggml type 77",
        ),
    ],
    ids=["block count", "unknown type"],
)
def test_gguf_bad_headers_name_the_tensor_and_both_readings(tmp_path, old, new, message):
    _write_raw_gguf(tmp_path / "a.gguf", {"t": ("Q8_0", np.ones((4, 64), np.float32))})
    _patch_first(tmp_path / "a.gguf", old, new)
    with pytest.raises(FileFormatError, match=message):
        open_gguf(tmp_path / "a.gguf")


def test_gguf_refuses_what_it_cannot_hold_or_read(tmp_path):
    x = np.linspace(-3, 3, 2 * 64, dtype=np.float32).reshape(2, 64)
    with pytest.raises(RecipeError, match="not float16 values"):
        save_gguf({"w": bc.cast(x, bc.Int8Scaling(group_size=32))}, tmp_path / "a.gguf")
    with pytest.raises(RecipeError, match="global scale"):
        save_gguf({"w": bc.cast(x, bc.NVFP4BlockScaling())}, tmp_path / "a.gguf")
    with pytest.raises(RecipeError, match="no block type"):
        save_gguf({"w": bc.cast(x, bc.MXFP8BlockScaling())}, tmp_path / "a.gguf")
    x[0, 3] = np.nan
    with pytest.raises(RecipeError, match="NaN blocks"):
        save_gguf({"w": bc.cast(x, bc.MXFP4BlockScaling())}, tmp_path / "a.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written
    blocks = gguf.quants.quantize(np.ones((1, 32), np.float32), T.MXFP4)
    blocks[0, 0] = 255
    _write_raw_gguf(tmp_path / "n.gguf", {"t": ("MXFP4", blocks)})
    with pytest.raises(FileFormatError, match="byte 255 at block"):
        open_gguf(tmp_path / "n.gguf")["t"]


# --- gpt-oss ----------------------------------------------------------------------------------------

GPT_OSS = dict(
    num_hidden_layers=2,
    num_local_experts=4,
    num_experts_per_tok=2,
    vocab_size=128,
    hidden_size=64,
    intermediate_size=64,
    head_dim=16,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=8,
    layer_types=["sliding_attention", "full_attention"],
    max_position_embeddings=64,
)
EXPERTS = ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj")


def _gpt_oss_dir(path, *, mutate=None) -> dict[str, np.ndarray]:
    """A tiny gpt-oss MXFP4 directory from a random transformers GptOss; returns its stored tensors."""
    import torch
    import transformers

    from breccia.checkpoints._output import host_array

    torch.manual_seed(0)
    config = transformers.GptOssConfig(**GPT_OSS)
    model = transformers.GptOssForCausalLM(config).to(torch.bfloat16)
    stored = {}
    for name, p in model.state_dict().items():
        array = host_array(p.float().numpy()).astype(ml_dtypes.bfloat16)
        if name.endswith(
            (".experts.gate_up_proj", ".experts.down_proj")
        ):  # transformers holds [E, K, N]; the file holds [E, N, K] in MXFP4
            st = bc.cast(np.swapaxes(p.float().numpy(), 1, 2).copy(), bc.MXFP4BlockScaling())
            *lead, k = st.shape
            stored[name + "_blocks"] = np.asarray(st.data).reshape(*lead, k // 32, 16)
            stored[name + "_scales"] = np.asarray(st.scale).view(np.uint8)
        else:
            stored[name] = array
    quant = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}
    config_dict = {**config.to_dict(), "quantization_config": quant, "torch_dtype": "bfloat16"}
    if mutate is not None:
        mutate(stored, config_dict)
    os.makedirs(path, exist_ok=True)
    from safetensors.numpy import save_file

    save_file(stored, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_dict))
    return stored


def test_gpt_oss_reads_as_transformers_decodes(tmp_path):
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    stored = _gpt_oss_dir(tmp_path / "src")
    ck = bc.open_checkpoint(tmp_path / "src")
    assert ck.format == "gpt-oss-mxfp4" and set(EXPERTS) <= set(ck)
    for name in EXPERTS:
        reference = convert_moe_packed_tensors(
            torch.from_numpy(stored[name + "_blocks"]),
            torch.from_numpy(stored[name + "_scales"]),
            dtype=torch.float32,
        ).numpy()
        ours = np.swapaxes(np.asarray(bc.dequantize(ck[name], "float32")), 1, 2)
        assert np.array_equal(ours.view(np.uint32), reference.view(np.uint32))


def test_gpt_oss_round_trip_and_gguf_transcode_are_byte_exact(tmp_path):
    stored = _gpt_oss_dir(tmp_path / "src")
    report = bc.convert(tmp_path / "src", tmp_path / "out", to="gpt-oss-mxfp4")
    assert report.count("repacked") == 4
    again = bc.open_checkpoint(tmp_path / "out")
    raw = again.raw
    for name in EXPERTS:
        for part in ("_blocks", "_scales"):
            assert np.array_equal(raw.read_tensor(name + part), stored[name + part])
    src = bc.open_checkpoint(tmp_path / "src")
    save_gguf({name: src[name] for name in EXPERTS}, tmp_path / "e.gguf")
    reader = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "e.gguf")).tensors}
    back = open_gguf(tmp_path / "e.gguf")
    for name in EXPERTS:
        assert reader[name].tensor_type == T.MXFP4
        gg = gguf.quants.dequantize(reader[name].data, T.MXFP4)
        assert np.array_equal(_bits(gg), _bits(bc.dequantize(src[name], "float32")))
        from breccia.checkpoints.gpt_oss import mxfp4_parts

        blocks, scales = mxfp4_parts(name, back[name])
        assert np.array_equal(blocks, stored[name + "_blocks"]) and np.array_equal(
            scales, stored[name + "_scales"]
        )


def test_gpt_oss_to_bf16_is_what_transformers_loads_from_the_source(tmp_path):
    import torch
    import transformers

    stored = _gpt_oss_dir(tmp_path / "src")
    report = bc.convert(tmp_path / "src", tmp_path / "bf16", to="bf16")
    assert report.count("dequantized") == 2 * GPT_OSS["num_hidden_layers"]
    load = transformers.GptOssForCausalLM.from_pretrained
    theirs = load(tmp_path / "src", dtype=torch.bfloat16)  # transformers dequantizes the MXFP4 on CPU
    ours = load(tmp_path / "bf16", dtype=torch.bfloat16)
    mine = ours.state_dict()
    for name, value in theirs.state_dict().items():
        assert mine[name].shape == value.shape and torch.equal(mine[name], value), name
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(ours(tokens).logits, theirs(tokens).logits)
    back = bc.convert(tmp_path / "bf16", tmp_path / "again", to="gpt-oss-mxfp4")
    assert back.count("quantized") == 2 * GPT_OSS["num_hidden_layers"]
    raw = bc.open_checkpoint(tmp_path / "again").raw
    for name in EXPERTS:  # floor-cast blocks hold code 4 or 6 at their amax, so they come back as stored
        for part in ("_blocks", "_scales"):
            assert np.array_equal(raw.read_tensor(name + part), stored[name + part])


def test_gpt_oss_to_mlx_mxfp4_is_what_mlx_lm_loads_from_the_source(tmp_path):
    mx = pytest.importorskip("mlx.core")
    mlx_lm = pytest.importorskip("mlx_lm")
    _gpt_oss_dir(tmp_path / "src")
    report = bc.convert(tmp_path / "src", tmp_path / "mlx", to="mlx-mxfp4")
    experts = [n for n, a in report.actions.items() if ".experts." in n and n.endswith(".weight")]
    assert experts and all(report.actions[n] == "repacked" for n in experts)
    ours = mlx_lm.load(str(tmp_path / "mlx"))[0] if (tmp_path / "mlx" / "tokenizer.json").exists() else None
    ours = ours or mlx_lm.utils.load_model(tmp_path / "mlx")[0]
    theirs = mlx_lm.utils.load_model(tmp_path / "src")[0]
    from mlx.utils import tree_flatten

    mine = dict(tree_flatten(ours.parameters()))
    for name, value in tree_flatten(theirs.parameters()):
        if ".experts." in name and not name.endswith("bias"):
            assert mx.array_equal(mine[name], value), name
    tokens = mx.array([[1, 2, 3]])
    assert mx.all(mx.isfinite(ours(tokens))).item()


def _set_scale(stored, config, value=255):
    stored[EXPERTS[0] + "_scales"][0, 0, 0] = value


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_set_scale, "byte 255 at block"),
        (lambda s, c: s.pop(EXPERTS[1] + "_scales"), "has no"),
        (
            lambda s, c: s.__setitem__(EXPERTS[1] + "_scales", s[EXPERTS[1] + "_scales"][:, :, :1].copy()),
            r"shape .* and .* scales \[\.\.\., G\]",
        ),
        (
            lambda s, c: c["quantization_config"]["modules_to_not_convert"].append(
                "model.layers.*.mlp.experts"
            ),
            "modules_to_not_convert lists",
        ),
        (
            lambda s, c: [s.pop(k) for k in list(s) if k.endswith(("_blocks", "_scales"))],
            "the tensors say float",
        ),
    ],
    ids=["scale 255", "no scales", "scale shape", "not converted", "no blocks"],
)
def test_gpt_oss_bad_input_names_both_readings(tmp_path, mutate, message):
    _gpt_oss_dir(tmp_path / "src", mutate=mutate)
    with pytest.raises(FileFormatError, match=message):
        ck = bc.open_checkpoint(tmp_path / "src")
        [ck[n] for n in ck]


# --- DeepSeek-V4 ------------------------------------------------------------------------------------


def _deepseek_reference(weight: np.ndarray, scale: np.ndarray, block: int | None) -> np.ndarray:
    """DeepSeek's dequantization: FP8 ``W * S`` per tile, FP4 ``e2m1 * S`` per 32 (S = 2**(e - 127))."""
    s = scale.view(np.uint8).astype(np.int32)
    factor = np.where(s == 255, np.nan, np.ldexp(np.float32(1), s - 127)).astype(np.float32)
    if block is None:
        w = weight.view(np.uint8)
        codes = np.stack([w & 15, w >> 4], -1).reshape(w.shape[0], -1)
        return E2M1[codes] * np.repeat(factor, 32, axis=1)
    tiles = np.repeat(np.repeat(factor, block, 0), block, 1)[: weight.shape[0], : weight.shape[1]]
    return weight.astype(np.float32) * tiles


def _v4_dir(path, *, block=128, mutate=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    linears = {"layers.0.attn.wq_a": (200, 96), "layers.0.ffn.shared_experts.w1": (64, 160)}
    experts = {f"layers.0.ffn.experts.{e}.{w}": (32, 96) for e in range(2) for w in ("w1", "w2", "w3")}
    stored = {"embed.weight": rng.standard_normal((64, 96)).astype(ml_dtypes.bfloat16)}
    stored.update(deepseek_v4_tensors(rng, linears, experts, block=block))
    config = deepseek_v4_config(block)
    if mutate is not None:
        mutate(stored, config)
    os.makedirs(path, exist_ok=True)
    from breccia.bridges import save_safetensors

    save_safetensors(stored, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))
    return stored


@pytest.mark.parametrize("block", [128, 32])
def test_deepseek_v4_reads_as_deepseek_dequantizes(tmp_path, block):
    stored = _v4_dir(tmp_path / "src", block=block)
    ck = bc.open_checkpoint(tmp_path / "src")
    assert ck.format == "deepseek-v4" and "6 FP4 experts" in ck.details
    assert not any(n.endswith(".scale") for n in ck)
    for name in ck:
        if name.endswith(".scale") or name == "embed.weight":
            continue
        fp4 = ".experts." in name
        expected = _deepseek_reference(stored[name], stored[name[:-6] + "scale"], None if fp4 else block)
        assert np.array_equal(np.asarray(bc.dequantize(ck[name], "float32")), expected), name


def test_deepseek_v4_round_trip_bf16_and_exact_mlx_repacks(tmp_path):
    mx = pytest.importorskip("mlx.core")
    from breccia.bridges import load_plain_safetensors, open_safetensors, to_mlx_quantized

    stored = _v4_dir(tmp_path / "src")
    report = bc.convert(tmp_path / "src", tmp_path / "v4", to="deepseek-v4")
    assert report.count("repacked") == 8 and report.count("copied") == 1
    raw = open_safetensors(str(tmp_path / "v4" / "model.safetensors"))
    for name, value in stored.items():
        assert np.array_equal(np.asarray(raw.read_tensor(name)).view(np.uint8), value.view(np.uint8)), name
    bc.convert(tmp_path / "src", tmp_path / "bf16", to="bf16")
    out = load_plain_safetensors(str(tmp_path / "bf16"))
    ck = bc.open_checkpoint(tmp_path / "src")
    assert np.array_equal(
        out["layers.0.attn.wq_a.weight"], bc.dequantize(ck["layers.0.attn.wq_a.weight"], "bfloat16")
    )
    for name in ("layers.0.attn.wq_a.weight", "layers.0.ffn.experts.1.w2.weight"):
        st = ck[name]
        st = mxfp8_blocks(st) if ".attn." in name else st
        q = to_mlx_quantized(st.to("mlx"))
        got = mx.dequantize(q.weight, q.scales, q.biases, group_size=q.group_size, bits=q.bits, mode=q.mode)
        assert np.array_equal(
            np.asarray(got.astype(mx.float32)), np.asarray(bc.dequantize(ck[name], "float32"))
        )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s, c: c.pop("expert_dtype"), "packed FP4 .* expert_dtype is None"),
        (
            lambda s, c: s.__setitem__("layers.0.attn.wq_a.scale", s["layers.0.attn.wq_a.scale"][:1]),
            r"needs one scale per 128x128 tile, \[2, 1\]",
        ),
        (
            lambda s, c: s.__setitem__(
                "layers.0.ffn.experts.0.w1.scale", s["layers.0.ffn.experts.0.w1.scale"][:, :2]
            ),
            r"one E8M0 scale per 32 values needs \(32, 3\)",
        ),
        (
            lambda s, c: s.__setitem__(
                "layers.0.ffn.experts.0.w1.scale", s["layers.0.ffn.experts.0.w1.scale"].astype(np.float32)
            ),
            "stores scales as F8_E8M0",
        ),
    ],
    ids=["expert dtype", "fp8 scale shape", "fp4 scale shape", "scale dtype"],
)
def test_deepseek_v4_bad_input_names_both_readings(tmp_path, mutate, message):
    _v4_dir(tmp_path / "src", mutate=mutate)
    with pytest.raises(FileFormatError, match=message):
        bc.open_checkpoint(tmp_path / "src")


# --- streaming: the quantized writers hold one source tensor's pages at a time ---------------------


@pytest.mark.parametrize(
    "source, target",
    [
        ("llama", "modelopt-nvfp4"),
        ("llama", "compressed-tensors-nvfp4"),
        ("gpt-oss", "gpt-oss-mxfp4"),
        ("v4", "deepseek-v4"),
    ],
)
def test_quantized_writers_release_the_source_between_tensors(tmp_path, monkeypatch, source, target):
    """Each tensor read is preceded by a release of the pages read before it, as in the float and mlx
    writers (without it the source's mapped pages stayed resident: peak RSS grew with the model,
    found by benchmarks/bench_convert.py)."""
    from breccia.checkpoints._registry import StoredCheckpoint
    from breccia.demo.checkpoints import write_tiny_llama

    src = tmp_path / "src"
    if source == "llama":
        write_tiny_llama(str(src), tied=False)
    else:
        (_gpt_oss_dir if source == "gpt-oss" else _v4_dir)(src)
    events: list[str] = []
    read, release = StoredCheckpoint.read_numpy, StoredCheckpoint.release
    monkeypatch.setattr(StoredCheckpoint, "read_numpy", lambda c, n: events.append("read") or read(c, n))
    monkeypatch.setattr(StoredCheckpoint, "release", lambda c: events.append("release") or release(c))
    bc.convert(src, tmp_path / "out", to=target)
    reads = [i for i, e in enumerate(events) if e == "read"]
    assert len(reads) > 3 and all("release" in events[a:b] for a, b in itertools.pairwise(reads))


# --- fuzzing: mutated files give breccia errors or the reference's values ----------------------------


def _mutated(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4)


@FUZZ
@given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, 4000)))
def test_fuzz_gguf_reader(tmp_path_factory, edits, cut):
    base = tmp_path_factory.getbasetemp() / "fuzz-gguf"
    source = base / "a.gguf"
    if not source.exists():
        base.mkdir(exist_ok=True)
        x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
        _write_raw_gguf(source, {"q8": ("Q8_0", x), "mx": ("MXFP4", x), "q41": ("Q4_1", x), "f": ("F32", x)})
    data = _mutated(source.read_bytes(), edits)
    path = base / "m.gguf"
    path.write_bytes(data[:cut] if cut is not None else data)
    try:
        mapping = open_gguf(path)
        ours = {name: mapping[name] for name in mapping}
    except BrecciaError:
        return
    for t in gguf.GGUFReader(str(path)).tensors:
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        got = ours[t.name]
        got = bc.dequantize(got, "float32") if isinstance(got, bc.ScaledTensor) else got
        assert np.array_equal(_bits(np.asarray(got, np.float32).reshape(expected.shape)), _bits(expected))


@FUZZ
@given(edits=EDITS)
def test_fuzz_gpt_oss_reader(tmp_path_factory, edits):
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    base = tmp_path_factory.getbasetemp() / "fuzz-gpt-oss"
    if not (base / "src").exists():
        _gpt_oss_dir(base / "src")
    work = base / "m"
    work.mkdir(exist_ok=True)
    (work / "config.json").write_bytes((base / "src" / "config.json").read_bytes())
    (work / "model.safetensors").write_bytes(
        _mutated((base / "src" / "model.safetensors").read_bytes(), edits)
    )
    try:
        ck = bc.open_checkpoint(work)
        values = {name: ck[name] for name in EXPERTS}
        raw = {n: ck.raw.read_tensor(n) for n in (EXPERTS[0] + "_blocks", EXPERTS[0] + "_scales")}
    except BrecciaError:
        return
    reference = convert_moe_packed_tensors(
        *(torch.from_numpy(np.array(a)) for a in raw.values()), dtype=torch.float32
    ).numpy()
    ours = np.swapaxes(np.asarray(bc.dequantize(values[EXPERTS[0]], "float32")), 1, 2)
    assert np.array_equal(ours.view(np.uint32), reference.view(np.uint32))


@FUZZ
@given(edits=EDITS)
def test_fuzz_deepseek_v4_reader(tmp_path_factory, edits):
    base = tmp_path_factory.getbasetemp() / "fuzz-v4"
    if not (base / "src").exists():
        _v4_dir(base / "src")
    work = base / "m"
    work.mkdir(exist_ok=True)
    (work / "config.json").write_bytes((base / "src" / "config.json").read_bytes())
    (work / "model.safetensors").write_bytes(
        _mutated((base / "src" / "model.safetensors").read_bytes(), edits)
    )
    try:
        ck = bc.open_checkpoint(work)
        pairs = {name: ck[name] for name in ck if isinstance(ck[name], bc.ScaledTensor)}
        raw = {n: np.asarray(ck.raw.read_tensor(n)) for n in ck.raw.tensor_names()}
    except BrecciaError:
        return
    for name, value in pairs.items():
        block = None if ".experts." in name else 128
        expected = _deepseek_reference(raw[name], raw[name[:-6] + "scale"], block)
        assert np.array_equal(np.asarray(bc.dequantize(value, "float32")), expected, equal_nan=True)
