"""Training runs started from the page, each in its own process: `python -m lora_finetune train
--config FILE [--resume]`, the very command a terminal user runs.

Why a process: the page stays responsive, a closed browser tab loses nothing (the run goes on and
the page shows it again when reopened), and Stop is SIGINT to that process, the same clean
"checkpoint, then stop" as Ctrl-C. This module never imports `training/`; it reads what the run
writes: its log lines (`step 3/10  loss 1.23 ... ~12s left`, `step 4/10  eval loss 1.5`), and
metrics.json when it is done.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import build_config
from ..errors import ConfigError
from .i18n import bilingual

_STEP = re.compile(r"step (\d+)/(\d+)\s+loss ([-+0-9.eE]+|nan|inf)")
_EVAL = re.compile(r"step (\d+)/(\d+)\s+eval loss ([-+0-9.eE]+|nan|inf)")
_ETA = re.compile(r"~(\S+) left")
_REWARDS = re.compile(r"reward acc ([0-9.]+)(?:\s+margin ([-+0-9.eE]+))?")


class NothingRunningError(ConfigError):
    """Stop pressed while no run of that name is going."""


@dataclass
class Progress:
    state: str
    """idle | starting | running | finished | stopped | failed"""
    step: int = 0
    total: int = 0
    eta: str = ""
    train: list[tuple[int, float]] = field(default_factory=list)
    eval: list[tuple[int, float]] = field(default_factory=list)
    rewards: dict[str, list[tuple[int, float, float | None]]] = field(default_factory=dict)
    """Preference methods: (step, reward accuracy, margin) for "train" and "eval"."""
    log_tail: str = ""
    message: str = ""
    """The run's own closing words: its error, or the `Done` summary."""
    metrics: dict[str, Any] | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


@dataclass
class Job:
    name: str
    output_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen
    resume: bool
    started: float = field(default_factory=time.time)
    stop_requested: bool = False
    overlapping: bool = False
    """Started while another run of the same name was going: the output folder's lock will most
    likely refuse it, and the page keeps showing the run that holds the folder."""

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def parse_log(text: str) -> Progress:
    """Steps, losses and ETA from a training log (the lines training/callbacks.py ProgressLog writes)."""
    prog = Progress(state="running")
    for line in text.splitlines():
        m = _STEP.search(line)
        if m:
            prog.step, prog.total = int(m[1]), int(m[2])
            prog.train.append((int(m[1]), float(m[3])))
            eta = _ETA.search(line)
            prog.eta = eta[1] if eta else prog.eta
            _rewards(prog, "train", int(m[1]), line)
            continue
        m = _EVAL.search(line)
        if m:
            prog.step, prog.total = max(prog.step, int(m[1])), int(m[2])
            prog.eval.append((int(m[1]), float(m[3])))
            _rewards(prog, "eval", int(m[1]), line)
    return prog


def _rewards(prog: Progress, split: str, step: int, line: str) -> None:
    m = _REWARDS.search(line)
    if m:
        prog.rewards.setdefault(split, []).append((step, float(m[1]), float(m[2]) if m[2] else None))


def closing_message(text: str) -> str:
    """The CLI's last words: from the last `error:` line to the end, or the `Done` summary."""
    lines = text.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return "\n".join(lines[i:])[len("error: ") :]
        if lines[i].startswith("Done"):
            return "\n".join(lines[i:])
    return "\n".join(lines[-3:]) if lines else ""


