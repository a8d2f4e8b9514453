"""Model directories end to end: tiny real models (transformers), real loaders (mlx-lm, transformers).

Every flow converts a directory with ``breccia.convert`` and opens the output with the target's own
loader; mlx outputs are compared bit for bit with ``mlx_lm.convert`` of the same model. Models are
built from configs with fixed seeds and a tokenizer trained with ``tokenizers``: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

import breccia as bc
from breccia.demo.checkpoints import write_tiny_llama, write_tokenizer

# the real loaders these flows open outputs with; CI installs all of them (breccia[all,test])
_NEEDS = "the checkpoint flows need {} (pip install 'breccia[{}]')"
torch = pytest.importorskip("torch", reason=_NEEDS.format("torch", "torch"))
transformers = pytest.importorskip("transformers", reason=_NEEDS.format("transformers", "test"))
mx = pytest.importorskip("mlx.core", reason=_NEEDS.format("MLX", "mlx"))
mlx_lm = pytest.importorskip("mlx_lm", reason=_NEEDS.format("mlx-lm", "mlx-lm"))

DEEPSEEK = dict(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    moe_intermediate_size=64,
    num_hidden_layers=2,
    first_k_dense_replace=1,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=64,
    kv_lora_rank=32,
    qk_rope_head_dim=16,
    qk_nope_head_dim=32,
    v_head_dim=32,
    n_group=1,
    topk_group=1,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)


def _save(model, path: str) -> str:
    model.save_pretrained(path)
    write_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def llama_dirs(tmp_path_factory):
    """{tied: directory} of tiny bf16 Llama models."""
    out = {}
    for tied in (True, False):
        out[tied] = str(tmp_path_factory.mktemp("llama") / ("tied" if tied else "untied"))
        write_tiny_llama(out[tied], tied=tied)
    return out


@pytest.fixture(scope="session")
def deepseek_dirs(tmp_path_factory):
    """(float32 model directory, its DeepSeek FP8 conversion, the torch model)."""
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**DEEPSEEK)).to(torch.float32)
    root = tmp_path_factory.mktemp("deepseek")
    src = _save(model, str(root / "float32"))
    fp8 = str(root / "fp8")
    report = bc.convert(src, fp8, to="deepseek-fp8")
    assert report.count("quantized") > 0
    return src, fp8, model


def _weights(path: str) -> dict:
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            out.update(mx.load(os.path.join(path, name)))
    return out


def _generate(path: str) -> str:
    model, tokenizer = mlx_lm.load(path)
    return mlx_lm.generate(model, tokenizer, "hello world", max_tokens=4)


# --- flow 1: Llama -> every mlx target, against mlx_lm.convert -------------------------------------

MLX_CONVERT = {
    "mlx-affine4": dict(q_mode="affine", q_bits=4),
    "mlx-affine8-g32": dict(q_mode="affine", q_bits=8, q_group_size=32),
    "mlx-affine3": dict(q_mode="affine", q_bits=3),
    "mlx-mxfp8": dict(q_mode="mxfp8"),
    "mlx-nvfp4": dict(q_mode="nvfp4"),
    "mlx-mxfp4": dict(q_mode="mxfp4"),
}


@pytest.mark.parametrize(
    ("target", "tied"),
    [(t, True) for t in MLX_CONVERT] + [("mlx-affine4", False), ("mlx-mxfp8", False)],
)
def test_llama_to_mlx_is_what_mlx_lm_convert_writes(llama_dirs, tmp_path, target, tied):
    from mlx_lm.convert import convert as mlx_convert

    src = llama_dirs[tied]
    ours, theirs = str(tmp_path / "breccia"), str(tmp_path / "mlx_lm")
    report = bc.convert(src, ours, to=target)
    mlx_convert(src, theirs, quantize=True, **MLX_CONVERT[target])
    a, b = _weights(ours), _weights(theirs)
    assert set(a) == set(b)
    assert ("lm_head.weight" in a) == (not tied)
    assert report.count("quantized") == sum(1 for k in a if k.endswith(".scales"))
    differ = [
        k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not mx.array_equal(a[k], b[k])
    ]
    assert differ == []
    with open(os.path.join(ours, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(theirs, "config.json")) as f:
        assert config["quantization"] == json.load(f)["quantization"]
    for side in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(ours, side))
    assert isinstance(_generate(ours), str)


# --- flow 3: DeepSeek-V3 FP8 -> mlx and -> bf16 ---------------------------------------------------


@pytest.mark.parametrize("target", ["mlx-affine4", "mlx-mxfp8", "mlx-nvfp4", "mlx-mxfp4"])
def test_deepseek_fp8_to_mlx_loads_and_generates(deepseek_dirs, tmp_path, target):
    _, fp8, _ = deepseek_dirs
    assert bc.open_checkpoint(fp8).format == "deepseek-fp8"
    out = str(tmp_path / "mlx")
    report = bc.convert(fp8, out, to=target)
    weights = _weights(out)
    assert "model.layers.1.mlp.gate.weight" in weights and "model.layers.1.mlp.gate.scales" not in weights
    assert not any("kv_b_proj" in k for k in weights)  # split into embed_q / unembed_out as mlx-lm expects
    assert "model.layers.1.mlp.switch_mlp.up_proj.scales" in weights
    assert report.count("requantized") > 0 and report.worst[1] < 0.2
    assert isinstance(_generate(out), str)


def test_deepseek_fp8_to_bf16_runs_in_transformers(deepseek_dirs, tmp_path):
    src, fp8, model = deepseek_dirs
    out = str(tmp_path / "bf16")
    report = bc.convert(fp8, out, to="bf16")
    assert report.count("dequantized") == bc.convert(src, str(tmp_path / "again"), to="deepseek-fp8").count(
        "quantized"
    )
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert "quantization_config" not in config and config["torch_dtype"] == "bfloat16"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 5, 9, 30, 7]])
    with torch.no_grad():
        got = loaded(ids).logits.float()
        want = model(ids).logits.float()
    assert torch.linalg.norm(got - want) / torch.linalg.norm(want) < 0.1


def test_fp8_to_float32_equals_transformers_own_dequantization(deepseek_dirs, tmp_path):
    """transformers' FineGrainedFP8 (quant_method fp8, 128x128) decoded on the CPU by transformers.

    transformers 5.23 derives the tile height from the shapes (``rows // scale_rows``), which reads a
    ragged edge wrongly (192 rows with 2 scale rows become 96-row tiles, not DeepSeek's 128 + 64): only
    axes that are whole tiles (or one partial tile) can agree, and those must agree bit for bit."""
    _, fp8, _ = deepseek_dirs
    out = str(tmp_path / "f32")
    bc.convert(fp8, out, to="float32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        fp8, quantization_config=transformers.FineGrainedFP8Config(dequantize=True)
    ).state_dict()
    ours = bc.open_checkpoint(out)
    compared = 0
    for name in ours:
        whole_tiles = all(n % 128 == 0 or n < 128 for n in ours[name].shape)
        if name in theirs and whole_tiles:
            assert np.array_equal(np.asarray(ours[name]), theirs[name].float().numpy()), name
            compared += 1
    assert compared >= 20


# --- formats, reading ------------------------------------------------------------------------------


def test_finegrained_fp8_scale_fmt_float_and_bf16_scales_are_read(deepseek_dirs, tmp_path):
    """transformers' ``scale_fmt: "float"`` and scales stored in bfloat16 (some Qwen FP8 releases)."""
    from breccia.bridges import from_deepseek_v3, open_safetensors, save_safetensors

    _, fp8, _ = deepseek_dirs
    copy = tmp_path / "qwen-style"
    shutil.copytree(fp8, copy)
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"]["scale_fmt"] = "float"
    (copy / "config.json").write_text(json.dumps(config))
    with open_safetensors(fp8) as m:
        tensors = {n: np.array(m.read_tensor(n)) for n in m.tensor_names()}
    for name in tensors:
        if name.endswith("_scale_inv"):
            tensors[name] = tensors[name].astype("bfloat16")
    os.remove(copy / "model.safetensors")
    save_safetensors(tensors, copy / "model.safetensors")
    ck = bc.open_checkpoint(copy)
    assert ck.format == "deepseek-fp8" and "bfloat16" in ck.details
    name = "model.layers.0.self_attn.q_a_proj.weight"
    widened = tensors[name + "_scale_inv"].astype(np.float32)
    expected = bc.dequantize(from_deepseek_v3(tensors[name], widened), "float32")
    assert np.array_equal(np.asarray(bc.dequantize(ck[name], "float32")), np.asarray(expected))


@pytest.mark.parametrize("target", ["mlx-affine4", "mlx-mxfp8"])
def test_mlx_output_reads_back_bit_for_bit(llama_dirs, tmp_path, target):
    out = str(tmp_path / "mlx")
    bc.convert(llama_dirs[True], out, to=target)
    ck = bc.open_checkpoint(out)
    assert ck.format == "mlx-lm"
    weights = _weights(out)
    name = "model.layers.0.mlp.up_proj.weight"
    q = bc.bridges.to_mlx_quantized(ck[name])
    assert mx.array_equal(q.weight, weights[name]) and mx.array_equal(q.scales, weights[name[:-6] + "scales"])
    again = str(tmp_path / "again")
    report = bc.convert(out, again, to=target)
    assert report.count("repacked") == sum(1 for k in weights if k.endswith(".scales"))
    b = _weights(again)
    assert all(mx.array_equal(weights[k], b[k]) for k in weights)


# --- bad input: exit 2, one line, nothing written ---------------------------------------------------


def _cli(*argv: str) -> tuple[int, str]:
    import contextlib
    import io

    from breccia.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


def _tree(path) -> dict:
    return {
        os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(path) for f in fs
    }


@pytest.fixture
def small(llama_dirs, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(llama_dirs[True], src)
    return src


@pytest.mark.parametrize("where", ["same", "inside", "link", "parent"])
def test_destination_aliasing_the_source_is_refused(small, tmp_path, where):
    before = _tree(small)
    dst = {"same": small, "inside": small / "out", "parent": tmp_path, "link": tmp_path / "link"}[where]
    if where == "link":
        os.symlink(small, dst)
    rc, err = _cli("convert", str(small), str(dst), "--to", "bf16", "--no-progress", "--overwrite")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "the destination is the source, inside it, or contains it" in err
    assert _tree(small) == before


def test_non_empty_destination_needs_overwrite(small, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "old.txt").write_text("keep me")
    rc, err = _cli("convert", str(small), str(dst), "--to", "bf16", "--no-progress")
    assert rc == 2 and "--overwrite" in err and (dst / "old.txt").read_text() == "keep me"
    assert _cli("convert", str(small), str(dst), "--to", "float32", "--no-progress", "--overwrite")[0] == 0
    assert not (dst / "old.txt").exists() and any(n.endswith(".safetensors") for n in os.listdir(dst))
    assert not [n for n in os.listdir(tmp_path) if "breccia-tmp" in n or n.endswith(".old")]


def test_output_has_the_modes_of_a_plain_mkdir_and_open(small, tmp_path):
    """The finished directory is not left owner-only (mkdtemp's 0700): it and its files get the
    modes the umask gives, as the directories mlx-lm and transformers write have."""
    mask = os.umask(0o022)
    try:
        dst = tmp_path / "dst"
        assert _cli("convert", str(small), str(dst), "--to", "bf16", "--no-progress")[0] == 0
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o755
    assert {stat.S_IMODE(os.stat(dst / name).st_mode) for name in os.listdir(dst)} == {0o644}


@pytest.mark.parametrize("failure", ["disk full", "interrupted"])
@pytest.mark.parametrize(
    "target", ["bf16", "mlx-affine4", "compressed-tensors-nvfp4", "modelopt-nvfp4", "deepseek-fp8"]
)
def test_failed_or_interrupted_conversion_leaves_nothing_and_the_source_untouched(
    small, tmp_path, monkeypatch, failure, target
):
    """A failure in the middle of writing (disk full, Ctrl-C): no DST, no temporary directory, and
    every file of the source as it was (same names, bytes and modification times)."""
    from breccia.checkpoints import _output

    before = _tree(small)
    contents = {path: open(path, "rb").read() for path in before}
    real_add = _output.ShardWriter.add_raw
    calls = []

    def fail_midway(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == 5:  # some tensors are already spooled
            raise OSError(28, "No space left on device") if failure == "disk full" else KeyboardInterrupt
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(_output.ShardWriter, "add_raw", fail_midway)
    rc, err = _cli("convert", str(small), str(tmp_path / "dst"), "--to", target, "--no-progress")
    assert len(calls) == 5
    if failure == "disk full":
        assert rc == 2 and "disk filled up" in err
    else:
        assert rc == 130 and "interrupted" in err
    assert sorted(os.listdir(tmp_path)) == ["src"]
    assert _tree(small) == before
    assert all(open(path, "rb").read() == data for path, data in contents.items())


def test_stale_and_missing_shards_are_errors(llama_dirs, tmp_path):
    sharded = tmp_path / "sharded"
    bc.convert(llama_dirs[True], sharded, to="mlx-affine4")
    (sharded / "model-00009-of-00009.safetensors").write_bytes(b"")
    with pytest.raises(bc.FileFormatError, match=r"model-00009-of-00009\.safetensors not listed in"):
        bc.open_checkpoint(sharded)
    os.remove(sharded / "model-00009-of-00009.safetensors")
    os.remove(sharded / "model.safetensors")
    with pytest.raises(bc.FileFormatError, match=r"'model\.safetensors' listed in weight_map does not exist"):
        bc.open_checkpoint(sharded)


def test_fifo_where_a_shard_should_be_is_an_error(small):
    os.remove(small / "model.safetensors")
    os.mkfifo(small / "model.safetensors")
    with pytest.raises(bc.FileFormatError, match="not a regular file"):
        bc.open_checkpoint(small)


def test_links_out_of_the_tree_are_refused_but_the_hub_cache_layout_reads(small, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(small / "model.safetensors", outside)
    os.symlink(outside, small / "model.safetensors")
    with pytest.raises(bc.FileFormatError, match="outside the model directory"):
        bc.open_checkpoint(small)
    cache = tmp_path / "models--org--tiny"
    snapshot = cache / "snapshots" / "abc123"
    (cache / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name in os.listdir(small):
        target = small / name
        blob = cache / "blobs" / f"blob-{name}"
        shutil.copyfile(os.path.realpath(target), blob)
        os.symlink(os.path.join("..", "..", "blobs", blob.name), snapshot / name)
    ck = bc.open_checkpoint(snapshot)
    assert ck.format == "hf" and len(ck) > 0
    out = tmp_path / "out"
    bc.convert(snapshot, out, to="mlx-affine4")
    assert not any(os.path.islink(out / n) for n in os.listdir(out))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("packed", "look quantized"),
        ("method", "quant_method 'awq'"),
        ("config", "config.json is not valid JSON (JSON nested too deeply)"),
    ],
)
def test_unexplained_or_malformed_input_stops_the_conversion(small, tmp_path, change, message):
    if change == "packed":  # a gpt-oss-style block tensor that no convention reads yet
        from safetensors.numpy import save_file

        save_file(
            {"model.layers.0.mlp.experts.down_proj_blocks": np.zeros((4, 8, 16), np.uint8)},
            str(small / "model.safetensors"),
        )
    elif change == "method":
        config = json.loads((small / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "awq", "bits": 4}
        (small / "config.json").write_text(json.dumps(config))
    else:
        (small / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    rc, err = _cli("convert", str(small), str(tmp_path / "out"), "--to", "bf16", "--no-progress")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("target", "suggestion"), [("mxfp8", "mlx-mxfp8"), ("bf61", "bf16"), ("mlx-affine7", None)]
)
def test_unknown_targets_list_the_valid_ones(small, tmp_path, target, suggestion):
    rc, err = _cli("convert", str(small), str(tmp_path / "out"), "--to", target, "--no-progress")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    if suggestion:
        assert f"did you mean {suggestion!r}" in err and "mlx-nvfp4" in err


def test_help_reads_as_help(capsys):
    from breccia.cli import main

    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "mlx-affine4" in out and "breccia." not in out and "``" not in out


def test_inspect_first_line_names_the_format(deepseek_dirs, capsys):
    from breccia.cli import main

    _, fp8, _ = deepseek_dirs
    assert main(["inspect", fp8]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "format: deepseek-fp8 (128x128 blocks, float scales)"


# --- flow 2: a torchao-quantized Llama -> mlx ------------------------------------------------------


def _torchao_configs():
    torchao = pytest.importorskip("torchao", reason=_NEEDS.format("torchao", "torchao"))
    import torchao.quantization.granularity as G
    from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig, NVFP4WeightOnlyConfig
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig

    del torchao
    return {
        "int8-weight-only": (Int8WeightOnlyConfig, {}, "mlx-affine8", "repacked"),
        "intx-int4-g32": (
            IntxWeightOnlyConfig,
            {"weight_dtype": torch.int4, "granularity": G.PerGroup(32)},
            "mlx-affine4-g32",
            "repacked",
        ),
        "mx-mxfp8": (MXDynamicActivationMXWeightConfig, {}, "mlx-mxfp8", "repacked"),
        "nvfp4-weight-only": (NVFP4WeightOnlyConfig, {}, "mlx-nvfp4", "requantized"),
    }


@pytest.mark.parametrize("name", ["int8-weight-only", "intx-int4-g32", "mx-mxfp8", "nvfp4-weight-only"])
def test_torchao_quantized_llama_to_mlx(llama_dirs, tmp_path, name):
    """A model quantized in PyTorch by torchao, moved to mlx-lm: bit for bit where the grids allow
    (the codes and scales MLX reads are torchao's), requantized and reported where they do not."""
    from torchao.quantization import quantize_

    from breccia.bridges import from_torchao, to_mlx_quantized
    from breccia.checkpoints import convert_tensors

    config_class, kwargs, target, action = _torchao_configs()[name]
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dirs[False], dtype=torch.bfloat16)
    quantize_(model, config_class(**kwargs))
    state = model.state_dict()
    out = str(tmp_path / "mlx")
    report = convert_tensors(
        state, out, to=target, config=model.config.to_dict(), files_from=llama_dirs[False]
    )
    linear = "model.layers.0.mlp.down_proj.weight"
    assert report.actions[linear] == action
    assert report.count(action) >= 14  # every linear layer (and lm_head) of the two blocks
    weights = _weights(out)
    if action == "repacked":
        expected = to_mlx_quantized(from_torchao(state[linear]))
        assert mx.array_equal(weights[linear], expected.weight)
        got_scales = weights[linear[: -len("weight")] + "scales"]
        assert mx.array_equal(
            got_scales[:, :: got_scales.shape[-1] // expected.scales.shape[-1]], expected.scales
        )
    else:
        assert report.worst[1] < 0.2
    assert isinstance(_generate(out), str)


@pytest.mark.parametrize("layout", ["index", "single"])
def test_open_safetensors_refuses_links_out_of_the_directory(tmp_path, layout):
    """The container reader keeps the checkpoint layer's link rule (one _paths module for both)."""
    from safetensors.numpy import save_file

    from breccia.bridges import open_safetensors

    outside, model = tmp_path / "elsewhere", tmp_path / "model"
    outside.mkdir()
    model.mkdir()
    save_file({"a": np.ones(4, np.float32)}, str(outside / "real.safetensors"))
    name = "model-00001-of-00001.safetensors" if layout == "index" else "model.safetensors"
    os.symlink(outside / "real.safetensors", model / name)
    if layout == "index":
        (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": name}}))
    with pytest.raises(bc.FileFormatError, match="outside the model directory"):
        open_safetensors(model)
    os.remove(model / name)
    shutil.copyfile(outside / "real.safetensors", model / name)
    with open_safetensors(model) as m:
        assert np.array_equal(m["a"], np.ones(4, np.float32))
