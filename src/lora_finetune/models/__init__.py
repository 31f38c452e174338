"""The base model and LoRA on it.

- `families.py`: what we know about each model family, keyed by `config.model_type`
  (LoRA targets, stop tokens, template choice, kernels, converter, loader);
- `targets.py`: which layers LoRA can wrap, name matching, parameter counts;
- `loading.py`: resolving a name (hub id, folder, bundled) and loading tokenizer and weights
  (dtype, 4/8-bit); `bundled.py`: the offline SmolLM2-135M-Instruct;
- `adapters.py`: LoRA for training (peft or the reference layer) and adapters for use;
- `lora.py`: the reference `LoRALinear` of the lesson, meant to be read;
- `chatglm/`: ChatGLM checkpoints without remote code.
"""

from __future__ import annotations

from .adapters import attach_adapter, attach_lora, check_reference_targets
from .bundled import BUNDLED_ALIASES, BUNDLED_NAME, bundled_gguf_path, ensure_bundled_model
from .families import Family, family_for, register_family, template_for, template_name_for
from .loading import (
    LoadedModel,
    load_model,
    load_tokenizer,
    meta_model,
    pick_dtype,
    quantization_available,
    read_model_config,
    resolve_model,
)
from .targets import count_parameters, linear_module_names, matches_target, resolve_target_modules

__all__ = [
    "BUNDLED_ALIASES",
    "BUNDLED_NAME",
    "Family",
    "LoadedModel",
    "attach_adapter",
    "attach_lora",
    "bundled_gguf_path",
    "check_reference_targets",
    "count_parameters",
    "ensure_bundled_model",
    "family_for",
    "linear_module_names",
    "load_model",
    "load_tokenizer",
    "matches_target",
    "meta_model",
    "pick_dtype",
    "quantization_available",
    "read_model_config",
    "register_family",
    "resolve_model",
    "resolve_target_modules",
    "template_for",
    "template_name_for",
]
