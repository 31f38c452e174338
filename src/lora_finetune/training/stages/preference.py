"""`dpo`, `orpo`, `simpo`: preference pairs on TRL's trainers (the losses are TRL's).

    dpo    trl.DPOTrainer                       loss_type (sigmoid = the DPO paper), beta,
                                                sft_weight (adds TRL's "sft" loss on the chosen)
    orpo   trl.experimental.orpo.ORPOTrainer    beta = the odds-ratio weight (lambda); no reference
    simpo  trl.experimental.cpo.CPOTrainer      loss_type simpo, beta, simpo_gamma; no reference

The pairs arrive encoded by our templates (templates/pairs.py: prompt_ids, chosen_ids,
rejected_ids, the answers ending with the end-of-turn token). Each trainer is told to take them
as they are instead of tokenising text again -- that is the one thing overridden: TRL's own
tokenisation would apply the chat template a second way and append EOS where our templates
already end the turn, and training would no longer match inference.

The reference model (DPO) costs no second model: with a LoRA model and no `ref_model`, TRL
scores the reference with a frozen copy of the adapter as it was when training started (kept for
`init_adapter`: that adapter, e.g. the SFT run before DPO, is the reference). A fresh adapter's
copy is the base itself (LoRA starts at B = 0), so it is dropped and the reference forward runs
with the adapter off: the same numbers without LoRA's work (measured 12% faster on the short
demo pairs, bench/RESULTS.md).
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

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

    from ..dataset import PreparedData


def pair_features(row: dict[str, Any]) -> dict[str, list[int]]:
    """One encoded pair in the fields TRL's ORPO/CPO trainers build from text (their
    `tokenize_row`): the prompt, and each answer as prompt + answer with the prompt's labels -100."""
    prompt = list(row["prompt_ids"])
    out: dict[str, list[int]] = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = list(row[f"{side}_ids"])
        out[f"{side}_input_ids"] = prompt + answer
        out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        out[f"{side}_labels"] = [-100] * len(prompt) + answer
    return out


def reference_without_copy(trainer: Any, cfg: LoRAFinetuneConfig) -> None:
    """Drop TRL's frozen copy of a fresh adapter: with the adapter off the model is that copy."""
    model = trainer.model
    if cfg.init_adapter is None and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def _datasets(data: PreparedData) -> tuple[Any, Any, list[dict[str, Any]]]:
    from datasets import Dataset

    train_rows = with_lengths(data.train)
    eval_ds = Dataset.from_list(with_lengths(data.eval)) if data.eval else None
    return Dataset.from_list(train_rows), eval_ds, train_rows


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class EncodedDPOTrainer(DPOTrainer):
        """DPOTrainer on pairs our templates encoded (prompt_ids / chosen_ids / rejected_ids)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return EncodedDPOTrainer


def _legacy_trainer_class(base: type) -> type:
    """ORPO's and CPO's trainers tokenise text in `tokenize_row`; ours take the encoded pair."""

    class EncodedPairTrainer(base):
        def tokenize_row(self, feature, model=None):
            return pair_features(feature)

    EncodedPairTrainer.__name__ = f"Encoded{base.__name__}"
    return EncodedPairTrainer


def _dpo_args(cfg: LoRAFinetuneConfig) -> tuple[type, type, dict[str, Any]]:
    from trl import DPOConfig

    losses, weights = [cfg.loss_type], [1.0]
    if cfg.sft_weight > 0:  # LLaMA-Factory's pref_ftx: the chosen answers' NLL, added with this weight
        losses.append("sft")
        weights.append(cfg.sft_weight)
    extra = {
        "beta": cfg.beta,
        "loss_type": losses,
        "loss_weights": weights,
        "max_length": None,  # pairs longer than max_length were dropped, never cut (templates/pairs.py)
        "precompute_ref_log_probs": False,
    }
    return _dpo_trainer_class(), DPOConfig, extra


_LEGACY = {"include_num_input_tokens_seen": "no"}
"""ORPO's and CPO's batches hold chosen_/rejected_input_ids, no `input_ids` for the Trainer to
count; the run's token counts come from the encoded data instead (report.py)."""


def _orpo_args(cfg: LoRAFinetuneConfig) -> tuple[type, type, dict[str, Any]]:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    extra = {"beta": cfg.beta, "max_length": cfg.max_length, **_LEGACY}
    return _legacy_trainer_class(ORPOTrainer), ORPOConfig, extra


def _simpo_args(cfg: LoRAFinetuneConfig) -> tuple[type, type, dict[str, Any]]:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    extra = {
        "loss_type": "simpo",
        "beta": cfg.beta,
        "simpo_gamma": cfg.simpo_gamma,
        "cpo_alpha": cfg.sft_weight,  # 0: SimPO as in its paper; > 0 adds the chosen answers' NLL (CPO-SimPO)
        "max_length": cfg.max_length,
        **_LEGACY,
    }
    return _legacy_trainer_class(CPOTrainer), CPOConfig, extra


_ARGS = {"dpo": _dpo_args, "orpo": _orpo_args, "simpo": _simpo_args}


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
    trainer_cls, args_cls, extra = _ARGS[cfg.method](cfg)
    args = build_training_args(cfg, ckpt_dir, bool(data.eval), dtype, args_cls=args_cls, **extra)
    train_ds, eval_ds, train_rows = _datasets(data)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=run_callbacks(cfg, recipe, callbacks),
    )
    reference_without_copy(trainer, cfg)
    return finish_trainer(trainer, cfg, [r[LENGTH_COLUMN] for r in train_rows])


STAGES = (
    Stage("dpo", build_trainer, reference_forward=True),
    Stage("orpo", build_trainer),
    Stage("simpo", build_trainer),
)

__all__ = ["STAGES", "build_trainer", "pair_features", "reference_without_copy"]
