"""Segments -> token ids and labels.

Each segment is tokenised on its own and labels are the segment flags position by position
(alpaca-lora's one line: `labels = [-100] * len(prompt) + answer`), so the EOS that ends an
answer stays learned even when pad == eos. Samples longer than `max_length` are dropped and
counted, never cut.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..data.collate import IGNORE_INDEX
from ..data.formats import records_from_rows
from .base import Segment, Template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def tokenizer_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """What the tokenizer puts before any text (BOS, ChatGLM's [gMASK]sop), if anything."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    if with_special[-len(plain) :] == plain:
        return list(with_special[: len(with_special) - len(plain)])
    return []


def bos_prefix(tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    """The tokenizer's prefix for templates that build plain text; chat templates write their own."""
    return [] if template.renders_special_tokens else tokenizer_prefix(tokenizer)


def encode_segments(segments: list[Segment], tokenizer: PreTrainedTokenizerBase, prefix: list[int]) -> Encoded:
    texts = [t for t, _ in segments]
    ids_per_segment = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    input_ids = list(prefix)
    labels = [IGNORE_INDEX] * len(prefix)
    for (_, learn), ids in zip(segments, ids_per_segment):
        input_ids += ids
        labels += ids if learn else [IGNORE_INDEX] * len(ids)
    return Encoded(input_ids, labels)


def encode_prompt(record: dict[str, Any], tokenizer: PreTrainedTokenizerBase, template: Template) -> list[int]:
    """Token ids of the prompt for the next answer (inference)."""
    segs = template.segments(record, add_generation_prompt=True)
    return encode_segments(segs, tokenizer, bos_prefix(tokenizer, template)).input_ids


@dataclass
class EncodeStats:
    total: int = 0
    kept: int = 0
    too_long: int = 0
    no_answer_tokens: int = 0
    prompt_tokens: int = 0
    answer_tokens: int = 0
    longest: int = 0

    def summary(self, max_length: int) -> str:
        msg = (
            f"{self.kept} of {self.total} samples kept; {self.answer_tokens} answer tokens "
            f"learned, {self.prompt_tokens} prompt tokens masked; longest {self.longest} tokens"
        )
        if self.too_long:
            msg += (
                f"; {self.too_long} dropped for being longer than max_length={max_length} "
                "(raise max_length to keep them)"
            )
        return msg


def encode_records(
    records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, template: Template, max_length: int
) -> tuple[list[Encoded], EncodeStats]:
    """Encode records; samples longer than max_length are dropped and counted, never cut.

    Why drop rather than truncate: cutting the end removes the EOS (the model then never learns
    to stop on such samples) and cutting the start can remove the question the answer refers to.
    """
    prefix = bos_prefix(tokenizer, template)
    stats = EncodeStats(total=len(records))
    out: list[Encoded] = []
    for rec in records:
        enc = encode_segments(template.segments(rec), tokenizer, prefix)
        n = len(enc.input_ids)
        stats.longest = max(stats.longest, n)
        n_learn = sum(1 for x in enc.labels if x != IGNORE_INDEX)
        if n > max_length:
            stats.too_long += 1
            continue
        if n_learn == 0:
            stats.no_answer_tokens += 1
            continue
        stats.kept += 1
        stats.answer_tokens += n_learn
        stats.prompt_tokens += n - n_learn
        out.append(enc)
    return out, stats


def tokenize(
    dataset: Any,
    tokenizer: PreTrainedTokenizerBase,
    template: str | Template = "auto",
    max_length: int = 768,
    system_prompt: str | None = None,
) -> Any:
    """The teaching script's `tokenize(dataset, tokenizer)`, done right.

    Takes a `datasets.Dataset` (or list of dicts) in alpaca / messages / ShareGPT form and returns
    a Dataset with `input_ids` and `labels` (prompt tokens -100, answer + EOS learned). Unlike the
    script it does not pad to max_length: the collator pads each batch to its longest sample.
    """
    from datasets import Dataset

    from .registry import get_template

    rows = list(dataset) if not isinstance(dataset, list) else dataset
    records = records_from_rows(rows, source="dataset")
    tmpl = get_template(template, tokenizer, system_prompt) if isinstance(template, str) else template
    encoded, stats = encode_records(records, tokenizer, tmpl, max_length)
    log.info("tokenize: %s", stats.summary(max_length))
    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]})


__all__ = [
    "EncodeStats",
    "Encoded",
    "bos_prefix",
    "encode_prompt",
    "encode_records",
    "encode_segments",
    "tokenize",
    "tokenizer_prefix",
]
