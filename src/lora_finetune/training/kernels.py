"""Fused kernels from liger-kernel, applied only where they help, and only to the run's model.

liger-kernel (`pip install 'lora-finetune[fast]'`) ships Triton GPU kernels for RMSNorm, SwiGLU,
RoPE and -- the one that matters most for Qwen's 152k-entry vocabulary -- a fused linear +
cross-entropy that computes the loss chunk by chunk from the hidden states, so the full
(tokens x vocabulary) fp32 logits are never built. Each architecture has its own
`apply_liger_kernel_to_<arch>(model=...)`; we call the one for the model's `model_type` on the
base model inside the LoRA wrapper (LoRA layers stay untouched: the patched MLP and attention call
the same, wrapped, projections).

Why it is not on for speed: measured on an H200 (bench/RESULTS.md, "GPU"), liger made
Qwen3-0.6B *slower* at batch 2 (2,177 vs 2,914 real tokens/s) and at batch 16 (13,728 vs 16,820);
what it buys is memory (16.6 instead of 30.3 GiB at batch 16). So `use_liger`:

- `auto` (default): off, unless the memory plan (planning.py) needs it for the run to fit --
  before it turns on gradient checkpointing, which costs more. Then it is used on a CUDA GPU
  where liger-kernel is installed and supports the architecture.
- `true`: required; a clear error when it cannot be used (no GPU, not installed, architecture
  without kernels).
- `false`: never.

Scope: liger's `apply_*` functions patch the model instance *and* module globals of
transformers (`modeling_qwen3.Qwen3RMSNorm`, `.Qwen3MLP`, `.apply_rotary_pos_emb`, ...), so every
model of that architecture built afterwards in the same process would run Triton kernels -- a
merge on the CPU after training on the GPU then failed ("Pointer argument cannot be accessed
from Triton"). `LigerPatch` records those modules (and their classes) before the call and
`undo()` puts back every attribute the call changed; training undoes it when it ends, however
it ends. While the run lasts the patch is process-wide (RoPE is a module function, not a layer).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
import threading
import types
from contextlib import AbstractContextManager, nullcontext
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
        f"use_liger={value!r}: must be auto, true or false (auto uses liger-kernel only when the "
        "memory plan needs it to fit the run on a CUDA GPU)."
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


class LigerPatch:
    """What `apply_liger_kernel_to_<arch>` calls change outside the model, to undo it.

    Before the call, the attributes of `modules` (and of the classes defined in them) are recorded;
    `undo()` restores every attribute that was replaced and removes every one that was added. The
    patch is process-wide, so the record is too: runs that overlap in one process (threads of the
    Python API) share it, and the modules go back to what they were before the first of them when
    the last one ends -- an inner run's record would otherwise hold the outer run's patches."""

    _lock = threading.Lock()
    _originals: dict[int, tuple[Any, dict[str, Any]]] = {}  # id(owner) -> (owner, its attributes before)
    _active = 0

    def __init__(self, modules: list[types.ModuleType], note: str = "") -> None:
        self.note = note
        self._open = True
        with LigerPatch._lock:
            for owner in _owners(modules):
                LigerPatch._originals.setdefault(id(owner), (owner, dict(vars(owner))))
            LigerPatch._active += 1

    def changed(self) -> list[str]:
        """`owner.name` of every attribute that differs from before the first active patch."""
        out = []
        with LigerPatch._lock:
            for owner, before in LigerPatch._originals.values():
                now = vars(owner)
                keys = {k for k in set(before) | set(now) if before.get(k, _MISSING) is not now.get(k, _MISSING)}
                out += [f"{getattr(owner, '__name__', owner)}.{k}" for k in sorted(keys)]
        return out

    def undo(self) -> None:
        with LigerPatch._lock:
            if not self._open:
                return
            self._open = False
            LigerPatch._active -= 1
            if LigerPatch._active:
                return  # another run in this process still trains with the patch
            for owner, before in LigerPatch._originals.values():
                now = dict(vars(owner))
                for key, value in before.items():
                    if now.get(key, _MISSING) is not value:
                        setattr(owner, key, value)
                for key in now.keys() - before.keys():
                    delattr(owner, key)
            LigerPatch._originals.clear()


_MISSING = object()


def _owners(modules: list[types.ModuleType]) -> list[Any]:
    """The modules and the classes defined in them, each once."""
    out: list[Any] = []
    for module in dict.fromkeys(modules):
        out.append(module)
        out += [v for v in list(vars(module).values()) if isinstance(v, type) and v.__module__ == module.__name__]
    return out


def _patched_modules(base: nn.Module) -> list[types.ModuleType]:
    """Where an `apply_liger_kernel_to_*` call writes: the modules of the model's classes
    (`modeling_<arch>`, its decoder layers and norms included), transformers' loss functions and
    torch.nn.functional (liger's plain cross-entropy patch)."""
    names = {type(m).__module__ for m in base.modules()} | {c.__module__ for c in type(base).__mro__}
    names = {n for n in names if n.startswith("transformers.")}
    names |= {"transformers.loss.loss_utils", "torch.nn.functional"}
    return [sys.modules[n] for n in sorted(names) if n in sys.modules]


def liger_usable(model_type: str, on_gpu: bool) -> str | None:
    """None when liger-kernel can run this architecture here, else why not."""
    if not on_gpu:
        return "there is no CUDA GPU (its kernels are Triton GPU kernels)"
    if not liger_installed():
        return "liger-kernel is not installed"
    if liger_function(model_type) is None:
        return f"liger-kernel has no kernels for model_type {model_type}"
    return None


def apply_liger(model: PreTrainedModel, mode: Any, on_gpu: bool) -> LigerPatch | None:
    """Patch `model` with liger-kernel as `mode` says (`auto`: not at all; the memory plan turns
    `auto` into `true` when the run needs it). Returns the patch, to `undo()` when the run ends.

    Logs one line when it is used or cannot be. Raises `ConfigError` only for `use_liger: true`
    that cannot be met."""
    mode = resolve_liger_mode(mode)
    if mode != "true":
        if mode == "auto":
            log.debug("liger-kernel not used: slower than transformers' own ops where measured (use_liger: auto)")
        return None
    base = _base_model(model)
    model_type = getattr(getattr(base, "config", None), "model_type", None) or "unknown"
    why = liger_usable(model_type, on_gpu)
    if why is not None:
        fix = (
            "Install it with pip install 'lora-finetune[fast]', or use use_liger: auto."
            if "installed" in why
            else "Use use_liger: auto or false here."
        )
        raise ConfigError(f"use_liger: true, but {why}. {fix}")
    fn = liger_function(model_type)
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {"model": base}
    if "fused_linear_cross_entropy" in params:
        kwargs["fused_linear_cross_entropy"] = True
    if "cross_entropy" in params:
        kwargs["cross_entropy"] = False
    vocab = getattr(base.config, "vocab_size", None)
    name = getattr(fn, "__name__", "apply_liger_kernel")
    patch = LigerPatch(
        _patched_modules(base),
        note=f"liger-kernel: {name} applied (fused RMSNorm/SwiGLU/RoPE and linear+cross-entropy; the "
        f"{vocab}-entry vocabulary's logits are never materialised in full)",
    )
    try:
        fn(**kwargs)
    except BaseException:
        patch.undo()
        raise
    log.info(patch.note)
    return patch


def attention_kernels(cudnn: bool, on_gpu: bool) -> AbstractContextManager[Any]:
    """While training: which kernels PyTorch's scaled_dot_product_attention may choose.

    `cudnn: false` (the default) leaves out the cuDNN backend. Why: with per-batch padding every
    new batch length is a new shape, and cuDNN attention builds a new execution plan per shape --
    1.0-1.5 ms of CPU per call, forward and backward, 28 layers -- so a small model's step became
    host-bound. Measured on an H200 (bench/RESULTS.md, "GPU"), Qwen3-0.6B batch 2: 1,545 -> 2,177
    real tokens/s with cuDNN attention off; batch 16: 11,161 -> 16,820; a 6B GLM in 4-bit, batch
    8 with checkpointing: 3,287 -> 5,044. Flash and memory-efficient attention need no plan.
    A context manager, so the choice ends with the run (no process-wide switch is left behind)."""
    if cudnn or not on_gpu:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


__all__ = [
    "LIGER_MODES",
    "LigerPatch",
    "apply_liger",
    "attention_kernels",
    "liger_function",
    "liger_installed",
    "liger_usable",
    "resolve_liger_mode",
]
