"""A preference-trained adapter (DPO) served like any other: the official `openai` client gets
the same greedy answer as `use.generate`, and the adapter and the base are batched together."""

from __future__ import annotations

import pytest

from helpers import tiny_config
from serve_helpers import start_server

QUESTION = "中国的首都是哪里？"


@pytest.fixture(scope="module")
def dpo_adapter(tiny_qwen3, tmp_path_factory):
    from lora_finetune.training import train

    out = tmp_path_factory.mktemp("serve-dpo") / "dpo"
    return train(tiny_config(tiny_qwen3, out, method="dpo", steps=4, learning_rate=2e-2, eval_fraction=0.0)).output_dir


def test_a_dpo_adapter_answers_through_the_openai_client(dpo_adapter):
    from lora_finetune.serve import load_models
    from lora_finetune.use import generate, load_for_inference

    record = {"system": None, "messages": [{"role": "user", "content": QUESTION}]}
    want = {}
    for name, base_only in (("dpo", False), ("qwen3", True)):
        res = generate(load_for_inference(dpo_adapter, base_only=base_only, device="cpu"), [record], max_new_tokens=12)
        want[name] = (res[0]["text"], res[0]["tokens"])
    running = start_server(load_models([("dpo", dpo_adapter)], device="cpu"), max_batch_size=4)
    try:
        client = running.client()
        assert [m.id for m in client.models.list().data] == ["dpo", "qwen3"]
        for name, (text, tokens) in want.items():
            r = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0
            )
            assert r.choices[0].message.content.strip() == text and r.usage.completion_tokens == tokens
    finally:
        running.stop()
