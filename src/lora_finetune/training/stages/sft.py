"""`sft` and `pt`: transformers' Trainer with our collators.

Both train on (input_ids, labels) rows: SFT's labels are the answers (templates/encode.py),
pretraining's are every token of a document (templates/text.py); packing, length grouping and
logits only where labels are (batching.py) serve both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...config import LoRAFinetuneConfig
from ...run_record import RunRecord
from ..batching import LENGTH_COLUMN, make_collator, with_lengths
from ..trainers import build_training_args, finish_trainer, run_callbacks
from .base import Stage

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from ..dataset import PreparedData


def build_trainer(
    cfg: LoRAFinetuneConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    ckpt_dir: Path,
    dtype: torch.dtype,
    callbacks: list[Any],
    recipe: RunRecord | None = None,
) -> Trainer:
    from datasets import Dataset
    from transformers import Trainer

    args = build_training_args(cfg, ckpt_dir, bool(data.eval), dtype)
    train_rows = with_lengths(data.train)
    # --- throughput (batching.py): collator (padding or packing) and sample lengths ---
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(with_lengths(data.eval)) if data.eval else None,
        data_collator=make_collator(
            tokenizer.pad_token_id,
            packing=cfg.packing,
            on_gpu=torch.cuda.is_available(),
            model=model,
            label_logits_only=cfg.label_logits_only,
        ),
        processing_class=tokenizer,
        callbacks=run_callbacks(cfg, recipe, callbacks),
    )
    return finish_trainer(trainer, cfg, [r[LENGTH_COLUMN] for r in train_rows])


STAGES = (Stage("sft", build_trainer), Stage("pt", build_trainer))

__all__ = ["STAGES", "build_trainer"]
