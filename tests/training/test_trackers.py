"""Experiment trackers through Trainer's `report_to`: TensorBoard, offline."""

from __future__ import annotations

import pytest

from lora_finetune.errors import ConfigError
from lora_finetune.training import train

from helpers import tiny_config


def test_tensorboard_event_files_hold_loss_and_learning_rate(tiny_qwen3, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = train(tiny_config(tiny_qwen3, tmp_path / "run", steps=3, report_to="tensorboard"))
    [run_dir] = {p.parent for p in (res.output_dir / "runs").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "train/learning_rate" in tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert "runs/" in (res.output_dir / "manifest.json").read_text()  # part of the finished run


def test_unknown_or_missing_trackers_fail_before_any_work(tiny_qwen3, tmp_path):
    with pytest.raises(ConfigError, match="not a tracker transformers knows"):
        train(tiny_config(tiny_qwen3, tmp_path / "a", report_to="tensorbored"))
    with pytest.raises(ConfigError, match="pip install"):
        train(tiny_config(tiny_qwen3, tmp_path / "b", report_to=["clearml"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
