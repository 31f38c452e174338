"""Training stages: one module per family of methods, each building the Trainer for its data.

    sft, pt            sft.py         transformers' Trainer with our collators
    dpo, orpo, simpo   preference.py  TRL's DPOTrainer, ORPOTrainer, CPOTrainer (loss: simpo)
    kto                kto.py         TRL's KTOTrainer

A stage gets the run's config, the model with its LoRA attached, the tokenizer and the encoded
data (training/dataset.py, through the templates), and returns a Trainer with our arguments,
callbacks and sampler (trainers.py). The losses are the libraries', not ours.
"""

from __future__ import annotations

from . import kto, preference, sft
from .base import Stage

STAGES: dict[str, Stage] = {s.method: s for s in (*sft.STAGES, *preference.STAGES, *kto.STAGES)}


def get_stage(method: str) -> Stage:
    return STAGES[method]


__all__ = ["STAGES", "Stage", "get_stage"]
