"""Memory planning: the layout that fits `memory_budget`, without changing what is learned."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lora_finetune.errors import ConfigError
from lora_finetune.tools.estimate import GiB
from lora_finetune.training import train
from lora_finetune.training.planning import budget_bytes, plan_memory

from helpers import tiny_config

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peaks(model, cfg, longest: int = 64):
    """Estimated peaks of: as asked, checkpointed, and each smaller micro-batch."""
    from lora_finetune.training.planning import _layouts

    out = []
    for layout in _layouts(cfg):
        try:
            plan = plan_memory(
                cfg.__class__(**{**cfg.__dict__, "memory_budget": "1000GB", **layout}),
                str(model),
                TARGETS,
                longest,
                torch.float32,
            )
        except ConfigError:
            plan = None
        out.append((layout, plan.estimate))
    return out


def test_the_cheapest_change_that_fits_is_taken(tiny_qwen3, tmp_path):
    cfg = tiny_config(tiny_qwen3, tmp_path / "x", batch_size=8, max_length=64)
    peaks = _peaks(tiny_qwen3, cfg)
    asked, checkpointed, *splits = [p for _, p in peaks]
    assert asked > checkpointed > splits[-1]
    # a budget between "as asked" and "checkpointed": checkpointing alone
    plan = plan_memory(
        tiny_config(
            tiny_qwen3,
            tmp_path / "x",
            batch_size=8,
            max_length=64,
            memory_budget=f"{(asked + checkpointed) / 2 / 2**20:.3f}MB",
        ),
        str(tiny_qwen3),
        TARGETS,
        64,
        torch.float32,
    )
    assert plan.changes == {"gradient_checkpointing": True} and plan.requested == {"gradient_checkpointing": False}
    # below that: a smaller micro-batch with more accumulation, the same effective batch
    budget = (checkpointed + splits[0]) / 2
    plan = plan_memory(
        tiny_config(tiny_qwen3, tmp_path / "x", batch_size=8, max_length=64, memory_budget=f"{budget / 2**20:.3f}MB"),
        str(tiny_qwen3),
        TARGETS,
        64,
        torch.float32,
    )
    assert plan.changes["batch_size"] * plan.changes["gradient_accumulation_steps"] == 8
    assert "same" in plan.note and plan.estimate <= budget
    # enough memory: as asked
    assert (
        plan_memory(
            tiny_config(tiny_qwen3, tmp_path / "x", memory_budget="1000GB"), str(tiny_qwen3), TARGETS, 64, torch.float32
        ).changes
        == {}
    )


def test_nothing_fits_stops_before_loading_with_the_smallest_estimate(tiny_qwen3, tmp_path):
    with pytest.raises(
        ConfigError, match=r"even batch_size 1 with gradient checkpointing is estimated at .*quantization: 4bit"
    ):
        train(tiny_config(tiny_qwen3, tmp_path / "run", memory_budget="1MB"))
    assert not (tmp_path / "run").exists()


def test_budget_specs():
    assert budget_bytes("none", False) is None and budget_bytes("16GB", False) == 16 * GiB
    auto = budget_bytes("auto", False)
    assert auto is None or auto > 0
    with pytest.raises(ConfigError, match="memory_budget"):
        tiny_config("x", "y", memory_budget="lots")


def test_micro_batches_give_the_same_adapter_and_the_plan_is_recorded(tiny_qwen3, tmp_path):
    """batch 4 vs 2 x 2 accumulation: same samples per step, loss normalised over the step's
    tokens; the adapters agree to float rounding. A planned run records both layouts, and its
    checkpoints keep the plan for --resume."""
    common = dict(steps=3, eval_fraction=0.0, dropout=0.0, learning_rate=1e-2, save_steps=1, eval_steps=100)
    whole = train(tiny_config(tiny_qwen3, tmp_path / "whole", batch_size=4, **common))
    split = train(tiny_config(tiny_qwen3, tmp_path / "split", batch_size=2, gradient_accumulation_steps=2, **common))
    a = load_file(str(whole.output_dir / "adapter_model.safetensors"))
    b = load_file(str(split.output_dir / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)

    # A budget that forces the split (estimated for the demo data's longest sample) is recorded.
    from lora_finetune.tools.datacheck import check_data, write_demo

    longest = check_data(write_demo(tmp_path / "demo.jsonl"), model=str(tiny_qwen3)).token_lengths["max"]
    peaks = _peaks(tiny_qwen3, tiny_config(tiny_qwen3, tmp_path / "p", batch_size=4), longest)
    budget = (peaks[1][1] + peaks[2][1]) / 2
    settings = dict(batch_size=4, memory_budget=f"{budget / 2**20:.3f}MB", **common)
    planned = train(tiny_config(tiny_qwen3, tmp_path / "planned", **settings))
    record = yaml.safe_load((planned.output_dir / "run_config.yaml").read_text())
    assert record["batch_size"] == 2 and record["gradient_accumulation_steps"] == 2
    assert record["resolved"]["memory_plan"]["requested"]["batch_size"] == 4
    assert any(n.startswith("memory plan:") for n in record["resolved"]["notes"])
    # metrics.json puts the plan's estimate next to the measured peak (RSS on a CPU)
    memory = planned.metrics["memory"]
    assert memory["budget_bytes"] == pytest.approx(budget, rel=1e-4)  # as given, in MB with 3 decimals
    assert 0 < memory["estimated_peak_bytes"] <= budget
    assert memory["measured_peak_bytes"] > 50 * 2**20 and memory["measured"].startswith("peak RSS")
    # on a CPU the estimate is compared with the peak above the RSS the process had when it planned
    above = memory["measured_peak_bytes"] - memory["rss_when_planned_bytes"]
    assert memory["measured_above_plan_bytes"] == above > 0
    assert memory["estimate_error"] == pytest.approx(memory["estimated_peak_bytes"] / above - 1, abs=1e-3)
    # a run as asked (budget auto: free RAM) records them too
    assert whole.metrics["memory"]["estimated_peak_bytes"] > 0 and whole.metrics["memory"]["measured_peak_bytes"] > 0


def test_resume_keeps_the_checkpoints_plan(tiny_qwen3, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    import lora_finetune.training.run as run

    class Stop(Exception):
        pass

    class Die(TrainerCallback):
        def on_save(self, args, state, control, **k):
            raise Stop

    settings = dict(steps=4, save_steps=2, eval_fraction=0.0, batch_size=4)
    monkeypatch.setattr(
        run,
        "plan_memory",
        lambda cfg, *a: run.MemoryPlan(
            1.0,
            0.5,
            {"gradient_checkpointing": True, "batch_size": 2, "gradient_accumulation_steps": 2},
            {"gradient_checkpointing": False, "batch_size": 4, "gradient_accumulation_steps": 1},
        ),
    )
    with pytest.raises(Stop):
        train(tiny_config(tiny_qwen3, tmp_path / "run", **settings), callbacks=[Die()])

    def no_planning(*a):
        raise AssertionError("a resumed run keeps its checkpoint's plan")

    monkeypatch.setattr(run, "plan_memory", no_planning)
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", resume="auto", **settings))
    record = yaml.safe_load((res.output_dir / "run_config.yaml").read_text())
    assert (record["batch_size"], record["gradient_accumulation_steps"]) == (2, 2) and res.metrics["steps"] == 4


def test_liger_is_the_first_lever_where_it_can_run(tiny_qwen3, tmp_path, monkeypatch):
    """`use_liger: auto` (measured slower, so off by default) is turned on by the plan when the
    logits do not fit -- before checkpointing -- where liger-kernel can run (a CUDA GPU; here
    said to be possible); `false` and a machine where it cannot run go straight to checkpointing."""
    import lora_finetune.training.planning as planning

    def plan(budget_mb: float, **kw):
        cfg = tiny_config(
            tiny_qwen3, tmp_path / "x", batch_size=8, max_length=64, memory_budget=f"{budget_mb:.3f}MB", **kw
        )
        return plan_memory(cfg, str(tiny_qwen3), TARGETS, 64, torch.float32)

    def estimate_mb(**layout):
        cfg = tiny_config(tiny_qwen3, tmp_path / "x", batch_size=8, max_length=64, memory_budget="1000GB", **layout)
        return plan_memory(cfg, str(tiny_qwen3), TARGETS, 64, torch.float32).estimate / 2**20

    asked, fused = estimate_mb(), estimate_mb(use_liger="true")
    checkpointed_fused = estimate_mb(use_liger="true", gradient_checkpointing=True)
    assert asked > fused > checkpointed_fused  # the tiny model's 400-entry vocabulary: small, but real
    monkeypatch.setattr(planning, "liger_usable", lambda model_type, on_gpu: None)
    p = plan((asked + fused) / 2)
    assert p.changes == {"use_liger": "true"} and p.requested == {"use_liger": "auto"}
    assert "to float rounding" in p.note
    p = plan((fused + checkpointed_fused) / 2)
    assert p.changes == {"gradient_checkpointing": True, "use_liger": "true"}
    assert plan((asked + fused) / 2, use_liger="false").changes == {"gradient_checkpointing": True}
    monkeypatch.setattr(planning, "liger_usable", lambda model_type, on_gpu: "there is no CUDA GPU")
    assert plan((asked + fused) / 2).changes == {"gradient_checkpointing": True}
