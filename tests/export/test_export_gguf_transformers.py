"""The merged GGUF read back by an independent reader: transformers' own GGUF loader
(`from_pretrained(dir, gguf_file=...)`, which undoes llama.cpp's Q/K permutation and rebuilds
the tokenizer from the metadata). Its logits must match the merged model's:

    f16 / bf16: largest |difference| <= TOL[outtype] * max(1, largest |logit|)
    q8_0:       the looser tolerance, and the same greedy tokens on the test prompts
"""

from __future__ import annotations

import pytest
import torch

from lora_finetune.export import export_model
from lora_finetune.export.chat_format import render_ours, sample_conversations

TOL = {"f16": 5e-3, "bf16": 5e-2, "q8_0": 1e-1}
"""Relative to the largest |logit|: f16 keeps ~11 bits of mantissa, bf16 8, q8_0 8 bits per
block of 32 with an f16 scale. Measured on these tiny models (2026-10): f16 1e-4..1.9e-3,
bf16 1e-3..3.1e-2 (the high end depends on the adapter's weights: 3e-2 failed once at 3.06e-2,
so bf16's bound is 5e-2), q8_0 3e-3..5.4e-2 (Qwen2, whose untied output layer is quantised too)."""


def _merged(adapter):
    from lora_finetune.use import load_for_inference

    im = load_for_inference(adapter, dtype="fp32", device="cpu")
    return im, im.model.merge_and_unload().eval()


def _prompts(im) -> list[list[int]]:
    return [
        im.tokenizer(render_ours(im.template, c), add_special_tokens=False)["input_ids"] for c in sample_conversations()
    ]


def _greedy(model, ids, stops, n=12) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, eos_token_id=stops, pad_token_id=0
    )
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("outtype", ["f16", "q8_0", "bf16"])
def test_transformers_reads_the_merged_gguf(export_adapters, tmp_path, kind, outtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if outtype == "bf16" and kind != "qwen3":
        pytest.skip("bf16 is checked on one architecture")
    res = export_model(export_adapters[kind], tmp_path / "out", outtype=outtype)
    assert res.files == [f"model-{outtype}.gguf"] and (tmp_path / "out" / "manifest.json").is_file()
    im, merged = _merged(export_adapters[kind])
    gguf_model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", gguf_file=res.files[0], dtype=torch.float32
    ).eval()
    gguf_tok = AutoTokenizer.from_pretrained(tmp_path / "out", gguf_file=res.files[0])
    from lora_finetune.models import load_model

    base = load_model(str(im.base_model), dtype="fp32", quantization="none", for_training=False).model.eval()
    worst, adapter_effect = 0.0, 0.0
    for ids in _prompts(im):
        text = im.tokenizer.decode(ids)
        assert gguf_tok(text, add_special_tokens=False)["input_ids"] == ids, "tokenizer metadata tokenises differently"
        x = torch.tensor([ids])
        with torch.no_grad():
            ref, got = merged(x).logits[0], gguf_model(x).logits[0]
        scale = max(1.0, float(ref.abs().max()))
        worst = max(worst, float((ref - got).abs().max()) / scale)
        with torch.no_grad():
            adapter_effect = max(adapter_effect, float((ref - base(x).logits[0]).abs().max()) / scale)
        if outtype != "f16":
            assert _greedy(gguf_model, ids, im.stop_token_ids) == _greedy(merged, ids, im.stop_token_ids)
    print(
        f"{kind} {outtype}: largest logit difference / scale = {worst:.2e} (tolerance {TOL[outtype]}); "
        f"the adapter itself moves logits by {adapter_effect:.2e}"
    )
    assert worst <= TOL[outtype]
    assert adapter_effect > 5 * TOL[outtype], "the adapter must change the model more than the tolerance"


def test_metadata_has_tokenizer_stops_and_chat_template(export_adapters, tmp_path):
    from gguf import GGUFReader

    from lora_finetune.models import load_tokenizer

    res = export_model(export_adapters["qwen3"], tmp_path / "out")
    reader = GGUFReader(str(tmp_path / "out" / res.files[0]))

    def field(key):
        f = reader.fields[key]
        return f.contents()

    tok = load_tokenizer(str(export_adapters["qwen3"]))
    assert field("general.architecture") == "qwen3"
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.eos_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert field("tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.chat_template") == tok.chat_template
    assert len(field("tokenizer.ggml.tokens")) == len(tok)
    types = field("tokenizer.ggml.token_type")
    assert types[tok.convert_tokens_to_ids("<|im_start|>")] == 3  # CONTROL
    assert res.stop_tokens == ["<|im_end|>"]
    assert field("qwen3.attention.key_length") == 128
