"""Shared benchmark plumbing: a Trainer callback that measures steps, memory probes, run info.

Measuring inside transformers' Trainer (both pipelines run on it) keeps the comparison honest:
the same loop, the same optimizer, the same logging machinery; only what each pipeline feeds it
differs.

- `ThroughputProbe` times every optimizer step two ways: `compute` (on_step_begin -> on_step_end:
  forward, backward, optimizer) and `wall` (on_step_end -> next on_step_end: also data loading,
  logging, evaluation and checkpoint saves that fall between steps). A forward pre-hook on the
  top-level model counts the tokens of each training forward: real (attention_mask.sum(), or
  every non-padding position of a packed row) and padded (input_ids.numel()), and keeps the
  largest batch shape any training forward had (rows x padded length of input_ids; 1 x row length
  for a packed row): the step that sets the peak memory, which a memory estimate must be for.
- Memory: on CPU the process's resident set (VmRSS, VmHWM from /proc; the high-water mark is
  reset through /proc/self/clear_refs where the kernel allows it); on GPU
  `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

GiB = 1024**3
MiB = 1024**2


# --------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else None


def peak_rss_bytes() -> int | None:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except Exception:
        return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the probe
def _count_tokens(kwargs: dict[str, Any], pad_token_id: int | None) -> tuple[int, int]:
    ids = kwargs.get("input_ids")
    if ids is None:
        return 0, 0
    padded = int(ids.numel())
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return int(mask.sum()), padded
    pos = kwargs.get("position_ids")
    if pos is not None and pad_token_id is not None and ids.shape[0] == 1:
        # Packed row: every token is real except a trailing all-padding segment (PackedCollator's
        # pad_to_multiple_of). Counting `ids != pad` instead would miss every EOS when pad == eos.
        p = pos.reshape(-1).tolist()
        start = max(i for i, v in enumerate(p) if i == 0 or v != p[i - 1] + 1)
        tail = ids.reshape(-1)[start:]
        if start > 0 and bool((tail == pad_token_id).all()):
            return padded - len(tail), padded
    return padded, padded


def _count_learned(kwargs: dict[str, Any]) -> int:
    """Positions whose next token is learned (where the loss looks at the logits)."""
    shift = kwargs.get("shift_labels")
    if shift is not None:
        return int((shift != -100).sum())
    labels = kwargs.get("labels")
    return int((labels[..., 1:] != -100).sum()) if labels is not None else 0


def _batch_shape(kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """(rows, padded length) of a forward's input_ids."""
    ids = kwargs.get("input_ids")
    if ids is None:
        return None
    return (int(ids.shape[0]), int(ids.shape[-1])) if ids.dim() == 2 else (1, int(ids.numel()))


class ThroughputProbe(TrainerCallback):
    """Per-step timing and token counts of a Trainer run (see the module docstring)."""

    def __init__(self, pad_token_id: int | None = None, cuda: bool = False):
        self.pad_token_id = pad_token_id
        self.cuda = cuda
        self.steps: list[dict[str, float]] = []
        self._tokens = [0, 0]
        self._learned = 0
        self._t_begin = 0.0
        self._last_end: float | None = None
        self._hook = None
        self.max_batch: tuple[int, int] | None = None
        """Largest (rows, padded length) of any training forward, warm-up included: with
        length-grouped batches the first (longest) batch, which sets max_memory_allocated."""
        self.rss_train_start: int | None = None
        self.model_params: int | None = None
        self.base_params: int | None = None
        self.losses: list[tuple[int, float]] = []

    def _note_shape(self, shape: tuple[int, int] | None) -> None:
        # Largest by tokens (what activations scale with); at equal tokens the longer rows.
        def size(s: tuple[int, int]) -> tuple[int, int]:
            return s[0] * s[1], s[1]

        if shape is not None and (self.max_batch is None or size(shape) > size(self.max_batch)):
            self.max_batch = shape

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, model=None, **kw):
        def pre_hook(module, a, kwargs):
            if module.training:
                r, p = _count_tokens(kwargs, self.pad_token_id)
                self._tokens[0] += r
                self._tokens[1] += p
                self._learned += _count_learned(kwargs)
                self._note_shape(_batch_shape(kwargs))

        self._hook = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        self.model_params = sum(p.numel() for p in model.parameters())
        self.base_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.rss_train_start = rss_bytes()
        reset_peak_rss()
        self._sync()
        self._last_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        self._sync()
        self._t_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self._sync()
        now = time.perf_counter()
        self.steps.append(
            {
                "compute_s": now - self._t_begin,
                "wall_s": now - (self._last_end or self._t_begin),
                "real_tokens": self._tokens[0],
                "padded_tokens": self._tokens[1],
                "learned_tokens": self._learned,
            }
        )
        self._tokens = [0, 0]
        self._learned = 0
        self._last_end = now

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))

    def on_train_end(self, args, state, control, **kw):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def summary(self, warmup: int = 1, last: int | None = None) -> dict[str, Any]:
        """Throughput over the steps after `warmup` (first steps pay one-off costs) up to `last`
        (steps after it were run for something else, e.g. under a profiler)."""
        steps = self.steps[warmup:last] if len(self.steps) > warmup else self.steps[:last]
        if not steps:
            return {"measured_steps": 0}
        wall = sum(s["wall_s"] for s in steps)
        comp = sum(s["compute_s"] for s in steps)
        real = sum(s["real_tokens"] for s in steps)
        padded = sum(s["padded_tokens"] for s in steps)
        out = {
            "measured_steps": len(steps),
            "warmup_steps": min(warmup, len(self.steps)),
            "step_time_s": wall / len(steps),
            "step_time_median_s": statistics.median(s["wall_s"] for s in steps),
            "compute_step_time_s": comp / len(steps),
            "real_tokens": real,
            "padded_tokens": padded,
            "real_tokens_per_s": real / wall if wall else None,
            "padded_tokens_per_s": padded / wall if wall else None,
            "compute_real_tokens_per_s": real / comp if comp else None,
            "padding_fraction": 1 - real / padded if padded else None,
            "learned_tokens_per_step": sum(s["learned_tokens"] for s in steps) / len(steps),
            "real_tokens_per_step": real / len(steps),
            "padded_tokens_per_step": padded / len(steps),
            "per_step": [{k: round(v, 4) for k, v in s.items()} for s in self.steps],
            "losses": self.losses,
            "base_params": self.base_params,
            "max_batch_shape": list(self.max_batch) if self.max_batch else None,
        }
        if self.cuda:
            out["peak_gpu_mem_bytes"] = torch.cuda.max_memory_allocated()
        else:
            out["peak_rss_bytes"] = peak_rss_bytes()
            out["rss_train_start_bytes"] = self.rss_train_start
            if out["peak_rss_bytes"] and self.rss_train_start:
                out["rss_growth_in_training_bytes"] = out["peak_rss_bytes"] - self.rss_train_start
        return out


# --------------------------------------------------------------------------- run info
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "datasets",
        "bitsandbytes",
        "liger-kernel",
        "trl",
        "gguf",
        "lora-finetune",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = p.name
        info["gpu_mem_gib"] = round(p.total_memory / GiB, 1)
        info["cuda"] = torch.version.cuda
    return info


def run_info() -> dict[str, Any]:
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": versions(),
    }


def matmul_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """Median rate of an n^3 matrix product with torch's current threads (the MFU denominator)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def fmt(x: float | None, nd: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{nd}f}"
