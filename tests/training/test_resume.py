"""Resume is honest and exact: the checkpoint's recipe is compared with the one asked for, and a
run killed (SIGKILL) at any save point resumes to the same adapter, bit for bit, on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lora_finetune.errors import ConfigError
from lora_finetune.training import train
from lora_finetune.training.callbacks import RECIPE, last_complete_checkpoint

from helpers import tiny_config

SRC = Path(__file__).resolve().parents[2] / "src"
TESTS = Path(__file__).resolve().parents[1]

# 18 training samples, batch 2, gradient accumulation 2: 5 optimizer steps per epoch (the last
# with one micro-batch), so 12 steps span 3 epochs and the save points 2..10 fall at the start,
# middle and end of epochs. Dropout makes the RNG state matter; length grouping reshuffles.
SETTINGS = dict(steps=12, save_steps=2, eval_steps=100, dropout=0.1, gradient_accumulation_steps=2, logging_steps=1)

KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{src!r}, {tests!r}]
    from transformers import TrainerCallback
    from helpers import tiny_config
    from lora_finetune.training import train

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)  # after the checkpoint and its COMPLETE marker

    train(tiny_config({model!r}, {out!r}, **{settings!r}), callbacks=[Kill()])
""")


def _kill_at(model: Path, out: Path, step: int) -> subprocess.CompletedProcess:
    code = KILLER.format(
        src=str(SRC), tests=str(TESTS), kill_at=step, model=str(model), out=str(out), settings=SETTINGS
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def _losses(folder: Path, after: int) -> list[tuple[int, float]]:
    history = json.loads((folder / "metrics.json").read_text())["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h and h["step"] > after]


@pytest.mark.slow  # five killed subprocesses and five resumed runs (~1 min on 2 cores)
def test_sigkill_at_every_save_point_resumes_bit_for_bit(tiny_qwen3, tmp_path):
    ref = train(tiny_config(tiny_qwen3, tmp_path / "ref", **SETTINGS))
    expected = load_file(str(ref.output_dir / "adapter_model.safetensors"))
    for step in (2, 4, 6, 8, 10):
        out = tmp_path / f"run{step}"
        proc = _kill_at(tiny_qwen3, out, step)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        ckpt = last_complete_checkpoint(tmp_path / f".run{step}.partial" / "checkpoints")
        assert ckpt is not None and ckpt.name == f"checkpoint-{step}"
        resumed = train(tiny_config(tiny_qwen3, out, resume="auto", **SETTINGS))
        got = load_file(str(resumed.output_dir / "adapter_model.safetensors"))
        for name in expected:
            assert torch.equal(expected[name], got[name]), f"kill at step {step}: {name} differs"
        assert _losses(resumed.output_dir, step) == _losses(ref.output_dir, step), f"kill at step {step}"


class _Stop(Exception):
    pass


def _interrupted(model: Path, out: Path, **kw) -> Path:
    """A run that dies right after its first checkpoint (in-process), leaving it resumable."""
    from transformers import TrainerCallback

    class Die(TrainerCallback):
        def on_save(self, args, state, control, **k):
            raise _Stop

    with pytest.raises(_Stop):
        train(tiny_config(model, out, steps=4, save_steps=2, **kw), callbacks=[Die()])
    ckpt = last_complete_checkpoint(out.parent / f".{out.name}.partial" / "checkpoints")
    assert ckpt is not None and (ckpt / RECIPE).is_file()
    return ckpt


def test_resume_with_settings_that_change_results_is_refused(tiny_qwen3, tmp_path):
    out = tmp_path / "run"
    _interrupted(tiny_qwen3, out)
    with pytest.raises(ConfigError) as e:
        train(tiny_config(tiny_qwen3, out, steps=4, save_steps=2, resume="auto", learning_rate=2e-3, r=8, seed=7))
    msg = str(e.value)
    assert "learning_rate: 0.001 in the checkpoint, 0.002 now" in msg
    assert "r: 4 in the checkpoint, 8 now" in msg and "seed: 42 in the checkpoint, 7 now" in msg
    assert "recipe.yaml" in msg


def test_resume_with_changed_logging_is_allowed_and_recorded(tiny_qwen3, tmp_path):
    out = tmp_path / "run"
    _interrupted(tiny_qwen3, out)
    res = train(tiny_config(tiny_qwen3, out, steps=4, save_steps=2, resume="auto", logging_steps=2))
    assert "changed on resume: logging_steps 1 -> 2" in res.resolved.notes
    record = yaml.safe_load((out / "run_config.yaml").read_text())
    assert record["logging_steps"] == 2  # the record says what was used
    assert "resumed from checkpoint-2" in record["resolved"]["notes"]


def test_resume_with_changed_data_is_refused(tiny_qwen3, tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": f"问题{i}", "output": f"答案{i}"} for i in range(12)]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    out = tmp_path / "run"
    _interrupted(tiny_qwen3, out, data_path=str(data))
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows[::-1]))
    with pytest.raises(ConfigError, match="training data changed since"):
        train(tiny_config(tiny_qwen3, out, steps=4, save_steps=2, resume="auto", data_path=str(data)))
