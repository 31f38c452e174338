"""LoRA dropout that costs little on a CPU.

Why: peft puts an `nn.Dropout` on the input of every LoRA branch (7 per layer on Llama/Qwen), and
torch draws a CPU dropout mask with `bernoulli_`, one Mersenne-Twister draw per element: 5-8 ms
per million elements here, against 0.06 ms for the multiplication that applies it. On the
long-batch job (SmolLM2-135M, 4 x ~460 tokens, all seven projections) that was 14% of every
training step (bench/RESULTS.md, "CPU speed").

`CheapDropout` keeps dropout's meaning exactly (each element kept independently with probability
1 - p, kept ones scaled so the expectation is unchanged) and changes only how the random bits are
drawn: one 64-bit draw from torch's generator gives four 16-bit uniforms, each compared with a
threshold. p is thereby rounded to a multiple of 1/65536 (0.05 -> 0.0500030518), and the scale
uses the rounded keep-probability so the output stays unbiased. It saves a 1-byte mask for the
backward pass instead of torch's 4-byte one on the CPU. Draws come from the global CPU generator,
so `set_seed` and the Trainer's RNG checkpoints make runs and resumes repeatable as before.

Elsewhere (a CUDA tensor, evaluation mode, p == 0) it is `torch.nn.functional.dropout` itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

_LEVELS = 1 << 16  # 16-bit uniforms


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of `shape` (each element True with probability ~1 - p) and the scale
    1 / (exact keep-probability) for the kept elements."""
    dropped_levels = round(p * _LEVELS)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64)
    # random_(from, to) with the full signed range: all 64 bits random (plain random_() on int64
    # leaves the top bit 0, which would bias every fourth 16-bit value).
    words.random_(-(2**63), 2**63 - 1)
    u16 = words.view(torch.int16)[:n].view(shape)
    keep = u16 >= dropped_levels - _LEVELS // 2
    return keep, _LEVELS / (_LEVELS - dropped_levels)


class CheapDropout(nn.Dropout):
    """nn.Dropout with the cheap CPU mask above (see the module docstring). A subclass, so code
    that turns dropout off by setting `p = 0` on every nn.Dropout (TRL's preference trainers:
    the policy and its reference must score alike) turns this one off too."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        super().__init__(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or round(self.p * _LEVELS) == 0:
            return F.dropout(x, self.p, self.training)
        keep, scale = keep_mask(x.shape, self.p)
        # where() saves only the bool mask for backward; the scalar multiply saves nothing.
        return torch.where(keep, x, 0.0) * scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_cheap_cpu_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` inside LoRA branches (peft's `lora_dropout`) for CheapDropout;
    return how many were swapped. Other dropouts of the model are left alone."""
    swapped = 0
    for name, module in model.named_modules():
        if not name.endswith("lora_dropout") or not isinstance(module, nn.ModuleDict):
            continue
        for key, drop in list(module.items()):
            if type(drop) is nn.Dropout and drop.p > 0:
                module[key] = CheapDropout(drop.p)
                swapped += 1
    return swapped


__all__ = ["CheapDropout", "keep_mask", "use_cheap_cpu_dropout"]
