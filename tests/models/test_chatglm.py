"""Tests for lora_finetune.chatglm: ChatGLM2/3 -> native GlmForCausalLM, fast tokenizer, v1 helpers.

Everything is offline and tiny: random ChatGLM-named checkpoints (2 layers, hidden 64) written in
the test, compared with an independent reference forward pass (tests/chatglm_reference.py), and a
SentencePiece model trained in the test standing in for ChatGLM's tokenizer.model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoTokenizer, GenerationConfig, GlmForCausalLM

from lora_finetune.errors import ConfigError, ModelError
from lora_finetune.models import chatglm as cg
from lora_finetune.models.families import family_for, template_for
from lora_finetune.templates.chatglm import ChatGLMV1Template, chatglm_v1_prompt

from chatglm_helpers import config, random_state_dict, train_sentencepiece, write_checkpoint
from chatglm_reference import chatglm_forward

# What the two published modeling_chatglm.py variants say about rope_ratio (only read as text).
CHATGLM2_32K_CODE = (
    "        theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=dtype, device=device) / n_elem))\n"
    "        seq_idx = torch.arange(seq_len, dtype=dtype, device=device) / self.rope_ratio\n"
)
CHATGLM3_CODE = (
    "        base = base * self.rope_ratio\n"
    "        theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float, device=device) / n_elem))\n"
)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of 10 tokens; the second is left-padded with 4 pad (id 0) tokens."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.long)
    ids[1, :4] = 0
    mask[1, :4] = 0
    return ids, mask


def native_logits(folder: Path, ids: torch.Tensor, mask: torch.Tensor, positions: bool = True) -> torch.Tensor:
    model = GlmForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    kwargs = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if positions else {}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kwargs).logits


def assert_same_logits(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor, atol: float = 2e-5) -> None:
    real = mask.bool()
    assert torch.isfinite(got[real]).all()
    torch.testing.assert_close(got[real], want[real], atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def v3_checkpoint(tmp_path_factory) -> tuple[Path, dict, dict]:
    cfg = config()
    sd = random_state_dict(cfg)
    return write_checkpoint(tmp_path_factory.mktemp("chatglm3") / "src", cfg, sd), cfg, sd


# --------------------------------------------------------------------------------------------
# Conversion: numbers
# --------------------------------------------------------------------------------------------


def test_converted_model_matches_reference_with_left_padding(v3_checkpoint, tmp_path):
    src, cfg, sd = v3_checkpoint
    dst = cg.convert_chatglm(src, tmp_path / "native")
    ids, mask = batch()
    want = chatglm_forward(sd, cfg, ids, mask)
    assert_same_logits(native_logits(dst, ids, mask), want, mask)
    # Rotary attention only sees relative offsets, so GLM's default positions (0..seq-1 even for a
    # left-padded row) give the same numbers up to rounding.
    assert_same_logits(native_logits(dst, ids, mask, positions=False), want, mask, atol=1e-4)

    native = json.loads((dst / "config.json").read_text())
    assert native["model_type"] == "glm"
    assert (native["vocab_size"], native["head_dim"], native["num_key_value_heads"]) == (128, 16, 2)
    assert native["rms_norm_eps"] == cfg["layernorm_epsilon"]
    assert native["attention_bias"] is True and native["tie_word_embeddings"] is False
    assert native["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    assert (native["pad_token_id"], native["eos_token_id"]) == (0, 2)
    assert not list(tmp_path.glob(".native.partial-*"))


def test_fused_tensors_land_where_glm_expects_them(v3_checkpoint, tmp_path):
    src, cfg, sd = v3_checkpoint
    model = GlmForCausalLM.from_pretrained(cg.convert_chatglm(src, tmp_path / "native"), dtype=torch.float32)
    layer = model.model.layers[1]
    qkv = sd["transformer.encoder.layers.1.self_attention.query_key_value.weight"]
    torch.testing.assert_close(layer.self_attn.q_proj.weight, qkv[:64], atol=0, rtol=0)
    torch.testing.assert_close(layer.self_attn.k_proj.weight, qkv[64:96], atol=0, rtol=0)
    torch.testing.assert_close(layer.self_attn.v_proj.weight, qkv[96:], atol=0, rtol=0)
    h_to_4h = sd["transformer.encoder.layers.1.mlp.dense_h_to_4h.weight"]
    torch.testing.assert_close(layer.mlp.gate_up_proj.weight, h_to_4h, atol=0, rtol=0)
    x = torch.randn(3, 64)
    first, second = (x @ h_to_4h.T).chunk(2, dim=-1)
    down = sd["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"]
    torch.testing.assert_close(layer.mlp(x), (torch.nn.functional.silu(first) * second) @ down.T)


def test_generation_settings_carry_over_with_chatglm_stop_ids(tmp_path, caplog):
    cfg = config(_name_or_path="THUDM/chatglm2-6b")
    src = write_checkpoint(
        tmp_path / "src",
        cfg,
        random_state_dict(cfg),
        extra_files={
            "generation_config.json": json.dumps({"do_sample": False, "temperature": 0.8, "max_length": 8192})
        },
    )
    with caplog.at_level(logging.WARNING, logger="lora_finetune.models.chatglm"):
        dst = cg.convert_chatglm(src, tmp_path / "native")
    generation = GenerationConfig.from_pretrained(dst)
    assert (generation.eos_token_id, generation.pad_token_id, generation.max_length) == (2, 0, 8192)
    assert "not carrying temperature" in caplog.text


@pytest.mark.parametrize("fmt,shards", [("bin", 1), ("bin", 3), ("safetensors", 2)])
def test_bin_and_sharded_checkpoints(tmp_path, fmt, shards):
    cfg = config()
    sd = random_state_dict(cfg, seed=3)
    src = write_checkpoint(tmp_path / "src", cfg, sd, fmt=fmt, shards=shards)
    dst = cg.convert_chatglm(src, tmp_path / "native")
    if shards > 1:
        index = json.loads((dst / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == shards
    ids, mask = batch()
    assert_same_logits(native_logits(dst, ids, mask), chatglm_forward(sd, cfg, ids, mask), mask)


def test_checkpoint_without_qkv_bias(tmp_path):
    cfg = config(add_qkv_bias=False)
    sd = random_state_dict(cfg, seed=4)
    dst = cg.convert_chatglm(write_checkpoint(tmp_path / "src", cfg, sd), tmp_path / "native")
    assert json.loads((dst / "config.json").read_text())["attention_bias"] is False
    ids, mask = batch()
    assert_same_logits(native_logits(dst, ids, mask), chatglm_forward(sd, cfg, ids, mask), mask)


# --------------------------------------------------------------------------------------------
# rope_ratio: ChatGLM2-32k divides positions, ChatGLM3-32k multiplies the base
# --------------------------------------------------------------------------------------------

ROPE_CASES = [
    # (config changes, files next to the weights, expected reading)
    ({"_name_or_path": "THUDM/chatglm2-6b-32k"}, {}, "scale_positions"),
    ({"_name_or_path": "THUDM/chatglm3-6b-32k"}, {}, "scale_base"),
    ({"_name_or_path": "THUDM/glm-4-9b-chat"}, {}, "scale_base"),
    ({"_name_or_path": None}, {"modeling_chatglm.py": CHATGLM2_32K_CODE}, "scale_positions"),
    ({"_name_or_path": None}, {"modeling_chatglm.py": CHATGLM3_CODE}, "scale_base"),
    # The shipped code outranks the name (a ChatGLM3 fine-tune saved under a chatglm2 name).
    ({"_name_or_path": "me/chatglm2-finetune"}, {"modeling_chatglm.py": CHATGLM3_CODE}, "scale_base"),
]


@pytest.mark.parametrize("changes,files,reading", ROPE_CASES)
def test_rope_ratio_readings(tmp_path, caplog, changes, files, reading):
    cfg = config(rope_ratio=4, **changes)
    sd = random_state_dict(cfg, seed=5)
    src = write_checkpoint(tmp_path / "src", cfg, sd, extra_files=files)
    with caplog.at_level(logging.INFO, logger="lora_finetune.models.chatglm"):
        dst = cg.convert_chatglm(src, tmp_path / "native")
    assert f"rope_ratio reading for {src}: {reading}" in caplog.text
    rope = json.loads((dst / "config.json").read_text())["rope_parameters"]
    if reading == "scale_positions":
        assert rope == {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    else:
        assert rope == {"rope_type": "default", "rope_theta": 40000.0, "partial_rotary_factor": 0.5}
    ids, mask = batch()
    got = native_logits(dst, ids, mask)
    assert_same_logits(got, chatglm_forward(sd, cfg, ids, mask, rope_mode=reading), mask)
    other = "scale_base" if reading == "scale_positions" else "scale_positions"
    assert not torch.allclose(
        got[mask.bool()], chatglm_forward(sd, cfg, ids, mask, rope_mode=other)[mask.bool()], atol=1e-3
    )


@pytest.mark.parametrize("ratio", [16, 3])
def test_linear_rope_scaling_is_position_division(ratio):
    """transformers' "linear" rope divides the inverse frequencies by the factor, i.e. it computes
    p * (f / r) where ChatGLM2-32k computes (p / r) * f. For ChatGLM2-6B-32k's ratio 16 (a power of
    two) that is bitwise the same; other ratios differ by float32 rounding of the angle (about
    1e-3 rad at position 32k, the same size as the rounding in ChatGLM2's own computation)."""
    from transformers import GlmConfig
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    reading = cg.RopeReading("scale_positions", float(ratio), "test")
    fields = cg.glm_config_fields(Path("."), config(rope_ratio=ratio), "chatglm2", reading)
    rotary = GlmRotaryEmbedding(GlmConfig(**fields))
    positions = torch.arange(0, 32768)[None]
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
    theta = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    angles = (positions[0].float() / ratio)[:, None] * theta
    atol = 0.0 if ratio == 16 else 2e-3
    torch.testing.assert_close(cos[0, :, :4], angles.cos(), atol=atol, rtol=0)
    torch.testing.assert_close(sin[0, :, :4], angles.sin(), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------
# Conversion: refusals
# --------------------------------------------------------------------------------------------


def test_unknown_tensors_are_refused(tmp_path):
    cfg = config()
    sd = random_state_dict(cfg)
    sd["transformer.prefix_encoder.embedding.weight"] = torch.zeros(4, 64)
    src = write_checkpoint(tmp_path / "src", cfg, sd)
    with pytest.raises(ModelError, match=r"unknown tensors transformer\.prefix_encoder\.embedding\.weight"):
        cg.convert_chatglm(src, tmp_path / "native")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_missing_tensors_are_refused(tmp_path):
    cfg = config()
    sd = random_state_dict(cfg)
    del sd["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"]
    del sd["transformer.output_layer.weight"]
    src = write_checkpoint(tmp_path / "src", cfg, sd, fmt="bin")
    with pytest.raises(ModelError) as err:
        cg.convert_chatglm(src, tmp_path / "native")
    assert (
        "missing tensors transformer.encoder.layers.1.mlp.dense_4h_to_h.weight, "
        "transformer.output_layer.weight" in str(err.value)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_shape_mismatch_is_refused_and_leaves_nothing_behind(tmp_path):
    cfg = config()
    sd = random_state_dict(cfg)
    sd["transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"] = torch.zeros(160, 64)
    src = write_checkpoint(tmp_path / "src", cfg, sd)
    with pytest.raises(ModelError, match=r"dense_h_to_4h\.weight has shape \(160, 64\).*\(192, 64\)"):
        cg.convert_chatglm(src, tmp_path / "native")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"add_bias_linear": True}, "add_bias_linear"),
        ({"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm"),
        ({"post_layer_norm": False}, "post_layer_norm"),
        ({"rmsnorm": False}, "rmsnorm"),
        ({"pre_seq_len": 16}, "pre_seq_len"),
        ({"quantization_bit": 4}, "quantization_bit"),
    ],
)
def test_configurations_glm_cannot_represent_are_refused(tmp_path, changes, field):
    cfg = config(**changes)
    src = write_checkpoint(tmp_path / "src", cfg, random_state_dict(config()))
    with pytest.raises(ModelError, match=field):
        cg.convert_chatglm(src, tmp_path / "native")


