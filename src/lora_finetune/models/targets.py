"""Which layers LoRA can wrap, how a `target_modules` name matches them, and counting.

Everything that asks "is this layer a LoRA target?" goes through `matches_target` (peft's rule:
the full module name equals the target or ends with "." + target), so training, the reference
LoRA layer, the `modules` listing and the memory estimate agree on what a name means.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from torch import nn

from ..errors import ModelError
from .families import family_for

log = logging.getLogger(__name__)

LINEAR_KINDS = ("Conv1D", "Linear4bit", "Linear8bitLt")
"""Layer classes LoRA wraps besides nn.Linear: GPT-2's Conv1D and bitsandbytes' 4/8-bit linears."""
HEAD_NAMES = frozenset({"lm_head", "output_layer", "embed_out", "output"})
"""Output layers (hidden -> vocabulary): never chosen by `auto` / `all-linear`."""


def matches_target(module_name: str, target: str) -> bool:
    """peft's rule: the full name equals the target, or ends with "." + target.

    So "q_proj" matches "model.layers.0.self_attn.q_proj" but "proj" matches nothing there: a
    target is whole name components, never a substring.
    """
    return module_name == target or module_name.endswith("." + target)


def matches_any(module_name: str, targets: Iterable[str]) -> bool:
    return any(matches_target(module_name, t) for t in targets)


def suffix(module_name: str) -> str:
    """The last name component, which is what users put in target_modules."""
    return module_name.rsplit(".", 1)[-1]


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in LINEAR_KINDS


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of the layers LoRA can wrap (nn.Linear, GPT-2's Conv1D, bnb linears)."""
    return [name for name, mod in model.named_modules() if is_linear(mod)]


def layer_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of nn.Linear, GPT-2's Conv1D (weight is in x out) or a
    bitsandbytes linear."""
    if type(module).__name__ == "Conv1D":
        nx, nf = module.weight.shape
        return int(nf), int(nx)
    out_f = getattr(module, "out_features", None)
    in_f = getattr(module, "in_features", None)
    if out_f is not None and in_f is not None:
        return int(out_f), int(in_f)
    o, i = module.weight.shape[:2]
    return int(o), int(i)


def resolve_target_modules(spec: list[str] | str, model: nn.Module, model_type: str) -> list[str]:
    """The target-module names for this model, checked against its real layers.

    `auto`: the family's targets that exist in the model (every linear layer but the output
    head for a family we do not know); `all-linear`: every linear layer but the output head;
    a list: used as given, each name checked to match at least one layer.
    """
    linear = linear_module_names(model)
    not_heads = [n for n in linear if suffix(n) not in HEAD_NAMES]
    wanted = family_for(model_type).lora_targets
    if spec == "auto" and wanted:
        present = [t for t in wanted if any(matches_target(n, t) for n in not_heads)]
        if present:
            return present
        log.warning(
            "model_type %s: none of the usual targets %s exist; using every linear layer", model_type, list(wanted)
        )
    if spec in ("auto", "all-linear"):
        suffixes = sorted({suffix(n) for n in not_heads})
        if not suffixes:
            raise ModelError(f"The model (model_type {model_type}) has no linear layers LoRA can wrap.")
        return suffixes
    if isinstance(spec, str):  # the config turns every other string into a list
        spec = [spec]
    missing = [t for t in spec if not any(matches_target(n, t) for n in linear)]
    if missing:
        available = sorted({suffix(n) for n in linear})
        raise ModelError(
            f"target_modules {missing} match no layer of this model (model_type {model_type}). "
            f"Its linear layers are named: {', '.join(available)}. Use some of those, or "
            "target_modules: auto (run `lora-finetune modules --model_name ...` for details)."
        )
    return list(spec)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


__all__ = [
    "HEAD_NAMES",
    "LINEAR_KINDS",
    "count_parameters",
    "is_linear",
    "layer_shape",
    "linear_module_names",
    "matches_any",
    "matches_target",
    "resolve_target_modules",
    "suffix",
]
