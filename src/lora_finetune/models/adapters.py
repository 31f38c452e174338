"""Putting LoRA on a model: for training (peft, or the lesson's reference layer) and for use
(an adapter folder loaded with peft).

Both backends save peft's adapter format, so peft loads whatever trained the adapter.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..errors import ModelError
from .dropout import use_cheap_cpu_dropout
from .targets import matches_any

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from ..config import LoRAFinetuneConfig


def attach_lora(model: PreTrainedModel, cfg: LoRAFinetuneConfig, targets: list[str]) -> PeftModel:
    """Wrap the target layers with LoRA; only the LoRA weights stay trainable. With
    `init_adapter`, the LoRA weights start as that adapter's (trainable).

    Returns peft's PeftModel, or (`lora_backend: reference`) the model itself with the
    reference LoRALinear layers injected."""
    if cfg.init_adapter is not None:
        peft_model = attach_adapter(model, cfg.init_adapter, trainable=True)
        # The adapter names its base portably (a hub id); saving checks that base's config for
        # resized embeddings, which for a hub id is a network lookup. The local base is the same.
        for peft_cfg in peft_model.peft_config.values():
            peft_cfg.base_model_name_or_path = getattr(model, "name_or_path", peft_cfg.base_model_name_or_path)
        use_cheap_cpu_dropout(peft_model)
        return peft_model
    if cfg.lora_backend == "reference":
        from .lora import inject_lora

        inject_lora(model, targets, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout)
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    peft_cfg = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets
    )
    peft_model = get_peft_model(model, peft_cfg)
    # torch's CPU dropout mask costs ~14% of a step on long batches (dropout.py); same meaning.
    use_cheap_cpu_dropout(peft_model)
    return peft_model


def check_reference_targets(model: nn.Module, targets: list[str]) -> None:
    """The reference LoRALinear wraps nn.Linear only: say so before any data is read."""
    other = sorted(
        {type(m).__name__ for n, m in model.named_modules() if matches_any(n, targets) and not isinstance(m, nn.Linear)}
    )
    if other:
        raise ModelError(
            f"lora_backend: reference wraps nn.Linear layers only, and the targets "
            f"{targets} include {', '.join(other)} layers (GPT-2 uses Conv1D). Use "
            "lora_backend: peft for this model."
        )


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_weights(adapter_dir: str | Path) -> None:
    """Read the adapter's tensors and check they are whole and finite: a damaged file is named
    here instead of loading as garbage (or as `""` answers)."""
    import torch
    from safetensors.torch import load_file

    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        return  # an old `adapter_model.bin` adapter: peft reads it and reports its own problems
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for bad headers and truncation
        raise ModelError(
            f"{path} cannot be read as safetensors ({str(e).splitlines()[0][:160]}): the file is "
            "damaged or incomplete. Copy the adapter folder again, or re-run the training."
        ) from None
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelError(
            f"{path} holds NaN or infinite values in {len(bad)} tensors ({', '.join(bad[:3])}): the "
            "file is damaged, or the run diverged. Use an earlier checkpoint or re-train with a "
            "lower learning_rate."
        )


def attach_adapter(
    model: PreTrainedModel | PeftModel,
    adapter_dir: str | Path,
    adapter_name: str = "default",
    *,
    trained_on: str | None = None,
    given: str | None = None,
    trainable: bool = False,
) -> PeftModel:
    """peft's PeftModel around `model` with the adapter's weights (inference mode, or
    `trainable` for a run that continues it). Given a PeftModel, the adapter is added to it under
    `adapter_name` (several adapters, one base).

    The weights are checked (readable, finite) first; `trained_on` / `given` name the bases for
    the message when the adapter's shapes do not fit."""
    from peft import PeftModel

    check_adapter_weights(adapter_dir)
    try:
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers method deprecated in 5.x; nothing for users to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            if isinstance(model, PeftModel):
                model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable)
                return model
            return PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))[:200]
        raise ModelError(
            f"The adapter {adapter_dir} does not fit this base model ({first}). It was trained on "
            f"{trained_on or 'another base (see its adapter_config.json)'}; the base given is "
            f"{given or getattr(model, 'name_or_path', '?')}. Use the base it was trained on "
            "(drop --base_model to use the one in its run record)."
        ) from None


__all__ = ["ADAPTER_WEIGHTS", "attach_adapter", "attach_lora", "check_adapter_weights", "check_reference_targets"]
