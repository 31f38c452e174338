"""Batching: pad each batch to its own longest sample, labels -100 by position.

Padding happens here and nowhere else. Positions beyond a sample's length get `pad_token_id` in
`input_ids`, 0 in `attention_mask` and -100 in `labels` *by position*: we never mask labels by
comparing token ids, so an EOS inside the answer stays learned even when pad == eos (the seed's
`pad_token = eos_token` + `DataCollatorForLanguageModeling` masks every EOS and the model never
learns to stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100
"""The label of a position that is not learned (what PyTorch's cross-entropy skips)."""


@dataclass
class PadCollator:
    pad_token_id: int
    pad_to_multiple_of: int | None = None
    """Round the batch length up (8 helps tensor cores on GPU; None on CPU)."""
    padding_side: str = "right"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        batch = len(features)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, longest), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            span = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            input_ids[i, span] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention[i, span] = 1
            if "labels" in f:
                labels[i, span] = torch.as_tensor(f["labels"], dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention}
        if "labels" in features[0]:
            out["labels"] = labels
        return out
