"""Training: config in, self-describing adapter folder out.

    prepare_data  records -> template -> (input_ids, labels), train/eval split
    build_model   base model (dtype, 4/8-bit) + LoRA on the checked targets
    train         transformers.Trainer with our collator and callbacks
    save_run      adapter + tokenizer + run_config.yaml + metrics.json + loss_curve.png

The run works in a hidden sibling folder (`.NAME.partial/`, checkpoints included) and is renamed
to `output_dir` only when complete, so `output_dir` is either a finished run or absent.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import LoRAFinetuneConfig
from .data import dummy_rows, load_records, records_from_rows
from .callbacks import (CheckpointMarker, HealthCallback, InterruptCallback,
                        last_complete_checkpoint)
from .errors import ConfigError, DataError, TrainingError
from .io import MANIFEST, is_complete, replace_dir, write_manifest
from .kernels import apply_liger  # throughput: fused kernels (kernels.py)
from .packing import LENGTH_COLUMN, make_collator, with_lengths  # throughput: batch layout
from .models import (count_parameters, load_model, load_tokenizer, meta_model, read_model_config,
                     resolve_model, resolve_target_modules)
from .templates import EncodeStats, encode_records, get_template, resolve_template_name

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"
METRICS = "metrics.json"
LOSS_PLOT = "loss_curve.png"


@dataclass
class PreparedData:
    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]]
    template: str
    stats: EncodeStats
    data_sha256: str | None


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    resolved: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_records(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle with the run's seed, then hold out `eval_fraction` (at least one sample)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = 0
    if eval_fraction > 0 and len(records) >= 2:
        n_eval = max(1, round(len(records) * eval_fraction))
    if n_eval >= len(records):
        raise ConfigError(f"eval_fraction={eval_fraction} holds out all {len(records)} samples "
                          "and leaves none for training. Lower eval_fraction or add data.")
    held = set(order[:n_eval])
    return ([records[i] for i in order if i not in held], [records[i] for i in order[:n_eval]])


def prepare_data(cfg: LoRAFinetuneConfig, tokenizer: Any, model_type: str | None = None
                 ) -> PreparedData:
    if cfg.data_path is None:
        records = records_from_rows(dummy_rows(), source="build_dummy_dataset()")
        sha = None
    else:
        records = load_records(cfg.data_path, cfg.data_format)
        sha = _sha256(Path(cfg.data_path))
    template_name = resolve_template_name(cfg.template, tokenizer, model_type)
    template = get_template(template_name, tokenizer, cfg.system_prompt)
    train_recs, eval_recs = split_records(records, cfg.eval_fraction, cfg.seed)
    train_enc, stats = encode_records(train_recs, tokenizer, template, cfg.max_length)
    eval_enc, eval_stats = encode_records(eval_recs, tokenizer, template, cfg.max_length)
    for k in ("total", "kept", "too_long", "no_answer_tokens", "prompt_tokens", "answer_tokens"):
        setattr(stats, k, getattr(stats, k) + getattr(eval_stats, k))
    stats.longest = max(stats.longest, eval_stats.longest)
    where = cfg.data_path or "the demo data"
    if not train_enc:
        if stats.too_long:
            raise DataError(f"{where}: every training sample is longer than max_length="
                            f"{cfg.max_length} tokens (the longest has {stats.longest}). Raise "
                            f"max_length (e.g. --max_length {stats.longest}) or shorten the "
                            "samples.")
        raise DataError(f"{where}: no usable training samples remain after encoding "
                        f"({stats.summary(cfg.max_length)}). Check that answers are not empty.")
    log.info("data: %s (template %s)", stats.summary(cfg.max_length), template_name)
    as_rows = lambda encs: [{"input_ids": e.input_ids, "labels": e.labels} for e in encs]  # noqa
    return PreparedData(as_rows(train_enc), as_rows(eval_enc), template_name, stats, sha)


# --------------------------------------------------------------------------- model
def attach_lora(model: Any, cfg: LoRAFinetuneConfig, targets: list[str]) -> Any:
    """Wrap the target layers with LoRA; only the LoRA weights stay trainable."""
    if cfg.lora_backend == "reference":
        from .lora import inject_lora

        inject_lora(model, targets, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout)
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    peft_cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.r, lora_alpha=cfg.alpha,
                          lora_dropout=cfg.dropout, target_modules=targets)
    return get_peft_model(model, peft_cfg)


def check_reference_targets(model: Any, targets: list[str]) -> None:
    """The reference LoRALinear wraps nn.Linear only: say so before any data is read."""
    from torch import nn

    from .errors import ModelError

    other = sorted({type(m).__name__ for n, m in model.named_modules()
                    if any(n == t or n.endswith("." + t) for t in targets)
                    and not isinstance(m, nn.Linear)})
    if other:
        raise ModelError(f"lora_backend: reference wraps nn.Linear layers only, and the targets "
                         f"{targets} include {', '.join(other)} layers (GPT-2 uses Conv1D). Use "
                         "lora_backend: peft for this model.")


def save_adapter(trainer: Any, folder: Path, cfg: LoRAFinetuneConfig, base_path: str,
                 targets: list[str]) -> None:
    """Write the adapter in peft's format, whichever backend trained it. Call on every rank."""
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.lora_backend == "reference":
        if trainer.is_world_process_zero():
            from .lora import save_peft_adapter

            save_peft_adapter(trainer.model, folder, base_model_name_or_path=base_path,
                              target_modules=targets, r=cfg.r, alpha=cfg.alpha,
                              dropout=cfg.dropout)
        return
    # Every rank joins: under ZeRO-3/FSDP saving gathers sharded weights (a collective); the
    # Trainer writes from rank 0 only.
    trainer.save_model(str(folder))
    if trainer.is_world_process_zero():
        (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle nobody needs


# --------------------------------------------------------------------------- run folder
def _work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def require_checkpoint(cfg: LoRAFinetuneConfig) -> Path:
    """For an explicit `--resume`: the checkpoint to continue from, or a clear error."""
    work = _work_dir(Path(cfg.output_dir))
    ckpt = last_complete_checkpoint(work / "checkpoints")
    if ckpt is None:
        done = " (it holds a finished run)" if is_complete(Path(cfg.output_dir)) else ""
        raise ConfigError(f"--resume: there is no interrupted run of output_dir "
                          f"{cfg.output_dir}{done}: no complete checkpoint in "
                          f"{work / 'checkpoints'}. Check --output_dir (and --config), or drop "
                          "--resume to start a new run.")
    return ckpt


def check_output_dir(cfg: LoRAFinetuneConfig) -> tuple[Path, Path | None]:
    """Where this run works, and the checkpoint it resumes from; refuses to clobber work."""
    out = Path(cfg.output_dir)
    work = _work_dir(out)
    ckpt = last_complete_checkpoint(work / "checkpoints")
    if cfg.resume == "auto":
        if ckpt is not None:
            log.info("resuming from %s", ckpt)
            return work, ckpt
        log.warning("resume: auto, but %s holds no complete checkpoint; starting from scratch",
                    work / "checkpoints")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        kind = "a finished run" if is_complete(out) else "files"
        raise ConfigError(f"output_dir {out} already holds {kind}. Pass --overwrite to replace "
                          "it, or choose another --output_dir.")
    if ckpt is not None and not cfg.overwrite:
        raise ConfigError(f"An interrupted run left a checkpoint in {ckpt}. Continue it with "
                          "`lora-finetune train --resume` (same settings), or pass --overwrite "
                          "to start over.")
    if work.exists():  # leftovers of a run that died before its first checkpoint
        shutil.rmtree(work, ignore_errors=True)  # (every DDP rank gets here)
    return work, None


# --------------------------------------------------------------------------- metrics and plot
def plot_losses(log_history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("LoRA fine-tuning loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("lora-finetune", "torch", "transformers", "peft", "accelerate", "datasets",
                "bitsandbytes"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 50.0))


# --------------------------------------------------------------------------- the run
def build_training_args(cfg: LoRAFinetuneConfig, ckpt_dir: Path, has_eval: bool,
                        dtype: torch.dtype) -> Any:
    import os

    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a ratio).
        warmup_steps=float(cfg.warmup_ratio),
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=min(cfg.logging_steps, cfg.steps),
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=min(cfg.eval_steps, cfg.steps) if has_eval else None,
        save_strategy="steps",
        save_steps=min(cfg.save_steps, cfg.steps),
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing
        else None,
        report_to="none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # show NaN/inf losses: HealthCallback stops on them
        dataloader_pin_memory=on_gpu,
        # --- throughput (packing.py): length-grouped batches; DDP without unused-parameter scans
        # (every LoRA weight takes part in every step) ---
        train_sampling_strategy="group_by_length" if cfg.group_by_length and not cfg.packing
        else "random",
        length_column_name=LENGTH_COLUMN,
        ddp_find_unused_parameters=False,
        # Without CUDA, torchrun's processes only form a (gloo) DDP group when accelerate is
        # told it runs on CPU; otherwise each trains alone on the same output_dir.
        use_cpu=not on_gpu and int(os.environ.get("WORLD_SIZE", "1")) > 1,
    )


