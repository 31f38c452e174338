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
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..allocator import allocator_note, release_freed_memory
from ..config import LoRAFinetuneConfig
from ..errors import ConfigError, LoraFinetuneError, TrainingError
from ..folders import (
    check_output_folder,
    check_writable_parent,
    is_complete,
    is_no_space,
    no_space_error,
    output_lock,
    replace_dir,
    write_manifest,
)
from ..models import (
    attach_lora,
    check_reference_targets,
    count_parameters,
    load_model,
    load_tokenizer,
    meta_model,
    pick_dtype,
    read_model_config,
    resolve_model,
    resolve_target_modules,
)
from ..run_record import LOSS_PLOT, METRICS, RUN_CONFIG, Resolved, RunRecord
from .callbacks import (
    RECIPE,
    HealthCallback,
    InterruptCallback,
    OverfitWarning,
    last_complete_checkpoint,
)
from .continuation import continue_from
from .dataset import prepare_data, small_eval_warning
from .engines import engine_problems, is_peer_failure, launched_engine, leave_together, peer_lost
from .kernels import apply_liger, attention_kernels  # throughput: fused kernels, attention kernels
from .planning import MemoryPlan, memory_report, plan_memory
from .report import collect_metrics, kept_step, plot_losses, tokens_seen_at, versions
from .stages import get_stage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    resolved: Resolved


def portable_base_name(model_name: str) -> str:
    """What adapter_config.json names as the base: what the user named (a hub id or their
    folder), never our cache folder, so peft, vLLM and other machines can find it. The bundled
    model is named by its hub id."""
    from ..models.bundled import BUNDLED_HUB_ID, is_bundled_name

    return BUNDLED_HUB_ID if is_bundled_name(model_name) else str(model_name)


def _name_base(folder: Path, name: str) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_adapter(trainer: Any, folder: Path, cfg: LoRAFinetuneConfig, base_path: str, targets: list[str]) -> None:
    """Write the adapter in peft's format, whichever backend trained it. Call on every rank."""
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.lora_backend == "reference":
        if trainer.is_world_process_zero():
            from ..models.lora import save_peft_adapter

            save_peft_adapter(
                trainer.model,
                folder,
                base_model_name_or_path=portable_base_name(cfg.model_name),
                target_modules=targets,
                r=cfg.r,
                alpha=cfg.alpha,
                dropout=cfg.dropout,
            )
        return
    # The trained adapter only: TRL keeps the reference as a frozen copy named "ref" (stages/).
    model = trainer.model
    for name in [n for n in getattr(model, "peft_config", {}) if n != "default"]:
        model.delete_adapter(name)
    # Every rank joins: under ZeRO-3/FSDP saving gathers sharded weights (a collective); the
    # Trainer writes from rank 0 only.
    trainer.save_model(str(folder))
    if trainer.is_world_process_zero():
        (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle nobody needs
        # peft writes the folder the base was loaded from (our cache for the bundled model or a
        # converted ChatGLM); the run record keeps that, the adapter names what the user named.
        _name_base(folder, portable_base_name(cfg.model_name))


# --------------------------------------------------------------------------- run folder
def _work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def require_checkpoint(cfg: LoRAFinetuneConfig) -> Path:
    """For an explicit `--resume`: the checkpoint to continue from, or a clear error."""
    work = _work_dir(Path(cfg.output_dir))
    ckpt = last_complete_checkpoint(work / "checkpoints")
    if ckpt is None:
        done = " (it holds a finished run)" if is_complete(Path(cfg.output_dir)) else ""
        raise ConfigError(
            f"--resume: there is no interrupted run of output_dir "
            f"{cfg.output_dir}{done}: no complete checkpoint in "
            f"{work / 'checkpoints'}. Check --output_dir (and --config), or drop "
            "--resume to start a new run."
        )
    return ckpt


def check_output_dir(cfg: LoRAFinetuneConfig) -> tuple[Path, Path | None]:
    """Where this run works, and the checkpoint it resumes from; refuses to clobber work."""
    out = Path(cfg.output_dir)
    work = _work_dir(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a folder. Choose another --output_dir.")
    check_writable_parent(out)
    ckpt = last_complete_checkpoint(work / "checkpoints")
    if cfg.resume == "auto":
        if ckpt is not None:
            log.info("resuming from %s", ckpt)
            return work, ckpt
        log.warning("resume: auto, but %s holds no complete checkpoint; starting from scratch", work / "checkpoints")
    check_output_folder(out, cfg.overwrite)
    if ckpt is not None and not cfg.overwrite:
        raise ConfigError(
            f"An interrupted run left a checkpoint in {ckpt}. Continue it with "
            "`lora-finetune train --resume` (same settings), or pass --overwrite "
            "to start over."
        )
    if work.exists():  # leftovers of a run that died before its first checkpoint
        shutil.rmtree(work, ignore_errors=True)  # (every DDP rank gets here)
    return work, None


# --------------------------------------------------------------------------- resume
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "logging_steps",
        "eval_steps",
        "save_steps",
        "save_total_limit",
        "cache_dir",
        "report_to",
        "memory_budget",
        "overwrite",
        "resume",
        "cudnn_attention",
    }
)
"""Settings a resumed run may change: they decide what is logged, evaluated and kept, not what
is learned. Every other setting must match the checkpoint's, or the result would be neither run."""


