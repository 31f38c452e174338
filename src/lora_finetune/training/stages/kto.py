"""`kto`: answers labelled desirable or undesirable, on TRL's KTOTrainer (the loss is TRL's).

The answers arrive encoded by our templates (templates/pairs.py: prompt_ids, completion_ids,
label); TRL's own tokenisation of text is skipped, the rest of its preparation kept: the KL
term's mismatched completions, each row paired with the previous row's answer within a batch.
The reference is the adapter as training started (see preference.py), with no second model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...config import LoRAFinetuneConfig
from ...run_record import RunRecord
from ..batching import LENGTH_COLUMN, with_lengths
from ..trainers import build_training_args, finish_trainer, run_callbacks
from .base import Stage
from .preference import reference_without_copy

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from ..dataset import PreparedData


def mismatched_completions(rows: dict[str, list]) -> dict[str, list]:
    """A batch of rows with `KL_completion_ids`: each row's answer to the previous row's prompt
    (rotated by one, as TRL pairs them), the sample KTO estimates its KL term from."""
    completions = rows["completion_ids"]
    rows["KL_completion_ids"] = [completions[-1], *completions[:-1]]
    return rows


def _kto_trainer_class() -> type:
    from trl import KTOTrainer

    class EncodedKTOTrainer(KTOTrainer):
        """KTOTrainer on answers our templates encoded (prompt_ids / completion_ids / label)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if not self.calculate_KL:
                return dataset
            return dataset.map(mismatched_completions, batched=True, batch_size=args.per_device_train_batch_size)

    return EncodedKTOTrainer


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
    from trl import KTOConfig

    extra = {
        "beta": cfg.beta,
        "desirable_weight": cfg.desirable_weight,
        "undesirable_weight": cfg.undesirable_weight,
        "max_length": None,  # answers longer than max_length were dropped, never cut (templates/pairs.py)
        "precompute_ref_log_probs": False,
        # The KL term pairs each answer with its neighbour's in a fixed-order batch, so TRL needs the
        # data in order (our split already shuffled it once, with the run's seed).
        "train_sampling_strategy": "sequential",
    }
    args = build_training_args(cfg, ckpt_dir, bool(data.eval), dtype, args_cls=KTOConfig, **extra)
    train_rows = with_lengths(data.train)
    trainer = _kto_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(with_lengths(data.eval)) if data.eval else None,
        processing_class=tokenizer,
        callbacks=run_callbacks(cfg, recipe, callbacks),
    )
    reference_without_copy(trainer, cfg)
    return finish_trainer(trainer, cfg, [r[LENGTH_COLUMN] for r in train_rows])


# each sample: its answer and its KL (mismatched) answer
STAGES = (Stage("kto", build_trainer, reference_forward=True),)

__all__ = ["STAGES", "build_trainer", "mismatched_completions"]
