"""Memory planning: fit the run into the memory there is, without changing what is learned.

Before the weights load, the run's peak is estimated (tools/estimate.py, from the model's config
and the longest sample) for the planned batch layout and compared with `memory_budget` (`auto`:
free RAM on a CPU, free memory on the GPU; or a size; `none` turns planning off). When it does
not fit, the cheapest change that does is taken, in this order, and said in one line:

1. gradient checkpointing (recompute activations: ~30% slower, same numbers);
2. a smaller micro-batch with more gradient accumulation, so the effective batch (and with
   Trainer's loss normalisation over the accumulated tokens, the results) stay the same.

Nothing that changes results (quantisation, max_length, r) is chosen for the user. When nothing
fits, the run stops before loading weights, naming the smallest layout's estimate and what the
user could change.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import LoRAFinetuneConfig
from ..errors import ConfigError
from ..tools.estimate import GiB, Setup, estimate_memory, load_shape, parse_size

log = logging.getLogger(__name__)


@dataclass
class MemoryPlan:
    budget: float | None
    """Bytes available (None: planning off or unknown)."""
    estimate: float | None = None
    """Estimated peak of the layout chosen."""
    changes: dict[str, Any] = field(default_factory=dict)
    """Config keys changed, with their new values (empty: as asked)."""
    requested: dict[str, Any] = field(default_factory=dict)
    """The same keys as asked."""

    @property
    def note(self) -> str | None:
        if not self.changes:
            return None
        asked = ", ".join(f"{k} {v}" for k, v in self.requested.items())
        used = ", ".join(f"{k} {v}" for k, v in self.changes.items())
        if self.budget is None or self.estimate is None:  # kept from the checkpoint being resumed
            return f"memory plan of the checkpoint kept: {used} instead of {asked} (same effective batch)"
        return (
            f"memory plan: the run as asked ({asked}) needs more than the {self.budget / GiB:.1f} GiB "
            f"memory_budget; using {used} (estimated peak {self.estimate / GiB:.1f} GiB; the effective "
            "batch and the results are the same)"
        )


def free_memory(on_gpu: bool) -> float | None:
    """Free memory now: the GPU's (torch) or the CPU's (MemAvailable), in bytes."""
    if on_gpu:
        free, _ = torch.cuda.mem_get_info()
        return float(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def budget_bytes(spec: str, on_gpu: bool) -> float | None:
    text = str(spec).strip().lower()
    if text in ("none", "off", "false", "no"):
        return None
    if text == "auto":
        return free_memory(on_gpu)
    return parse_size(spec)


def _layouts(cfg: LoRAFinetuneConfig) -> list[dict[str, Any]]:
    """Candidate layouts, cheapest change first; each keeps batch_size x accumulation."""
    out: list[dict[str, Any]] = [{}]
    if not cfg.gradient_checkpointing:
        out.append({"gradient_checkpointing": True})
    for bs in range(cfg.batch_size - 1, 0, -1):
        if cfg.batch_size % bs == 0:
            out.append(
                {
                    "gradient_checkpointing": True,
                    "batch_size": bs,
                    "gradient_accumulation_steps": cfg.gradient_accumulation_steps * (cfg.batch_size // bs),
                }
            )
    return out


def plan_memory(
    cfg: LoRAFinetuneConfig, model_path: str, targets: list[str], longest: int, dtype: torch.dtype
) -> MemoryPlan:
    """The layout to train with (see the module docstring)."""
    on_gpu = torch.cuda.is_available()
    if str(cfg.memory_budget).strip().lower() == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Each process would measure its own free memory and could choose another layout than its
        # peers (DDP then hangs); with several processes only an explicit size is planned.
        log.info("memory_budget auto is not planned under several processes; give a size (e.g. 20GB) to plan")
        return MemoryPlan(None)
    budget = budget_bytes(cfg.memory_budget, on_gpu)
    if budget is None:
        return MemoryPlan(None)
    shape = load_shape(model_path, cfg.trust_remote_code)
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    tokens = max(1, min(longest, cfg.max_length))

    def estimate(layout: dict[str, Any]) -> float:
        setup = Setup(
            quantization=cfg.quantization,
            dtype=dtype_name,
            r=cfg.r,
            target_modules=targets,
            batch_size=layout.get("batch_size", cfg.batch_size),
            max_length=tokens,
            gradient_checkpointing=layout.get("gradient_checkpointing", cfg.gradient_checkpointing),
            dropout=cfg.dropout,
            device="cuda" if on_gpu else "cpu",
        )
        return estimate_memory(shape, setup).total

    layouts = _layouts(cfg)
    for layout in layouts:
        peak = estimate(layout)
        if peak <= budget:
            requested = {k: getattr(cfg, k) for k in layout}
            return MemoryPlan(budget, peak, dict(layout), requested)
    smallest = estimate(layouts[-1])
    where = "the GPU's free memory" if on_gpu else "free RAM"
    raise ConfigError(
        f"The run does not fit memory_budget {cfg.memory_budget} ({budget / GiB:.1f} GiB"
        + (f", {where}" if str(cfg.memory_budget).strip().lower() == "auto" else "")
        + f"): even batch_size 1 with gradient checkpointing is estimated at {smallest / GiB:.1f} GiB "
        f"(samples up to {tokens} tokens). Use quantization: 4bit, a lower max_length, a smaller r or "
        "model, free some memory, or memory_budget: none to try anyway."
    )


__all__ = ["MemoryPlan", "budget_bytes", "free_memory", "plan_memory"]