def _recipe(cfg: LoRAFinetuneConfig) -> LoRAFinetuneConfig:
    """The config as a recipe: run control (overwrite, resume) is about one invocation."""
    return dataclasses.replace(cfg, overwrite=False, resume="no")


def read_checkpoint_recipe(ckpt: Path) -> RunRecord | None:
    path = Path(ckpt) / RECIPE
    if not path.is_file():
        log.warning("%s holds no recipe (written by an older version): settings cannot be compared", ckpt)
        return None
    try:
        return RunRecord.load(path)
    except LoraFinetuneError as e:
        raise ConfigError(f"--resume: the checkpoint's recipe cannot be read: {e}") from None


def compare_recipe(recipe: RunRecord | None, cfg: LoRAFinetuneConfig, ckpt: Path) -> list[str]:
    """Refuse to resume with settings that change results; return notes on the harmless changes."""
    if recipe is None:
        return [f"resumed from {ckpt.name}, which stored no recipe: settings were not compared"]
    old, new = recipe.config, _recipe(cfg)
    changed = [
        (f.name, getattr(old, f.name), getattr(new, f.name))
        for f in dataclasses.fields(new)
        if getattr(old, f.name) != getattr(new, f.name)
    ]
    wrong = [c for c in changed if c[0] not in MAY_CHANGE_ON_RESUME]
    if wrong:
        lines = "\n".join(f"  - {name}: {a!r} in the checkpoint, {b!r} now" for name, a, b in wrong)
        raise ConfigError(
            f"--resume: {ckpt} was trained with other settings, and resuming would mix two runs:\n{lines}\n"
            f"Resume with the checkpoint's settings (all of them are in {ckpt / RECIPE}), or start "
            "a new run with --overwrite or another --output_dir."
        )
    notes = [f"resumed from {ckpt.name}"]
    notes += [f"changed on resume: {name} {a!r} -> {b!r}" for name, a, b in changed if name not in ("resume",)]
    for note in notes[1:]:
        log.info(note)
    return notes


def _memory_plan(
    cfg: LoRAFinetuneConfig, checkpoint: RunRecord | None, model_path: str, targets: list[str], longest: int
) -> MemoryPlan:
    """A resumed run keeps the layout its checkpoint was trained with; a new one is planned."""
    if checkpoint is not None:
        changes = checkpoint.resolved.extra.get("memory_plan") or {}
        return MemoryPlan(None, None, dict(changes), {k: getattr(cfg, k) for k in changes})
    return plan_memory(cfg, model_path, targets, longest, pick_dtype(cfg.dtype))


def _check_same_data(recipe: RunRecord, sha256: str | None, ckpt: Path | None) -> None:
    before = recipe.resolved.data_sha256
    if before and sha256 and before != sha256:
        raise ConfigError(
            f"--resume: the training data changed since {ckpt} was written (sha256 {before[:12]}... "
            f"then, {sha256[:12]}... now). Resuming would train on two datasets; restore the data "
            "file, or start a new run with --overwrite or another --output_dir."
        )


