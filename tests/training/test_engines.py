"""training/engines.py: the engine is read from the launcher's environment, the combinations that
would train something else than asked are refused before any weight loads, and the Trainer is
told the device settings each engine needs on a CPU."""

from __future__ import annotations

import json

import pytest

from lora_finetune.errors import ConfigError
from lora_finetune.training.engines import (
    Engine,
    engine_problems,
    is_peer_failure,
    launched_engine,
    trainer_device_args,
)

from helpers import tiny_config


def test_no_launcher_is_one_process():
    assert launched_engine({}) == Engine("single")
    assert launched_engine({}).describe() == "engine: one process"


def test_torchrun_is_ddp_and_counts_nodes():
    e = launched_engine({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "3"})
    assert (e.name, e.world_size, e.nodes) == ("ddp", 4, 2)
    assert e.describe() == "engine: DDP, 4 processes on 2 nodes"
    assert launched_engine({"WORLD_SIZE": "2"}).nodes == 1  # --standalone: no LOCAL_WORLD_SIZE given


def test_accelerate_fsdp_and_its_version():
    e = launched_engine({"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})
    assert (e.name, e.fsdp_version, e.shards_weights) == ("fsdp", 2, True)
    assert e.describe() == "engine: FSDP2, 2 processes"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_stage_comes_from_its_json_file(tmp_path, stage):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    e = launched_engine(
        {"WORLD_SIZE": "2", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(cfg)}
    )
    assert (e.name, e.zero_stage, e.shards_weights) == ("deepspeed", stage, stage == 3)
    assert e.describe() == f"engine: DeepSpeed ZeRO-{stage}, 2 processes"


def test_deepspeed_without_a_readable_file_is_still_deepspeed(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    for env in (
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(bad)},
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(tmp_path / "absent.json")},
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
    ):
        e = launched_engine(env)
        assert e.name == "deepspeed"
    assert launched_engine({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}).zero_stage == 3
    assert launched_engine({"ACCELERATE_USE_DEEPSPEED": "true"}).describe() == "engine: DeepSpeed, 1 process"


def test_fsdp_on_a_cpu_is_refused_with_what_to_use_instead():
    (problem,) = engine_problems(Engine("fsdp", 2, fsdp_version=2), on_gpu=False, quantization="none")
    assert "FSDP needs GPUs" in problem and "plain DDP" in problem and "torchrun" in problem
    assert engine_problems(Engine("fsdp", 2, fsdp_version=2), on_gpu=True, quantization="none") == []


@pytest.mark.parametrize(
    "engine",
    [Engine("fsdp", 2, fsdp_version=2), Engine("deepspeed", 2, zero_stage=3)],
    ids=["fsdp", "zero3"],
)
def test_sharding_engines_refuse_a_quantized_base(engine, deepspeed_installed):
    problems = engine_problems(engine, on_gpu=True, quantization="4bit")
    assert len(problems) == 1 and "quantization: 4bit" in problems[0] and "DDP" in problems[0]


@pytest.fixture
def deepspeed_installed(monkeypatch):
    """engine_problems looks DeepSpeed up; .venv does not hold it (tests/training/test_deepspeed.py
    runs it from a folder of its own)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a)
    )


def test_ddp_and_zero2_take_a_quantized_base(deepspeed_installed):
    assert engine_problems(Engine("ddp", 2), on_gpu=True, quantization="4bit") == []
    assert engine_problems(Engine("deepspeed", 2, zero_stage=2), on_gpu=True, quantization="8bit") == []
    assert engine_problems(Engine("deepspeed", 2, zero_stage=2), on_gpu=False, quantization="none") == []


def test_deepspeed_not_installed_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    (problem,) = engine_problems(Engine("deepspeed", 2, zero_stage=2), on_gpu=True, quantization="none")
    assert "pip install deepspeed" in problem


def test_every_problem_is_reported_at_once(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    problems = engine_problems(Engine("deepspeed", 2, zero_stage=3), on_gpu=False, quantization="4bit")
    assert len(problems) == 2


def test_device_args_per_engine():
    # DDP on a CPU: accelerate forms the gloo group only when told it runs on a CPU.
    assert trainer_device_args(Engine("ddp", 2), on_gpu=False) == {"use_cpu": True}
    # DeepSpeed's CPU accelerator: use_cpu would drop DeepSpeed; gloo makes transformers count 2.
    assert trainer_device_args(Engine("deepspeed", 2, zero_stage=2), on_gpu=False) == {
        "use_cpu": False,
        "ddp_backend": "gloo",
    }
    assert trainer_device_args(Engine("single"), on_gpu=False) == {"use_cpu": False}
    assert trainer_device_args(Engine("ddp", 2), on_gpu=True) == {"use_cpu": False}


def test_peer_failures_are_recognised_only_with_peers():
    lost = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:32912: Connection reset by peer")
    assert is_peer_failure(lost, Engine("ddp", 2))
    assert not is_peer_failure(lost, Engine("single"))
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), Engine("ddp", 2))
    # NCCL's (and gloo's collective) errors come as torch's DistBackendError, whatever their text
    import torch.distributed as dist

    assert is_peer_failure(dist.DistBackendError("NCCL communicator was aborted"), Engine("ddp", 2))


def test_train_refuses_fsdp_on_a_cpu_before_loading_anything(tiny_qwen3, tmp_path, monkeypatch):
    """What `accelerate launch --config_file configs/accelerate_fsdp.yaml` sets, on this CPU."""
    from lora_finetune.training import train

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ConfigError) as e:
        train(tiny_config(tiny_qwen3, tmp_path / "out"))
    assert "FSDP needs GPUs" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no folder, no partial work, no lock file left


def test_the_plan_says_its_estimate_errs_high_when_weights_are_sharded(tiny_qwen3, monkeypatch, caplog):
    import logging

    import torch

    from lora_finetune.training.planning import plan_memory

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with caplog.at_level(logging.INFO, logger="lora_finetune.training.planning"):
        plan = plan_memory(
            tiny_config(tiny_qwen3, "unused", memory_budget="100GB"), str(tiny_qwen3), ["q_proj"], 32, torch.float32
        )
    assert plan.changes == {}
    assert "DeepSpeed ZeRO-3 shards the weights, so it errs high" in caplog.text


def test_a_deepspeed_file_that_is_not_there_or_not_json_is_named(tmp_path, monkeypatch, deepspeed_installed):
    """accelerate's configs name the JSON file relative to where the command runs; from another
    folder DeepSpeed would fail deep inside transformers ("Expected a string path to an existing
    deepspeed config")."""
    monkeypatch.chdir(tmp_path)
    absent = launched_engine(
        {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/ds.json"}
    )
    (problem,) = engine_problems(absent, on_gpu=True, quantization="none")
    assert "configs/ds.json" in problem and f"relative to the current folder {tmp_path}" in problem
    assert "does not exist" in problem and "absolute path" in problem

    bad = tmp_path / "ds.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 3,}\n}\n')
    broken = launched_engine({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(bad)})
    (problem,) = engine_problems(broken, on_gpu=True, quantization="none")
    assert f"{bad}, line 2" in problem and "Fix the JSON" in problem

    (tmp_path / "folder.json").mkdir()
    folder = launched_engine({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "folder.json"})
    assert "is a folder" in engine_problems(folder, on_gpu=True, quantization="none")[0]


def test_the_shipped_deepspeed_files_read_cleanly():
    from launching import CONFIGS

    for stage in (2, 3):
        path = str(CONFIGS / f"deepspeed_zero{stage}.json")
        engine = launched_engine({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": path})
        assert engine.zero_stage == stage
