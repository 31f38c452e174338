"""The seed's training pipeline, as /work/shared/seed/lora_chatglm_demo_doc.md describes it.

Rebuilt from the document (the seed script itself is not in the repository), step by step:

1. `build_dummy_dataset()`, `train_test_split(test_size=0.1)`;
2. `format_sample`: 问：{instruction}\\n补充信息：{input}\\n答：{output}  (the 补充信息 line always,
   no EOS);
3. `tokenizer(text, max_length=768, truncation=True, padding="max_length")`, with
   `tokenizer.pad_token = tokenizer.eos_token`;
4. `AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True, load_in_4bit=True,
   device_map="auto" if cuda else None)` -- on a machine without CUDA/bitsandbytes the FAQ says
   to drop load_in_4bit, so full precision there; transformers 5 spells load_in_4bit as
   `BitsAndBytesConfig(load_in_4bit=True)` (same defaults: fp4, fp32 compute);
5. `LoraConfig(task_type=CAUSAL_LM, r=8, lora_alpha=32, lora_dropout=0.05,
   target_modules=["query_key_value", "dense"])` -- on non-ChatGLM models those names do not
   exist, so they are patched to the model's q/k/v/o projections;
6. `Trainer(..., data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))` with
   `per_device_train_batch_size=2`, `learning_rate=1e-4`, `max_steps=50`, no mixed precision:
   labels are input_ids with every pad id (= EOS) masked, so the prompt is learned too and EOS
   never is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class SeedSettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.05
    learning_rate: float = 1e-4
    batch_size: int = 2
    steps: int = 50
    max_length: int = 768
    load_in_4bit: bool = False
    seed: int = 42


def seed_format_sample(sample: dict[str, Any]) -> str:
    """The seed document's `format_sample`, verbatim in behaviour (补充信息 line always)."""
    return f"问：{sample['instruction']}\n补充信息：{sample.get('input', '')}\n答：{sample['output']}"


def seed_targets(model: torch.nn.Module) -> list[str]:
    """["query_key_value", "dense"] on ChatGLM; the model's q/k/v/o projections elsewhere."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if {"query_key_value", "dense"} <= names:
        return ["query_key_value", "dense"]
    for group in (["q_proj", "k_proj", "v_proj", "o_proj"], ["c_attn", "c_proj"]):
        present = [t for t in group if t in names]
        if present:
            return present
    raise ValueError("no attention projections found for the seed's target_modules")


def seed_tokenize(rows: list[dict[str, Any]], tokenizer: Any, s: SeedSettings):
    """Steps 1-3: the dataset split and the seed's tokenisation (padding to max_length)."""
    from datasets import Dataset

    ds = Dataset.from_list(rows).train_test_split(test_size=0.1, seed=s.seed)

    def tok(batch):
        texts = [seed_format_sample(dict(zip(batch, vals))) for vals in zip(*batch.values())]
        return tokenizer(texts, max_length=s.max_length, truncation=True, padding="max_length")

    cols = ds["train"].column_names
    return ds.map(tok, batched=True, remove_columns=cols)


def load_seed_model(path: str, s: SeedSettings):
    """Step 4 (load_in_4bit only where CUDA and bitsandbytes exist, as the FAQ says)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": True}
    if torch.cuda.is_available():
        kwargs["device_map"] = "auto"
    if s.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def build_seed_trainer(
    model_path: str,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    s: SeedSettings,
    output_dir: Path,
    callbacks: list[Any] | None = None,
):
    """Steps 1-6; returns the Trainer, ready for `.train()`."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, set_seed

    set_seed(s.seed)
    if tokenizer.pad_token is None or tokenizer.pad_token != tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.eos_token
    data = seed_tokenize(rows, tokenizer, s)
    base = load_seed_model(model_path, s)
    peft_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=seed_targets(base),
    )
    model = get_peft_model(base, peft_config)
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=s.batch_size,
        learning_rate=s.learning_rate,
        max_steps=s.steps,
        report_to="none",
        seed=s.seed,
        save_strategy="no",
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=callbacks or [],
    )
