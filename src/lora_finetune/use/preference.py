"""Which answer of a pair a model prefers: its mean log-probability per answer token.

A model "prefers" the chosen answer of a pair when it gives the chosen answer's tokens a higher
mean log-probability than the rejected answer's, both after the same prompt, encoded by the
template the adapter was trained with (templates/pairs.py). Over held-out pairs, the share it
prefers the chosen one is its preference accuracy: about 0.5 for a model the pairs mean nothing
to, near 1 after it learned them. Unlike DPO's reward accuracy, it needs no reference model, so
the same number is measured before and after training (the DPO demo shows both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..templates import encode_answer
from .inference import InferenceModel


@dataclass
class PairScore:
    chosen: float
    """Mean log-probability per token of the chosen answer."""
    rejected: float

    @property
    def prefers_chosen(self) -> bool:
        return self.chosen > self.rejected


def answer_logprob(im: InferenceModel, record: dict[str, Any], answer: dict[str, Any]) -> float:
    """Mean log-probability of `answer`'s tokens (its end-of-turn token included) after the prompt."""
    enc = encode_answer(record, answer, im.tokenizer, im.template)
    ids = torch.tensor([enc.prompt_ids + enc.answer_ids], device=im.device)
    with torch.no_grad():
        logits = im.model(input_ids=ids).logits[0, -len(enc.answer_ids) - 1 : -1].float()
    targets = ids[0, -len(enc.answer_ids) :]
    return float(torch.log_softmax(logits, -1).gather(-1, targets[:, None]).mean())


def score_pairs(im: InferenceModel, records: list[dict[str, Any]]) -> list[PairScore]:
    return [PairScore(answer_logprob(im, r, r["chosen"]), answer_logprob(im, r, r["rejected"])) for r in records]


def preference_accuracy(im: InferenceModel, records: list[dict[str, Any]]) -> float:
    """The share of pairs whose chosen answer the model prefers (see the module docstring)."""
    scores = score_pairs(im, records)
    return sum(s.prefers_chosen for s in scores) / max(len(scores), 1)


__all__ = ["PairScore", "answer_logprob", "preference_accuracy", "score_pairs"]
