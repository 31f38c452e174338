"""Batch layouts for training: packed rows, length grouping, logits only where labels are, and
choosing the collator.

Packing (`packing: true`) puts the samples of a batch back to back in ONE row, with no padding:

    input_ids     [a0 a1 a2 a3 | b0 b1 b2 | c0 c1 ...]        shape (1, total_tokens)
    position_ids  [ 0  1  2  3 |  0  1  2 |  0  1 ...]        restart at every sample
    labels        [-100 .. .. ..| -100 .. ..| -100 ..]         each sample's own labels, with its
                                                               first position set to -100

transformers turns restarting `position_ids` into a block-diagonal causal mask (sdpa, eager,
flex) or into varlen boundaries (flash-attention) by itself, so a token attends only to earlier
tokens of its own sample: this is what `DataCollatorWithFlattening` relies on. We checked it
numerically on transformers 5.24 (tests/training/test_packing.py): the packed logits equal the unpacked
ones to float32 rounding for Llama, Qwen3 and GLM on CPU sdpa and eager -- BUT only when the model
builds no KV cache. transformers looks for packed position_ids only when `attention_mask` is None
*and no cache exists*, and a model whose config says `use_cache: true` creates a `DynamicCache`
even in training; then the restarts are ignored and every token attends across sample
boundaries (logits off by ~0.5 on the tiny models). So the packed batch carries `use_cache=False`,
which the model's forward receives with the tensors.

Labels: setting each sample's first label to -100 only removes the prediction "last token of the
previous sample -> first token of this one"; every within-sample prediction is the same as
unpacked, and a sample's first label is never predicted unpacked either (the causal shift drops
it). Loss normalisation is unchanged too: transformers' Trainer divides the summed token loss by
the number of label tokens in the batch (`num_items_in_batch`), and packing keeps the same samples
per step, so a packed step's loss equals the token-weighted mean of the same samples unpacked.

What packing costs: attention over the packed row is masked, not skipped, on sdpa/eager (its
work grows with the square of the row length); flash-attention's varlen kernels skip it. What it
saves: every padding token. With length-grouped batches (the default without packing) padding is
already small, so packing matters most for long-tailed length distributions on GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..data.collate import IGNORE_INDEX, PadCollator
from ..templates import row_length

if TYPE_CHECKING:
    from transformers import PreTrainedModel

LENGTH_COLUMN = "length"
"""Dataset column with each sample's token count (read by transformers' length-grouped sampler)."""


@dataclass
class PackedCollator:
    """Flatten a batch into one row with restarting `position_ids` (see the module docstring)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    """Round the row length up with a trailing segment of padding that is its own 'sample'
    (positions from 0, labels -100), so it never mixes with real tokens. None: no padding."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        has_labels = "labels" in features[0]
        for f in features:
            x = list(f["input_ids"])
            if not x:
                continue
            ids += x
            positions += range(len(x))
            if has_labels:
                y = list(f["labels"])
                labels += [IGNORE_INDEX] + y[1:]
        if not ids:
            raise ValueError("PackedCollator received a batch in which every sample is empty")
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            extra = (-len(ids)) % m
            ids += [self.pad_token_id] * extra
            positions += range(extra)
            labels += [IGNORE_INDEX] * extra if has_labels else []
        out: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            # No attention_mask on purpose: with one, transformers ignores the position restarts.
            "use_cache": False,
        }
        if has_labels:
            out["labels"] = torch.tensor([labels], dtype=torch.long)
        return out


def packed_boundaries(position_ids: torch.Tensor) -> list[int]:
    """Start offsets of the samples in a packed row (where `position_ids` restart)."""
    pos = position_ids.reshape(-1).tolist()
    return [i for i, p in enumerate(pos) if i == 0 or p != pos[i - 1] + 1]


LabelLogitsMode = Literal["mask", "positions"]
"""How a model's forward takes `logits_to_keep` as a tensor:

- `mask`: a boolean (batch, length) mask; the kept hidden states are flattened to (n, hidden).
  transformers >= 5.22 (`modeling_utils.slice_logits_to_keep`). Exact: only learned positions.