def test_v1_checkpoint_is_refused_with_advice(tmp_path):
    src = tmp_path / "v1"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps(
            {"model_type": "chatglm", "position_encoding_2d": True, "inner_hidden_size": 16384, "hidden_size": 4096}
        )
    )
    with pytest.raises(ModelError, match="4.27.1"):
        cg.convert_chatglm(src, tmp_path / "native")


def test_existing_destination(v3_checkpoint, tmp_path):
    src, _, _ = v3_checkpoint
    dst = tmp_path / "native"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files"):
        cg.convert_chatglm(src, dst)
    # --overwrite replaces only what this tool made: the user's file is never deleted
    with pytest.raises(ConfigError, match=r"did not make \(notes.txt\)"):
        cg.convert_chatglm(src, dst, overwrite=True)
    assert (dst / "notes.txt").read_text() == "mine"
    (dst / "notes.txt").unlink()
    cg.convert_chatglm(src, dst)  # an empty folder is fine
    with pytest.raises(ConfigError, match="already holds a finished result"):
        cg.convert_chatglm(src, dst)
    cg.convert_chatglm(src, dst, overwrite=True)  # our own folder is replaced
    assert (dst / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]  # no temp folder, no lock file left


# --------------------------------------------------------------------------------------------
# ensure_native
# --------------------------------------------------------------------------------------------


