"""Demo section "model-dirs": a model directory in, a model directory out, opened by its own loader.

A tiny Llama (transformers, random weights, a tokenizer trained on the spot with ``tokenizers``) is
written to a temporary directory, then:

* ``breccia convert --to deepseek-fp8`` writes DeepSeek-style FP8, which ``breccia inspect`` names;
* that FP8 directory goes ``--to mlx-nvfp4`` and ``--to mlx-affine4``, and ``mlx_lm.load`` +
  ``generate`` runs each output (what mlx-lm users do with a downloaded model);
* the FP8 directory goes ``--to bf16`` and transformers' ``from_pretrained`` runs it; its logits are
  compared with the float model's.

Checks: every output loads and generates; the bf16 model's logits are within FP8's error of the
original's (relative L2 below 0.1).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import IO

LLAMA = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=128,
)


def write_tokenizer(path: str) -> None:
    """A byte-level BPE tokenizer (256 tokens, trained here on one sentence) with a chat template, as
    ``save_pretrained`` writes it: what mlx-lm and transformers load beside a model."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog"] * 10, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(path)


def write_tiny_llama(path: str, *, tied: bool = True, seed: int = 0) -> None:
    """A tiny bf16 Llama (random weights from ``seed``) and its tokenizer, as transformers saves them."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**LLAMA, tie_word_embeddings=tied)
    transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    write_tokenizer(path)


def run(out: IO[str]) -> bool:
    try:
        import mlx_lm
        import torch
        import transformers
    except ImportError as exc:
        print(f"{exc.name} is not installed; skipping (pip install 'breccia[all]' transformers)", file=out)
        return True
    from ..checkpoints import convert, open_checkpoint

    ok = True
    with tempfile.TemporaryDirectory(prefix="breccia-models-") as tmp:
        src, fp8 = os.path.join(tmp, "llama"), os.path.join(tmp, "llama-fp8")
        write_tiny_llama(src)
        print(f"tiny Llama written by transformers: {', '.join(sorted(os.listdir(src)))}", file=out)
        report = convert(src, fp8, to="deepseek-fp8")
        ck = open_checkpoint(fp8)
        print(
            f"breccia convert --to deepseek-fp8: {report}\n  inspect: format: {ck.format} ({ck.details})",
            file=out,
        )
        ck.close()
        for target in ("mlx-nvfp4", "mlx-affine4"):
            dst = os.path.join(tmp, f"llama-{target}")
            start = time.perf_counter()
            report = convert(fp8, dst, to=target)
            seconds = time.perf_counter() - start
            model, tokenizer = mlx_lm.load(dst)
            text = mlx_lm.generate(model, tokenizer, "hello world", max_tokens=5)
            print(
                f"breccia convert --to {target} ({seconds:.2f} s): {report}\n  mlx_lm.load + generate: "
                f"{text!r}",
                file=out,
            )
        dst = os.path.join(tmp, "llama-bf16")
        convert(fp8, dst, to="bf16")
        ids = torch.tensor([[1, 5, 9, 30, 7, 11]])
        with torch.no_grad():
            want = transformers.AutoModelForCausalLM.from_pretrained(src).float()(ids).logits
            got = transformers.AutoModelForCausalLM.from_pretrained(dst).float()(ids).logits
        err = float(torch.linalg.norm(got - want) / torch.linalg.norm(want))
        ok &= err < 0.1
        print(
            f"FP8 -> bf16 -> transformers.from_pretrained: logits within {err:.2e} of the original "
            f"({'ok' if err < 0.1 else 'TOO LARGE'})",
            file=out,
        )
    return ok
