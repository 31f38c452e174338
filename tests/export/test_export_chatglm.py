"""GGUF export of an adapter trained on a converted ChatGLM3 (native GLM, model_type `glm`), checked
by llama.cpp itself (node-llama-cpp, through llama_check.mjs) as the `chatglm` architecture:

- the merged GGUF (f16, q8_0): llama.cpp tokenises our rendered prompts (which start with ChatGLM's
  [gMASK]sop prefix) to the same ids as our tokenizer, through its SentencePiece (`llama`)
  tokenizer with the scores and token types we write, and generates the same greedy tokens as our
  merged model;
- the LoRA GGUF applied by llama.cpp to the base GGUF (`--with-base`): q/k/v stay separate tensors
  (`attn_q/k/v`, which llama.cpp's chatglm graph accepts), so LoRA needs no fusing;
- the chat template in the file renders the same prompt tokens as our template.

transformers cannot read these files back: its GGUF loader has no `chatglm` architecture, so
unlike the Llama/Qwen exports (test_export_gguf_transformers.py) llama.cpp is the only reader.
The refusals (unigram or normalising SentencePiece tokenizers, `glm4`) run without llama.cpp.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lora_finetune.errors import LoraFinetuneError
from lora_finetune.export import export_model
from lora_finetune.export.chat_format import render_ours, sample_conversations

from chatglm_helpers import chatglm3_checkpoint, train_sentencepiece
from export_support import llama_check, node_llama_cpp
from helpers import tiny_config

MAX_NEW = 12
TOLERANCE = {"f16": 5e-3, "q8_0": 5e-2}
"""How far below our best logit a token llama.cpp picks greedily may be, as a share of the largest
logit (of order 5 in the tiny model)."""
needs_llamacpp = pytest.mark.skipif(
    node_llama_cpp() is None,
    reason="needs node and node-llama-cpp in build/node (`make test` installs it; or set "
    "LORA_FINETUNE_NODE_PREFIX to an npm --prefix holding node-llama-cpp)",
)


def _train(src: Path, out: Path, **kw) -> Path:
    from lora_finetune.training import train

    values = dict(learning_rate=2e-2, steps=3, save_steps=100, eval_steps=100, logging_steps=1)
    values.update(kw)
    train(tiny_config(src, out, cache_dir=str(out.parent / "cache"), **values))
    return out


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chatglm-spm")
    train_sentencepiece(folder)
    return folder / "tokenizer.model"


@pytest.fixture(scope="module")
def glm_adapter(tmp_path_factory, spm_model) -> Path:
    """An adapter trained 3 steps on a tiny ChatGLM3-format checkpoint (converted to native GLM)."""
    root = tmp_path_factory.mktemp("chatglm-export")
    src = chatglm3_checkpoint(root / "chatglm3", spm_model)
    return _train(src, root / "adapter")


def _ours(adapter: Path, conversations: list | None = None):
    """(inference model, merged model, prompts with our ids and greedy tokens)."""
    import torch

    from lora_finetune.use import load_for_inference

    im = load_for_inference(adapter, dtype="fp32", device="cpu")
    merged = im.model.merge_and_unload().eval()
    prompts = []
    for conv in conversations or sample_conversations():
        text = render_ours(im.template, conv)
        assert text.startswith("[gMASK]sop")
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
    return im, merged, prompts


def _check(tmp_path, model, prompts, lora=None) -> dict:
    return llama_check(tmp_path, model, prompts, MAX_NEW, lora)


def _greedy_gaps(merged, prompt: list[int], theirs: list[int]) -> list[float]:
    """For each token llama.cpp generated, how far below our model's best logit it is (as a share of
    the largest logit), with our model fed llama.cpp's tokens (0 where llama.cpp picked our greedy
    token). The tiny random
    model has near-ties (top-2 logits 0.002 apart), which f16/q8_0 weights may flip, so greedy
    sequences are compared step by step, not as a whole."""
    import torch

    assert theirs, "llama.cpp generated nothing"
    with torch.no_grad():
        logits = merged(torch.tensor([prompt + theirs])).logits[0, len(prompt) - 1 : -1]
    return [float((row.max() - row[t]) / row.abs().max()) for row, t in zip(logits, theirs)]


@pytest.mark.llamacpp
@needs_llamacpp
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_llamacpp_runs_the_merged_chatglm_gguf(glm_adapter, tmp_path, outtype):
    im, merged, prompts = _ours(glm_adapter)
    res = export_model(glm_adapter, tmp_path / outtype, outtype=outtype)
    assert res.architecture == "chatglm" and res.pre_tokenizer == "chatglm-spm"
    # ChatGLM3's own template has no EOS after an answer, training appends one: the file gets
    # the template derived from the training format
    assert res.chat_template == "derived" and any("differently" in n for n in res.notes)
    got = _check(tmp_path, tmp_path / outtype / res.files[0], prompts)
    assert got["architecture"] == "chatglm"
    assert got["eos"] == im.tokenizer.eos_token_id
    for p, g in zip(prompts, got["prompts"]):
        assert g["tokens"] == p["ids"], ("llama.cpp tokenises the prompt differently", p["text"])
        gaps = _greedy_gaps(merged, p["ids"], g["generated"])
        assert max(gaps) <= TOLERANCE[outtype], (p["text"], p["expected"], g["generated"], gaps)
    if outtype == "f16":  # and mostly the very same greedy tokens (q8_0 flips this model's near-ties)
        same = [p["expected"][: len(g["generated"])] == g["generated"] for p, g in zip(prompts, got["prompts"])]
        assert sum(same) >= 2, same
    # The chat template in the file renders our prompt. node-llama-cpp's Jinja wrapper ends the
    # prompt where the assistant's text starts, after the "\n " ChatGLM3 writes (which the model
    # learned to generate itself); llama.cpp's own add_generation_prompt ends at <|assistant|>.
    for p, c in zip(prompts, got["chats"]):
        assert c["tokens"][: len(p["ids"])] == p["ids"]
        assert im.tokenizer.decode(c["tokens"][len(p["ids"]) :]).strip() == ""


@pytest.mark.llamacpp
@needs_llamacpp
def test_llamacpp_applies_the_chatglm_lora_gguf_to_the_base_gguf(glm_adapter, tmp_path):
    im, merged, prompts = _ours(glm_adapter)
    res = export_model(glm_adapter, tmp_path / "lora", format="gguf-lora", with_base=True)
    assert res.files == ["adapter-lora-f16.gguf", "base-f16.gguf"]
    folder = tmp_path / "lora"
    with_lora = _check(tmp_path, folder / "base-f16.gguf", prompts, lora=folder / "adapter-lora-f16.gguf")
    base_only = _check(tmp_path, folder / "base-f16.gguf", prompts)
    for p, g in zip(prompts, with_lora["prompts"]):
        gaps = _greedy_gaps(merged, p["ids"], g["generated"])
        assert max(gaps) <= TOLERANCE["f16"], (p["text"], p["expected"], g["generated"], gaps)
    assert [g["generated"] for g in base_only["prompts"]] != [g["generated"] for g in with_lora["prompts"]]


TEXTS = [
    "hello world",
    "  two  spaces  and trailing ",
    "数字 12345 和 3.14",
    "混合text中文mixed",
    "\n换行\n\t制表",
    "unknown ☃ symbols 😀",
    "the model learns to answer questions about data science and code with numbers quickly",
    "<|user|>\n 你好<|assistant|>",
]


@pytest.mark.llamacpp
@needs_llamacpp
def test_llamacpp_tokenises_text_as_our_tokenizer(glm_adapter, tmp_path):
    """Spaces, digits, Chinese, unknown characters (byte fallback) and special tokens: llama.cpp's
    SentencePiece tokenizer with the scores we derive splits them as the converted tokenizer does."""
    from lora_finetune.models import load_tokenizer

    tokenizer = load_tokenizer(str(glm_adapter))
    res = export_model(glm_adapter, tmp_path / "out")
    prompts = [{"text": t, "ids": tokenizer(t, add_special_tokens=False)["input_ids"] or [2]} for t in TEXTS]
    got = _check(tmp_path, tmp_path / "out" / res.files[0], prompts)
    assert [g["tokens"] for g in got["prompts"]] == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


@pytest.mark.llamacpp
@needs_llamacpp
def test_llamacpp_runs_a_chatglm2_gguf(spm_model, tmp_path):
    """ChatGLM2 (no role tokens, the [Round N] 问/答 format, no q/k/v groups beyond MQA): the same
    architecture and tokenizer path."""
    src = chatglm3_checkpoint(tmp_path / "chatglm2", spm_model, _name_or_path="THUDM/chatglm2-6b")
    adapter = _train(src, tmp_path / "adapter")
    no_system = [c for c in sample_conversations() if c[0]["role"] != "system"]  # ChatGLM2 has no system turn
    im, merged, prompts = _ours(adapter, no_system)
    assert "<|user|>" not in im.tokenizer.get_vocab()
    res = export_model(adapter, tmp_path / "out")
    got = _check(tmp_path, tmp_path / "out" / res.files[0], prompts)
    for p, g in zip(prompts, got["prompts"]):
        assert g["tokens"] == p["ids"], ("llama.cpp tokenises the prompt differently", p["text"])
        gaps = _greedy_gaps(merged, p["ids"], g["generated"])
        assert max(gaps) <= TOLERANCE["f16"], (p["text"], p["expected"], g["generated"], gaps)


def test_gguf_tensors_and_hyperparameters(glm_adapter, tmp_path):
    """What llama.cpp's `chatglm` loader reads: separate q/k/v with biases, ffn_up holding
    [gate; up] (2 * ffn rows), half of each head rotated, the SentencePiece vocabulary."""
    from gguf import GGUFReader

    res = export_model(glm_adapter, tmp_path / "out")
    reader = GGUFReader(str(tmp_path / "out" / res.files[0]))
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}  # ggml order: (in, out)
    assert shapes["blk.0.attn_q.weight"] == (64, 64) and shapes["blk.0.attn_k.weight"] == (64, 32)
    assert "blk.0.attn_q.bias" in shapes and "blk.0.attn_qkv.weight" not in shapes
    assert shapes["blk.0.ffn_up.weight"] == (64, 2 * 96) and shapes["blk.0.ffn_down.weight"] == (96, 64)

    def field(key):
        f = reader.fields[key]
        return f.contents()

    assert field("chatglm.rope.dimension_count") == 8  # head_dim 16, partial_rotary_factor 0.5
    assert field("chatglm.feed_forward_length") == 96
    assert field("tokenizer.ggml.model") == "llama"
    assert field("tokenizer.ggml.add_bos_token") is False
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    assert len(field("tokenizer.ggml.scores")) == len(tokens)
    assert types[0] == 2 and tokens[0] == "<unk>"  # UNKNOWN
    assert types[tokens.index("<0x0A>")] == 6  # BYTE: llama.cpp's byte fallback
    assert all(types[tokens.index(t)] == 3 for t in ("[gMASK]", "sop", "<|user|>", "</s>"))  # CONTROL
    assert tokens[-1].startswith("[PAD") and types[-1] == 5  # the padded rows


def test_ollama_modelfile_for_chatglm(glm_adapter, tmp_path):
    res = export_model(glm_adapter, tmp_path / "ollama", format="ollama")
    modelfile = (tmp_path / "ollama" / "Modelfile").read_text(encoding="utf-8")
    assert res.ollama_template and "[gMASK]sop<|user|>" in modelfile
    for stop in ("</s>", "<|user|>", "<|observation|>"):
        assert f'PARAMETER stop "{stop}"' in modelfile


@pytest.mark.parametrize(
    "options, match",
    [
        ({"model_type": "unigram"}, "unigram SentencePiece model"),
        ({"normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True}, "normalizer"),
    ],
    ids=["unigram", "nfkc"],
)
def test_sentencepiece_tokenizers_llamacpp_would_split_differently_are_refused(tmp_path, options, match):
    train_sentencepiece(tmp_path / "spm", **options)
    src = chatglm3_checkpoint(tmp_path / "chatglm3", tmp_path / "spm" / "tokenizer.model")
    adapter = _train(src, tmp_path / "adapter", steps=1)
    with pytest.raises(LoraFinetuneError, match=f"llama.cpp's `chatglm`.*{match}"):
        export_model(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sentencepiece_tokenizers_are_only_for_chatglm(glm_adapter):
    """A SentencePiece tokenizer on another architecture (Llama 2 style) stays refused."""
    from lora_finetune.export.tokenizer_meta import pre_tokenizer_name
    from lora_finetune.models import load_tokenizer

    tokenizer = load_tokenizer(str(glm_adapter))
    assert pre_tokenizer_name(tokenizer, "chatglm") == "chatglm-spm"
    with pytest.raises(LoraFinetuneError, match="SentencePiece tokenizers are exported only for converted ChatGLM2/3"):
        pre_tokenizer_name(tokenizer, "llama")


def test_glm4_stays_refused(glm_adapter, tmp_path, monkeypatch):
    """Glm4ForCausalLM (GLM-4-0414, llama.cpp `glm4`) is not written; the message lists `chatglm`."""
    from lora_finetune.export import gguf_model

    copy = tmp_path / "adapter"
    shutil.copytree(glm_adapter, copy)
    original = gguf_model.arch_for

    def as_glm4(config):
        config.model_type = "glm4"
        return original(config)

    monkeypatch.setattr("lora_finetune.export.runner.arch_for", as_glm4)
    with pytest.raises(LoraFinetuneError, match=r"model_type 'glm4'.*glm \(llama.cpp `chatglm`\)"):
        export_model(copy, tmp_path / "out")


def test_a_dpo_adapter_on_chatglm3_exports_like_an_sft_one(spm_model, tmp_path):
    """Preference training goes through the ChatGLM3 template (pairs encoded as SFT would), and
    what comes out exports to GGUF and to the original ChatGLM checkpoint's module names."""
    from lora_finetune.export.chatglm_adapter import export_chatglm_adapter
    from lora_finetune.run_record import RunRecord

    src = chatglm3_checkpoint(tmp_path / "chatglm3", spm_model)
    adapter = _train(src, tmp_path / "dpo", method="dpo", steps=2)
    record = RunRecord.read(adapter)
    assert record.config.method == "dpo" and record.template in ("chat", "chatglm3")  # the ChatGLM3 format
    gguf = export_model(adapter, tmp_path / "gguf")
    assert any(p.suffix == ".gguf" for p in gguf.output_dir.iterdir())
    original = export_chatglm_adapter(adapter, tmp_path / "original")
    assert "query_key_value" in original.target_modules