def test_ensure_native_converts_once(tmp_path, monkeypatch):
    cfg = config()
    src = write_checkpoint(tmp_path / "src", cfg, random_state_dict(cfg))
    cache = tmp_path / "cache"
    first = cg.ensure_native(src, cache)
    assert GlmForCausalLM.from_pretrained(first).config.model_type == "glm"

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(cg, "convert_chatglm", fail)
    assert cg.ensure_native(src, cache) == first
    monkeypatch.undo()

    # A changed source is a different cache entry; a damaged entry is converted again.
    (src / "config.json").write_text(json.dumps(config(layernorm_epsilon=1e-6)))
    second = cg.ensure_native(src, cache)
    assert second != first
    assert json.loads((second / "config.json").read_text())["rms_norm_eps"] == 1e-6
    (second / cg.CONVERSION_INFO).unlink()
    assert cg.ensure_native(src, cache) == second
    assert (second / cg.CONVERSION_INFO).is_file()


# --------------------------------------------------------------------------------------------
# Version detection
# --------------------------------------------------------------------------------------------


def _folder(tmp_path: Path, cfg: dict, files: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "detect"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return folder


V3_TOKENIZER_CODE = (
    'role_special_tokens = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]\n'
    'special_tokens = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"] + role_special_tokens\n'
)
V2_TOKENIZER_CODE = 'special_tokens = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]\n'


@pytest.mark.parametrize(
    "cfg,files,version",
    [
        ({"model_type": "chatglm", "position_encoding_2d": True, "inner_hidden_size": 16384}, {}, "chatglm"),
        (config(), {}, "chatglm3"),
        (config(_name_or_path="THUDM/chatglm2-6b"), {}, "chatglm2"),
        (config(_name_or_path="THUDM/glm-4-9b-chat"), {}, "glm4"),
        (config(_name_or_path=None), {"tokenization_chatglm.py": V3_TOKENIZER_CODE}, "chatglm3"),
        (config(_name_or_path=None), {"tokenization_chatglm.py": V2_TOKENIZER_CODE}, "chatglm2"),
        (
            config(_name_or_path=None),
            {"tokenizer_config.json": '{"chat_template": "<|user|>..<|observation|>"}'},
            "chatglm3",
        ),
        (config(_name_or_path="THUDM/chatglm2-6b"), {"tokenization_chatglm.py": V3_TOKENIZER_CODE}, "chatglm3"),
        (config(_name_or_path=None), {"modeling_chatglm.py": CHATGLM2_32K_CODE}, "chatglm2"),
    ],
)
def test_chatglm_version(tmp_path, cfg, files, version):
    folder = _folder(tmp_path, cfg, files)
    assert cg.is_chatglm_folder(folder)
    assert cg.chatglm_version(folder) == version


def test_chatglm_version_from_config_objects_and_ambiguity(tmp_path):
    assert cg.chatglm_version(config(_name_or_path="THUDM/chatglm2-6b")) == "chatglm2"
    from transformers import PretrainedConfig

    assert cg.chatglm_version(PretrainedConfig(**config())) == "chatglm3"
    with pytest.raises(ModelError, match="version='chatglm2'"):
        cg.chatglm_version(config(_name_or_path=None))
    with pytest.raises(ModelError, match="Cannot tell ChatGLM2 from ChatGLM3"):
        cg.chatglm_version(_folder(tmp_path, config(_name_or_path=None)))


def test_is_chatglm_folder_negative(tmp_path):
    assert not cg.is_chatglm_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not cg.is_chatglm_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not cg.is_chatglm_folder(tmp_path)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory) -> tuple[Path, spm.SentencePieceProcessor]:
    folder = tmp_path_factory.mktemp("spm") / "src"
    sp = train_sentencepiece(folder)
    return folder, sp


