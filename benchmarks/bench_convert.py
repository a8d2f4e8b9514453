"""Model-directory conversions: breccia's ``convert`` next to each peer's own converter, one run.

    python benchmarks/bench_convert.py [--layers 12] [--hidden 1024]

Builds a Llama-shaped bf16 model of a few hundred MB (random weights, several 100 MB shards, a
tokenizer), then times, each in a fresh subprocess (wall time, and peak RSS from
``resource.getrusage`` of that process):

* ``breccia convert --to mlx-<mode>`` against ``mlx_lm.convert -q --q-mode <mode>`` for affine4,
  mxfp8 and nvfp4;
* ``breccia convert --to bf16`` of the model's DeepSeek-style FP8 conversion against DeepSeek's
  ``fp8_cast_bf16.py`` algorithm written in plain PyTorch (load a shard, ``weight_dequant`` every
  FP8 weight with its ``weight_scale_inv``, save the shard).

Ratios are peer / breccia for time (above 1: breccia is faster) and breccia / peer for memory.
"""

from __future__ import annotations

import argparse
import json
import os
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
    "fp8_cast_bf16": textwrap.dedent(
        """
        import os, json, shutil, torch
        from safetensors.torch import load_file, save_file
        src, dst = sys.argv[1], sys.argv[2]
        os.makedirs(dst)
        index_path = os.path.join(src, "model.safetensors.index.json")
        if os.path.exists(index_path):
            where = json.load(open(index_path))["weight_map"]
        else:
            from safetensors import safe_open
            with safe_open(os.path.join(src, "model.safetensors"), "pt") as f:
                where = dict.fromkeys(f.keys(), "model.safetensors")
        shards = sorted(set(where.values()))
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
}


def _measure(kind: str, src: str, dst: str, target: str = "") -> dict:
    code = RUN.format(body=BODIES[kind])
    result = subprocess.run(
        [sys.executable, "-c", code, src, dst, target], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{kind} {target} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_model(path: str, layers: int, hidden: int) -> int:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 256,
        vocab_size=32000,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(path, max_shard_size="100MB")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(
        ["hello world"] * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"])
    )
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--build", nargs=3, metavar=("DIR", "LAYERS", "HIDDEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        print(build_model(args.build[0], int(args.build[1]), int(args.build[2])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "llama")
        # built in a child process: a child's peak RSS starts at its parent's (Linux keeps ru_maxrss
        # across fork and exec), so this process must stay small for the figures below to be the tools'
        params = int(
            subprocess.run(
                [sys.executable, __file__, "--build", src, str(args.layers), str(args.hidden)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
        )
        size = sum(
            os.path.getsize(os.path.join(src, f)) for f in os.listdir(src) if f.endswith(".safetensors")
        )
        largest = max(
            os.path.getsize(os.path.join(src, f)) for f in os.listdir(src) if f.endswith(".safetensors")
        )
        print(
            f"model: {params / 1e6:.0f}M parameters, {size / 2**20:.0f} MiB bf16 in shards of <= "
            f"{largest / 2**20:.0f} MiB"
        )
        rows = []
        for target in ("mlx-affine4", "mlx-mxfp8", "mlx-nvfp4"):
            ours = _measure("breccia", src, os.path.join(tmp, f"b-{target}"), target)
            theirs = _measure("mlx_lm", src, os.path.join(tmp, f"m-{target}"), target)
            rows.append((f"--to {target}", "mlx_lm.convert", ours, theirs))
        fp8 = os.path.join(tmp, "fp8")
        _measure("breccia", src, fp8, "deepseek-fp8")
        ours = _measure("breccia", fp8, os.path.join(tmp, "b-bf16"), "bf16")
        theirs = _measure("fp8_cast_bf16", fp8, os.path.join(tmp, "d-bf16"))
        rows.append(("deepseek-fp8 --to bf16", "fp8_cast_bf16 (torch)", ours, theirs))
    print(
        f"{'conversion':<24} {'peer':<22} {'breccia s':>9} {'peer s':>8} {'speed x':>8} "
        f"{'breccia MiB':>11} {'peer MiB':>9} {'memory x':>9}"
    )
    for name, peer, ours, theirs in rows:
        print(
            f"{name:<24} {peer:<22} {ours['wall']:>9.2f} {theirs['wall']:>8.2f} "
            f"{theirs['wall'] / ours['wall']:>8.2f} {ours['rss_mb']:>11.0f} {theirs['rss_mb']:>9.0f} "
            f"{ours['rss_mb'] / theirs['rss_mb']:>9.2f}"
        )


if __name__ == "__main__":
    main()