def check_trackers(report_to: list[str] | str) -> None:
    """Each tracker asked for is one transformers knows and is installed (before any work)."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n for n in names if n not in ("none", "all")]
    known = sorted(INTEGRATION_TO_CALLBACK)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"report_to: {', '.join(unknown)} is not a tracker transformers knows; use {', '.join(known)}."
        )
    missing = [n for n in names if n not in get_available_reporting_integrations()]
    if missing:
        raise ConfigError(
            f"report_to: {', '.join(missing)} is not installed here; `pip install {' '.join(missing)}` "
            "(or drop it from report_to)."
        )


# --------------------------------------------------------------------------- the run
def train(cfg: LoRAFinetuneConfig, callbacks: list[Any] | None = None) -> TrainResult:
    """Run one fine-tuning job as configured and return where its outputs are.

    The run holds the lock of its output_dir throughout (one writer per folder; under DDP the
    rank-0 process holds it for the group)."""
    import os
    from contextlib import nullcontext

    lead = os.environ.get("RANK", "0") == "0"
    with (
        leave_together(),
        output_lock(Path(cfg.output_dir)) if lead else nullcontext(),
        warnings.catch_warnings(),
    ):
        # peft calls a transformers method deprecated in 5.x on every run: nothing for users.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # DeepSpeed ZeRO-3 calls collectives torch 2.13 renamed, warning on every step.
        warnings.filterwarnings("ignore", message=".*(all_gather_into_tensor|reduce_scatter_tensor).*is deprecated")
        return _train(cfg, callbacks)


def _train(cfg: LoRAFinetuneConfig, callbacks: list[Any] | None = None) -> TrainResult:
    from transformers import set_seed

    requested = cfg  # the run as asked: what a checkpoint's recipe holds and --resume compares
    work, resume_from = check_output_dir(cfg)
    checkpoint_recipe = read_checkpoint_recipe(resume_from) if resume_from else None
    resume_notes = compare_recipe(checkpoint_recipe, cfg, resume_from) if resume_from else []
    set_seed(cfg.seed)

    check_trackers(cfg.report_to)
    engine = launched_engine()
    problems = engine_problems(engine, torch.cuda.is_available(), cfg.quantization)
    if problems:
        raise ConfigError("This launch cannot train as asked:\n" + "\n".join(f"  - {p}" for p in problems))
    if engine.name != "single":
        log.info(engine.describe())
    # 1. Model path and LoRA targets first: a typo in target_modules fails in seconds, before
    #    any data is read or weights are loaded.
    model_path = resolve_model(cfg.model_name, cfg.cache_dir)
    model_config = read_model_config(model_path, cfg.trust_remote_code)
    model_type = getattr(model_config, "model_type", "unknown")
    skeleton = meta_model(model_path, cfg.trust_remote_code)
    targets = resolve_target_modules(cfg.target_modules, skeleton, model_type)
    continued: list[str] = []
    if cfg.init_adapter is not None:  # its LoRA shape and template are the run's (continuation.py)
        cfg, targets, continued = continue_from(cfg, model_type)
        log.info(continued[0])
    if cfg.lora_backend == "reference":
        check_reference_targets(skeleton, targets)

    # 2. Data.
    tokenizer = load_tokenizer(model_path, cfg.trust_remote_code, padding_side="right")
    data = prepare_data(cfg, tokenizer, model_type)
    small = small_eval_warning(cfg, data)
    if small:
        log.warning(small)
    if checkpoint_recipe is not None:
        _check_same_data(checkpoint_recipe, data.data_sha256, resume_from)

    # 3. Fit the memory there is (planning.py): the layout, decided before any weight loads.
    plan = _memory_plan(cfg, checkpoint_recipe, model_path, targets, data.stats.longest)
    cfg = dataclasses.replace(cfg, **plan.changes)
    if plan.note:
        log.info(plan.note)
    elif plan.estimate and plan.budget:
        log.info(
            "memory: estimated peak %.1f GiB of %.1f GiB memory_budget (%s)%s",
            plan.estimate / 2**30,
            plan.budget / 2**30,
            cfg.memory_budget,
            f"; activations x{plan.rss_factor:g} for glibc's malloc" if plan.rss_factor != 1 else "",
        )

    # 4. Model + LoRA.
    if not torch.cuda.is_available():
        log.info(allocator_note())
    loaded = load_model(
        model_path, dtype=cfg.dtype, quantization=cfg.quantization, trust_remote_code=cfg.trust_remote_code
    )
    model, dtype = loaded.model, loaded.dtype
    notes = loaded.notes + continued + resume_notes + ([plan.note] if plan.note else [])
    if engine.name != "single":
        notes.append(engine.describe())
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input
    model = attach_lora(model, cfg, targets)
    trainable, total = count_parameters(model)
    log.info(
        "LoRA on %s: %s trainable of %s parameters (%.3f%%)",
        ", ".join(targets),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )

    # 5. Train.
    # --- throughput (training/kernels.py): fused kernels where the memory plan asked for them,
    # and attention kernels that need no per-shape plan; both end with the run ---
    on_gpu = torch.cuda.is_available()
    liger = apply_liger(model, cfg.use_liger, on_gpu=on_gpu)
    if liger is not None:
        notes.append(liger.note)
    # The checkpoint's recipe is what was asked (what --resume compares) plus the plan taken.
    recipe = RunRecord(
        _recipe(requested),
        Resolved(
            model_type=model_type,
            template=data.template,
            target_modules=targets,
            data_sha256=data.data_sha256,
            extra={"memory_plan": plan.changes} if plan.changes else {},
        ),
    )
    try:
        trainer = get_stage(cfg.method).build_trainer(
            cfg, model, tokenizer, data, work / "checkpoints", dtype, callbacks or [], recipe
        )
        with attention_kernels(cfg.cudnn_attention, on_gpu):
            runtime, eval_metrics = run_trainer(trainer, resume_from, work / "checkpoints")
    finally:
        if liger is not None:
            liger.undo()  # later work in this process (merge on the CPU, chat, the web UI) runs unpatched
    release_freed_memory()
    overfit = _callback(trainer, OverfitWarning).warning
    if overfit:
        notes.append(overfit)

    # 6. Save the self-describing folder (rank 0 only under DDP).
    resolved = Resolved(
        base_model=model_path,
        model_type=model_type,
        template=data.template,
        quantization=loaded.quantization,
        dtype=str(dtype).replace("torch.", ""),
        target_modules=targets,
        eos_token=tokenizer.eos_token,
        notes=notes,
        data_sha256=data.data_sha256,
        versions=versions(),
        extra={"memory_plan": {"requested": plan.requested, "used": plan.changes}} if plan.changes else {},
    )
    metrics = collect_metrics(
        trainer,
        runtime,
        eval_metrics,
        data,
        trainable,
        total,
        tokens_before=tokens_seen_at(resume_from),
        memory=memory_report(plan, on_gpu=torch.cuda.is_available()),
        method=cfg.method,
    )
    final = Path(cfg.output_dir)
    try:
        _save_run(trainer, work, final, cfg, model_path, targets, tokenizer, resolved, metrics)
    except OSError as e:
        if not is_no_space(e):
            raise
        raise TrainingError(
            f"{no_space_error(work, _adapter_bytes(trainer.model))} " + _resume_hint(work / "checkpoints")
        ) from None
    return TrainResult(output_dir=final, metrics=metrics, resolved=resolved)


def _adapter_bytes(model: Any) -> int:
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) + 2**24


def _save_run(
    trainer: Trainer,
    work: Path,
    final: Path,
    cfg: LoRAFinetuneConfig,
    model_path: str,
    targets: list[str],
    tokenizer: PreTrainedTokenizerBase,
    resolved: Resolved,
    metrics: dict[str, Any],
) -> None:
    """Write the finished folder in `work` and move it to `final` (checkpoints go last, so a
    failure while saving leaves the run resumable)."""
    save_adapter(trainer, work, cfg, model_path, targets)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(work)
        RunRecord(_recipe(cfg), resolved).save(work / RUN_CONFIG)
        (work / METRICS).write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
        _draw_plot(trainer, work / LOSS_PLOT)
        runs = work / "checkpoints" / "runs"  # TensorBoard's folder under the Trainer's output_dir
        if runs.is_dir():
            shutil.move(str(runs), str(work / "runs"))
        write_manifest(work)  # the last write: a full disk up to here leaves the checkpoints intact
        # Checkpoints hold optimizer state for resuming; a finished run does not need them.
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        replace_dir(work, final)


def _draw_plot(trainer: Trainer, path: Path) -> None:
    """The loss plot is a picture of metrics.json: a plotting library that cannot draw (a
    matplotlib built for another numpy, a broken font cache) must not cost the trained adapter.
    A full disk still stops the save, before the manifest, so the run stays resumable."""
    try:
        plot_losses(trainer.state.log_history, path, kept_step(trainer))
    except OSError:
        raise
    except Exception as e:  # matplotlib raises ImportError, RuntimeError, ValueError, ...
        path.unlink(missing_ok=True)
        log.warning(
            "%s not drawn (%s: %s); metrics.json holds the same numbers. Reinstall matplotlib (pip install -U "
            "matplotlib) to get the plot next time.",
            path.name,
            type(e).__name__,
            str(e).splitlines()[0][:160] if str(e) else "",
        )


def _callback(trainer: Trainer, kind: type[T]) -> T:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, kind))


def run_trainer(trainer: Trainer, resume_from: Path | None, ckpt_dir: Path) -> tuple[float, dict[str, float]]:
    """trainer.train() with the failures users hit turned into advice, never lost work."""
    health = _callback(trainer, HealthCallback)
    interrupt = _callback(trainer, InterruptCallback)
    interrupt.install()
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        runtime = time.perf_counter() - t0
        eval_metrics = (
            trainer.evaluate() if trainer.eval_dataset is not None and not (health.problem or interrupt.signal) else {}
        )
    except torch.OutOfMemoryError as e:
        raise TrainingError(
            f"Out of GPU memory ({str(e).splitlines()[0][:160]}). Lower batch_size (raise "
            "gradient_accumulation_steps to keep the same effective batch), lower max_length, "
            "turn on gradient_checkpointing: true, or load the base with quantization: 4bit. "
            "`lora-finetune estimate --model ... --budget 24GB` suggests settings that fit. " + _resume_hint(ckpt_dir)
        ) from None
    except OSError as e:
        if not is_no_space(e):
            raise
        raise TrainingError(f"{no_space_error(ckpt_dir)} " + _resume_hint(ckpt_dir)) from None
    except RuntimeError as e:
        if not is_peer_failure(e, launched_engine()):
            raise
        interrupt.hold_sigterm()  # the launcher's teardown must not cut off what follows
        raise peer_lost(f"at step {trainer.state.global_step}", e, _resume_hint(ckpt_dir)) from None
    finally:
        interrupt.uninstall()
    if health.problem:
        raise TrainingError(
            f"Training stopped: {health.problem}. The loss or gradients became NaN/inf. Common "
            "fixes: use dtype: bf16 instead of fp16 (fp16 overflows), lower learning_rate "
            "(e.g. by 3-10x), keep max_grad_norm: 1.0, and check the data for empty answers. "
            + _resume_hint(ckpt_dir, good=True)
        )
    if interrupt.signal is not None:
        raise TrainingError(
            f"Training interrupted at step {trainer.state.global_step}. " + _resume_hint(ckpt_dir),
        )
    return runtime, eval_metrics


def _resume_hint(ckpt_dir: Path, good: bool = False) -> str:
    ckpt = last_complete_checkpoint(ckpt_dir)
    if ckpt is None:
        return "No checkpoint was written yet (see save_steps)."
    return (
        f"The last {'good ' if good else ''}checkpoint is {ckpt}; continue with "
        "`lora-finetune train --resume` and the same settings."
    )


__all__ = [
    "TrainResult",
    "check_output_dir",
    "require_checkpoint",
    "run_trainer",
    "save_adapter",
    "train",
]