def converted(folder: Path, version: str, tmp: Path):
    out = cg.convert_chatglm_tokenizer(folder, tmp / f"tok-{version}", version=version)
    return AutoTokenizer.from_pretrained(out)


ORDINARY_TEXT = [
    "你好，世界",
    "hello world",
    "  two  spaces  and trailing ",
    "数字 12345 和 3.14",
    "混合text中文mixed",
    "\n换行\n\t制表",
    "unknown ☃ symbols 😀",
    "sophisticated models",
    "a",
    " ",
    "",
]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"model_type": "unigram"},
        {"normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True},
        {"add_dummy_prefix": False},
    ],
    ids=["bpe", "unigram", "nfkc", "no-prefix"],
)
def test_ordinary_text_gets_sentencepiece_ids(tmp_path, options):
    sp = train_sentencepiece(tmp_path / "src", **options)
    tok = converted(tmp_path / "src", "chatglm2", tmp_path)
    for text in ORDINARY_TEXT:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(sp.encode(text)), text


def test_special_tokens_ids_and_padding(spm_folder, tmp_path):
    folder, sp = spm_folder
    n = sp.vocab_size()
    tok3 = converted(folder, "chatglm3", tmp_path)
    assert tok3.convert_tokens_to_ids(cg.CHATGLM3_SPECIAL_TOKENS) == list(range(n, n + 9))
    assert tok3.convert_tokens_to_ids(["<|user|>", "<|observation|>"]) == [n + 6, n + 8]
    assert len(tok3) == n + 9
    tok2 = converted(folder, "chatglm2", tmp_path)
    assert tok2.convert_tokens_to_ids(cg.CHATGLM2_SPECIAL_TOKENS) == list(range(n, n + 5))
    assert len(tok2) == n + 5
    for tok in (tok2, tok3):
        assert (tok.eos_token, tok.eos_token_id) == ("</s>", 2)
        assert (tok.pad_token, tok.pad_token_id, tok.unk_token_id) == ("<unk>", 0, 0)
        assert tok.padding_side == "left"
        # tokenizer(text) adds the [gMASK] sop prefix like the original build_inputs_with_special_tokens.
        assert tok("你好")["input_ids"] == [n + 1, n + 3] + sp.encode("你好")
        assert tok("你好", "再见")["input_ids"] == [n + 1, n + 3] + sp.encode("你好") + sp.encode("再见") + [2]
        padded = tok(["你好", "hello world 2023"], padding=True)
        short = len(sp.encode("你好")) + 2
        width = len(padded["input_ids"][1])
        assert padded["input_ids"][0][: width - short] == [0] * (width - short)
        assert padded["attention_mask"][0] == [0] * (width - short) + [1] * short
    # "sop"/"eop" inside words stay text.
    assert tok3("sophisticated", add_special_tokens=False)["input_ids"] == sp.encode("sophisticated")
    # The stop tokens come from the template: the GLM family's end-of-turn tokens that the
    # tokenizer has (ChatGLM2's has no role tokens, so it stops on </s> only).
    assert template_for("chat", tok3, "glm").stop_tokens == ("</s>", "<|user|>", "<|observation|>")
    assert template_for("chat", tok2, "glm").stop_tokens == ("</s>",)


