"""Fused kernels from liger-kernel, applied only where they exist and help.

liger-kernel (`pip install 'lora-finetune[fast]'`) ships Triton GPU kernels for RMSNorm, SwiGLU,
RoPE and -- the one that matters most for Qwen's 152k-entry vocabulary -- a fused linear +
cross-entropy that computes the loss chunk by chunk from the hidden states, so the full
(tokens x vocabulary) fp32 logits are never built. Each architecture has its own
`apply_liger_kernel_to_<arch>(model=...)`; we call the one for the model's `model_type` on the
base model inside the LoRA wrapper (LoRA layers stay untouched: the patched MLP and attention call
the same, wrapped, projections).

`use_liger`:
- `auto` (default): used on a CUDA GPU when liger-kernel is installed and supports the
  architecture; otherwise skipped with one log line saying why.
- `true`: required; a clear error when it cannot be used (no GPU, not installed, architecture
  without kernels).
- `false`: never.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from typing import TYPE_CHECKING, Any

from ..choices import LIGER_MODES, parse_bool
from ..errors import ConfigError
from ..models.families import family_for

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def resolve_liger_mode(value: Any) -> str:
    """`auto`, `true` or `false` from a config value (YAML booleans and yes/no accepted)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return "true" if parse_bool(value) else "false"
    except ValueError:
        pass
    raise ConfigError(
        f"use_liger={value!r}: must be auto, true or false (auto uses liger-kernel "
        "on a CUDA GPU when it is installed and supports the model)."
    )


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_function(model_type: str) -> Any | None:
    """liger-kernel's `apply_liger_kernel_to_<arch>` for this model_type (looked up under the
    family's `liger_key` when it has one), or None."""
    try:
        from liger_kernel.transformers import monkey_patch
    except Exception:  # not installed, or no triton/GPU stack: treat as unavailable
        return None
    key = family_for(model_type).liger_key or model_type
    table = getattr(monkey_patch, "MODEL_TYPE_TO_APPLY_LIGER_FN", None)
    if isinstance(table, dict):
        return table.get(key)
    return getattr(monkey_patch, f"apply_liger_kernel_to_{key}", None)


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def apply_liger(model: PreTrainedModel, mode: Any, on_gpu: bool) -> str | None:
    """Patch `model` with liger-kernel as `mode` says; returns a note for the run's metadata.

    Logs one line either way. Raises `ConfigError` only for `use_liger: true` that cannot be met.
    """
    mode = resolve_liger_mode(mode)
    if mode == "false":
        return None
    base = _base_model(model)
    model_type = getattr(getattr(base, "config", None), "model_type", None) or "unknown"

    def unavailable(why: str, fix: str) -> None:
        if mode == "true":
            raise ConfigError(f"use_liger: true, but {why}. {fix}")
        log.info("liger-kernel not used: %s", why)

    if not on_gpu:
        unavailable(
            "there is no CUDA GPU (its kernels are Triton GPU kernels)", "Use use_liger: auto or false on this machine."
        )
        return None
    if not liger_installed():
        unavailable(
            "liger-kernel is not installed",
            "Install it with pip install 'lora-finetune[fast]', or use use_liger: auto.",
        )
        return None
    fn = liger_function(model_type)
    if fn is None:
        unavailable(
            f"liger-kernel has no kernels for model_type {model_type}",
            "Use use_liger: auto (skips it) or false for this model.",
        )
        return None
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"model": base}
    if "fused_linear_cross_entropy" in params:
        kwargs["fused_linear_cross_entropy"] = True
    if "cross_entropy" in params:
        kwargs["cross_entropy"] = False
    fn(**kwargs)
    vocab = getattr(base.config, "vocab_size", None)
    note = (
        f"liger-kernel: {fn.__name__} applied (fused RMSNorm/SwiGLU/RoPE and linear+cross-"
        f"entropy; the {vocab}-entry vocabulary's logits are never materialised in full)"
    )
    log.info(note)
    return note


__all__ = ["apply_liger", "resolve_liger_mode", "liger_function", "liger_installed", "LIGER_MODES"]
