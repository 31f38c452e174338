"""The run record: run_config.yaml written and read in one place, and opening adapter folders."""

from __future__ import annotations

import pytest
import yaml

from lora_finetune.config import load_config
from lora_finetune.errors import ModelError
from lora_finetune.run_record import Resolved, RunRecord, open_adapter


def test_saved_run_config_round_trips(tmp_path):
    c = load_config(None, {"r": "4", "data_path": "x.jsonl"})
    RunRecord(c, Resolved(template="chat", target_modules=["q_proj"])).save(tmp_path / "run_config.yaml")
    data = yaml.safe_load((tmp_path / "run_config.yaml").read_text())
    assert data["resolved"]["template"] == "chat"
    c2 = load_config(tmp_path / "run_config.yaml")  # `resolved` is information, not a setting
    assert c2 == c
    back = RunRecord.load(tmp_path / "run_config.yaml")
    assert back.config == c and back.resolved.template == "chat"
    assert back.resolved.target_modules == ["q_proj"]


def test_unknown_resolved_keys_survive_a_round_trip(tmp_path):
    """A record written by a newer version keeps what this version does not know."""
    c = load_config(None, {})
    RunRecord(c, Resolved.from_dict({"template": "seed", "future_key": [1, 2]})).save(tmp_path / "r.yaml")
    back = RunRecord.load(tmp_path / "r.yaml")
    assert back.resolved.template == "qa"  # the old template name is read as its new one
    assert back.resolved.extra == {"future_key": [1, 2]}


def test_record_template_falls_back_to_the_config_for_old_records():
    rec = RunRecord(load_config(None, {"template": "seed"}), Resolved())
    assert rec.template == "qa"


def test_damaged_record_names_the_file(tmp_path):
    bad = tmp_path / "run_config.yaml"
    bad.write_text("r: [1, 2\n")
    with pytest.raises(ModelError, match="run_config.yaml cannot be read"):
        RunRecord.load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ModelError, match="not a run record"):
        RunRecord.load(bad)
    bad.write_text("r: -3\n")
    with pytest.raises(ModelError, match="record of a training run"):
        RunRecord.load(bad)


def test_open_adapter_refuses_a_folder_that_is_not_one(tmp_path):
    with pytest.raises(ModelError, match="not an adapter folder"):
        open_adapter(tmp_path)


def test_open_adapter_reads_the_record(adapter):
    folder = open_adapter(adapter)
    assert folder.record is not None and folder.has_tokenizer
    assert folder.record.resolved.template == "chat"
    assert folder.base_to_load("x/y") == "x/y"


def test_adapter_without_record_needs_a_base(adapter, tmp_path):
    import shutil

    copy = tmp_path / "foreign"
    shutil.copytree(adapter, copy)
    (copy / "run_config.yaml").unlink()
    (copy / "manifest.json").unlink()
    folder = open_adapter(copy)
    assert folder.record is None
    with pytest.raises(ModelError, match="--base_model"):
        folder.base_to_load()
