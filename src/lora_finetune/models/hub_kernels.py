"""Models stay transformers' own torch code: no compute kernels fetched from the Hub."""

from __future__ import annotations

from typing import Any

NO_HUB_KERNELS: dict[str, Any] = {"use_kernels": False}
"""`from_pretrained` keyword that keeps the model as transformers' own torch code. transformers
5.25 turned `use_kernels` on by default (with its `kernels` package installed): the model is
"kernelized" with compute kernels fetched from the Hugging Face Hub -- network access and
binaries nobody asked for -- and every `model.train()` / `.eval()` kernelizes it again, which
silently drops per-instance patches such as liger-kernel's fused RMSNorm. Every 5.x release
accepts the keyword (the default was False before 5.25)."""

__all__ = ["NO_HUB_KERNELS"]
