"""What this package knows about each model family, in one table keyed by `config.model_type`.

A family says which layers `target_modules: auto` puts LoRA on, which special tokens end an
answer (the stop tokens besides EOS), which template `template: auto` picks when it is not the
tokenizer's chat template, which liger-kernel entry has fused kernels for it, how a checkpoint
is converted before loading (ChatGLM2/3 -> native GLM), how it is loaded, and which layers read
the same input (for the memory estimate). Everything else asks this table; nothing else
compares `model_type` strings.

Adding a family is one `register_family(Family(...))` call (plus a converter module if its
checkpoints need converting); tests/models/test_families.py registers a toy family in-process
and trains it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..templates import Template, get_template, resolve_template_name

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

LayerRole = Literal["attn_in", "attn_out", "mlp_in", "mlp_out"]

Converter = Callable[[Path, Path], Path]
"""(checkpoint folder, cache dir) -> the folder to load (converted once, or the input)."""


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    """`config.model_type` values this family covers."""
    lora_targets: tuple[str, ...]
    """What `target_modules: auto` wraps. Attention and MLP projections: LoRA on all of them
    trains better than attention alone (QLoRA paper) at a small parameter cost."""
    end_of_turn: tuple[str, ...] = ()
    """Special tokens that end an answer in this family's chat formats; generation stops on them
    (and on EOS) when the tokenizer has them as special tokens."""
    auto_template: str | None = None
    """The template `template: auto` picks; None: `chat` when the tokenizer has a chat template,
    else `qa`."""
    liger_key: str | None = None
    """The key of this family in liger-kernel's table of fused kernels, when it is not the
    model_type itself (liger-kernel keys its table by model_type)."""
    converter: Converter | None = None
    loader: Literal["causal_lm", "auto_model"] = "causal_lm"
    """`auto_model`: the checkpoint's own code registers no causal-LM class (ChatGLM-6B v1)."""
    layer_roles: Mapping[str, LayerRole] = field(default_factory=dict)
    """Linear layer name -> the tensor it reads (layers of one role read the same tensor), for
    the memory estimate's count of what LoRA saves for the backward pass."""
    estimate_config: Callable[[dict[str, Any]], PretrainedConfig] | None = None
    """config.json contents -> the transformers config the memory estimate measures, for a
    family whose config transformers cannot build without the checkpoint's own code."""
    gguf_arch: Mapping[str, str] = field(default_factory=dict)
    """model_type -> llama.cpp's architecture name (gguf's MODEL_ARCH_NAMES) for `export
    --format gguf`; a model_type missing here cannot be exported to GGUF."""


# Layer roles of the common decoder layouts.
_LLAMA_ROLES: Mapping[str, LayerRole] = {
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "o_proj": "attn_out",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
    "down_proj": "mlp_out",
}
_GLM_ROLES: Mapping[str, LayerRole] = {
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "o_proj": "attn_out",
    "gate_up_proj": "mlp_in",
    "down_proj": "mlp_out",
}
_CHATGLM_ROLES: Mapping[str, LayerRole] = {
    "query_key_value": "attn_in",
    "dense": "attn_out",
    "dense_h_to_4h": "mlp_in",
    "dense_4h_to_h": "mlp_out",
}
_GPT2_ROLES: Mapping[str, LayerRole] = {"c_attn": "attn_in", "c_fc": "mlp_in"}
# Names other architectures use, for families not in the table.
_OTHER_ROLES: Mapping[str, LayerRole] = {
    "qkv_proj": "attn_in",
    "W_pack": "attn_in",
    "Wqkv": "attn_in",
    "out_proj": "attn_out",
    "w1": "mlp_in",
    "w3": "mlp_in",
    "fc1": "mlp_in",
    "w2": "mlp_out",
    "fc2": "mlp_out",
}

_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_CHATML_END = ("<|im_end|>", "<|endoftext|>")


def _chatglm_converter(path: Path, cache_dir: Path) -> Path:
    from .chatglm import to_native  # imported on use: conversion code is large

    return to_native(path, cache_dir)


def _chatglm_estimate_config(config: dict[str, Any]) -> PretrainedConfig:
    from .chatglm import estimate_config  # imported on use, like the converter

    return estimate_config(config)


DEFAULT_FAMILY = Family(
    name="default",
    model_types=(),
    lora_targets=(),
    # For a family we know nothing about: the end-of-turn tokens of the common chat formats
    # (ChatML, Llama 3, Phi-3, Gemma, GLM), each used only if the tokenizer has it as special.
    end_of_turn=(
        "<|im_end|>",
        "<|eot_id|>",
        "<|end|>",
        "<|user|>",
        "<|observation|>",
        "<eop>",
        "<|endoftext|>",
        "<end_of_turn>",
    ),
    layer_roles={**_LLAMA_ROLES, **_GLM_ROLES, **_CHATGLM_ROLES, **_GPT2_ROLES, **_OTHER_ROLES},
)

