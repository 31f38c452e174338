"""What a finished run reports: metrics.json and loss_curve.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .dataset import PreparedData


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


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("lora-finetune", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes"):
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
        "samples": {"train": len(data.train), "eval": len(data.eval), "dropped_too_long": data.stats.too_long},
        "tokens": {"answer": data.stats.answer_tokens, "prompt_masked": data.stats.prompt_tokens},
        "log_history": history,
    }


__all__ = ["collect_metrics", "plot_losses", "tokens_seen_at", "versions"]