- `positions`: a 1-D tensor of positions kept in every row (`hidden_states[:, positions]`), what
  every transformers 5.x accepts. Older releases index a boolean 2-D mask the same way and crash
  (`IndexError: too many indices`), so there we keep the positions where *any* row learns: the
  same loss, a little less saved than with the mask when rows' prompts differ in length (a packed
  row, batch 1, is exact)."""


@dataclass
class LabelLogitsCollator:
    """Wrap a collator so the model builds logits only where the next token is learned.

    The output layer (hidden -> vocabulary) and the loss run on every position, yet only the
    positions whose next token has a label contribute to the loss: the prompt's do not. This
    adds `logits_to_keep` (see `LabelLogitsMode`) and `shift_labels` (the matching next-token
    labels, which transformers' causal-LM loss and the Trainer's token count use as given). The
    loss is the same number; the output layer's work and the (tokens x vocabulary) logits shrink
    to the learned share of the tokens (bench/RESULTS.md).
    """

    inner: Any
    mode: LabelLogitsMode = "mask"

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        labels = batch.get("labels")
        if labels is None:
            return batch
        shifted = torch.full_like(labels, IGNORE_INDEX)
        shifted[:, :-1] = labels[:, 1:]
        keep = shifted != IGNORE_INDEX
        if not bool(keep.any()):
            return batch  # nothing learned in this batch: leave it as it is
        if self.mode == "mask":
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = shifted[keep]
        else:
            positions = keep.any(dim=0).nonzero().squeeze(1)
            batch["logits_to_keep"] = positions
            batch["shift_labels"] = shifted[:, positions]
        return batch


def label_logits_mode(model: PreTrainedModel | None) -> LabelLogitsMode | None:
    """How this model's forward takes a tensor `logits_to_keep` (`LabelLogitsMode`), or None
    where it takes none: remote code, a forward without the argument, or one patched by
    liger-kernel (whose fused linear + cross-entropy never builds full logits anyway).

    Decided from the model's own module, not from the transformers version: a model class whose
    module imports `slice_logits_to_keep` slices with a boolean mask; any other transformers
    class with the argument takes positions."""
    import inspect
    import sys

    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    forward = getattr(base, "forward", None)
    if forward is None or not type(base).__module__.startswith("transformers."):
        return None
    if not getattr(forward, "__module__", "").startswith("transformers."):
        return None  # patched (e.g. liger-kernel's fused linear + cross-entropy)
    try:
        if "logits_to_keep" not in inspect.signature(forward).parameters:
            return None
    except (TypeError, ValueError):
        return None
    module = sys.modules.get(type(base).__module__)
    return "mask" if getattr(module, "slice_logits_to_keep", None) is not None else "positions"


def supports_label_logits(model: PreTrainedModel | None) -> bool:
    """True where `label_logits_mode` finds a way to pass `logits_to_keep`."""
    return label_logits_mode(model) is not None


def make_collator(
    pad_token_id: int,
    *,
    packing: bool,
    on_gpu: bool,
    model: PreTrainedModel | None = None,
    label_logits_only: bool = False,
) -> Any:
    """The training collator: packed rows, or per-batch padding (multiple of 8 on GPU); with
    `label_logits_only` (and a model that supports it) logits only at learned positions."""
    inner: Any = (
        PackedCollator(pad_token_id) if packing else PadCollator(pad_token_id, pad_to_multiple_of=8 if on_gpu else None)
    )
    mode = label_logits_mode(model) if label_logits_only and model is not None else None
    return LabelLogitsCollator(inner, mode) if mode else inner


class LengthGroupedSampler(torch.utils.data.Sampler):
    """transformers' length grouping (shuffled megabatches, each sorted by length), with the
    shuffle seeded by (seed, epoch).

    transformers' own `LengthGroupedSampler` draws its shuffle from the global torch RNG when
    the epoch starts. A run resumed in the middle of an epoch restores the RNG of the checkpoint,
    not of that epoch's start, so the rest of the epoch saw other batches and the adapter came
    out different (max weight difference ~1e-3 on the tiny models). Seeded per epoch, the order
    is a function of the epoch alone, and resuming from any checkpoint is exact."""

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate at every epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.group_size, generator=generator))


def with_lengths(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a `length` entry, so the length-grouped sampler need not measure every sample."""
    return [{**r, LENGTH_COLUMN: row_length(r)} for r in rows]


def padding_stats(
    lengths: Sequence[int], batches: Sequence[Sequence[int]], pad_to: int | None = None
) -> dict[str, float]:
    """Real and padded token counts of `batches` (lists of indices into `lengths`).

    `pad_to`: every row padded to this length (the teaching script's `padding="max_length"`); None: each
    batch padded to its own longest sample.
    """
    real = padded = 0
    for b in batches:
        ls = [lengths[i] for i in b]
        real += sum(ls)
        padded += len(ls) * (pad_to if pad_to is not None else max(ls))
    return {"real_tokens": real, "padded_tokens": padded, "padding_fraction": 1 - real / padded if padded else 0.0}


__all__ = [
    "PackedCollator",
    "LabelLogitsCollator",
    "LabelLogitsMode",
    "label_logits_mode",
    "supports_label_logits",
    "make_collator",
    "with_lengths",
    "packed_boundaries",
    "padding_stats",
    "LENGTH_COLUMN",
    "LengthGroupedSampler",
]