def test_chatglm3_chat_template_matches_build_chat_input(spm_folder, tmp_path):
    folder, sp = spm_folder
    n = sp.vocab_size()
    special = {t: n + i for i, t in enumerate(cg.CHATGLM3_SPECIAL_TOKENS)}
    tok = converted(folder, "chatglm3", tmp_path)
    messages = [
        {"role": "system", "content": "你是一个助手"},
        {"role": "user", "content": "你好 model"},
        {"role": "assistant", "content": "好的 2023"},
        {"role": "user", "content": "再见"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "[gMASK]sop<|system|>\n 你是一个助手<|user|>\n 你好 model<|assistant|>\n 好的 2023<|user|>\n 再见<|assistant|>"
    )

    # The original: prefix + per message [<|role|>] + encode(f"{metadata}\n") + encode(content), then <|assistant|>.
    want = [special["[gMASK]"], special["sop"]]
    for m in messages:
        want += [special[f"<|{m['role']}|>"]] + sp.encode("\n") + sp.encode(m["content"])
    want.append(special["<|assistant|>"])
    assert tok(text, add_special_tokens=False)["input_ids"] == want
    encoded = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert list(encoded["input_ids"]) == want

    finished = tok.apply_chat_template(messages[:3], tokenize=False)
    assert finished.endswith("<|user|>\n 你好 model<|assistant|>\n 好的 2023")
    # ChatGLM3 tool calls put the tool name in the assistant message's metadata.
    call = [
        {"role": "user", "content": "天气"},
        {"role": "assistant", "metadata": "weather", "content": "tool_call()"},
        {"role": "observation", "content": "晴"},
    ]
    call_text = tok.apply_chat_template(call, tokenize=False, add_generation_prompt=True)
    assert call_text == "[gMASK]sop<|user|>\n 天气<|assistant|>weather\n tool_call()<|observation|>\n 晴<|assistant|>"
    want = [special["[gMASK]"], special["sop"]]
    for m in call:
        want += [special[f"<|{m['role']}|>"]] + sp.encode(f"{m.get('metadata', '')}\n") + sp.encode(m["content"])
    assert tok(call_text, add_special_tokens=False)["input_ids"] == want + [special["<|assistant|>"]]
    tools = [{"role": "system", "content": "sys", "tools": [{"name": "天气"}]}, {"role": "user", "content": "q"}]
    assert tok.apply_chat_template(tools, tokenize=False, add_generation_prompt=True) == (
        '[gMASK]sop<|system|>\n sys\n[\n    {\n        "name": "天气"\n    }\n]<|user|>\n q<|assistant|>'
    )


def test_chatglm2_chat_template_matches_build_prompt(spm_folder, tmp_path):
    folder, sp = spm_folder
    n = sp.vocab_size()
    tok = converted(folder, "chatglm2", tmp_path)
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好，我是助手"},
        {"role": "user", "content": "今天 天气"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = "[Round 1]\n\n问：你好\n\n答：你好，我是助手\n\n[Round 2]\n\n问：今天 天气\n\n答："
    assert text == "[gMASK]sop" + prompt
    assert tok(text, add_special_tokens=False)["input_ids"] == [n + 1, n + 3] + sp.encode(prompt)
    done = messages + [{"role": "assistant", "content": "晴天"}]
    assert tok.apply_chat_template(done, tokenize=False) == "[gMASK]sop" + prompt + "晴天"
    with pytest.raises(Exception, match="system"):
        tok.apply_chat_template([{"role": "system", "content": "x"}] + messages, tokenize=False)


CONVERSATION = [
    {"role": "system", "content": "你是助手"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！"},
    {"role": "user", "content": "天气 today"},
    {"role": "assistant", "content": "晴天 sunny"},
]


@pytest.mark.parametrize("version", ["chatglm2", "chatglm3"])
def test_chat_templates_are_prefix_stable(spm_folder, tmp_path, version):
    """Rendering a conversation's first turns is a prefix of rendering all of it (the property
    templates.py relies on to cut prompts from answers)."""
    tok = converted(spm_folder[0], version, tmp_path)
    chat = CONVERSATION[1:] if version == "chatglm2" else CONVERSATION
    whole = tok.apply_chat_template(chat, tokenize=False)
    for k in range(1, len(chat) + 1):
        next_is_answer = k < len(chat) and chat[k]["role"] == "assistant"
        part = tok.apply_chat_template(chat[:k], tokenize=False, add_generation_prompt=next_is_answer)
        assert whole.startswith(part), (k, part, whole)


def test_chatglm3_training_ids_match_the_official_finetune_script(spm_folder, tmp_path):
    """templates.py's chat template path on the converted tokenizer gives ChatGLM3's finetune_demo
    ids: [gMASK] sop, build_single_message() per turn, eos after the answer; answers learned."""
    from lora_finetune.templates import get_template
    from lora_finetune.templates.encode import encode_segments

    folder, sp = spm_folder
    n = sp.vocab_size()
    special = {t: n + i for i, t in enumerate(cg.CHATGLM3_SPECIAL_TOKENS)}
    tok = converted(folder, "chatglm3", tmp_path)
    template = get_template("chatglm3", tok)
    record = {"system": "你是助手", "messages": [{**m, "input": ""} for m in CONVERSATION[1:]]}
    encoded = encode_segments(template.segments(record), tok, [])
    want, learned = [special["[gMASK]"], special["sop"]], []
    for m in CONVERSATION:
        ids = [special[f"<|{m['role']}|>"]] + sp.encode("\n") + sp.encode(m["content"])
        if m["role"] == "assistant":
            ids.append(2)
            learned += ids[1:]
        want += ids
    assert encoded.input_ids == want
    assert [i for i in encoded.labels if i != -100] == learned


def test_chatglm2_training_ids_match_the_official_ptuning_script(spm_folder, tmp_path):
    """ChatGLM2's ptuning main.py: encode(build_prompt(q), add_special_tokens=True) + encode(answer)
    + [eos], with only the answer and eos learned."""
    from lora_finetune.templates import get_template
    from lora_finetune.templates.encode import encode_segments

    folder, sp = spm_folder
    n = sp.vocab_size()
    tok = converted(folder, "chatglm2", tmp_path)
    record = {
        "system": None,
        "messages": [
            {"role": "user", "content": "天气 today", "input": ""},
            {"role": "assistant", "content": "晴天 sunny", "input": ""},
        ],
    }
    encoded = encode_segments(get_template("chatglm2", tok).segments(record), tok, [])
    answer = sp.encode("晴天 sunny") + [2]
    assert encoded.input_ids == [n + 1, n + 3] + sp.encode("[Round 1]\n\n问：天气 today\n\n答：") + answer
    assert [i for i in encoded.labels if i != -100] == answer


def test_convert_chatglm_writes_tokenizer_and_stop_ids(spm_folder, tmp_path):
    folder, sp = spm_folder
    n = sp.vocab_size()
    cfg = config(padded_vocab_size=n + 12)
    src = write_checkpoint(tmp_path / "src", cfg, random_state_dict(cfg))
    (src / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
    dst = cg.convert_chatglm(src, tmp_path / "native")
    assert GenerationConfig.from_pretrained(dst).eos_token_id == [2, n + 6, n + 8]
    assert json.loads((dst / "config.json").read_text())["eos_token_id"] == [2, n + 6, n + 8]
    tok = AutoTokenizer.from_pretrained(dst)
    assert (
        tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
        == "[gMASK]sop<|user|>\n 你好<|assistant|>"
    )


def test_tokenizer_from_another_model_is_refused(spm_folder, tmp_path):
    folder, sp = spm_folder
    cfg = config()  # padded_vocab_size 128 < SentencePiece pieces + special tokens
    src = write_checkpoint(tmp_path / "src", cfg, random_state_dict(cfg))
    (src / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
    with pytest.raises(ModelError, match="padded_vocab_size is 128"):
        cg.convert_chatglm(src, tmp_path / "native")


# --------------------------------------------------------------------------------------------
# ChatGLM-6B v1 helpers
# --------------------------------------------------------------------------------------------


def test_v1_targets_and_prompt():
    assert family_for("chatglm").lora_targets == ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    assert chatglm_v1_prompt([], "你好") == "你好"
    assert chatglm_v1_prompt([("你好", "你好！"), ("天气", "晴")], "明天呢") == (
        "[Round 0]\n问：你好\n答：你好！\n[Round 1]\n问：天气\n答：晴\n[Round 2]\n问：明天呢\n答："
    )


def test_v1_template_segments():
    template = ChatGLMV1Template()
    record = {
        "system": None,
        "messages": [
            {"role": "user", "content": "你好", "input": ""},
            {"role": "assistant", "content": "你好！", "input": ""},
            {"role": "user", "content": "天气", "input": "北京"},
            {"role": "assistant", "content": "晴", "input": ""},
        ],
    }
    assert template.segments(record) == [
        ("[Round 0]\n问：你好\n答：你好！\n[Round 1]\n问：天气\n北京\n答：[gMASK]", False),
        ("<sop>晴<eop>", True),
    ]
    single = {"system": "简短回答", "messages": [{"role": "user", "content": "你好", "input": ""}]}
    assert template.segments(single, add_generation_prompt=True) == [("简短回答\n你好[gMASK]<sop>", False)]
    with pytest.raises(ModelError, match="user turn"):
        template.segments(record, add_generation_prompt=True)


def test_v1_transformers_version_checks():
    cg.check_v1_transformers_version("4.27.1")
    cg.check_v1_transformers_version("4.33.3")
    for bad in ("4.34.0", "5.24.0", "4.20.0"):
        with pytest.raises(ModelError, match=r"4\.27\.1"):
            cg.check_v1_transformers_version(bad)
    err = cg.explain_v1_load_failure(AttributeError("'ChatGLMTokenizer' object has no attribute 'sp_tokenizer'"))
    assert isinstance(err, ModelError)
    assert "sp_tokenizer" in str(err) and "4.23.1 to 4.33.x" in str(err)
    generic = cg.explain_v1_load_failure(RuntimeError("something else"))
    assert "4.27.1" in str(generic)


def test_train_and_generate_on_a_chatglm3_folder_natively(spm_folder, tmp_path, monkeypatch):
    """The whole pipeline on a ChatGLM3-format folder: converted once, trained with native GLM
    targets and the ChatGLM3 chat layout, reloaded for generation: no remote code anywhere."""
    from lora_finetune.training import train
    from lora_finetune.use import generate, load_for_inference

    from helpers import tiny_config

    monkeypatch.setenv("LORA_FINETUNE_CACHE", str(tmp_path / "cache"))
    folder, sp = spm_folder
    cfg = config(padded_vocab_size=sp.vocab_size() + 12)
    src = write_checkpoint(tmp_path / "chatglm3", cfg, random_state_dict(cfg))
    (src / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
    res = train(tiny_config(src, tmp_path / "run", steps=2))
    assert res.resolved.model_type == "glm"
    assert tuple(res.resolved.target_modules) == family_for("glm").lora_targets
    assert res.resolved.template == "chat"
    assert (tmp_path / "cache" / "chatglm").is_dir()  # converted once, into the cache
    # the adapter names the folder the user gave, not the converted cache; the record has both
    adapter_config = json.loads((res.output_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(src)
    assert res.resolved.base_model.startswith(str(tmp_path / "cache"))
    im = load_for_inference(res.output_dir)
    n = sp.vocab_size()
    assert {2, n + 6, n + 8} <= set(im.stop_token_ids)  # </s>, <|user|>, <|observation|>
    rec = {"system": None, "messages": [{"role": "user", "content": "你好", "input": ""}]}
    [out] = generate(im, [rec], max_new_tokens=4)
    assert out["tokens"] <= 4


def test_convert_chatglm_command(spm_folder, tmp_path, capsys):
    from lora_finetune.cli import main

    folder, sp = spm_folder
    cfg = config(padded_vocab_size=sp.vocab_size() + 12)
    src = write_checkpoint(tmp_path / "chatglm3", cfg, random_state_dict(cfg))
    (src / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
    assert main(["convert-chatglm", str(src), str(tmp_path / "native")]) == 0
    assert (tmp_path / "native" / "manifest.json").is_file()
    assert "native GlmForCausalLM" in capsys.readouterr().out
    # a second run refuses to overwrite, with exit code 2 and a message
    assert main(["convert-chatglm", str(src), str(tmp_path / "native")]) == 2
    assert "already holds a finished result" in capsys.readouterr().err


def test_adapter_exported_for_the_original_chatglm_gives_the_same_logits(spm_folder, tmp_path, monkeypatch):
    """export-adapter --format chatglm: q/k/v LoRA fused into query_key_value (stacked A,
    block-diagonal B, rank 3r), the rest renamed. Applied to the ORIGINAL ChatGLM weights through
    the independent reference forward, it gives the logits the native adapter gives through the
    converted model."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from lora_finetune.cli import main
    from lora_finetune.training import train

    from helpers import tiny_config

    monkeypatch.setenv("LORA_FINETUNE_CACHE", str(tmp_path / "cache"))
    folder, sp = spm_folder
    cfg = config(padded_vocab_size=sp.vocab_size() + 12)
    sd = random_state_dict(cfg)
    src = write_checkpoint(tmp_path / "chatglm3", cfg, sd)
    (src / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
    res = train(tiny_config(src, tmp_path / "run", steps=3, learning_rate=5e-2))
    assert (
        main(
            [
                "export-adapter",
                "--adapter",
                str(res.output_dir),
                "--format",
                "chatglm",
                "--output",
                str(tmp_path / "for-chatglm"),
            ]
        )
        == 0
    )
    out = tmp_path / "for-chatglm"
    exported = json.loads((out / "adapter_config.json").read_text())
    r, alpha = exported["r"], exported["lora_alpha"]
    assert exported["rank_pattern"] == {"query_key_value": 3 * r}
    assert exported["alpha_pattern"] == {"query_key_value": 3 * alpha}
    assert exported["target_modules"] == ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"]
    assert exported["base_model_name_or_path"] == str(src)

    # Fold the exported adapter into the original ChatGLM state dict, as peft would.
    lora = load_file(str(out / "adapter_model.safetensors"))
    merged = dict(sd)
    for name, a in lora.items():
        if ".lora_A." not in name:
            continue
        b = lora[name.replace(".lora_A.", ".lora_B.")]
        target = name.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        module = target.split(".")[-2]
        rank = exported["rank_pattern"].get(module, r)
        scale = exported["alpha_pattern"].get(module, alpha) / rank
        assert a.shape[0] == rank
        merged[target] = sd[target] + scale * (b @ a)
    ids, mask = batch()
    want = chatglm_forward(merged, cfg, ids, mask)

    native = GlmForCausalLM.from_pretrained(res.resolved.base_model, dtype=torch.float32).eval()
    native = PeftModel.from_pretrained(native, str(res.output_dir)).eval()
    with torch.no_grad():
        got = native(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert_same_logits(got, want, mask, atol=1e-4)
    base = chatglm_forward(sd, cfg, ids, mask)
    assert (want - base)[mask.bool()].abs().max() > 1e-3  # the adapter really changes the logits


def test_export_adapter_refuses_non_chatglm_adapters(adapter, tmp_path, capsys):
    from lora_finetune.cli import main

    assert (
        main(["export-adapter", "--adapter", str(adapter), "--format", "chatglm", "--output", str(tmp_path / "o")]) == 2
    )
    assert "only for those" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_chatglm3_writes_tools_calls_and_observations(spm_folder, tmp_path):
    """ChatGLM3's tool format from OpenAI-style records: the tool list in a system turn, the call
    as `<|assistant|>NAME` + a tool_call(...) block (learned), the result as `<|observation|>`
    (masked)."""
    from lora_finetune.data import records_from_rows
    from lora_finetune.templates import get_template

    folder, _ = spm_folder
    tok = converted(folder, "chatglm3", tmp_path)
    weather = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    [rec] = records_from_rows(
        [
            {
                "tools": [weather],
                "messages": [
                    {"role": "user", "content": "北京天气"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"name": "get_weather", "arguments": {"city": "北京"}}],
                    },
                    {"role": "tool", "content": "晴"},
                    {"role": "assistant", "content": "北京晴。"},
                ],
            }
        ]
    )
    segments = get_template("chat", tok).segments(rec)
    text = "".join(t for t, _ in segments)
    assert text.startswith("[gMASK]sop<|system|>\n Answer the following questions as best as you can.")
    assert '"name": "get_weather"' in text and "<|observation|>\n 晴" in text
    learned = [t for t, learn in segments if learn]
    assert learned == ['get_weather\n ```python\ntool_call(city="北京")\n```</s>', "\n 北京晴。</s>"]
