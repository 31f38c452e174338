"""Data from a `datasets` folder, a hub id (offline: a clear message), or LLaMA-Factory's
dataset_info.json with its column mapping."""

from __future__ import annotations

import json

import pytest

from lora_finetune.config import load_config
from lora_finetune.data import load_source
from lora_finetune.errors import ConfigError, DataError

ROWS = [
    {"instruction": "中国的首都是哪里？", "input": "", "output": "北京。"},
    {"instruction": "一周有几天？", "input": "", "output": "七天。"},
]


def test_a_save_to_disk_folder_and_a_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    records, sha = load_source(tmp_path / "ds")
    assert [r["messages"][-1]["content"] for r in records] == ["北京。", "七天。"] and len(sha) == 64
    DatasetDict({"train": Dataset.from_list(ROWS[:1]), "test": Dataset.from_list(ROWS[1:])}).save_to_disk(
        str(tmp_path / "dd")
    )
    records, _ = load_source(tmp_path / "dd")
    assert len(records) == 1 and records[0]["source"].endswith("row 1")
    DatasetDict({"validation": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "nt"))
    with pytest.raises(DataError, match="no `train` split"):
        load_source(tmp_path / "nt")


def test_a_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="neither a local file or folder nor a hub dataset.*HF_HUB_OFFLINE"):
        load_source("someone-not-real/dataset-xyz")


def _lf_dir(tmp_path, entry: dict, rows: list, name: str = "my_data.json"):
    d = tmp_path / "data"
    d.mkdir()
    (d / name).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (d / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": name, **entry}}), encoding="utf-8")
    return d


def test_llama_factory_alpaca_with_column_mapping(tmp_path):
    rows = [{"q": "中国的首都是哪里？", "a": "北京。", "sys": "简短回答"}]
    d = _lf_dir(tmp_path, {"columns": {"prompt": "q", "response": "a", "system": "sys"}}, rows)
    [rec], sha = load_source(d, dataset="mine")
    assert rec["system"] == "简短回答"
    assert [(m["role"], m["content"]) for m in rec["messages"]] == [
        ("user", "中国的首都是哪里？"),
        ("assistant", "北京。"),
    ]
    [again], _ = load_source(d / "dataset_info.json", dataset="mine")  # the file itself works too
    assert again["messages"] == rec["messages"]


def test_llama_factory_sharegpt_with_tags(tmp_path):
    rows = [{"msgs": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}]
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "msgs"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    [rec], _ = load_source(_lf_dir(tmp_path, entry, rows), dataset="mine")
    assert [(m["role"], m["content"]) for m in rec["messages"]] == [("user", "你好"), ("assistant", "你好！")]


def test_llama_factory_errors_name_what_exists(tmp_path):
    d = _lf_dir(tmp_path, {}, ROWS)
    with pytest.raises(DataError, match="no dataset `other`; it has mine"):
        load_source(d, dataset="other")
    with pytest.raises(DataError, match="dataset_info.json does not exist"):
        load_source(tmp_path, dataset="mine")
    with pytest.raises(ConfigError, match="set data_path to the folder"):
        load_config(None, {"dataset": "mine"})
    cfg = load_config(None, {"dataset_dir": str(d), "dataset": "mine"})  # LLaMA-Factory's own keys
    assert str(cfg.data_path) == str(d) and cfg.dataset == "mine"


def test_training_on_a_llama_factory_dataset(tiny_qwen3, tmp_path):
    from lora_finetune.training import train

    from helpers import tiny_config

    d = _lf_dir(tmp_path, {}, ROWS * 3)
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", data_path=str(d), dataset="mine", steps=1))
    assert len(res.resolved.data_sha256) == 64 and res.metrics["samples"]["train"] + res.metrics["samples"]["eval"] == 6
