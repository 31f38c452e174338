"""Memory planning: fit the run into the memory there is, without changing what is learned.

Before the weights load, the run's peak is estimated (tools/estimate.py, from the model's config
and the longest sample) for the planned batch layout and compared with `memory_budget` (`auto`:
free RAM on a CPU, free memory on the GPU; or a size; `none` turns planning off). When it does
not fit, the cheapest change that does is taken, in this order, and said in one line:

1. on a CUDA GPU with `use_liger: auto`, liger-kernel's fused linear + cross-entropy (no full
   logits; measured 18% slower than without at Qwen3-0.6B batch 16 on an H200, and less memory:
   16.6 instead of 30.3 GiB), where it is installed and supports the architecture;
2. gradient checkpointing (recompute activations: ~30% slower, same numbers), with liger where 1.
   applies;
3. a smaller micro-batch with more gradient accumulation, so the effective batch (and with
   Trainer's loss normalisation over the accumulated tokens, the results) stay the same.

Nothing that changes results (quantisation, max_length, r) is chosen for the user. When nothing
fits, the run stops before loading weights, naming the smallest layout's estimate and what the
user could change.

On a CPU the budget is RSS, and glibc's malloc keeps more of a step's transient tensors resident
than are live: the per-step part of the estimate is scaled by allocator.py's factor (1 under
tcmalloc). Afterwards `memory_report` puts the estimate next to the measured peak in
metrics.json, so every run checks its estimate.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..allocator import rss_factor
from ..config import LoRAFinetuneConfig
from ..errors import ConfigError
from ..tools.estimate import GiB, Setup, estimate_memory, free_memory, load_shape, parse_size
from .engines import launched_engine
from .kernels import liger_usable
from .stages import get_stage

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
    baseline: float | None = None
    """On a CPU, this process's RSS when the plan was made (imports, tokenizer, data): already
    outside the free RAM the budget was read from, so the estimate is compared with the peak
    above it."""
    rss_factor: float = 1.0
    """The allocator's factor applied to the per-step part of the estimate (allocator.py)."""

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
            "batch and the results are the same" + (", to float rounding" if "use_liger" in self.changes else "") + ")"
        )


def _proc_status_bytes(key: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory_used(on_gpu: bool) -> float | None:
    """What the run actually peaked at: the GPU allocator's high-water mark, or on a CPU this
    process's peak resident set (VmHWM: weights, data and training together)."""
    if on_gpu:
        return float(torch.cuda.max_memory_allocated())
    return _proc_status_bytes("VmHWM")


def memory_report(plan: MemoryPlan, on_gpu: bool) -> dict[str, Any]:
    """metrics.json's `memory`: the estimate the plan was made with next to what was measured."""
    measured = peak_memory_used(on_gpu)
    out: dict[str, Any] = {
        "estimated_peak_bytes": round(plan.estimate) if plan.estimate else None,
        "budget_bytes": round(plan.budget) if plan.budget else None,
        "measured_peak_bytes": round(measured) if measured else None,
        "measured": "torch.cuda.max_memory_allocated" if on_gpu else "peak RSS of the process (VmHWM)",
        "allocator_rss_factor": plan.rss_factor,
    }
    used = measured
    if not on_gpu and measured and plan.baseline:
        used = measured - plan.baseline
        out["rss_when_planned_bytes"] = round(plan.baseline)
        out["measured_above_plan_bytes"] = round(used)
    if plan.estimate and used:
        out["estimate_error"] = round(plan.estimate / used - 1, 3)
    return out


def budget_bytes(spec: str, on_gpu: bool) -> float | None:
    text = str(spec).strip().lower()
    if text in ("none", "off", "false", "no"):
        return None
    if text == "auto":
        return free_memory(on_gpu)
    return parse_size(spec)


def _layouts(cfg: LoRAFinetuneConfig, liger: bool = False) -> list[dict[str, Any]]:
    """Candidate layouts, cheapest change first; each keeps batch_size x accumulation. `liger`:
    fused logits may be turned on (`use_liger: auto` where liger-kernel can run)."""
    fused = {"use_liger": "true"} if liger else {}
    out: list[dict[str, Any]] = [{}]
    if liger:
        out.append(dict(fused))
    if not cfg.gradient_checkpointing:
        out.append({"gradient_checkpointing": True, **fused})
    smallest = 2 if cfg.method == "kto" else 1  # KTO's KL term pairs answers within a batch
    for bs in range(cfg.batch_size - 1, smallest - 1, -1):
        if cfg.batch_size % bs == 0:
            out.append(
                {
                    "gradient_checkpointing": True,
                    "batch_size": bs,
                    "gradient_accumulation_steps": cfg.gradient_accumulation_steps * (cfg.batch_size // bs),
                    **fused,
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
    engine = launched_engine()
    if engine.shards_weights:
        log.info(
            "memory: the budget is per process, and the estimate counts the whole model in each; "
            "%s shards the weights, so it errs high",
            engine.label,
        )
    shape = load_shape(model_path, cfg.trust_remote_code)
    factor = rss_factor(on_gpu)
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    tokens = max(1, min(longest, cfg.max_length))
    stage = get_stage(cfg.method)  # a preference pair puts two sequences through the model per sample

    def estimate(layout: dict[str, Any]) -> float:
        setup = Setup(
            quantization=cfg.quantization,
            dtype=dtype_name,
            r=cfg.r,
            target_modules=targets,
            batch_size=layout.get("batch_size", cfg.batch_size) * stage.sequences_per_sample,
            max_length=tokens,
            gradient_checkpointing=layout.get("gradient_checkpointing", cfg.gradient_checkpointing),
            dropout=cfg.dropout,
            device="cuda" if on_gpu else "cpu",
            liger=layout.get("use_liger", cfg.use_liger) == "true",
            fused_logits=stage.fused_logits,
        )
        est = estimate_memory(shape, setup)
        # On a CPU under glibc's malloc a step keeps more resident than it uses (allocator.py).
        return est.total + (factor - 1) * (est.activations + est.logits)

    layouts = _layouts(cfg, liger=cfg.use_liger == "auto" and liger_usable(shape.model_type, on_gpu) is None)
    for layout in layouts:
        peak = estimate(layout)
        if peak <= budget:
            requested = {k: getattr(cfg, k) for k in layout}
            baseline = None if on_gpu else _proc_status_bytes("VmRSS")
            return MemoryPlan(budget, peak, dict(layout), requested, baseline, factor)
    smallest = estimate(layouts[-1])
    where = "the GPU's free memory" if on_gpu else "free RAM"
    raise ConfigError(
        f"The run does not fit memory_budget {cfg.memory_budget} ({budget / GiB:.1f} GiB"
        + (f", {where}" if str(cfg.memory_budget).strip().lower() == "auto" else "")
        + f"): even batch_size {layouts[-1].get('batch_size', cfg.batch_size)} with gradient checkpointing is "
        f"estimated at {smallest / GiB:.1f} GiB "
        f"(samples up to {tokens} tokens). Use quantization: 4bit, a lower max_length, a smaller r or "
        "model, free some memory, or memory_budget: none to try anyway."
    )


__all__ = ["MemoryPlan", "budget_bytes", "free_memory", "memory_report", "peak_memory_used", "plan_memory"]
