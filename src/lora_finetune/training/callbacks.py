"""Trainer callbacks that keep a run safe: health checks, clean interrupts, complete checkpoints.

- `HealthCallback`: stops at the first non-finite loss or LoRA weight, before a bad state can be
  checkpointed, so the last checkpoint on disk is a good one.
- `InterruptCallback`: Ctrl-C (SIGINT) or SIGTERM (pre-emption) asks the Trainer to save a
  checkpoint at the end of the current step and stop, instead of dying mid-write.
- `CheckpointMarker`: writes `checkpoint-N/COMPLETE` after the Trainer has finished writing a
  checkpoint; resuming only trusts marked checkpoints, so a run killed mid-save (SIGKILL, a full
  disk) resumes from the previous, complete one.
"""

from __future__ import annotations

import logging
import math
import signal
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..run_record import RunRecord

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


class HealthCallback(TrainerCallback):
    """Stop at the first non-finite loss or LoRA weight, before a bad state is checkpointed.

    Every step, the LoRA weights' norms are computed in one fused call per device
    (`torch._foreach_norm`, what gradient clipping uses) and folded into a flag that stays on the
    device: no host sync. The flag is read -- one sync -- only where the state is about to be
    used: a log line, an evaluation, a checkpoint, an interrupt, the last step and the end of
    training. NaN/inf in the loss or the gradients reaches the weights within the same optimizer
    step, so no broken state is ever saved or evaluated. (The check used to read every LoRA tensor
    on the host every step: 392 syncs per step for Qwen3-0.6B, where a GPU step is host-bound.)
    A norm can overflow where the values do not (fp16 weights); a raised flag is confirmed
    tensor by tensor, which also names the first bad one."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self._groups: list[list[torch.Tensor]] = []
        self._names: list[tuple[str, torch.Tensor]] = []
        self._bad: torch.Tensor | None = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._names = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        by_device: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for _, p in self._names:
            by_device.setdefault((p.device, p.dtype), []).append(p.detach())
        self._groups = list(by_device.values())
        self._bad = None

    def _stop(self, control: Any, problem: str) -> None:
        if self.problem is None:
            self.problem = problem
        control.should_save = False  # never checkpoint a broken state
        control.should_evaluate = False
        control.should_training_stop = True

    def _accumulate(self) -> None:
        """Fold this step's weights into the device-side flag (no sync)."""
        foreach_norm = getattr(torch, "_foreach_norm", None)
        for group in self._groups:
            norms = foreach_norm(group) if foreach_norm is not None else [t.norm() for t in group]
            bad = ~torch.isfinite(torch.stack([n.float() for n in norms])).all()
            self._bad = bad if self._bad is None else self._bad.to(bad.device) | bad

    def check(self, control: Any, step: int) -> None:
        """Read the flag (one sync) and stop if a weight went non-finite since the last check."""
        if self._bad is None or self.problem is not None:
            return
        raised, self._bad = bool(self._bad), None
        if not raised:
            return
        for name, p in self._names:  # only on failure: find (and confirm) the first bad tensor
            if not bool(torch.isfinite(p.detach()).all()):
                self._stop(control, f"non-finite values in {name} by step {step}")
                return

    def on_step_end(self, args, state, control, **kw):
        self._accumulate()
        # DefaultFlowCallback (first in the list) has already decided this step's log/eval/save.
        if (
            control.should_log
            or control.should_evaluate
            or control.should_save
            or control.should_training_stop
            or state.global_step >= state.max_steps
        ):
            self.check(control, state.global_step)

    def on_train_end(self, args, state, control, **kw):
        self.check(control, state.global_step)  # the adapter is saved next: never a broken one

    def on_log(self, args, state, control, logs=None, **kw):
        # Under fp16 the loss scaler overflows now and then by design (grad_norm inf, the step
        # is skipped); the loss and the weights tell whether training really broke.
        keys = ("loss",) if args.fp16 else ("loss", "grad_norm")
        for key in keys:
            v = (logs or {}).get(key)
            if isinstance(v, (int, float)) and not math.isfinite(v):
                self._stop(control, f"{key} is {v} at step {state.global_step}")


class InterruptCallback(TrainerCallback):
    """Turn SIGINT/SIGTERM into "save a checkpoint now, then stop"."""

    def __init__(self, health: HealthCallback | None = None) -> None:
        self.signal: int | None = None
        self.health = health
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("interrupted: saving a checkpoint at the end of this step (Ctrl-C again to quit without saving)")

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def hold_sigterm(self) -> None:
        """From now on a SIGTERM is noted, not obeyed: for a process whose group is gone and which
        only has to say so. A launcher (torchrun, accelerate) SIGTERMs every process the moment it
        sees one die; restored to the default now, that signal would kill this one while its
        message (what happened, how to resume) is on the way out: seen in one run of three."""
        if signal.SIGTERM in self._previous:
            signal.signal(signal.SIGTERM, lambda *_: None)
            del self._previous[signal.SIGTERM]  # uninstall() leaves it held

    def on_step_end(self, args, state, control, **kw):
        if self.signal is not None:
            # never checkpoint a state the health check finds broken
            if self.health is not None:
                self.health.check(control, state.global_step)
            control.should_save = self.health is None or self.health.problem is None
            control.should_training_stop = True


