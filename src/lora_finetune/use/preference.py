"""Which answer of a pair a model prefers: its mean log-probability per answer token.

A model "prefers" the chosen answer of a pair when it gives the chosen answer's tokens a higher
mean log-probability than the rejected answer's, both after the same prompt, encoded by the
template the adapter was trained with (templates/pairs.py). Over held-out pairs, the share it
prefers the chosen one is its preference accuracy: about 0.5 for a model the pairs mean nothing
to, near 1 after it learned them. Unlike DPO's reward accuracy, it needs no reference model, so
the same number is measured before and after training (the DPO demo shows both).
"""

from __future__ import annotations

from collections.abc import Callable
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


def _batch_logprobs(im: InferenceModel, encoded: list[tuple[list[int], list[int]]]) -> list[float]:
    """Mean answer log-probability of each (prompt_ids, answer_ids), in one right-padded forward:
    under a causal mask, padding after a sequence changes nothing before it."""
    longest = max(len(p) + len(a) for p, a in encoded)
    pad = im.tokenizer.pad_token_id if im.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, a) in enumerate(encoded):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        mask[i, : len(p) + len(a)] = 1
    ids, mask = ids.to(im.device), mask.to(im.device)
    with torch.no_grad():
        logits = im.model(input_ids=ids, attention_mask=mask).logits.float()
    out = []
    for i, (p, a) in enumerate(encoded):
        start, end = len(p), len(p) + len(a)
        logp = torch.log_softmax(logits[i, start - 1 : end - 1], -1)
        out.append(float(logp.gather(-1, ids[i, start:end, None]).mean()))
    return out


def score_pairs(
    im: InferenceModel,
    records: list[dict[str, Any]],
    batch_size: int = 8,
    progress: Callable[[int], Any] | None = None,
) -> list[PairScore]:
    """The chosen and rejected answers' mean log-probabilities, `batch_size` pairs per forward."""
    scores: list[PairScore] = []
    for start in range(0, len(records), max(batch_size, 1)):
        chunk = records[start : start + max(batch_size, 1)]
        encoded = []
        for rec in chunk:
            for answer in (rec["chosen"], rec["rejected"]):
                enc = encode_answer(rec, answer, im.tokenizer, im.template)
                encoded.append((enc.prompt_ids, enc.answer_ids))
        values = _batch_logprobs(im, encoded)
        scores += [PairScore(values[2 * i], values[2 * i + 1]) for i in range(len(chunk))]
        if progress is not None:
            progress(len(chunk))
    return scores


def preference_accuracy(im: InferenceModel, records: list[dict[str, Any]]) -> float:
    """The share of pairs whose chosen answer the model prefers (see the module docstring)."""
    scores = score_pairs(im, records)
    return sum(s.prefers_chosen for s in scores) / max(len(scores), 1)


__all__ = ["PairScore", "answer_logprob", "preference_accuracy", "score_pairs"]
