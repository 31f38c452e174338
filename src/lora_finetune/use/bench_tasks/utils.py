"""The demo task's items, read from the JSON Lines file beside this module.

The harness resolves a task's `data_files` against the working directory, so a task shipped
inside a package cannot name its file there; `custom_dataset` (the harness's hook for local
data) reads it from here instead, wherever the package is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ITEMS = Path(__file__).with_name("lora_demo_zh.jsonl")


def load_items(subject: str, **_: Any):
    import datasets

    with ITEMS.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    splits = {}
    for split in ("dev", "test"):
        picked = [r for r in rows if r["subject"] == subject and r["split"] == split]
        splits[split] = datasets.Dataset.from_list(picked)
    return datasets.DatasetDict(splits)
