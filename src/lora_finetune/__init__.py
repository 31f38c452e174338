"""lora-finetune: LoRA / QLoRA fine-tuning for ChatGLM- and Qwen-class causal LMs.

The public Python API (each name is a function or class, never a module):

    from lora_finetune import LoRAFinetuneConfig, load_config, train
    from lora_finetune import build_dummy_dataset, load_records, format_sample, tokenize
    from lora_finetune import load_for_inference, generate, answer, generate_file
    from lora_finetune import evaluate, merge, list_modules, estimate_memory, ChatSession

The names are imported on first use, so `import lora_finetune` (and `lora-finetune --help`)
does not pay for torch and transformers. No submodule is named like a function of this list:
`training/`, `use/evaluation.py`, `use/merging.py`, so `from lora_finetune import train` can
only mean the function.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "LoRAFinetuneConfig": "config",
    "load_config": "config",
    "LoraFinetuneError": "errors",
    "RunRecord": "run_record",
    "open_adapter": "run_record",
    "build_dummy_dataset": "data",
    "load_records": "data",
    "format_sample": "templates",
    "tokenize": "templates",
    "get_template": "templates",
    "Family": "models",
    "register_family": "models",
    "train": "training",
    "TrainResult": "training",
    "load_for_inference": "use",
    "generate": "use",
    "answer": "use",
    "generate_file": "use",
    "ChatSession": "use",
    "evaluate": "use",
    "merge": "use",
    "list_modules": "tools",
    "estimate_memory": "tools",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .config import LoRAFinetuneConfig, load_config
    from .data import build_dummy_dataset, load_records
    from .errors import LoraFinetuneError
    from .models import Family, register_family
    from .run_record import RunRecord, open_adapter
    from .templates import format_sample, get_template, tokenize
    from .tools import estimate_memory, list_modules
    from .training import TrainResult, train
    from .use import ChatSession, answer, evaluate, generate, generate_file, load_for_inference, merge


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lora_finetune' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
