"""Which layers a model has for LoRA, and what LoRA on them costs (`lora-finetune modules`).

The model is built on the meta device from its config (`models.meta_model`): no weights are
read, so this is instant even for a 70B model. Linear layers are grouped by the last part of
their name (`q_proj`, `query_key_value`, ...), the way `target_modules` names them. A LoRA
layer of rank r on an (out x in) weight adds r * (in + out) parameters (A is r x in, B is
out x r).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..models import meta_model, read_model_config, resolve_model
from ..models.targets import HEAD_NAMES, layer_shape, linear_module_names, matches_any, resolve_target_modules, suffix

log = logging.getLogger(__name__)


@dataclass
class ModuleGroup:
    suffix: str
    count: int
    shapes: list[tuple[int, int]]
    """Distinct (out_features, in_features) shapes, in order of first appearance."""
    params: int
    """Parameters of these layers (weights and biases)."""
    auto: bool
    """`target_modules: auto` puts LoRA here."""
    targeted: int
    """How many of these layers the chosen target_modules put LoRA on."""
    lora_params: int
    """Parameters LoRA adds on the targeted layers at rank r."""
    output_head: bool = False
    tied: bool = False
    """The layer's weight is the input embedding (tied): LoRA-free and counted once."""
    examples: list[str] = field(default_factory=list)


@dataclass
class ModulesReport:
    model: str
    model_type: str
    total_params: int
    r: int
    target_spec: list[str] | str
    targets: list[str]
    """What the spec resolves to for this model (the names written to adapter_config.json)."""
    auto_targets: list[str]
    groups: list[ModuleGroup]

    @property
    def lora_params(self) -> int:
        return sum(g.lora_params for g in self.groups)


def group_linear_modules(
    model: nn.Module, model_type: str, r: int = 8, target_modules: list[str] | str = "auto"
) -> tuple[list[ModuleGroup], list[str], list[str]]:
    """(groups, resolved targets, auto targets) for a module tree, in order of appearance."""
    auto_targets = resolve_target_modules("auto", model, model_type)
    targets = resolve_target_modules(target_modules, model, model_type)
    modules = dict(model.named_modules())
    try:
        emb = model.get_input_embeddings()
        emb_weight = getattr(emb, "weight", None)
    except (AttributeError, NotImplementedError):
        emb_weight = None
    groups: dict[str, ModuleGroup] = {}
    for name in linear_module_names(model):
        mod = modules[name]
        last = suffix(name)
        out_f, in_f = layer_shape(mod)
        g = groups.get(last)
        if g is None:
            g = groups[last] = ModuleGroup(
                last,
                0,
                [],
                0,
                auto=last not in HEAD_NAMES and matches_any(name, auto_targets),
                targeted=0,
                lora_params=0,
                output_head=last in HEAD_NAMES,
            )
        g.count += 1
        if emb_weight is not None and getattr(mod, "weight", None) is emb_weight:
            g.tied = True
        if (out_f, in_f) not in g.shapes:
            g.shapes.append((out_f, in_f))
        g.params += sum(p.numel() for p in mod.parameters(recurse=False))
        if len(g.examples) < 2:
            g.examples.append(name)
        if matches_any(name, targets):
            g.targeted += 1
            g.lora_params += r * (in_f + out_f)
    return list(groups.values()), targets, auto_targets


def list_modules(
    model: str,
    *,
    r: int = 8,
    target_modules: list[str] | str = "auto",
    trust_remote_code: bool = False,
    cache_dir: Any = None,
) -> ModulesReport:
    """Linear layers of `model` (bundled alias, folder or hub id) grouped by name, with what
    LoRA at rank `r` on `target_modules` adds. No weights are loaded."""
    if r <= 0:
        raise ConfigError(f"--r {r}: the LoRA rank must be a positive integer; use 8 or 16.")
    path = resolve_model(model, cache_dir)
    config = read_model_config(path, trust_remote_code)
    model_type = getattr(config, "model_type", "unknown")
    tree = meta_model(path, trust_remote_code)  # tied like a loaded model
    groups, targets, auto = group_linear_modules(tree, model_type, r, target_modules)
    seen: set[int] = set()
    total = 0
    for p in tree.parameters():  # tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return ModulesReport(model, model_type, total, r, target_modules, targets, auto, groups)


__all__ = ["ModuleGroup", "ModulesReport", "group_linear_modules", "list_modules"]
