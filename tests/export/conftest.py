"""Fixtures of the export tests; the model builders and the llama.cpp runner are in
export_support.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from export_support import make_qwen
from helpers import make_tiny_model, tiny_config


@pytest.fixture(scope="session")
def export_adapters(tmp_path_factory) -> dict[str, Path]:
    """{'llama' | 'qwen2' | 'qwen3': adapter folder}, trained once per session with a learning
    rate high enough that the adapter changes the model's answers."""
    from lora_finetune.training import train

    root = tmp_path_factory.mktemp("export-models")
    out = {}
    for kind in ("llama", "qwen2", "qwen3"):
        model = make_tiny_model(root / kind, "llama") if kind == "llama" else make_qwen(root / kind, kind)
        adapter = root / f"{kind}-adapter"
        train(
            tiny_config(model, adapter, learning_rate=2e-2, steps=30, save_steps=100, eval_steps=100, logging_steps=10)
        )
        out[kind] = adapter
    return out
