"""A tiny ChatGLM2/3-format checkpoint and SentencePiece tokenizer for tests (shared by
tests/models/test_chatglm.py and tests/export/test_export_chatglm.py).

Random ChatGLM-named weights (2 layers, hidden 64) written as the original checkpoints are, and a
SentencePiece model trained on a small corpus with ChatGLM's layout, standing in for ChatGLM's
tokenizer.model.
"""

from __future__ import annotations

import copy
import io
import json
import random
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

BASE_CONFIG: dict = {
    "_name_or_path": "THUDM/chatglm3-6b",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    },
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 96,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 64,
    "kv_channels": 16,
    "layernorm_epsilon": 1e-5,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 4,
    "num_layers": 2,
    "original_rope": True,
    "padded_vocab_size": 128,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 256,
    "use_cache": True,
    "torch_dtype": "float32",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


def config(**changes) -> dict:
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg.update(changes)
    return {k: v for k, v in cfg.items() if v is not None}


def random_state_dict(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden, vocab, ffn = cfg["hidden_size"], cfg["padded_vocab_size"], cfg["ffn_hidden_size"]
    heads, groups, hd = cfg["num_attention_heads"], cfg["multi_query_group_num"], cfg["kv_channels"]
    qkv = (heads + 2 * groups) * hd

    def rnd(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "transformer.embedding.word_embeddings.weight": rnd(vocab, hidden, scale=1.0),
        "transformer.rotary_pos_emb.inv_freq": 1.0 / (10000 ** (torch.arange(0, hd // 2, 2).float() / (hd // 2))),
        "transformer.encoder.final_layernorm.weight": 1 + rnd(hidden, scale=0.1),
        "transformer.output_layer.weight": rnd(vocab, hidden),
    }
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1 + rnd(hidden, scale=0.1)
        sd[p + "self_attention.query_key_value.weight"] = rnd(qkv, hidden)
        if cfg.get("add_qkv_bias"):
            sd[p + "self_attention.query_key_value.bias"] = rnd(qkv, scale=0.1)
        sd[p + "self_attention.dense.weight"] = rnd(hidden, heads * hd)
        sd[p + "post_attention_layernorm.weight"] = 1 + rnd(hidden, scale=0.1)
        sd[p + "mlp.dense_h_to_4h.weight"] = rnd(2 * ffn, hidden)
        sd[p + "mlp.dense_4h_to_h.weight"] = rnd(hidden, ffn)
    return sd


def write_checkpoint(
    folder: Path,
    cfg: dict,
    sd: dict[str, torch.Tensor],
    fmt: str = "safetensors",
    shards: int = 1,
    extra_files: dict[str, str] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    names = sorted(sd)
    parts = [names[i::shards] for i in range(shards)]
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map = {}
    for number, part in enumerate(parts, start=1):
        file = f"{stem}.{ext}" if shards == 1 else f"{stem}-{number:05d}-of-{shards:05d}.{ext}"
        tensors = {n: sd[n].contiguous() for n in part}
        if fmt == "safetensors":
            save_file(tensors, str(folder / file))
        else:
            torch.save(tensors, folder / file)
        weight_map.update({n: file for n in part})
    if shards > 1:
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


ENGLISH = "the model learns to answer questions about data science and code with numbers quickly".split()
CHINESE = [
    "你好",
    "我们",
    "今天",
    "模型",
    "训练",
    "数据",
    "问题",
    "回答",
    "中文",
    "天气",
    "学习",
    "机器",
    "很好",
    "谢谢",
    "世界",
    "程序",
    "助手",
    "再见",
]


def corpus(lines: int = 400) -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(lines):
        words = [
            rng.choice(ENGLISH)
            if rng.random() < 0.5
            else rng.choice(CHINESE)
            if rng.random() < 0.8
            else str(rng.randint(0, 9999))
            for _ in range(rng.randint(3, 10))
        ]
        out.append((" " if rng.random() < 0.6 else "").join(words) + rng.choice(["", "。", "？", "!", "，好的"]))
    return out


def train_sentencepiece(folder: Path, **options) -> spm.SentencePieceProcessor:
    """A small SentencePiece model with ChatGLM's layout: <unk>=0, <s>=1, </s>=2, byte fallback,
    newlines and spaces kept (identity normalisation), digits split."""
    args = dict(
        vocab_size=420,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    args.update(options)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=buffer, **args)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def chatglm3_checkpoint(folder: Path, tokenizer_model: Path, seed: int = 0, **changes) -> Path:
    """A ChatGLM3-format folder (config.json, weights, tokenizer.model) whose padded vocabulary
    holds the SentencePiece pieces, ChatGLM3's 9 special tokens and a few spare rows."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    cfg = config(padded_vocab_size=sp.vocab_size() + 12, **changes)
    write_checkpoint(folder, cfg, random_state_dict(cfg, seed=seed))
    (folder / "tokenizer.model").write_bytes(Path(tokenizer_model).read_bytes())
    return folder