class OverfitWarning(TrainerCallback):
    """Warn (once) when eval loss has risen for `rises` evaluations in a row while the train
    loss fell: the adapter is memorising the training data, and the last checkpoint is the
    worst one kept."""

    def __init__(self, rises: int = 2) -> None:
        self.rises = rises
        self.evals: list[tuple[int, float]] = []
        self.train: list[tuple[int, float]] = []
        self.warning: str | None = None

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if isinstance(logs.get("loss"), (int, float)):
            self.train.append((state.global_step, float(logs["loss"])))
        if isinstance(logs.get("eval_loss"), (int, float)):
            self.evals.append((state.global_step, float(logs["eval_loss"])))
            loader = kw.get("eval_dataloader")
            self._check(args, getattr(loader, "dataset", None))

    def _check(self, args: Any, eval_rows: Any = None) -> None:
        recent = [loss for _, loss in self.evals[-(self.rises + 1) :]]
        if self.warning or len(recent) < self.rises + 1 or any(b <= a for a, b in zip(recent, recent[1:])):
            return
        start = self.evals[-(self.rises + 1)][0]
        before = [loss for step, loss in self.train if step <= start]
        after = [loss for step, loss in self.train if step > start]
        if not before or not after or min(after) >= before[-1]:
            return
        from .dataset import too_small_to_choose_by

        small = too_small_to_choose_by(eval_rows) if eval_rows is not None else None
        rose = (
            f"eval loss rose {self.rises} evaluations in a row ({' -> '.join(f'{x:.3f}' for x in recent)}) "
            f"while the train loss fell to {after[-1]:.3g}"
        )
        if small:
            # Advice to keep "the best" checkpoint would be advice to pick one by chance.
            self.warning = (
                f"{rose}: the adapter may be memorising the training data, but {small} are too few to tell; "
                "hold out more data (eval_fraction) to judge it, or train fewer steps."
            )
            log.warning(self.warning)
            return
        self.warning = f"{rose}: the adapter is memorising the training data" + (
            "; the best checkpoint is the one kept. To stop sooner, set early_stopping_patience; or "
            "add data, or lower the learning rate."
            if args.load_best_model_at_end
            else "; the last checkpoint is not the best one. Train fewer steps, use "
            "load_best_model_at_end: true (with early_stopping_patience), add data, or lower the "
            "learning rate."
        )
        log.warning(self.warning)


class ProgressLog(TrainerCallback):
    """One line per logging step, numbers as numbers:

    step 20/60  loss 0.4121  lr 8.0e-04  grad 1.32  |  1.9 s/step, 52 tokens/s, ~1m16s left
    step 20/60  eval loss 3.2104
    step 20/60  loss 0.5012  lr 5.0e-05  grad 2.1  reward acc 0.75  margin 0.412  |  ...   (preference methods)
    """

    def __init__(self) -> None:
        self._t0: float | None = None
        self._step0 = 0
        self._ended = False

    def on_train_begin(self, args, state, control, **kw):
        import time

        self._t0, self._step0 = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        import time

        logs, total = logs or {}, state.max_steps
        if "loss" in logs:
            done = state.global_step - self._step0
            elapsed = time.perf_counter() - (self._t0 or time.perf_counter())
            pace = ""
            if done > 0 and elapsed > 0:
                left = (total - state.global_step) * elapsed / done
                pace = f"  |  {elapsed / done:.2f} s/step, ~{_duration(left)} left"
            grad = logs.get("grad_norm")
            log.info(
                "step %d/%d  loss %.4f  lr %.1e%s%s%s",
                state.global_step,
                total,
                logs["loss"],
                logs.get("learning_rate", 0.0),
                f"  grad {grad:.3g}" if isinstance(grad, (int, float)) else "",
                _rewards(logs, ""),
                pace,
            )
        if "eval_loss" in logs:
            if self._ended:
                log.info("eval loss of the adapter kept: %.4f%s", logs["eval_loss"], _rewards(logs, "eval_"))
            else:
                log.info(
                    "step %d/%d  eval loss %.4f%s", state.global_step, total, logs["eval_loss"], _rewards(logs, "eval_")
                )

    def on_train_end(self, args, state, control, **kw):
        self._ended = True  # the evaluation after this one is of the adapter that is saved


def _rewards(logs: dict[str, Any], prefix: str) -> str:
    """Preference methods: reward accuracy and margin (TRL's `rewards/accuracies`, `rewards/margins`)."""
    acc, margin = logs.get(f"{prefix}rewards/accuracies"), logs.get(f"{prefix}rewards/margins")
    if not isinstance(acc, (int, float)) and not isinstance(margin, (int, float)):
        return ""
    out = f"  reward acc {acc:.2f}" if isinstance(acc, (int, float)) else ""
    return out + (f"  margin {margin:.3f}" if isinstance(margin, (int, float)) else "")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


RECIPE = "recipe.yaml"
"""The run's recipe inside each checkpoint (run_config.yaml's format): `--resume` compares it."""


class CheckpointMarker(TrainerCallback):
    """After the Trainer has written a checkpoint: the recipe beside it, then `COMPLETE`."""

    def __init__(self, recipe: RunRecord | None = None) -> None:
        self.recipe = recipe

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                if self.recipe is not None:
                    self.recipe.save(ckpt / RECIPE)
                (ckpt / COMPLETE).write_text("ok\n")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` in `folder` that was completely written."""
    best: tuple[int, Path] | None = None
    for p in Path(folder).glob("checkpoint-*"):
        try:
            step = int(p.name.split("-")[-1])
        except ValueError:
            continue
        if (p / COMPLETE).is_file() and (best is None or step > best[0]):
            best = (step, p)
    return best[1] if best else None
