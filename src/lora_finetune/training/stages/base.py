"""A training stage: the method's name, how it builds its Trainer, what its steps hold."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...choices import METHOD_FUSED_LOGITS, METHOD_KIND, METHOD_SEQUENCES


@dataclass(frozen=True)
class Stage:
    method: str
    build_trainer: Callable[..., Any]
    """(cfg, model, tokenizer, data, ckpt_dir, dtype, callbacks, recipe) -> a transformers Trainer."""
    reference_forward: bool = False
    """Whether each step also runs the reference model (no gradients) on the same sequences: its
    activations are freed layer by layer, so memory planning counts nothing for it."""

    # What a step holds is the method's, in choices.py, so the memory panel of the web UI (which
    # never imports training) and planning here read the same numbers.
    @property
    def sequences_per_sample(self) -> int:
        """Sequences one sample puts through the model per step (a pair: the chosen and the rejected)."""
        return METHOD_SEQUENCES[self.method]

    @property
    def fused_logits(self) -> bool:
        """Whether the trainer computes log-probabilities without full logits (TRL's fused LM head)."""
        return self.method in METHOD_FUSED_LOGITS

    @property
    def kind(self) -> str:
        return METHOD_KIND[self.method]


__all__ = ["Stage"]
