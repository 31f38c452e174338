"""What a finished run reports: metrics.json and loss_curve.png.

Preference methods (dpo, orpo, simpo, kto) report what their users look at besides the loss:
TRL's rewards of the chosen and rejected answers, the reward accuracy (the share of pairs whose
chosen answer gets the higher reward) and the margin between them, for training and the held-out
pairs; the plot gets a second panel with the accuracy and the margin.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .dataset import PreparedData


def plot_losses(log_history: list[dict[str, Any]], path: Path, kept_step: int | None = None) -> None:
    """Train and eval loss by step, the learning rate on a second axis, and a line at the step
    whose weights the adapter holds (the last step, or the best with load_best_model_at_end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    during, _ = split_final_eval(log_history)
    series = loss_series(log_history)
    train, evals, final, rates = series["train"], series["eval"], series["kept_eval"], series["learning_rate"]
    preference = any(k in h for h in log_history for k in PREFERENCE_KEYS)
    fig, axes = plt.subplots(1, 2 if preference else 1, figsize=(11 if preference else 6, 4), dpi=100, squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    if kept_step is not None:
        ax.axvline(kept_step, color="tab:green", linestyle="--", label=f"adapter = step {kept_step}")
        if final is not None:
            # The evaluation after training is of the adapter kept (step `kept_step`'s weights),
            # not a later point of the eval curve: a marker of its own at that step.
            ax.plot([kept_step], [final], marker="*", markersize=13, linestyle="none", color="tab:green",
                    label=f"adapter kept: eval loss {final:.3f}")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title("LoRA fine-tuning loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if rates:
        lr_ax = ax.twinx()
        (line,) = lr_ax.plot(*zip(*rates), color="tab:gray", alpha=0.6, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        handles, labels = handles + [line], labels + ["learning rate"]
    ax.legend(handles, labels, fontsize=8)
    if preference:
        _plot_rewards(axes[0][1], during, kept_step)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def loss_series(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """What the loss plot draws: (step, value) points of the train loss, the eval loss during
    training and the learning rate, and the kept adapter's eval loss (None without one)."""
    during, after = split_final_eval(log_history)
    kept = [h["eval_loss"] for h in after if "eval_loss" in h]
    return {
        "train": [(h["step"], h["loss"]) for h in during if "loss" in h],
        "eval": [(h["step"], h["eval_loss"]) for h in during if "eval_loss" in h],
        "learning_rate": [(h["step"], h["learning_rate"]) for h in during if "learning_rate" in h],
        "kept_eval": kept[-1] if kept else None,
    }


def split_final_eval(log_history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the entries logged while training, the evaluation of the kept adapter after it). The
    Trainer logs its summary (`train_loss`, the mean over the run) when training ends; what
    follows is the final evaluation, logged at the last step though it measures the kept
    checkpoint's weights."""
    for i, h in enumerate(log_history):
        if "train_loss" in h:
            return log_history[:i], log_history[i + 1 :]
    return log_history, []


PREFERENCE_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
"""TRL's preference metrics (train; `eval_` + these for the held-out pairs)."""


def _plot_rewards(ax: Any, log_history: list[dict[str, Any]], kept_step: int | None) -> None:
    """Reward accuracy (left axis) and margin (right axis), train and held-out."""
    for key, style, label in (("rewards/accuracies", ".-", "train"), ("eval_rewards/accuracies", "o-", "held-out")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            ax.plot(*zip(*points), style, label=f"{label} reward accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("reward accuracy (chosen > rejected)")
    ax.set_title("Preference")
    ax.grid(alpha=0.3)
    margin_ax = ax.twinx()
    for key, style, label in (("rewards/margins", ":", "train"), ("eval_rewards/margins", "--", "held-out")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            margin_ax.plot(*zip(*points), style, color="tab:purple", label=f"{label} margin")
    margin_ax.set_ylabel("reward margin")
    if kept_step is not None:
        ax.axvline(kept_step, color="tab:green", linestyle="--")
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = margin_ax.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, fontsize=8)


def preference_metrics(history: list[dict[str, Any]], eval_metrics: dict[str, float]) -> dict[str, Any] | None:
    """The last logged train values of TRL's reward metrics and the final held-out ones."""
    train = {k: next((h[k] for h in reversed(history) if k in h), None) for k in PREFERENCE_KEYS}
    held = {k: eval_metrics.get(f"eval_{k}") for k in PREFERENCE_KEYS}
    if all(v is None for v in (*train.values(), *held.values())):
        return None
    short = lambda d: {k.split("/")[1]: v for k, v in d.items() if v is not None}  # noqa: E731
    return {"train": short(train), "eval": short(held)}


def kept_step(trainer: Any) -> int:
    """The step whose weights the saved adapter holds."""
    best = getattr(trainer.state, "best_model_checkpoint", None)
    if best and trainer.args.load_best_model_at_end:
        try:
            return int(str(best).rstrip("/").split("-")[-1])
        except ValueError:
            pass
    return int(trainer.state.global_step)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("lora-finetune", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 50.0))


def tokens_seen_at(checkpoint: Path | None) -> int:
    if checkpoint is None:
        return 0
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        return int(state.get("num_input_tokens_seen", 0) or 0)
    except (OSError, ValueError):
        return 0


def collect_metrics(
    trainer: Any,
    runtime: float,
    eval_metrics: dict[str, float],
    data: PreparedData,
    trainable: int,
    total: int,
    tokens_before: int = 0,
    memory: dict[str, Any] | None = None,
    method: str = "sft",
) -> dict[str, Any]:
    history = trainer.state.log_history
    # tokens this process trained on (a resumed run's count starts at the checkpoint's); None where
    # the trainer's batches have no `input_ids` to count (TRL's ORPO and CPO)
    counted = trainer.args.include_num_input_tokens_seen not in ("no", False, None)
    tokens_seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0) - tokens_before if counted else None
    eval_loss = eval_metrics.get("eval_loss")
    train_losses = [h["loss"] for h in history if "loss" in h]
    preference = preference_metrics(history, eval_metrics)
    return {
        "method": method,
        "train_loss": next((h["train_loss"] for h in history if "train_loss" in h), None),
        "final_train_loss": train_losses[-1] if train_losses else None,
        "eval_loss": eval_loss,
        # the perplexity of a language-modelling loss; a preference loss has none
        "eval_perplexity": _perplexity(eval_loss) if method in ("sft", "pt") else None,
        **({"preference": preference} if preference else {}),
        "train_runtime_s": round(runtime, 3),
        "steps": trainer.state.global_step,
        "adapter_step": kept_step(trainer),
        "best_metric": getattr(trainer.state, "best_metric", None) if trainer.args.load_best_model_at_end else None,
        "real_tokens_seen": tokens_seen,
        "real_tokens_per_second": round(tokens_seen / runtime, 2) if runtime > 0 and tokens_seen is not None else None,
        "trainable_params": trainable,
        "total_params": total,
        "samples": {"train": len(data.train), "eval": len(data.eval), "dropped_too_long": data.stats.too_long},
        "tokens": {"answer": data.stats.answer_tokens, "prompt_masked": data.stats.prompt_tokens},
        "memory": memory or {},
        "log_history": history,
    }


__all__ = [
    "PREFERENCE_KEYS",
    "collect_metrics",
    "kept_step",
    "plot_losses",
    "preference_metrics",
    "tokens_seen_at",
    "versions",
]
