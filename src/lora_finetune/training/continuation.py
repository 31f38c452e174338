"""`init_adapter`: a run that starts from an earlier run's adapter (SFT, then DPO on top of it).

The adapter's own LoRA shape (r, alpha, target layers) is the run's -- its weights only fit
that shape -- and, with `template: auto`, so is the template it was trained with: a preference
stage then compares answers in the format the adapter learned. Its base must be this run's base
(the model type is checked here, the weights' shapes when peft loads them). For dpo and kto the
adapter as loaded is also the reference the training is measured against (stages/preference.py).
"""

from __future__ import annotations

import dataclasses
import json

from ..config import LoRAFinetuneConfig
from ..errors import ConfigError
from ..run_record import ADAPTER_CONFIG, open_adapter


def continue_from(cfg: LoRAFinetuneConfig, model_type: str) -> tuple[LoRAFinetuneConfig, list[str], list[str]]:
    """The config with the init adapter's LoRA shape (and template), its targets, and notes."""
    folder = open_adapter(cfg.init_adapter)
    peft_cfg = json.loads((folder.path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    record = folder.record
    trained_type = record.resolved.model_type if record else None
    if trained_type and trained_type != model_type:
        raise ConfigError(
            f"init_adapter {folder.path} was trained on a {trained_type} model ({record.base_to_load()}); this run's "
            f"base {cfg.model_name} is a {model_type} model. Start from an adapter of this base, or train on its base."
        )
    targets = peft_cfg.get("target_modules") or []
    targets = sorted(targets) if isinstance(targets, (list, set)) else [targets]
    changes = {"r": int(peft_cfg.get("r", cfg.r)), "alpha": int(peft_cfg.get("lora_alpha", cfg.alpha))}
    changes["target_modules"] = targets
    if cfg.template == "auto" and record is not None and record.template not in (None, "auto"):
        changes["template"] = record.template
    notes = [
        f"continued from {folder.path}"
        + (f" (a {record.config.method} run)" if record else "")
        + f": LoRA r {changes['r']}, alpha {changes['alpha']} on {', '.join(targets)}"
        + (f", template {changes['template']}" if "template" in changes else "")
        + " (from the adapter)"
    ]
    return dataclasses.replace(cfg, **changes), targets, notes


__all__ = ["continue_from"]
