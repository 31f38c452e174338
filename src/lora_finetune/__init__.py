"""lora-finetune: LoRA / QLoRA fine-tuning for ChatGLM- and Qwen-class causal LMs.

Public API (imports are lazy so `import lora_finetune` stays fast):

    from lora_finetune import LoRAFinetuneConfig, load_config, train
    from lora_finetune import build_dummy_dataset, format_sample, tokenize
    from lora_finetune import load_for_inference, generate, answer, generate_file
    from lora_finetune import evaluate, merge, list_modules, ChatSession
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LoRAFinetuneConfig": "config", "load_config": "config",
    "build_dummy_dataset": "data", "load_records": "data",
    "format_sample": "templates", "tokenize": "templates",
    "train": "train", "TrainResult": "train",
    "load_for_inference": "inference", "generate": "inference", "answer": "inference",
    "generate_file": "inference", "evaluate": "evaluate", "merge": "merge",
    "list_modules": "layers", "ChatSession": "chat",
    "LoraFinetuneError": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'lora_finetune' has no attribute {name!r}")


__all__ = list(_EXPORTS)
