"""llama.cpp itself (node-llama-cpp's prebuilt binaries, through tests/export/llama_check.mjs)
reads what we export:

- the merged GGUF (f16 and q8_0): llama.cpp tokenises our rendered prompts to the same ids and
  generates the same greedy tokens as our merged model;
- the LoRA GGUF applied by llama.cpp to the base GGUF (`--with-base`): the same greedy tokens
  as our merged model;
- the chat template in the file, rendered by node-llama-cpp's Jinja implementation, gives the
  same prompt tokens as our template.

`make test` installs node-llama-cpp into build/node; without node or the package these skip.
"""

from __future__ import annotations

import pytest
import torch

from lora_finetune.export import export_model
from lora_finetune.export.chat_format import render_ours, sample_conversations

from export_support import llama_check, node_llama_cpp

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.skipif(
        node_llama_cpp() is None,
        reason="needs node and node-llama-cpp in build/node (`make test` installs it; or set "
        "LORA_FINETUNE_NODE_PREFIX to an npm --prefix holding node-llama-cpp)",
    ),
]
MAX_NEW = 12


def _ours(adapter):
    from lora_finetune.use import load_for_inference

    im = load_for_inference(adapter, dtype="fp32", device="cpu")
    merged = im.model.merge_and_unload().eval()
    prompts = []
    for conv in sample_conversations():
        text = render_ours(im.template, conv)
        ids = im.tokenizer(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        out = merged.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=im.stop_token_ids,
            pad_token_id=im.tokenizer.pad_token_id,
        )
        prompts.append({"text": text, "ids": ids, "expected": out[0, len(ids) :].tolist()})
    return im, prompts


def _check(tmp_path, model, prompts, lora=None) -> dict:
    return llama_check(tmp_path, model, prompts, MAX_NEW, lora)


def _same_greedy(ours: list[int], theirs: list[int], stops: list[int]) -> bool:
    """Same tokens; llama.cpp's evaluate() may end without yielding the stop token itself."""
    strip = lambda ids: ids[:-1] if ids and ids[-1] in stops else ids  # noqa: E731
    return strip(ours) == strip(theirs)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_llamacpp_runs_the_merged_gguf(export_adapters, tmp_path, kind):
    im, prompts = _ours(export_adapters[kind])
    for outtype in ("f16", "q8_0"):
        res = export_model(export_adapters[kind], tmp_path / outtype, outtype=outtype)
        got = _check(tmp_path, tmp_path / outtype / res.files[0], prompts)
        assert got["architecture"] == res.architecture and got["pre"] == res.pre_tokenizer
        assert got["eos"] == im.tokenizer.eos_token_id
        for p, g in zip(prompts, got["prompts"]):
            assert g["tokens"] == p["ids"], "llama.cpp tokenises the prompt differently"
            assert _same_greedy(p["expected"], g["generated"], im.stop_token_ids), (outtype, p["text"], g)
        # The chat template in the file renders the same prompt as our template.
        assert [c["tokens"] for c in got["chats"]] == [p["ids"] for p in prompts]


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_llamacpp_applies_the_lora_gguf_to_the_base_gguf(export_adapters, tmp_path, kind):
    im, prompts = _ours(export_adapters[kind])
    res = export_model(export_adapters[kind], tmp_path / "lora", format="gguf-lora", with_base=True)
    assert res.files == ["adapter-lora-f16.gguf", "base-f16.gguf"]
    folder = tmp_path / "lora"
    with_lora = _check(tmp_path, folder / "base-f16.gguf", prompts, lora=folder / "adapter-lora-f16.gguf")
    base_only = _check(tmp_path, folder / "base-f16.gguf", prompts)
    for p, g in zip(prompts, with_lora["prompts"]):
        assert _same_greedy(p["expected"], g["generated"], im.stop_token_ids), (p["text"], g)
    # and the adapter really is what makes the difference
    assert [g["generated"] for g in base_only["prompts"]] != [g["generated"] for g in with_lora["prompts"]]
