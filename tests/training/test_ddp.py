"""Multi-process training through a standard launcher: `torchrun` runs the same `lora-finetune
train` unchanged as CPU DDP (gloo), writes one adapter from rank 0, and follows the same loss
curve as one process with the same global batch.

(~25 s on 2 cores: two processes start, import torch and train 4 steps of the tiny model.)
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from launching import (
    CONFIGS,
    REPO,
    SETTINGS,
    launch_env,
    losses,
    run,
    train_one_process,
    train_target,
    write_run_config,
)

from lora_finetune.config import build_config

pytestmark = pytest.mark.slow  # two processes

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def test_torchrun_ddp_matches_single_process(tiny_qwen3, tmp_path):
    # Settings go in a config file: torchrun's own parser would take `--r` for `--rdzv...`.
    cfg_file = write_run_config(tmp_path, tiny_qwen3)
    out = tmp_path / "ddp"
    proc = run(TORCHRUN + train_target(cfg_file, out, "--batch_size", "1"), launch_env())
    assert proc.returncode == 0, proc.stderr[-3000:]

    # One finished folder, written once (rank 0), nothing left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "run.yaml"]
    assert (out / "adapter_model.safetensors").is_file() and (out / "manifest.json").is_file()
    ddp = json.loads((out / "metrics.json").read_text())
    assert ddp["steps"] == 4

    single = train_one_process(tiny_qwen3, tmp_path / "single", batch_size=2)
    # Same global batch (2 x 1 vs 1 x 2), same samples per step, token-averaged loss across
    # ranks: the curves agree to float32 rounding.
    assert len(losses(out)) == len(losses(single)) == 4
    for a, b in zip(losses(out), losses(single)):
        assert abs(a - b) <= 1e-4 * abs(b)
    assert ddp["real_tokens_seen"] == json.loads((single / "metrics.json").read_text())["real_tokens_seen"]


TWO_RUNS = """
import sys
import torch.distributed as dist
from lora_finetune.cli import main
from lora_finetune.config import load_config
from lora_finetune.training import train

config, first, second, third = sys.argv[1:]
train(load_config(config, {"output_dir": first}))
assert dist.is_initialized(), "train() ended a process group it is not the owner of"
train(load_config(config, {"output_dir": second}))
code = main(["train", "--config", config, "--output_dir", third])
assert code == 0 and not dist.is_initialized(), "the CLI left the process group for the C++ runtime to end"
"""


def test_the_group_outlives_a_run_and_ends_with_the_command(tiny_qwen3, tmp_path):
    """Under a launcher every rank leaves train() after rank 0's folder is written; the group
    stays for another run in the same processes (the Python API: torchrun's store cannot set one
    up twice), and `lora-finetune train`, which owns its process, ends it (left to the C++ runtime
    at exit, a ZeRO-3 rank aborted once in CI after a finished run)."""
    cfg_file = write_run_config(tmp_path, tiny_qwen3, batch_size=1)
    script = tmp_path / "two_runs.py"
    script.write_text(TWO_RUNS)
    runs = [tmp_path / name for name in ("first", "second", "third")]
    proc = run(TORCHRUN + [str(script), str(cfg_file), *map(str, runs)], launch_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(runs[0]) == losses(runs[1]) == losses(runs[2]) and len(losses(runs[0])) == 4


def test_launcher_configs_parse():
    """The accelerate / DeepSpeed files in configs/ are what accelerate and DeepSpeed read."""
    from accelerate.commands.config.config_args import load_config_from_file

    root = CONFIGS
    kinds = {p.name: load_config_from_file(str(p)).distributed_type.value for p in root.glob("accelerate_*.yaml")}
    assert kinds == {
        "accelerate_ddp.yaml": "MULTI_GPU",
        "accelerate_deepspeed_zero2.yaml": "DEEPSPEED",
        "accelerate_deepspeed_zero3.yaml": "DEEPSPEED",
        "accelerate_fsdp.yaml": "FSDP",
    }
    for stage in (2, 3):
        ds = json.loads((root / f"deepspeed_zero{stage}.json").read_text())
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled in by the trainer
        cfg = load_config_from_file(str(root / f"accelerate_deepspeed_zero{stage}.yaml"))
        assert (REPO / cfg.deepspeed_config["deepspeed_config_file"]).is_file()


def _plan(model, budget: str, **settings):
    """The plan one process makes for these settings (what every rank of the launch computes)."""
    from lora_finetune.models import load_tokenizer, meta_model, resolve_target_modules
    from lora_finetune.training.dataset import prepare_data
    from lora_finetune.training.planning import plan_memory

    cfg = build_config({"model_name": str(model), **settings, "memory_budget": budget, "output_dir": "unused"})
    targets = resolve_target_modules(cfg.target_modules, meta_model(str(model)), "qwen3")
    data = prepare_data(cfg, load_tokenizer(str(model), padding_side="right"), "qwen3")
    return plan_memory(cfg, str(model), targets, data.stats.longest, __import__("torch").float32)


def test_4bit_ddp_plans_one_layout_for_every_process(tiny_qwen3, tmp_path):
    """QLoRA under torchrun on this CPU (bitsandbytes' CPU path), with an explicit memory_budget,
    which is per process: each rank plans from the same settings and data, so all take the
    layout one process would, here the smallest (micro-batch 1 with accumulation 2 and
    checkpointing; ranks that differed would hang in their first all-reduce). The layout does
    not change what is learned: the curve is one process's with the same global batch."""
    settings = {**SETTINGS, "quantization": "4bit", "batch_size": 2}
    # A budget one byte under the checkpointed layout's estimate leaves only the split one.
    asked = _plan(tiny_qwen3, "100GB", **settings)
    checkpointed = _plan(tiny_qwen3, f"{(asked.estimate - 1) / 1024:.3f}KB", **settings)
    assert checkpointed.changes == {"gradient_checkpointing": True}
    budget = f"{(checkpointed.estimate - 1) / 1024:.3f}KB"
    split = _plan(tiny_qwen3, budget, **settings)
    assert split.changes == {"gradient_checkpointing": True, "batch_size": 1, "gradient_accumulation_steps": 2}

    cfg_file = write_run_config(tmp_path, tiny_qwen3, **settings, memory_budget=budget)
    out = tmp_path / "ddp"
    # glibc's malloc in both (the plan scales activations by the allocator's factor)
    proc = run(TORCHRUN + train_target(cfg_file, out), launch_env(LORA_FINETUNE_ALLOCATOR="system"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = yaml.safe_load((out / "run_config.yaml").read_text())
    assert record["resolved"]["quantization"] == "4bit"
    assert record["resolved"]["memory_plan"]["used"] == split.changes
    assert "engine: DDP, 2 processes" in record["resolved"]["notes"]

    single = train_one_process(tiny_qwen3, tmp_path / "one", quantization="4bit", batch_size=4)
    assert len(losses(out)) == len(losses(single)) == 4
    for a, b in zip(losses(out), losses(single)):
        assert abs(a - b) <= 1e-4 * abs(b), (losses(out), losses(single))
