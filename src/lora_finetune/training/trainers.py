"""What every training stage's Trainer shares: its arguments from our config, our callbacks,
and the length-grouped sampler (stages/ builds a Trainer of the stage's class with these)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..choices import BEST_METRICS, best_metric_name
from ..config import LoRAFinetuneConfig
from ..run_record import RunRecord
from .batching import LENGTH_COLUMN, LengthGroupedSampler
from .callbacks import CheckpointMarker, HealthCallback, InterruptCallback, OverfitWarning, ProgressLog
from .engines import launched_engine, trainer_device_args

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments


def build_training_args(
    cfg: LoRAFinetuneConfig,
    ckpt_dir: Path,
    has_eval: bool,
    dtype: torch.dtype,
    args_cls: type[TrainingArguments] | None = None,
    **stage_args: Any,
) -> TrainingArguments:
    """The Trainer's arguments from our config. `args_cls`: a stage's own TrainingArguments
    subclass (TRL's DPOConfig, ...), with `stage_args` its settings (they win over ours); every
    field the two share is given here, so TRL's different defaults (bf16 on, checkpointing on, lr
    1e-6) never apply."""

    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(ckpt_dir),
        max_steps=cfg.steps if cfg.steps is not None else -1,
        num_train_epochs=cfg.epochs if cfg.epochs is not None else 3.0,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a ratio).
        warmup_steps=float(cfg.warmup_ratio),
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=min(cfg.logging_steps, cfg.steps or cfg.logging_steps),
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=min(cfg.eval_steps, cfg.steps or cfg.eval_steps) if has_eval else None,
        save_strategy="steps",
        save_steps=min(cfg.save_steps, cfg.steps or cfg.save_steps),
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        **_checkpointing_args(cfg.gradient_checkpointing),
        disable_tqdm=True,  # training/callbacks.ProgressLog logs one line per logging step instead
        report_to=cfg.report_to,
        load_best_model_at_end=cfg.load_best_model_at_end and has_eval,
        metric_for_best_model=cfg.metric_for_best_model if cfg.load_best_model_at_end else None,
        greater_is_better=BEST_METRICS.get(best_metric_name(cfg.metric_for_best_model), False)
        if cfg.load_best_model_at_end
        else None,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # show NaN/inf losses: HealthCallback stops on them
        dataloader_pin_memory=on_gpu,
        # --- throughput (batching.py): length-grouped batches; DDP without unused-parameter scans
        # (every LoRA weight takes part in every step) ---
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing else "random",
        length_column_name=LENGTH_COLUMN,
        ddp_find_unused_parameters=False,
        **trainer_device_args(launched_engine(), on_gpu),  # use_cpu, ddp_backend: engines.py says why
    )
    return (args_cls or TrainingArguments)(**{**kwargs, **stage_args})


def _checkpointing_args(on: bool) -> dict[str, Any]:
    """Activation checkpointing under the name this transformers uses (it renamed
    `gradient_checkpointing` to `activation_checkpointing`, warning on every run otherwise)."""
    import dataclasses as dc

    from transformers import TrainingArguments

    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in {f.name for f in dc.fields(TrainingArguments)}
        else "gradient_checkpointing"
    )
    out = {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}
    if name != "gradient_checkpointing":  # TRL's configs declare the old name themselves (default on)
        out["gradient_checkpointing"] = None
    return out


def run_callbacks(cfg: LoRAFinetuneConfig, recipe: RunRecord | None, extra: list[Any]) -> list[Any]:
    """Our callbacks, in the order they must run (health first: an interrupt checks it)."""
    health = HealthCallback()
    return [
        health,
        InterruptCallback(health),
        CheckpointMarker(recipe),
        OverfitWarning(),
        ProgressLog(),
        *_early_stopping(cfg),
        *extra,
    ]


def _early_stopping(cfg: LoRAFinetuneConfig) -> list[Any]:
    if cfg.early_stopping_patience is None:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)]


def finish_trainer(trainer: Trainer, cfg: LoRAFinetuneConfig, lengths: list[int]) -> Trainer:
    """Quiet the Trainer's own printing and give it our seeded length-grouped sampler."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):  # dicts of numbers as strings; ours: one line
        trainer.remove_callback(noisy)
    args = trainer.args
    if args.train_sampling_strategy == "group_by_length":
        # Trainer takes no sampler argument; its length-grouped sampler shuffles from the global
        # RNG, which makes a resumed run differ (batching.LengthGroupedSampler says why).
        sampler = LengthGroupedSampler(lengths, args.train_batch_size * args.gradient_accumulation_steps, cfg.seed)
        trainer._get_train_sampler = lambda train_dataset=None: sampler
    return trainer


__all__ = ["build_training_args", "finish_trainer", "run_callbacks"]
