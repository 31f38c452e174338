"""Test helpers shared across the suite (fixtures live in conftest.py and call these).

Nothing here touches the network. The tokenizer is a byte-level BPE trained on a few hundred
lines of mixed Chinese/English with ChatML special tokens and a chat template, so the real
loading code (`AutoTokenizer.from_pretrained`, `AutoModelForCausalLM.from_pretrained`) runs on
real folders.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "问：中国的首都是哪里？\n答：北京。",
    "问：把“你好”翻译成英文。\n答：Hello.",
    "补充信息：今天天气真好，我很开心。",
    "The quick brown fox jumps over the lazy dog.",
    "LoRA adds low-rank matrices A and B to frozen weights.",
    "计算 3 加 5 等于多少。8。",
    "太阳从东方升起。",
    "一年有十二个月，一周有七天。",
    "Hello world, hello LoRA!",
    "system user assistant: answer the question briefly.",
    "水的化学式是 H2O。",
]


def train_tokenizer(folder: Path, chat_template: str | None) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
    )
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)


def make_tiny_model(folder: Path, kind: str = "qwen3", chat: bool = True, seed: int = 0) -> Path:
    """Build and save a tiny random model of `kind` (qwen3, llama, gpt2) with the test tokenizer."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(folder, CHATML if chat else None)
    tok = AutoTokenizer.from_pretrained(folder)
    vocab = len(tok)
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    if kind == "qwen3":
        cfg = Qwen3Config(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **ids,
        )
        model = Qwen3ForCausalLM(cfg)
    elif kind == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **ids,
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=512, **ids)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(kind)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    return folder


def tiny_config(model: Path, out: Path, **kw):
    """A fast training config for the tiny models."""
    from lora_finetune.config import build_config

    values = dict(
        model_name=str(model),
        output_dir=str(out),
        steps=4,
        batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        eval_steps=2,
        save_steps=2,
        r=4,
        alpha=8,
        dropout=0.0,
    )
    values.update(kw)
    return build_config(values)


def shared_adapter(tiny_qwen3: Path, tmp_path_factory) -> Path:
    """The adapter the inference, chat, eval and merge tests share: trained once per session,
    with a learning rate high enough that the adapter visibly changes the model."""
    from lora_finetune.folders import is_complete
    from lora_finetune.training import train

    out = tmp_path_factory.getbasetemp() / "use-verbs-adapter"
    if not is_complete(out):
        train(tiny_config(tiny_qwen3, out, learning_rate=2e-2, save_steps=100, eval_steps=100))
    return out
