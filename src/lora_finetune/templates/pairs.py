"""Preference pairs and KTO answers -> token ids, through the same template as SFT and inference.

A pair is encoded as two SFT conversations, the prompt followed by the chosen answer and by the
rejected one (encode.py's `encode_segments`: each segment tokenised on its own, as inference
sees the prompt). The last learned run of tokens is the answer -- its text and the end-of-turn
token that stops generation (EOS or the template's) -- and everything before it is the prompt:
earlier assistant turns of a multi-turn prompt are context here, not learned. So the chosen
sequence a DPO run scores is, token for token, the sequence SFT would train on for the same
conversation, up to the end of that answer (what a template writes after the end-of-turn token,
ChatML's newline, is never learned and is left out).

Both answers must follow the same prompt tokens (a template that renders the prompt differently
depending on the answer is refused), and a pair whose prompt plus longer answer is longer than
`max_length` is dropped and counted, never cut: cutting would remove the end-of-turn token or the
question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..data.collate import IGNORE_INDEX
from ..errors import ConfigError
from .base import Template
from .encode import EncodeStats, bos_prefix, encode_segments

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class Answered:
    """A prompt and the tokens of one answer to it."""

    prompt_ids: list[int]
    answer_ids: list[int]


def encode_answer(
    record: dict[str, Any], answer: dict[str, Any], tokenizer: PreTrainedTokenizerBase, template: Template
) -> Answered:
    """The prompt of `record` answered by `answer`, split where the answer's tokens start."""
    conversation = {**record, "messages": [*record["messages"], answer]}
    enc = encode_segments(template.segments(conversation), tokenizer, bos_prefix(tokenizer, template))
    learned = [i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX]
    if not learned:
        return Answered(enc.input_ids, [])
    end = learned[-1] + 1
    start = end
    while start > 0 and enc.labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return Answered(enc.input_ids[:start], enc.input_ids[start:end])


def encode_pairs(
    records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, template: Template, max_length: int
) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Preference records -> `{"prompt_ids", "chosen_ids", "rejected_ids"}` rows (TRL's names);
    the stats' `answer_tokens` count both answers."""
    stats = EncodeStats(total=len(records))
    out: list[dict[str, list[int]]] = []
    for rec in records:
        chosen = encode_answer(rec, rec["chosen"], tokenizer, template)
        rejected = encode_answer(rec, rec["rejected"], tokenizer, template)
        if chosen.prompt_ids != rejected.prompt_ids:
            raise ConfigError(
                f"{rec.get('source', 'a record')}: template `{template.name}` writes the prompt differently "
                "before the chosen and the rejected answer, so they cannot be compared on one prompt. Use "
                "template: qa, or a chat template whose prompt does not depend on the answer."
            )
        n = len(chosen.prompt_ids) + max(len(chosen.answer_ids), len(rejected.answer_ids))
        stats.longest = max(stats.longest, n)
        if n > max_length:
            stats.too_long += 1
            continue
        if not chosen.answer_ids or not rejected.answer_ids:
            stats.no_answer_tokens += 1
            continue
        stats.kept += 1
        stats.prompt_tokens += len(chosen.prompt_ids)
        stats.answer_tokens += len(chosen.answer_ids) + len(rejected.answer_ids)
        out.append(
            {"prompt_ids": chosen.prompt_ids, "chosen_ids": chosen.answer_ids, "rejected_ids": rejected.answer_ids}
        )
    return out, stats


def encode_labelled(
    records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, template: Template, max_length: int
) -> tuple[list[dict[str, Any]], EncodeStats]:
    """KTO records -> `{"prompt_ids", "completion_ids", "label"}` rows (TRL's names)."""
    stats = EncodeStats(total=len(records))
    out: list[dict[str, Any]] = []
    for rec in records:
        enc = encode_answer(rec, rec["completion"], tokenizer, template)
        n = len(enc.prompt_ids) + len(enc.answer_ids)
        stats.longest = max(stats.longest, n)
        if n > max_length:
            stats.too_long += 1
            continue
        if not enc.answer_ids:
            stats.no_answer_tokens += 1
            continue
        stats.kept += 1
        stats.prompt_tokens += len(enc.prompt_ids)
        stats.answer_tokens += len(enc.answer_ids)
        out.append({"prompt_ids": enc.prompt_ids, "completion_ids": enc.answer_ids, "label": bool(rec["label"])})
    return out, stats


__all__ = ["Answered", "encode_answer", "encode_labelled", "encode_pairs"]