_REGISTRY: dict[str, Family] = {}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Add `family` to the table. A model_type already claimed by another family is an error
    unless `replace` (tests and plugins that override a built-in entry)."""
    if not family.model_types:
        raise ValueError(f"family {family.name!r} names no model_type")
    for model_type in family.model_types:
        taken = _REGISTRY.get(model_type)
        if taken is not None and taken.name != family.name and not replace:
            raise ValueError(
                f"model_type {model_type!r} already belongs to family {taken.name!r}; pass replace=True to override it"
            )
    for model_type in family.model_types:
        _REGISTRY[model_type] = family
    return family


def unregister_family(name: str) -> None:
    """Remove every model_type of the family called `name` (tests clean up with this)."""
    for model_type in [t for t, f in _REGISTRY.items() if f.name == name]:
        del _REGISTRY[model_type]


def family_for(model_type: str | None) -> Family:
    """The family of `model_type`, or `DEFAULT_FAMILY` for one this package does not know."""
    return _REGISTRY.get(str(model_type), DEFAULT_FAMILY)


def known_families() -> list[Family]:
    """Every registered family, once each, in registration order."""
    seen: dict[str, Family] = {}
    for fam in _REGISTRY.values():
        seen.setdefault(fam.name, fam)
    return list(seen.values())


def layer_role(suffix: str, model_type: str | None) -> str:
    """The input a linear layer called `suffix` reads (`attn_in`, ...), or `own:<suffix>`."""
    role = family_for(model_type).layer_roles.get(suffix) or DEFAULT_FAMILY.layer_roles.get(suffix)
    return role or f"own:{suffix}"


def gguf_architectures() -> dict[str, str]:
    """Every model_type `export` can write as GGUF -> its llama.cpp architecture name."""
    return {t: a for fam in known_families() for t, a in fam.gguf_arch.items()}


def template_name_for(name: str, tokenizer: PreTrainedTokenizerBase, model_type: str | None) -> str:
    """The template `name` stands for with this model (`auto` resolved by the family)."""
    return resolve_template_name(name, tokenizer, family_for(model_type).auto_template)


def template_for(
    name: str, tokenizer: PreTrainedTokenizerBase, model_type: str | None, system_prompt: str | None = None
) -> Template:
    """The template called `name` for this model, with its family's stop tokens."""
    fam = family_for(model_type)
    return get_template(name, tokenizer, system_prompt, end_of_turn=fam.end_of_turn, auto_template=fam.auto_template)


# --------------------------------------------------------------------------- the built-in table
for _family in (
    Family(
        "llama",
        ("llama",),
        _LLAMA_TARGETS,
        layer_roles=_LLAMA_ROLES,
        # SmolLM2 (a llama) chats in ChatML; Llama 3 ends turns with <|eot_id|>.
        end_of_turn=("<|eot_id|>", *_CHATML_END),
        gguf_arch={"llama": "llama"},
    ),
    Family(
        "qwen",
        ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"),
        _LLAMA_TARGETS,
        layer_roles=_LLAMA_ROLES,
        end_of_turn=_CHATML_END,
        gguf_arch={"qwen2": "qwen2", "qwen3": "qwen3"},
    ),
    Family("mistral", ("mistral",), _LLAMA_TARGETS, layer_roles=_LLAMA_ROLES),
    Family("gemma", ("gemma", "gemma2"), _LLAMA_TARGETS, layer_roles=_LLAMA_ROLES, end_of_turn=("<end_of_turn>",)),
    Family("phi3", ("phi3",), _LLAMA_TARGETS, layer_roles=_LLAMA_ROLES, end_of_turn=("<|end|>", "<|endoftext|>")),
    Family("internlm2", ("internlm2",), _LLAMA_TARGETS, layer_roles=_LLAMA_ROLES, end_of_turn=("<|im_end|>",)),
    Family("baichuan", ("baichuan",), _LLAMA_TARGETS, layer_roles=_LLAMA_ROLES),
    Family("yi", ("yi",), _LLAMA_TARGETS, layer_roles=_LLAMA_ROLES, end_of_turn=("<|im_end|>",)),
    Family("olmo", ("olmo",), _LLAMA_TARGETS, layer_roles=_LLAMA_ROLES, end_of_turn=("<|endoftext|>",)),
    Family("granite", ("granite",), _LLAMA_TARGETS, layer_roles=_LLAMA_ROLES, end_of_turn=("<|end_of_text|>",)),
    # ChatGLM2/3 after conversion, and GLM-4 checkpoints in transformers' own format.
    Family(
        "glm",
        ("glm", "glm4"),
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
        layer_roles=_GLM_ROLES,
        end_of_turn=("<|user|>", "<|observation|>", "<|endoftext|>"),
        # Converted ChatGLM2/3 (and GLM-4-9B's -hf release) are llama.cpp's `chatglm`; Glm4ForCausalLM
        # (GLM-4-0414, extra post-norms) would be `glm4`, which export does not write yet.
        gguf_arch={"glm": "chatglm"},
    ),
    # Remote-code ChatGLM folders: v2/v3 are converted to `glm` before loading; what is loaded
    # as `chatglm` is ChatGLM-6B v1, which runs through its own code and [Round N] format.
    Family(
        "chatglm",
        ("chatglm",),
        ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        end_of_turn=("<eop>",),
        auto_template="chatglm",
        converter=_chatglm_converter,
        loader="auto_model",
        layer_roles=_CHATGLM_ROLES,
        estimate_config=_chatglm_estimate_config,
    ),
    Family("gpt2", ("gpt2",), ("c_attn", "c_proj", "c_fc"), layer_roles=_GPT2_ROLES, end_of_turn=("<|endoftext|>",)),
):
    register_family(_family)
del _family


__all__ = [
    "DEFAULT_FAMILY",
    "Family",
    "LayerRole",
    "family_for",
    "gguf_architectures",
    "known_families",
    "layer_role",
    "register_family",
    "template_for",
    "template_name_for",
    "unregister_family",
]
