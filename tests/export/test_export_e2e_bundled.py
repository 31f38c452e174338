"""GGUF export of an adapter of the bundled SmolLM2-135M-Instruct (real weights, a 49k-token
vocabulary, ChatML): read back by transformers' GGUF loader and, where
node-llama-cpp is installed, run by llama.cpp with the same prompt tokens and greedy answers."""

from __future__ import annotations

import pytest
import torch

from lora_finetune.export import export_model
from lora_finetune.export.chat_format import render_ours, sample_conversations

from export_support import llama_check, node_llama_cpp

pytestmark = pytest.mark.e2e
MAX_NEW = 16


@pytest.fixture(scope="module")
def smol_adapter(tmp_path_factory):
    from lora_finetune.training import train

    from helpers import tiny_config

    out = tmp_path_factory.mktemp("export-e2e") / "smol-adapter"
    cfg = tiny_config("smollm2-135m-instruct", out, steps=4, learning_rate=1e-3, r=8, alpha=16)
    train(cfg)
    return out


@pytest.fixture(scope="module")
def smol_ours(smol_adapter):
    from lora_finetune.use import load_for_inference

    im = load_for_inference(smol_adapter, dtype="fp32", device="cpu")
    merged = im.model.merge_and_unload().eval()
    prompts = []
    for conv in sample_conversations():
        text = render_ours(im.template, conv)
        ids = im.tokenizer(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = merged(x).logits[0]
            out = merged.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                eos_token_id=im.stop_token_ids,
                pad_token_id=im.tokenizer.pad_token_id,
            )
        prompts.append({"text": text, "ids": ids, "logits": logits, "expected": out[0, len(ids) :].tolist()})
    return im, prompts


@pytest.fixture(scope="module")
def smol_gguf(smol_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-e2e-out") / "gguf"
    return out, export_model(smol_adapter, out, format="ollama")


def test_bundled_model_gguf_reads_back_in_transformers(smol_ours, smol_gguf):
    from transformers import AutoModelForCausalLM

    im, prompts = smol_ours
    folder, res = smol_gguf
    # The bundled tokenizer was rebuilt from SmolLM2's GGUF by transformers, which gives it GPT-2's
    # byte-level pre-tokenizer (no separate digit split): the export names what we really use.
    assert res.pre_tokenizer == "gpt-2" and res.architecture == "llama"
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=res.files[0], dtype=torch.float32).eval()
    for p in prompts:
        with torch.no_grad():
            got = model(torch.tensor([p["ids"]])).logits[0]
        scale = max(1.0, float(p["logits"].abs().max()))
        assert float((got - p["logits"]).abs().max()) / scale < 5e-3
        assert bool((got.argmax(-1) == p["logits"].argmax(-1)).all())


@pytest.mark.llamacpp
@pytest.mark.skipif(node_llama_cpp() is None, reason="needs node and node-llama-cpp in build/node (`make test`)")
def test_bundled_model_gguf_runs_in_llama_cpp(smol_ours, smol_gguf, tmp_path):
    im, prompts = smol_ours
    folder, res = smol_gguf
    got = llama_check(tmp_path, folder / res.files[0], prompts, MAX_NEW)
    assert got["pre"] == res.pre_tokenizer
    stops = im.stop_token_ids
    for p, g in zip(prompts, got["prompts"]):
        assert g["tokens"] == p["ids"]
        strip = lambda ids: ids[:-1] if ids and ids[-1] in stops else ids  # noqa: E731
        assert strip(g["generated"]) == strip(p["expected"]), (p["text"], g["generated"], p["expected"])
    assert [c["tokens"] for c in got["chats"]] == [p["ids"] for p in prompts]
