"""Where a training step's time goes: torch.profiler over a few optimizer steps of a Trainer run.

`ProfileSteps` is a TrainerCallback (passed through `lora_finetune.training.train(cfg,
callbacks=[...])`, nothing patched): it starts torch.profiler at the beginning of step `first`
and stops it after `count` steps, then keeps

- `text`: key_averages tables sorted by total CPU time (the op including what it calls), by self
  CPU time and, on a GPU, by self CUDA time (the kernels) -- bench_gpu writes it to OUT/prof.txt;
- `summary`: wall ms per step, the process's CPU time per step (all threads, from
  time.process_time), the CPU time inside profiled ops, the CUDA kernel time (summed as the
  profiler's own table footer sums it) and the share of wall time the GPU was busy. A step
  whose GPU is busy for a small share of its wall time is host-bound.

A profiler failure (CUPTI missing, an unsupported torch) is recorded in `error` and never stops
the run it observes.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback

TABLE_ROWS = 40
TOP = 8


def _is_kernel(evt: Any) -> bool:
    """A device event (a CUDA kernel or memcpy), not a CPU op or a user annotation."""
    from torch.autograd import DeviceType

    return evt.device_type == DeviceType.CUDA and not getattr(evt, "is_user_annotation", False)


def _self_device_us(evt: Any) -> float:
    us = getattr(evt, "self_device_time_total", None)  # torch >= 2.4; older releases say "cuda"
    return float(us if us is not None else getattr(evt, "self_cuda_time_total", 0))


def _top(events: list[Any], value, n: int = TOP) -> list[dict[str, Any]]:
    ranked = sorted(events, key=value, reverse=True)[:n]
    return [{"name": e.key[:120], "ms": round(value(e) / 1000, 3), "calls": e.count} for e in ranked if value(e) > 0]


def summarize(events: list[Any], steps: int, wall_s: float, process_cpu_s: float, cuda: bool) -> dict[str, Any]:
    """Totals of a profile over `steps` steps, and the same per step (see the module docstring)."""
    totals = {"wall_ms": 1000 * wall_s, "process_cpu_ms": 1000 * process_cpu_s}
    totals["op_cpu_ms"] = sum(e.self_cpu_time_total for e in events) / 1000
    kernels = [e for e in events if _is_kernel(e)]
    if cuda:
        totals["cuda_kernel_ms"] = sum(_self_device_us(e) for e in kernels) / 1000
    out: dict[str, Any] = {"profiled_steps": steps, "totals": totals}
    out.update({f"{k}_per_step": v / steps for k, v in totals.items()})
    out["top_self_cpu"] = _top(events, lambda e: e.self_cpu_time_total)
    if cuda:
        out["gpu_busy_fraction"] = totals["cuda_kernel_ms"] / totals["wall_ms"] if wall_s else None
        out["top_cuda_kernels"] = _top(kernels, _self_device_us)
    return out


def tables(events, cuda: bool) -> str:
    sorts = ["cpu_time_total", "self_cpu_time_total"] + (["self_cuda_time_total"] if cuda else [])
    return "\n\n".join(f"== sorted by {s} ==\n{events.table(sort_by=s, row_limit=TABLE_ROWS)}" for s in sorts)


class ProfileSteps(TrainerCallback):
    """torch.profiler over steps first .. first + count - 1 (0-based) of a Trainer run."""

    def __init__(self, first: int, count: int, cuda: bool) -> None:
        self.first, self.count, self.cuda = first, count, cuda
        self.summary: dict[str, Any] | None = None
        self.text = ""
        self.error: str | None = None
        self._prof = None
        self._done = 0
        self._t0 = self._cpu0 = 0.0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.first and self._prof is None and self.summary is None:
            self._start()

    def on_step_end(self, args, state, control, **kw):
        if self._prof is not None:
            self._done += 1
            if self._done >= self.count:
                self._stop()

    def on_train_end(self, args, state, control, **kw):
        if self._prof is not None:  # the run ended inside the window: keep what was profiled
            self._stop()

    def _start(self) -> None:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        try:
            self._sync()  # earlier steps' kernels are not this window's
            prof = torch.profiler.profile(activities=acts, record_shapes=False)
            prof.__enter__()
        except Exception as e:
            self.error = f"profiler did not start: {type(e).__name__}: {e}"[:300]
            return
        self._prof = prof
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def _stop(self) -> None:
        prof, self._prof = self._prof, None
        try:
            self._sync()
            wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._cpu0
            prof.__exit__(None, None, None)
            events = prof.key_averages()
            steps = max(1, self._done)
            self.summary = summarize(list(events), steps, wall, cpu, self.cuda)
            self.text = f"{steps} profiled steps, {1000 * wall / steps:.1f} ms wall per step\n\n" + tables(
                events, self.cuda
            )
        except Exception as e:
            self.error = f"profiler failed: {type(e).__name__}: {e}"[:300]
