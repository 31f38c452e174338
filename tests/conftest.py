"""Shared offline fixtures: tiny models saved to folders (built by helpers.py), once per session.

Nothing here touches the network: hub access is switched off before anything imports transformers.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import make_tiny_model, shared_adapter


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{'qwen3': folder, 'llama': folder, 'gpt2': folder (no chat template)}."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "qwen3": make_tiny_model(root / "qwen3", "qwen3"),
        "llama": make_tiny_model(root / "llama", "llama"),
        "gpt2": make_tiny_model(root / "gpt2", "gpt2", chat=False),
    }


@pytest.fixture(scope="session")
def tiny_qwen3(tiny_models) -> Path:
    return tiny_models["qwen3"]


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_qwen3):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(request):
    """Tiny models run fastest on one thread; several threads spin against each other when the
    machine is busy (3x slower test runs). The end-to-end tests on the real model keep them all."""
    if request.module.__name__.endswith("e2e_bundled"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adapter(tiny_qwen3, tmp_path_factory) -> Path:
    return shared_adapter(tiny_qwen3, tmp_path_factory)


@pytest.fixture(scope="module")
def im(adapter):
    from lora_finetune.use import load_for_inference

    return load_for_inference(adapter)