def _package_env() -> dict[str, str]:
    """The child imports this very package (also from a source checkout that is not installed)."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding lora_finetune/
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class JobManager:
    """The runs this page started, by run name (several attempts per name: a resume, or a second
    Start that the output folder's lock refuses)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        (self.state_dir / "configs").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, list[Job]] = {}
        self._lock = threading.Lock()
        atexit.register(self.shutdown)

    # ------------------------------------------------------------------ start / stop
    def start(self, name: str, values: dict[str, Any], resume: bool = False) -> Job:
        """Check the settings here (the same `build_config` as the CLI, every problem at once),
        write them as the run's config file, and start `lora-finetune train` on it."""
        values = {k: v for k, v in values.items() if v is not None and v != ""}
        cfg = build_config(values, source="the settings")
        with self._lock:
            attempt = len(self.jobs.get(name, [])) + 1
            config_path = self.state_dir / "configs" / f"{name}.yaml"
            clean = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
            config_path.write_text(yaml.safe_dump(clean, allow_unicode=True, sort_keys=False), encoding="utf-8")
            log_path = self.state_dir / "logs" / f"{name}.{attempt}.log"
            cmd = [sys.executable, "-m", "lora_finetune", "train", "--config", str(config_path)]
            if resume:
                cmd.append("--resume")
            with open(log_path, "w", encoding="utf-8") as log:
                log.write(f"$ lora-finetune train --config {config_path}{' --resume' if resume else ''}\n")
                log.flush()
                # A session of its own: Ctrl-C in the server's terminal does not reach the run
                # (shutdown() stops it once, cleanly); Stop on the page is its only SIGINT.
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=_package_env(),
                    cwd=str(self.state_dir.parent),
                    start_new_session=True,
                )
            job = Job(name, Path(cfg.output_dir), config_path, log_path, proc, resume)
            job.overlapping = any(j.running for j in self.jobs.get(name, []))
            self.jobs.setdefault(name, []).append(job)
            return job

    def running(self, name: str) -> Job | None:
        return next((j for j in reversed(self.jobs.get(name, [])) if j.running), None)

    def latest(self, name: str) -> Job | None:
        return (self.jobs.get(name) or [None])[-1]

    def stop(self, name: str) -> Job:
        """SIGINT to the run: it saves a checkpoint at the end of the step and exits."""
        job = self.running(name)
        if job is None:
            raise bilingual(
                NothingRunningError(
                    f"Nothing is training under the name {name!r}, so there is nothing to stop. "
                    "Start a run (or pick the name of a running one) first."
                ),
                f"没有名为 {name!r} 的训练在运行，无需停止。请先开始训练（或填写正在运行的名称）。",
            )
        if not job.stop_requested:  # a second SIGINT would mean "quit without saving"
            job.stop_requested = True
            job.process.send_signal(signal.SIGINT)
        return job

    def shutdown(self, timeout: float = 60.0) -> None:
        """Server exit: every run still going is stopped as by Stop, and given time to save."""
        live = [j for jobs in self.jobs.values() for j in jobs if j.running]
        for j in live:
            if not j.stop_requested:
                j.stop_requested = True
                j.process.send_signal(signal.SIGINT)
        deadline = time.time() + timeout
        for j in live:
            try:
                j.process.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                j.process.kill()

    def names(self) -> list[str]:
        return sorted(self.jobs)

    def latest_name(self) -> str | None:
        """The run started last (what a reopened tab shows first)."""
        every = [j for jobs in self.jobs.values() for j in jobs]
        return max(every, key=lambda j: j.started).name if every else None

    # ------------------------------------------------------------------ progress
    def progress(self, name: str) -> Progress:
        """What the page shows for `name`: the running attempt (else the latest), with the loss
        curve of every attempt of that name (a resumed run continues the earlier curve)."""
        jobs = self.jobs.get(name) or []
        if not jobs:
            return Progress(state="idle")
        main = [j for j in jobs if not j.overlapping] or jobs
        job = self.running(name) or main[-1]
        latest = jobs[-1]
        text = job.read_log()
        prog = parse_log(text)
        train: dict[int, float] = {}
        evals: dict[int, float] = {}
        rewards: dict[str, dict[int, tuple]] = {}
        for j in jobs:
            p = parse_log(j.read_log())
            train.update(p.train)
            evals.update(p.eval)
            for split, points in p.rewards.items():
                rewards.setdefault(split, {}).update({pt[0]: pt for pt in points})
        prog.train, prog.eval = sorted(train.items()), sorted(evals.items())
        prog.rewards = {split: sorted(points.values()) for split, points in rewards.items()}
        prog.log_tail = "\n".join(text.splitlines()[-40:])
        if job.running:
            prog.state = "running" if prog.step else "starting"
            if job.stop_requested:
                prog.state = "stopping"
        else:
            rc = job.process.returncode
            prog.state = "finished" if rc == 0 else ("stopped" if job.stop_requested else "failed")
            prog.message = closing_message(text)
            if rc == 0:
                metrics = job.output_dir / "metrics.json"
                if metrics.is_file():
                    prog.metrics = json.loads(metrics.read_text(encoding="utf-8"))
                    prog.step = prog.total = int(prog.metrics.get("steps") or prog.total)
        if job.running and latest is not job and latest.overlapping and not latest.running:
            # a second Start while this run holds the folder: the lock's refusal, in its words
            prog.message = closing_message(latest.read_log())
        return prog


__all__ = ["Job", "JobManager", "NothingRunningError", "Progress", "closing_message", "parse_log"]