def train(cfg: LoRAFinetuneConfig, callbacks: list[Any] | None = None) -> TrainResult:
    """Run one fine-tuning job as configured and return where its outputs are."""
    from transformers import set_seed

    work, resume_from = check_output_dir(cfg)
    set_seed(cfg.seed)

    # 1. Model path and LoRA targets first: a typo in target_modules fails in seconds, before
    #    any data is read or weights are loaded.
    model_path = resolve_model(cfg.model_name, cfg.cache_dir)
    model_config = read_model_config(model_path, cfg.trust_remote_code)
    model_type = getattr(model_config, "model_type", "unknown")
    skeleton = meta_model(model_path, cfg.trust_remote_code)
    targets = resolve_target_modules(cfg.target_modules, skeleton, model_type)
    if cfg.lora_backend == "reference":
        check_reference_targets(skeleton, targets)

    # 2. Data.
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code, padding_side="right")
    data = prepare_data(cfg, tokenizer, model_type)

    # 3. Model + LoRA.
    model, dtype, quant_used, notes = load_model(
        model_path, dtype=cfg.dtype, quantization=cfg.quantization,
        trust_remote_code=cfg.trust_remote_code)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input
    model = attach_lora(model, cfg, targets)
    trainable, total = count_parameters(model)
    log.info("LoRA on %s: %s trainable of %s parameters (%.3f%%)", ", ".join(targets),
             f"{trainable:,}", f"{total:,}", 100 * trainable / max(total, 1))

    # 4. Train.
    # --- throughput (kernels.py): fused kernels where installed and supported ---
    liger_note = apply_liger(model, cfg.use_liger, on_gpu=torch.cuda.is_available())
    if liger_note:
        notes.append(liger_note)
    trainer = build_trainer(cfg, model, tokenizer, data, work / "checkpoints", dtype,
                            callbacks or [])
    runtime, eval_metrics = run_trainer(trainer, resume_from, work / "checkpoints")

    # 5. Save the self-describing folder (rank 0 only under DDP).
    resolved = {
        "base_model": model_path,
        "model_type": model_type,
        "template": data.template,
        "quantization": quant_used,
        "dtype": str(dtype).replace("torch.", ""),
        "target_modules": targets,
        "eos_token": tokenizer.eos_token,
        "notes": notes,
        "data_sha256": data.data_sha256,
        "versions": _versions(),
    }
    metrics = collect_metrics(trainer, runtime, eval_metrics, data, trainable, total,
                              tokens_before=_tokens_seen_at(resume_from))
    final = Path(cfg.output_dir)
    save_adapter(trainer, work, cfg, model_path, targets)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(work)
        # run control (overwrite, resume) is about this invocation, not the recipe
        dataclasses.replace(cfg, overwrite=False, resume="no").save(work / RUN_CONFIG,
                                                                     extra=resolved)
        (work / METRICS).write_text(json.dumps(metrics, indent=2, ensure_ascii=False),
                                    encoding="utf-8")
        plot_losses(trainer.state.log_history, work / LOSS_PLOT)
        # Checkpoints hold optimizer state for resuming; a finished run does not need them.
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        write_manifest(work)
        replace_dir(work, final)
    return TrainResult(output_dir=final, metrics=metrics, resolved=resolved)


