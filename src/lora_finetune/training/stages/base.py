"""A training stage: the method's name, how it builds its Trainer, what its steps hold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...choices import METHOD_KIND


@dataclass(frozen=True)
class Stage:
    method: str
    build_trainer: Callable[..., Any]
    """(cfg, model, tokenizer, data, ckpt_dir, dtype, callbacks, recipe) -> a transformers Trainer."""
    sequences_per_sample: int = 1
    """Sequences one sample puts through the model per step (a pair: the chosen and the rejected)."""
    reference_forward: bool = False
    """Whether each step also runs the reference model (no gradients) on the same sequences: its
    activations are freed layer by layer, so memory planning counts nothing for it."""
    fused_logits: bool = False
    """Whether the trainer computes log-probabilities without full logits (TRL's fused LM head)."""

    @property
    def kind(self) -> str:
        return METHOD_KIND[self.method]


__all__ = ["Stage"]
