"""The GPU benchmark's models and data: random-weight models built from configs, nothing downloaded.

- `QWEN3_06B`: Qwen3-0.6B's published config (28 layers, hidden 1024, vocab 151,936, tied);
- `GLM_6B`: a ChatGLM3-6B-sized native GLM (GlmConfig: hidden 4096, 28 layers, 32 heads, 2 KV
  heads, head_dim 128, intermediate 13,696, vocab 65,024, partial_rotary_factor 0.5,
  attention_bias True) -- what `lora-finetune` converts ChatGLM3 into;
- `TINY`, `TINY_GLM`: two-layer stand-ins for the CPU dry run and the CLI smoke.

`build_model_folder` saves a model once (bf16 safetensors + tokenizer), so every pipeline loads it
the way it loads a real checkpoint (bitsandbytes quantises on load). The default tokenizer is
word-level over the model's vocabulary ('w<id>' is token <id>), so a text's length in words is
its length in tokens; `byte_level_tokenizer` is a small GPT-2-style BPE for the smoke, whose GGUF
export accepts byte-level BPE tokenizers only.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path

# Token ids every model here uses: the tokenizers put [UNK] at 0 and </s> (EOS, and the pad) at 1.
UNK, EOS = "[UNK]", "</s>"

# fmt: off
QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                 rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=1000000.0)
GLM_6B = dict(vocab_size=65024, hidden_size=4096, intermediate_size=13696, num_hidden_layers=28,
              num_attention_heads=32, num_key_value_heads=2, head_dim=128, partial_rotary_factor=0.5,
              attention_bias=True, tie_word_embeddings=False, max_position_embeddings=8192, rms_norm_eps=1e-5)
TINY = dict(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)
# fmt: on
# (Layer widths in multiples of 64: bitsandbytes' CPU 4-bit inference path packs weights in blocks
# of 64 inputs and fails on a 160-wide down_proj, as in the smoke's evaluation steps.)
TINY_GLM = {**TINY, "partial_rotary_factor": 0.5, "attention_bias": True}


def log(msg: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _fast_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, eos_token=EOS, pad_token=EOS)


def make_tokenizer(vocab_size: int):
    """Word-level tokenizer: 'w<id>' is token <id>; [UNK]=0, </s>=1 (EOS, and the pad)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {UNK: 0, EOS: 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _fast_tokenizer(tok)


def byte_level_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A GPT-2-style byte-level BPE trained on `texts` ([UNK]=0, </s>=1), for the CLI smoke."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return _fast_tokenizer(tok)


def make_rows(n: int, vocab_size: int, lo: int, hi: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca rows whose prompt + answer is lo..hi tokens (30-70% of it the answer)."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " " + " ".join(f"w{rng.randrange(2, vocab_size)}" for _ in range(k)) + " "

    rows = []
    for _ in range(n):
        total = rng.randint(lo, hi)
        ans = max(1, int(total * rng.uniform(0.3, 0.7)))
        rows.append({"instruction": words(total - ans - 4), "input": "", "output": words(ans)})
    return rows


def build_model_folder(name: str, kind: str, dims: dict, root: Path, device: str, tokenizer=None) -> Path:
    """Random-weight model from its config (`kind`: qwen3 or glm), saved in bf16 with `tokenizer`
    (default: the word-level one over the config's vocabulary). Built once per folder."""
    import torch
    from transformers import AutoModelForCausalLM, GlmConfig, Qwen3Config

    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    cfg_cls = Qwen3Config if kind == "qwen3" else GlmConfig
    config = cfg_cls(**dims, pad_token_id=1, eos_token_id=1, bos_token_id=None)
    t = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = 1
    model.save_pretrained(folder)
    (tokenizer or make_tokenizer(config.vocab_size)).save_pretrained(folder)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    log(f"built {name} ({kind}) in {time.perf_counter() - t:.0f} s -> {folder}")
    return folder