def build_trainer(cfg: LoRAFinetuneConfig, model: Any, tokenizer: Any, data: PreparedData,
                  ckpt_dir: Path, dtype: torch.dtype, callbacks: list[Any]) -> Any:
    from datasets import Dataset
    from transformers import Trainer

    args = build_training_args(cfg, ckpt_dir, bool(data.eval), dtype)
    # --- throughput (packing.py): collator (padding or packing) and sample lengths ---
    return Trainer(
        model=model, args=args,
        train_dataset=Dataset.from_list(with_lengths(data.train)),
        eval_dataset=Dataset.from_list(with_lengths(data.eval)) if data.eval else None,
        data_collator=make_collator(tokenizer.pad_token_id, packing=cfg.packing,
                                    on_gpu=torch.cuda.is_available(), model=model,
                                    label_logits_only=cfg.label_logits_only),
        processing_class=tokenizer,
        callbacks=[health := HealthCallback(), InterruptCallback(health), CheckpointMarker(),
                   *callbacks],
    )


def _callback(trainer: Any, kind: type) -> Any:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, kind))


def run_trainer(trainer: Any, resume_from: Path | None, ckpt_dir: Path
                ) -> tuple[float, dict[str, float]]:
    """trainer.train() with the failures users hit turned into advice, never lost work."""
    health = _callback(trainer, HealthCallback)
    interrupt = _callback(trainer, InterruptCallback)
    interrupt.install()
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        runtime = time.perf_counter() - t0
        eval_metrics = trainer.evaluate() if trainer.eval_dataset is not None and \
            not (health.problem or interrupt.signal) else {}
    except torch.OutOfMemoryError as e:
        raise TrainingError(
            f"Out of GPU memory ({str(e).splitlines()[0][:160]}). Lower batch_size (raise "
            "gradient_accumulation_steps to keep the same effective batch), lower max_length, "
            "turn on gradient_checkpointing: true, or load the base with quantization: 4bit. "
            "`lora-finetune estimate --model ... --budget 24GB` suggests settings that fit. "
            + _resume_hint(ckpt_dir)) from None
    finally:
        interrupt.uninstall()
    if health.problem:
        raise TrainingError(
            f"Training stopped: {health.problem}. The loss or gradients became NaN/inf. Common "
            "fixes: use dtype: bf16 instead of fp16 (fp16 overflows), lower learning_rate "
            "(e.g. by 3-10x), keep max_grad_norm: 1.0, and check the data for empty answers. "
            + _resume_hint(ckpt_dir, good=True))
    if interrupt.signal is not None:
        raise TrainingError(f"Training interrupted at step {trainer.state.global_step}. "
                            + _resume_hint(ckpt_dir), )
    return runtime, eval_metrics


