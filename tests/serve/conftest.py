"""Fixtures for the serve tests: a second adapter, the loaded models, a running server, and a
tiny model that answers with tool calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import make_tiny_model, tiny_config
from serve_helpers import QWEN_TOOLS, TOOL_ANSWER, WEATHER_TOOL, start_server


@pytest.fixture(scope="session")
def adapter_b(tiny_qwen3, tmp_path_factory) -> Path:
    """A second adapter on the same tiny base, different from `adapter`."""
    from lora_finetune.folders import is_complete
    from lora_finetune.training import train

    out = tmp_path_factory.getbasetemp() / "serve-adapter-b"
    if not is_complete(out):
        train(tiny_config(tiny_qwen3, out, learning_rate=3e-2, seed=7, r=8, save_steps=100, eval_steps=100))
    return out


@pytest.fixture(scope="module")
def models(adapter, adapter_b):
    from lora_finetune.serve import load_models

    torch.set_num_threads(1)
    return load_models([("a", adapter), ("b", adapter_b)], device="cpu")


@pytest.fixture(scope="module")
def server(models):
    running = start_server(models, max_batch_size=8, max_queue=64)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory) -> Path:
    """A tiny base with a Qwen-style tools template, trained (all weights, a few seconds) to
    answer a weather question with a get_weather tool call, and an adapter on it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_finetune.templates import encode_prompt, get_template
    from lora_finetune.training import train

    root = tmp_path_factory.mktemp("serve-tools")
    folder = make_tiny_model(root / "toolbase", "qwen3")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = QWEN_TOOLS
    tok.save_pretrained(folder)
    tmpl = get_template("chat", tok)
    model = AutoModelForCausalLM.from_pretrained(folder)
    answer = tok(TOOL_ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"]
    seqs = []
    for q in ["北京天气怎么样？", "What is the weather in Beijing?", "天气如何"]:
        record = {"system": None, "messages": [{"role": "user", "content": q}], "tools": [WEATHER_TOOL]}
        p = encode_prompt(record, tok, tmpl)
        seqs.append((torch.tensor([p + answer]), torch.tensor([[-100] * len(p) + answer])))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        x, y = seqs[step % len(seqs)]
        model(input_ids=x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)
    data = root / "data.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    # A barely trained adapter: the base's tool calls survive it.
    train(tiny_config(folder, root / "tooly", data_path=str(data), steps=1, learning_rate=1e-6))
    return root / "tooly"
