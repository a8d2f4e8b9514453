"""Model-directory conversions: breccia's ``convert`` next to each peer's own converter, one run.

    python benchmarks/bench_convert.py [--quick] [--only GROUP ...] [--repeat N]

Builds its own model directories (random weights, nothing downloaded; each built in a child process)
and times, each conversion in a fresh subprocess (wall time, and peak RSS from
``resource.getrusage`` of that process), breccia and the peer one after the other:

* ``mlx``: a Llama-shaped bf16 model of a few hundred MB (several 100 MB shards, a tokenizer);
  ``breccia convert --to mlx-<mode>`` against ``mlx_lm.convert -q --q-mode <mode>`` for affine4,
  mxfp8 and nvfp4;
* ``deepseek``: ``--to bf16`` of the model's DeepSeek-style FP8 conversion against DeepSeek's
  ``fp8_cast_bf16.py`` algorithm written in plain PyTorch (load a shard, ``weight_dequant`` every
  FP8 weight with its ``weight_scale_inv``, save the shard);
* ``ct``: the Llama to compressed-tensors FP8 block, NVFP4 and W4A16 and back to bf16, against the
  compressed-tensors package doing the same a shard at a time: its ``calculate_qparams`` /
  ``generate_gparam`` and its format compressor's ``compress`` (what ``ModelCompressor.compress_model``
  runs per module), and its compressor's ``decompress`` (what ``decompress_model`` runs);
* ``modelopt``: ModelOpt NVFP4 (written by breccia from the Llama) to bf16 against ModelOpt's decode
  ``e2m1 * (e4m3 * weight_scale_2)`` in PyTorch (ModelOpt itself needs CUDA), and ModelOpt NVFP4 <->
  compressed-tensors NVFP4 against the same translation by hand in PyTorch (codes and E4M3 scales
  moved, global scale ``1 / g``) with the config from compressed-tensors' own ``QuantizationConfig``;
* ``gpt-oss``: a gpt-oss MXFP4 model (a random bf16 ``GptOssForCausalLM`` saved by transformers,
  cast by breccia) to bf16 against transformers' ``convert_moe_packed_tensors`` (its CPU decoder) a
  shard at a time, and to ``mlx-mxfp4`` against ``mlx_lm.convert -q --q-mode mxfp4`` of the same
  directory (it keeps the MXFP4 experts and casts the bf16 attention, embeddings and lm_head, as
  breccia does: the same tensors, bit for bit);
* ``gguf``: GGUF files of the Llama's tensors in Q8_0, Q4_0 and MXFP4 (breccia's ``save_gguf``, whose
  blocks are ``gguf.quants.quantize``'s) to bf16 against ``GGUFReader`` + ``gguf.quants.dequantize``;
* ``v4``: DeepSeek-V4 (FP8 128x128 E8M0 and FP4 experts) to bf16, breccia only: DeepSeek's own
  conversion code needs CUDA and no library decodes V4 on CPU.

Ratios are peer / breccia for time (above 1: breccia is faster) and breccia / peer for memory.
With ``--repeat N`` each pair runs N times, interleaved, and the medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

RUN = textwrap.dedent(
    """
    import json, resource, sys, time
    t0 = time.perf_counter()
    {body}
    wall = time.perf_counter() - t0
    print(json.dumps({{"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
    """
)

# Helpers of the PyTorch peers: which shard holds each tensor, and a shard's tensors read lazily from
# whichever shard holds them (memory maps opened per output shard, so their pages do not accumulate).
SHARDS = textwrap.dedent(
    """
    import os, json, shutil, torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst)
    index_path = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(index_path):
        where = json.load(open(index_path))["weight_map"]
    else:
        with safe_open(os.path.join(src, "model.safetensors"), "pt") as f:
            where = dict.fromkeys(f.keys(), "model.safetensors")
    shards = sorted(set(where.values()))
    def opened():
        handles = {s: safe_open(os.path.join(src, s), "pt") for s in shards}
        return lambda name: handles[where[name]].get_tensor(name)
    def in_shard(shard):
        return [n for n, s in where.items() if s == shard]
    config = json.load(open(os.path.join(src, "config.json")))
    """
)

#: the test suite's folder, whose peers.py drives compressed-tensors' observers in the child process
TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")

CT_COMPRESS = textwrap.dedent(
    """
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
    from compressed_tensors.quantization.utils import generate_gparam
    sys.path.insert(0, TESTS_DIR)  # the suite's peers.py: the package's observer reductions
    from peers import compressed_tensors_qparams
    preset = sys.argv[3]
    fmt = {"FP8_BLOCK": "float-quantized", "NVFP4A16": "nvfp4-pack-quantized",
           "W4A16": "pack-quantized"}[preset]
    scheme = preset_name_to_scheme(preset, ["Linear"])
    args = scheme.weights
    compressor = BaseCompressor.get_value_from_registry(fmt)
    def qparams(w, global_scale=None):
        return compressed_tensors_qparams(w, args, global_scale)
    for shard in shards:
        out = {}
        for name, w in load_file(os.path.join(src, shard)).items():
            if not (name.endswith("proj.weight") and w.ndim == 2):
                out[name] = w
                continue
            state = {"weight": w}
            if args.strategy == "tensor_group":
                state["weight_global_scale"] = generate_gparam(w.min(), w.max())
            state["weight_scale"], _ = qparams(w, state.get("weight_global_scale"))
            module = name[: -len(".weight")]
            for k, v in compressor.compress(state, scheme).items():
                out[f"{module}.{k}"] = v.contiguous()
        save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
        del out
    quant = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt,
                               quantization_status="compressed", ignore=["lm_head"])
    config["quantization_config"] = quant.model_dump(mode="json")
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    """
).replace("TESTS_DIR", repr(TESTS_DIR))

CT_DECOMPRESS = textwrap.dedent(
    """
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    quant = QuantizationConfig.model_validate(config["quantization_config"])
    scheme = quant.config_groups["group_0"]
    compressor = BaseCompressor.get_value_from_registry(quant.format)
    params = {}
    for name in where:
        module, _, local = name.rpartition(".")
        params.setdefault(module, []).append(local)
    quantized = {m for m, p in params.items() if "weight_scale" in p}
    for shard in shards:
        get, out = opened(), {}
        for name in in_shard(shard):
            module, _, local = name.rpartition(".")
            if module not in quantized:
                out[name] = get(name)
            elif local in ("weight", "weight_packed"):
                state = {p: get(f"{module}.{p}") for p in params[module]}
                out[module + ".weight"] = compressor.decompress(state, scheme)["weight"].to(torch.bfloat16)
        save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
        del get, out
    """
)

MODELOPT_BF16 = textwrap.dedent(
    """
    E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])
    quantized = {n[: -len(".weight_scale_2")] for n in where if n.endswith(".weight_scale_2")}
    for shard in shards:
        get, out = opened(), {}
        for name in in_shard(shard):
            module, _, local = name.rpartition(".")
            if module not in quantized:
                out[name] = get(name)
            elif local == "weight":
                packed, s, g = get(name), get(module + ".weight_scale"), get(module + ".weight_scale_2")
                codes = torch.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[0], -1, 16)
                w = E2M1[codes.long()] * (s.float() * g.float())[..., None]
                out[name] = w.reshape(packed.shape[0], -1).to(torch.bfloat16)
        save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
        del get, out
    """
)

NVFP4_TRANSLATE = textwrap.dedent(
    """
    to_ct = sys.argv[3] == "compressed-tensors"
    globals_ = ".weight_scale_2" if to_ct else ".weight_global_scale"
    quantized = {n[: -len(globals_)] for n in where if n.endswith(globals_)}
    renames = ({"weight": "weight_packed", "weight_scale_2": "weight_global_scale"} if to_ct
               else {"weight_packed": "weight", "weight_global_scale": "weight_scale_2"})
    for shard in shards:
        get, out = opened(), {}
        for name in in_shard(shard):
            module, _, local = name.rpartition(".")
            if module not in quantized:
                out[name] = get(name)
            elif local in ("weight_scale_2", "weight_global_scale"):
                out[f"{module}.{renames[local]}"] = 1 / get(name).float()
            elif local in ("weight", "weight_packed", "weight_scale"):
                out[f"{module}.{renames.get(local, local)}"] = get(name)
        save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
        del get, out
    if to_ct:
        from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
        quant = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme("NVFP4A16", ["Linear"])},
                                   format="nvfp4-pack-quantized", quantization_status="compressed",
                                   ignore=["lm_head"])
        config["quantization_config"] = quant.model_dump(mode="json")
    else:
        config["quantization_config"] = {"quant_method": "modelopt", "quant_algo": "NVFP4",
                                         "group_size": 16, "exclude_modules": ["lm_head"]}
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    """
)

GPT_OSS_BF16 = textwrap.dedent(
    """
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    for shard in shards:
        get, out = opened(), {}
        for name in in_shard(shard):
            if name.endswith("_blocks"):
                stem = name[: -len("_blocks")]
                out[stem] = convert_moe_packed_tensors(get(name), get(stem + "_scales"), dtype=torch.bfloat16)
            elif not name.endswith("_scales"):
                out[name] = get(name)
        save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
        del get, out
    """
)

GGUF_BF16 = textwrap.dedent(
    """
    import os, gguf, torch
    from safetensors.torch import save_file
    reader = gguf.GGUFReader(sys.argv[1])
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = torch.from_numpy(values).to(torch.bfloat16)
    os.makedirs(sys.argv[2])
    save_file(out, os.path.join(sys.argv[2], "model.safetensors"), metadata={"format": "pt"})
    """
)

BODIES = {
    "breccia": "import breccia\nbreccia.convert(sys.argv[1], sys.argv[2], to=sys.argv[3])",
    "mlx_lm": textwrap.dedent(
        """
        from mlx_lm.convert import convert
        mode = sys.argv[3].removeprefix("mlx-")
        kwargs = {"q_mode": "affine", "q_bits": 4} if mode == "affine4" else {"q_mode": mode}
        convert(sys.argv[1], sys.argv[2], quantize=True, **kwargs)
        """
    ),
    "fp8_cast_bf16": SHARDS
    + textwrap.dedent(
        """
        def weight_dequant(w, s, b=128):
            m, n = w.shape
            s = s.repeat_interleave(b, 0)[:m].repeat_interleave(b, 1)[:, :n]
            return (w.float() * s).to(torch.bfloat16)
        cache = {}
        for shard in shards:
            tensors = load_file(os.path.join(src, shard))
            out = {}
            for name, t in tensors.items():
                if name.endswith("_scale_inv"):
                    continue
                if t.dtype == torch.float8_e4m3fn:
                    scale_shard = where[name + "_scale_inv"]
                    if scale_shard == shard:
                        s = tensors[name + "_scale_inv"]
                    else:
                        if scale_shard not in cache:
                            cache.clear()
                            cache[scale_shard] = load_file(os.path.join(src, scale_shard))
                        s = cache[scale_shard][name + "_scale_inv"]
                    out[name] = weight_dequant(t, s)
                else:
                    out[name] = t
            save_file(out, os.path.join(dst, shard), metadata={"format": "pt"})
            del tensors, out
        """
    ),
    "ct_compress": SHARDS + CT_COMPRESS,
    "ct_decompress": SHARDS + CT_DECOMPRESS,
    "modelopt_bf16": SHARDS + MODELOPT_BF16,
    "nvfp4_translate": SHARDS + NVFP4_TRANSLATE,
    "gpt_oss_bf16": SHARDS + GPT_OSS_BF16,
    "gguf_bf16": GGUF_BF16,
}


def _measure(kind: str, src: str, dst: str, target: str = "") -> dict:
    code = RUN.format(body=BODIES[kind])
    result = subprocess.run(
        [sys.executable, "-c", code, src, dst, target], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {target} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child(*args: str) -> str:
    """Runs ``--build args`` in a child process (a child's peak RSS starts at its parent's: Linux keeps
    ru_maxrss across fork and exec, so this process stays small for the figures to be the tools')."""
    return subprocess.run(
        [sys.executable, __file__, "--build", *args], capture_output=True, text=True, check=True
    ).stdout


def _random_model(config, path: str) -> int:
    import torch
    import transformers

    torch.manual_seed(0)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(path, max_shard_size="100MB")
    from breccia.demo.checkpoints import write_tokenizer

    write_tokenizer(path)
    return sum(p.numel() for p in model.parameters())


def build_llama(path: str, layers: int, hidden: int) -> int:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 256,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    return _random_model(config, path)


def build_gpt_oss(path: str, layers: int, hidden: int, experts: int) -> int:
    """A bf16 gpt-oss as transformers saves it (experts ``[E, K, N]``); breccia casts it to MXFP4."""
    import transformers

    config = transformers.GptOssConfig(
        num_hidden_layers=layers,
        num_local_experts=experts,
        num_experts_per_tok=2,
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden,
        head_dim=64,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 256,
        sliding_window=128,
        layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        tie_word_embeddings=False,
    )
    return _random_model(config, path)


def build_gguf(llama: str, path: str, kind: str) -> int:
    """The Llama's tensors as one GGUF file, 2-D ones in ``kind`` (breccia's ggml recipes), norms F32."""
    import numpy as np

    from breccia.bridges import load_plain_safetensors, save_gguf

    tensors = {n: np.asarray(v, np.float32) for n, v in load_plain_safetensors(llama).items()}
    save_gguf(tensors, path, types=kind)
    return sum(v.size for v in tensors.values())


def build_v4(path: str, layers: int, dim: int, experts: int) -> int:
    """A DeepSeek-V4-shaped directory: per layer four FP8 ``[dim, dim]`` linears (E8M0 per 128x128) and
    ``experts`` x 3 FP4 experts ``[dim / 2, dim]`` (E8M0 per 32), a bf16 embedding; a shard per layer."""
    import ml_dtypes
    import numpy as np

    from breccia.bridges import save_safetensors

    sys.path.insert(0, TESTS_DIR)  # the suite's tiny_models.py: DeepSeek-V4's stored arrays
    from tiny_models import deepseek_v4_config, deepseek_v4_tensors

    rng = np.random.default_rng(0)
    os.makedirs(path)
    where, params = {}, 0
    for layer in range(layers):
        shard: dict = {}
        if layer == 0:
            shard["embed.weight"] = (rng.standard_normal((32000, dim), np.float32) * 0.02).astype(
                ml_dtypes.bfloat16
            )
        linears = {f"layers.{layer}.{w}": (dim, dim)
                   for w in ("attn.wq_a", "attn.wkv", "attn.wo_a", "ffn.shared_experts.w1")}
        expert_shapes = {f"layers.{layer}.ffn.experts.{e}.{w}": (dim // 2, dim)
                         for e in range(experts) for w in ("w1", "w2", "w3")}
        shard.update(deepseek_v4_tensors(rng, linears, expert_shapes, std=0.02))
        name = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        save_safetensors(shard, os.path.join(path, name))
        where.update(dict.fromkeys(shard, name))
        params += sum(
            v.size * (2 if v.dtype == np.int8 else 1) for k, v in shard.items() if k.endswith("weight")
        )
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": where}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(deepseek_v4_config(), f)
    return params


BUILDERS = {"llama": build_llama, "gpt-oss": build_gpt_oss, "gguf": build_gguf, "v4": build_v4}
GROUPS = ("mlx", "deepseek", "ct", "modelopt", "gpt-oss", "gguf", "v4")


def _mib(path: str) -> str:
    files = [
        os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.endswith((".safetensors", ".gguf"))
    ]
    sizes = [os.path.getsize(f) for f in files]
    return f"{sum(sizes) / 2**20:.0f} MiB in {len(sizes)} file(s) of <= {max(sizes) / 2**20:.0f} MiB"


class Bench:
    def __init__(self, tmp: str, repeat: int) -> None:
        self.tmp, self.repeat, self.rows, self.runs = tmp, repeat, [], 0

    def _dst(self, tag: str) -> str:
        self.runs += 1
        return os.path.join(self.tmp, f"out-{self.runs}-{tag}")

    def row(self, name: str, src: str, target: str, peer: str | None, label: str, arg: str = "") -> str:
        """Times breccia's ``convert(src, to=target)`` and the peer job, interleaved, ``repeat`` times;
        keeps breccia's first output (returned) as a source for later rows."""
        ours, theirs, kept = [], [], None
        for _ in range(self.repeat):
            dst = self._dst("breccia")
            ours.append(_measure("breccia", src, dst, target))
            kept = kept or dst
            if peer is not None:
                theirs.append(_measure(peer, src, self._dst(peer), arg or target))
        self.rows.append((name, label, _median(ours), _median(theirs) if theirs else None))
        print(f"  {name}: done", file=sys.stderr, flush=True)
        return kept

    def print(self) -> None:
        print(
            f"{'conversion':<34} {'peer':<34} {'breccia s':>9} {'peer s':>8} {'speed x':>8} "
            f"{'breccia MiB':>11} {'peer MiB':>9} {'memory x':>9}"
        )
        for name, label, ours, theirs in self.rows:
            if theirs is None:
                print(
                    f"{name:<34} {label:<34} {ours['wall']:>9.2f} {'-':>8} {'-':>8} {ours['rss_mb']:>11.0f}"
                )
                continue
            print(
                f"{name:<34} {label:<34} {ours['wall']:>9.2f} {theirs['wall']:>8.2f} "
                f"{theirs['wall'] / ours['wall']:>8.2f} {ours['rss_mb']:>11.0f} {theirs['rss_mb']:>9.0f} "
                f"{ours['rss_mb'] / theirs['rss_mb']:>9.2f}"
            )


def _median(samples: list[dict]) -> dict:
    return {k: statistics.median(s[k] for s in samples) for k in ("wall", "rss_mb")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small models: a smoke test, not a measurement")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=GROUPS)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--build", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        kind, *rest = args.build
        print(BUILDERS[kind](*(int(a) if a.isdigit() else a for a in rest)))
        return
    layers, hidden = (2, 512) if args.quick else (12, 1024)
    oss_layers, oss_hidden, oss_experts = (2, 256, 4) if args.quick else (6, 1024, 8)
    v4_layers, v4_dim, v4_experts = (1, 512, 2) if args.quick else (6, 2048, 4)
    only = set(args.only)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(tmp, args.repeat)
        llama = os.path.join(tmp, "llama")
        params = int(_child("llama", llama, str(layers), str(hidden)).split()[-1])
        print(f"llama: {params / 1e6:.0f}M parameters, bf16 {_mib(llama)}")
        if "mlx" in only:
            for target in ("mlx-affine4", "mlx-mxfp8", "mlx-nvfp4"):
                bench.row(f"--to {target}", llama, target, "mlx_lm", "mlx_lm.convert -q")
        if "deepseek" in only:
            fp8 = os.path.join(tmp, "fp8")
            _measure("breccia", llama, fp8, "deepseek-fp8")
            bench.row("deepseek-fp8 --to bf16", fp8, "bf16", "fp8_cast_bf16", "fp8_cast_bf16 (torch)")
        if "ct" in only:
            for preset, target in (
                ("FP8_BLOCK", "compressed-tensors-fp8-block"),
                ("NVFP4A16", "compressed-tensors-nvfp4"),
                ("W4A16", "compressed-tensors-w4a16"),
            ):
                name = target.removeprefix("compressed-tensors-")
                ct = bench.row(f"bf16 --to ct-{name}", llama, target, "ct_compress", "c-t compress", preset)
                bench.row(f"ct-{name} --to bf16", ct, "bf16", "ct_decompress", "c-t decompress")
        if "modelopt" in only:
            mo = os.path.join(tmp, "modelopt")
            _measure("breccia", llama, mo, "modelopt-nvfp4")
            print(f"modelopt-nvfp4: {_mib(mo)}")
            bench.row("modelopt-nvfp4 --to bf16", mo, "bf16", "modelopt_bf16", "ModelOpt decode (torch)")
            ct = bench.row(
                "modelopt-nvfp4 --to ct-nvfp4",
                mo,
                "compressed-tensors-nvfp4",
                "nvfp4_translate",
                "translation (torch) + c-t config",
                "compressed-tensors",
            )
            bench.row(
                "ct-nvfp4 --to modelopt-nvfp4",
                ct,
                "modelopt-nvfp4",
                "nvfp4_translate",
                "translation (torch)",
                "modelopt",
            )
        if "gpt-oss" in only:
            oss_bf16, oss = os.path.join(tmp, "oss-bf16"), os.path.join(tmp, "oss")
            n = int(
                _child("gpt-oss", oss_bf16, str(oss_layers), str(oss_hidden), str(oss_experts)).split()[-1]
            )
            _measure("breccia", oss_bf16, oss, "gpt-oss-mxfp4")
            print(f"gpt-oss: {n / 1e6:.0f}M parameters, MXFP4 experts {_mib(oss)}")
            bench.row("gpt-oss-mxfp4 --to bf16", oss, "bf16", "gpt_oss_bf16", "transformers mxfp4 (CPU)")
            bench.row("gpt-oss-mxfp4 --to mlx-mxfp4", oss, "mlx-mxfp4", "mlx_lm", "mlx_lm.convert -q")
        if "gguf" in only:
            for kind in ("Q8_0", "Q4_0", "MXFP4"):
                path = os.path.join(tmp, f"gguf-{kind}", "llama.gguf")  # its folder is the source
                os.makedirs(os.path.dirname(path))
                _child("gguf", llama, path, kind)
                print(f"gguf {kind}: {os.path.getsize(path) / 2**20:.0f} MiB")
                bench.row(f"gguf {kind} --to bf16", path, "bf16", "gguf_bf16", "gguf.quants.dequantize")
        if "v4" in only:
            v4 = os.path.join(tmp, "v4")
            n = int(_child("v4", v4, str(v4_layers), str(v4_dim), str(v4_experts)).split()[-1])
            print(f"deepseek-v4: {n / 1e6:.0f}M parameters, {_mib(v4)}")
            bench.row("deepseek-v4 --to bf16", v4, "bf16", None, "none on CPU")
    bench.print()


if __name__ == "__main__":
    main()
