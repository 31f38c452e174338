"""`lora-finetune modules`: linear layers grouped by name, what `auto` targets, LoRA cost."""

from __future__ import annotations

import pytest
from torch import nn

from lora_finetune.config import default_cache_dir
from lora_finetune.models.families import family_for


def _by_name(groups):
    return {g.suffix: g for g in groups}


def test_qwen3(tiny_models):
    from lora_finetune.tools.modules import list_modules

    rep = list_modules(str(tiny_models["qwen3"]), r=4)
    g = _by_name(rep.groups)
    assert rep.model_type == "qwen3"
    assert list(g) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    # hidden 64, 4 heads x 16, 2 kv heads x 16, intermediate 128, 2 layers
    assert g["q_proj"].shapes == [(64, 64)] and g["k_proj"].shapes == [(32, 64)]
    assert g["down_proj"].shapes == [(64, 128)] and g["q_proj"].count == 2
    assert g["q_proj"].params == 2 * 64 * 64
    assert all(g[n].auto for n in list(family_for("qwen3").lora_targets)) and not g["lm_head"].auto
    assert g["lm_head"].output_head and g["lm_head"].tied and g["lm_head"].lora_params == 0
    assert g["k_proj"].lora_params == 2 * 4 * (64 + 32)
    per_layer = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert rep.lora_params == 2 * per_layer
    assert rep.targets == list(family_for("qwen3").lora_targets)


def test_llama_with_explicit_targets(tiny_models):
    from lora_finetune.tools.modules import list_modules

    rep = list_modules(str(tiny_models["llama"]), r=8, target_modules=["q_proj", "v_proj"])
    g = _by_name(rep.groups)
    assert rep.model_type == "llama" and rep.targets == ["q_proj", "v_proj"]
    assert g["q_proj"].targeted == 2 and g["k_proj"].targeted == 0 and g["k_proj"].auto
    assert rep.lora_params == 2 * 8 * ((64 + 64) + (64 + 32))
    assert not g["lm_head"].tied  # llama's config does not tie here


def test_gpt2_conv1d_shapes(tiny_models):
    from lora_finetune.tools.modules import list_modules

    rep = list_modules(str(tiny_models["gpt2"]), r=2)
    g = _by_name(rep.groups)
    assert rep.model_type == "gpt2"
    # Conv1D stores its weight as (in, out); shapes are reported out x in like nn.Linear.
    assert g["c_attn"].shapes == [(192, 64)] and g["c_fc"].shapes == [(256, 64)]
    assert g["c_proj"].shapes == [(64, 64), (64, 256)] and g["c_proj"].count == 4
    assert g["c_attn"].params == 2 * (64 * 192 + 192)  # weights and biases
    assert {n for n, x in g.items() if x.auto} == {"c_attn", "c_proj", "c_fc"}
    assert g["c_proj"].lora_params == 2 * 2 * ((64 + 64) + (256 + 64))


class _GLMLayer(nn.Module):
    def __init__(self, h: int, ffn: int) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(h)
        self.self_attention = nn.Module()
        self.self_attention.query_key_value = nn.Linear(h, h + 2 * 16, bias=True)
        self.self_attention.dense = nn.Linear(h, h, bias=False)
        self.mlp = nn.Module()
        self.mlp.dense_h_to_4h = nn.Linear(h, 2 * ffn, bias=False)
        self.mlp.dense_4h_to_h = nn.Linear(ffn, h, bias=False)


class ChatGLMStandIn(nn.Module):
    """ChatGLM2/3's module names (transformer.encoder.layers.N...), no weights that matter."""

    def __init__(self, h: int = 32, ffn: int = 48, layers: int = 3, vocab: int = 100) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.embedding = nn.Module()
        self.transformer.embedding.word_embeddings = nn.Embedding(vocab, h)
        self.transformer.encoder = nn.Module()
        self.transformer.encoder.layers = nn.ModuleList(_GLMLayer(h, ffn) for _ in range(layers))
        self.transformer.output_layer = nn.Linear(h, vocab, bias=False)


def test_chatglm_named_tree_grouping():
    from lora_finetune.tools.modules import group_linear_modules

    groups, targets, auto = group_linear_modules(ChatGLMStandIn(), "chatglm", r=8)
    g = _by_name(groups)
    assert list(g) == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "output_layer"]
    assert targets == auto == list(family_for("chatglm").lora_targets)
    assert g["query_key_value"].shapes == [(64, 32)] and g["query_key_value"].count == 3
    assert g["query_key_value"].params == 3 * (64 * 32 + 64)
    assert g["dense_h_to_4h"].shapes == [(96, 32)] and g["dense_4h_to_h"].shapes == [(32, 48)]
    assert all(g[n].auto and g[n].targeted == 3 for n in list(family_for("chatglm").lora_targets))
    assert g["output_layer"].output_head and not g["output_layer"].auto
    assert g["output_layer"].lora_params == 0
    assert g["dense"].lora_params == 3 * 8 * (32 + 32)
    assert g["query_key_value"].examples[0] == "transformer.encoder.layers.0.self_attention.query_key_value"


def test_chatglm_explicit_target_subset():
    from lora_finetune.tools.modules import group_linear_modules

    groups, targets, _ = group_linear_modules(ChatGLMStandIn(), "chatglm", r=4, target_modules=["query_key_value"])
    g = _by_name(groups)
    assert targets == ["query_key_value"]
    assert g["query_key_value"].lora_params == 3 * 4 * (32 + 64)
    assert sum(x.lora_params for x in groups) == g["query_key_value"].lora_params


def test_unknown_target_names_the_real_layers(tiny_models):
    from lora_finetune.errors import ModelError
    from lora_finetune.tools.modules import list_modules

    with pytest.raises(ModelError, match="q_proj"):
        list_modules(str(tiny_models["qwen3"]), target_modules=["query_key_value"])


def test_cli_table(tiny_models, capsys):
    from lora_finetune.cli import main

    rc = main(["modules", "--model", str(tiny_models["llama"]), "--r", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    q = next(line for line in lines if line.startswith("q_proj"))
    assert "64x64" in q and "*" in q and f"{2 * 4 * 128:,}" in q
    assert "lm_head" in out and "LoRA at r=4 adds" in out
    rc = main(["modules", "--model", str(tiny_models["llama"]), "--target_modules", "q_proj,v_proj"])
    assert rc == 0 and "-> q_proj, v_proj" in capsys.readouterr().out
    rc = main(["modules", "--model", str(tiny_models["llama"]), "--target_modules", "nope"])
    assert rc == 2 and "match no layer" in capsys.readouterr().err


@pytest.mark.skipif(
    not (default_cache_dir() / "models" / "smollm2-135m-instruct" / "manifest.json").is_file(),
    reason="bundled model not converted yet (make install does it)",
)
def test_bundled_model_matches_training(capsys):
    """LoRA r=8 on auto targets of SmolLM2-135M adds 2,442,240 parameters (what training
    reports as trainable); the tied lm_head is counted once."""
    from lora_finetune.tools.modules import list_modules

    rep = list_modules("smollm2-135m-instruct", r=8)
    assert rep.lora_params == 2_442_240
    assert rep.total_params == 134_515_008