def _tokens_seen_at(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state.get("num_input_tokens_seen", 0) or 0)
    except (OSError, ValueError):
        return 0


def _resume_hint(ckpt_dir: Path, good: bool = False) -> str:
    ckpt = last_complete_checkpoint(ckpt_dir)
    if ckpt is None:
        return "No checkpoint was written yet (see save_steps)."
    return (f"The last {'good ' if good else ''}checkpoint is {ckpt}; continue with "
            "`lora-finetune train --resume` and the same settings.")


def collect_metrics(trainer: Any, runtime: float, eval_metrics: dict[str, float],
                    data: PreparedData, trainable: int, total: int, tokens_before: int = 0
                    ) -> dict[str, Any]:
    history = trainer.state.log_history
    # tokens this process trained on (a resumed run's count starts at the checkpoint's)
    tokens_seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0) - tokens_before
    eval_loss = eval_metrics.get("eval_loss")
    train_losses = [h["loss"] for h in history if "loss" in h]
    return {
        "train_loss": next((h["train_loss"] for h in history if "train_loss" in h), None),
        "final_train_loss": train_losses[-1] if train_losses else None,
        "eval_loss": eval_loss,
        "eval_perplexity": _perplexity(eval_loss),
        "train_runtime_s": round(runtime, 3),
        "steps": trainer.state.global_step,
        "real_tokens_seen": tokens_seen,
        "real_tokens_per_second": round(tokens_seen / runtime, 2) if runtime > 0 else None,
        "trainable_params": trainable,
        "total_params": total,
        "samples": {"train": len(data.train), "eval": len(data.eval),
                    "dropped_too_long": data.stats.too_long},
        "tokens": {"answer": data.stats.answer_tokens, "prompt_masked": data.stats.prompt_tokens},
        "log_history": history,
    }


def read_run_config(adapter_dir: Path) -> dict[str, Any]:
    """The run_config.yaml saved with an adapter (empty dict if the folder has none)."""
    import yaml

    p = Path(adapter_dir) / RUN_CONFIG
    if not p.is_file():
        return {}
    return yaml.safe_load(p.read_text(encoding="utf-8")) or {}


__all__ = ["train", "TrainResult", "prepare_data", "split_records", "attach_lora",
           "read_run_config", "RUN_CONFIG", "METRICS", "LOSS_PLOT", "MANIFEST"]
