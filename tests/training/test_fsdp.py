"""FSDP on this CPU: what accelerate does with the shipped config, what we do about it, and what
torch itself can do.

accelerate (the route `configs/accelerate_fsdp.yaml` takes, and transformers' Trainer with it)
picks FSDP only for accelerator devices: without CUDA its state is MULTI_CPU and the FSDP
settings are dropped without a word, so the run would be DDP with every weight on every
process. `lora-finetune train` therefore refuses that launch with a message saying what to use
(training/engines.py). If a later accelerate routes FSDP on CPU, `test_accelerate_drops_fsdp_on_a_cpu`
fails: then lift the refusal and run the FSDP test through the Trainer here.

torch's own FSDP2 (`fully_shard`) does run on a CPU with gloo: the last test shards our LoRA
model (peft) per decoder layer over two processes, trains, gathers the full state dict the way
accelerate's FSDP2 save does (`get_model_state_dict(full_state_dict=True)`, which every rank
joins) and checks the adapter against one unsharded process. (~1 min on 2 cores.)
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from launching import accelerate_launch, launch_env, run, train_target, write_run_config

pytestmark = pytest.mark.slow  # multi-process


def test_fsdp_config_on_a_cpu_is_refused_before_any_work(tiny_qwen3, tmp_path):
    run_yaml = write_run_config(tmp_path, tiny_qwen3)
    proc = accelerate_launch("accelerate_fsdp.yaml", 2, train_target(run_yaml, tmp_path / "out"), launch_env())
    assert proc.returncode != 0
    assert "error: This launch cannot train as asked" in proc.stderr
    assert "FSDP needs GPUs" in proc.stderr and "torchrun --nproc_per_node N" in proc.stderr
    # a message, not our traceback (accelerate's launcher prints its own for the failed child)
    assert "failed unexpectedly" not in proc.stderr and "lora_finetune/training" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]  # no folder, lock or partial work


PROBE_ACCELERATE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from accelerate import Accelerator
    # What transformers' Trainer builds for DDP on a CPU (use_cpu), under the FSDP launch's variables.
    # (A file per rank: the two processes' prints interleave on a shared stdout.)
    kind = Accelerator(cpu=True).distributed_type.value
    Path(sys.argv[1], "rank" + os.environ["RANK"]).write_text(kind)
""")


def test_accelerate_drops_fsdp_on_a_cpu(tmp_path):
    """The behaviour our refusal stands on, pinned: accelerate's own answer under the variables
    its launcher sets from configs/accelerate_fsdp.yaml."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE_ACCELERATE)
    env = launch_env(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = run([*cmd, str(script), str(tmp_path)], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kinds = [(tmp_path / f"rank{r}").read_text() for r in (0, 1)]
    assert kinds == ["MULTI_CPU", "MULTI_CPU"], (
        "accelerate no longer turns FSDP into MULTI_CPU on a CPU: lift the refusal in "
        f"training/engines.py and test FSDP through the Trainer here. ({kinds})"
    )


SHARDED = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model_dir, out = sys.argv[1], sys.argv[2]
    sharded = "WORLD_SIZE" in os.environ
    if sharded:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:  # what TRANSFORMER_BASED_WRAP shards
            fully_shard(layer)
        fully_shard(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, 400, (2, 24), generator=g) for _ in range(3)]
    losses = []
    for batch in batches:
        mine = batch[rank::world]  # each process its half of the global batch of 2
        loss = model(input_ids=mine, labels=mine).loss  # same length rows: mean of means = mean
        loss.backward()
        opt.step()
        opt.zero_grad()
        seen = loss.detach().clone()
        if sharded:
            dist.all_reduce(seen)
            seen /= world
        losses.append(seen.item())
    state = None
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # every rank joins the gather; rank 0 gets the full tensors
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    adapter = get_peft_model_state_dict(model, state_dict=state)
    if rank == 0:
        torch.save({"losses": losses, "adapter": adapter, "dtensor": type(next(model.parameters())).__name__}, out)
    if sharded:
        dist.destroy_process_group()
""")


def test_torch_fsdp2_shards_our_lora_model_on_a_cpu(tiny_qwen3, tmp_path):
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    env = launch_env()
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    proc = run([sys.executable, str(script), str(tiny_qwen3), str(one)], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = run([*cmd, str(script), str(tiny_qwen3), str(two)], env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = torch.load(one), torch.load(two)
    assert b["dtensor"] == "DTensor" and a["dtensor"] == "Parameter"  # sharded, and not
    assert len(b["losses"]) == 3
    for x, y in zip(a["losses"], b["losses"]):
        assert abs(x - y) <= 1e-5 * abs(x), (a["losses"], b["losses"])
    assert sorted(a["adapter"]) == sorted(b["adapter"]) and len(a["adapter"]) > 0
    for name, t in a["adapter"].items():
        assert b["adapter"][name].shape == t.shape, name  # full tensors, not shards
        assert (b["adapter"][name] - t).abs().max().item() <= 1e-5, name  # measured 1.7e-6
