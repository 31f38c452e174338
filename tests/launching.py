"""Helpers for the tests that run `lora-finetune train` under a launcher (torchrun, accelerate
launch) in several processes on this CPU, and compare what they trained with one process.

Every engine test trains the same run: the tiny model, 4 steps, batch 1 per process, no
dropout, random order (length grouping builds batches per process, so several processes would
see the samples in another order than one process with the same global batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DEEPSPEED_SITE = REPO / "build" / "deepspeed-site"

SETTINGS: dict[str, Any] = {
    "steps": 4,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "eval_fraction": 0.0,
    "r": 4,
    "alpha": 8,
    "dropout": 0.0,
    "save_steps": 2,
    "group_by_length": False,
    "batch_size": 1,
}


# `python killer.py run.yaml output_dir go_file`: trains; rank 0 pauses after its step-2 checkpoint
# (touching go_file.paused) until go_file exists; rank 1 SIGKILLs itself after its step-4 one.
KILL_RANK_1 = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from transformers import TrainerCallback
    from lora_finetune.cli import _setup_logging
    from lora_finetune.config import load_config
    from lora_finetune.training import train

    go = Path(sys.argv[3])

    class PauseThenKill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            rank = os.environ["RANK"]
            if state.global_step == 2 and rank == "0":
                Path(str(go) + ".paused").touch()  # the test checks the lock now
                deadline = time.time() + 120
                while not go.exists() and time.time() < deadline:
                    time.sleep(0.1)
            if state.global_step == 4 and rank == "1":
                os.kill(os.getpid(), signal.SIGKILL)  # after the checkpoint is complete

    _setup_logging()
    train(load_config(sys.argv[1], {"output_dir": sys.argv[2]}), callbacks=[PauseThenKill()])
""")


def write_run_config(folder: Path, model: Path, **overrides: Any) -> Path:
    """The run's settings as a YAML file (torchrun's parser would take `--r` for `--rdzv...`)."""
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump({"model_name": str(model), **SETTINGS, **overrides}))
    return path


def launch_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    # What a launcher set for this test process must not leak into the launched ones.
    for key in [k for k in env if k.startswith(("ACCELERATE_", "FSDP_"))] + ["RANK", "WORLD_SIZE", "LOCAL_RANK"]:
        env.pop(key, None)
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: int = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def accelerate_launch(config: str, nproc: int, target: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/<config> --num_processes N <target>`, as users run it."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config)]
    return run(cmd + ["--num_processes", str(nproc), *target], env)


def train_target(run_yaml: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "lora_finetune", "train", "--config", str(run_yaml), "--output_dir", str(out), *extra]


def train_one_process(model: Path, out: Path, **overrides: Any) -> Path:
    """The same run in this process, for the comparison (give it the launch's global batch)."""
    from lora_finetune.config import build_config
    from lora_finetune.training import train

    return train(build_config({"model_name": str(model), **SETTINGS, **overrides, "output_dir": str(out)})).output_dir


def losses(folder: Path) -> list[float]:
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def assert_same_curve(a: Path, b: Path, rel: float = 1e-4) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == SETTINGS["steps"], (la, lb)
    for x, y in zip(la, lb):
        assert abs(x - y) <= rel * abs(y), (la, lb)


def assert_same_adapter(a: Path, b: Path, atol: float = 1e-5) -> None:
    """Same tensors, same shapes (a ZeRO-3 / FSDP save without the gather writes empty ones), same
    values to float32 rounding; and the adapter did learn (B is not its zero init)."""
    ta, tb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].shape == tb[name].shape, name
        assert (ta[name] - tb[name]).abs().max().item() <= atol, name
    assert max(t.abs().max().item() for n, t in ta.items() if "lora_B" in n) > 1e-4


__all__ = [
    "KILL_RANK_1",
    "CONFIGS",
    "DEEPSPEED_SITE",
    "REPO",
    "SETTINGS",
    "accelerate_launch",
    "assert_same_adapter",
    "assert_same_curve",
    "launch_env",
    "losses",
    "run",
    "train_one_process",
    "train_target",
    "write_run_config",
]
