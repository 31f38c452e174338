"""Encoding by data kind: which encoder turns each kind of record into training rows.

    instruction  encode.py  {"input_ids", "labels"}      (sft)
    text         text.py    {"input_ids", "labels"}      (pt: every token learned)
    preference   pairs.py   {"prompt_ids", "chosen_ids", "rejected_ids"}   (dpo, orpo, simpo)
    kto          pairs.py   {"prompt_ids", "completion_ids", "label"}      (kto)

Training (training/dataset.py) and `lora-finetune data` (tools/datacheck.py) both encode through
here, so the check reports what training sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Template
from .encode import EncodeStats, encode_records
from .pairs import encode_labelled, encode_pairs
from .text import encode_documents

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _instructions(records, tokenizer, template, max_length):  # noqa: ANN001, ANN202 (an encoder)
    encoded, stats = encode_records(records, tokenizer, template, max_length)
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded], stats


ENCODERS = {
    "instruction": _instructions,
    "text": lambda records, tokenizer, template, max_length: encode_documents(records, tokenizer, max_length),
    "preference": encode_pairs,
    "kto": encode_labelled,
}


def encode_kind(
    kind: str, records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, template: Template, max_length: int
) -> tuple[list[dict[str, Any]], EncodeStats]:
    """Records of one kind -> training rows and the encoding's stats."""
    return ENCODERS[kind](records, tokenizer, template, max_length)


def row_length(row: dict[str, Any]) -> int:
    """Tokens a row puts in a batch: its ids, or a prompt with its longest answer (pairs, KTO)."""
    if "input_ids" in row:
        return len(row["input_ids"])
    answers = [len(row[k]) for k in ("chosen_ids", "rejected_ids", "completion_ids") if k in row]
    return len(row.get("prompt_ids", [])) + max(answers, default=0)


__all__ = ["ENCODERS", "encode_kind", "row_length"]
