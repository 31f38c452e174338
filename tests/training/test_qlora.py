"""QLoRA where bitsandbytes runs, including the CPU (NF4 / int8 weights, fp32 compute): train,
resume, generate, evaluate and merge from a quantised base, end to end on a tiny model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lora_finetune.training import train
from lora_finetune.training.callbacks import last_complete_checkpoint

from helpers import tiny_config

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantised_base_trains_and_records_it(tiny_qwen3, tmp_path, bits):
    res = train(tiny_config(tiny_qwen3, tmp_path / "run", quantization=bits, steps=3, learning_rate=1e-2))
    assert res.resolved.quantization == bits and not any("full-precision" in n for n in res.resolved.notes)
    weights = load_file(str(res.output_dir / "adapter_model.safetensors"))
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(torch.isfinite(t).all() for t in weights.values())
    assert any(t.abs().max() > 0 for t in lora_b)  # B starts at zero: it learned


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_resume_chat_generate_eval_merge(tiny_qwen3, tmp_path, bits):
    from transformers import TrainerCallback

    from lora_finetune.use import ChatSession, GenerationSettings, evaluate, generate, load_for_inference, merge

    class Die(TrainerCallback):
        def on_save(self, args, state, control, **k):
            if state.global_step == 2:
                raise KeyError("simulated crash after the first checkpoint")

    out = tmp_path / "run"
    settings = dict(quantization=bits, steps=4, save_steps=2, learning_rate=1e-2)
    with pytest.raises(KeyError):
        train(tiny_config(tiny_qwen3, out, **settings), callbacks=[Die()])
    assert last_complete_checkpoint(tmp_path / ".run.partial" / "checkpoints") is not None
    res = train(tiny_config(tiny_qwen3, out, resume="auto", **settings))
    assert res.metrics["steps"] == 4 and res.resolved.quantization == bits

    im = load_for_inference(out)
    assert im.quantization == bits
    chunks: list[str] = []
    reply = ChatSession(im, GenerationSettings(max_new_tokens=4)).send("你好", on_text=chunks.append)
    assert reply.prompt_tokens > 0 and "".join(chunks).strip() == reply.text
    rec = {"system": None, "messages": [{"role": "user", "content": "你好", "input": ""}]}
    [answer] = generate(im, [rec], max_new_tokens=4)
    assert answer["tokens"] <= 4

    data = tmp_path / "test.jsonl"
    data.write_text('{"instruction": "中国的首都是哪里？", "output": "北京。"}\n')
    report = evaluate(out, data, im=im, generation=False, write_report=False).report
    assert report["metrics"]["adapter"]["loss"] > 0

    merged = merge(out, tmp_path / "merged", dtype="fp32")
    # merged onto the full-precision base: equal to that base + the adapter, to fp32 rounding
    assert merged.trained_quantization == bits and merged.max_abs_diff < 1e-4
