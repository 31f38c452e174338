"""Raw text for continued pretraining (`method: pt`) -> token ids, every token learned.

Each document is the tokenizer's own start (BOS where it adds one), the text, and EOS, so
documents stay separated when they are packed into one row (packing is `pt`'s default) and the
model learns where a document ends. A document longer than `max_length` is cut into pieces of
`max_length` tokens: in pretraining every token is learned once either way, and dropping long
documents (what `sft` does with samples, whose answers or questions a cut would lose) would throw
most of a corpus away. A piece of one token is left out: there is nothing to predict in it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .encode import EncodeStats, tokenizer_prefix

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def encode_documents(
    records: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Text records -> `{"input_ids", "labels"}` rows (labels = input_ids); stats count documents
    (`total`), pieces kept (`kept`) and the documents that had to be cut (`too_long`)."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "this tokenizer has no EOS token, so documents cannot be separated for pretraining; use a "
            "tokenizer with one (set tokenizer.eos_token)."
        )
    prefix = tokenizer_prefix(tokenizer)
    stats = EncodeStats(total=len(records))
    texts = [r["text"] for r in records]
    out: list[dict[str, list[int]]] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        doc = [*prefix, *ids, tokenizer.eos_token_id]
        stats.longest = max(stats.longest, len(doc))
        stats.too_long += len(doc) > max_length
        for start in range(0, len(doc), max_length):
            piece = doc[start : start + max_length]
            if len(piece) < 2:
                continue
            out.append({"input_ids": piece, "labels": list(piece)})
            stats.kept += 1
            stats.answer_tokens += len(piece)
    return out, stats


__all__ = ["encode_documents"]
