"""Adding a model family is one registry entry: a toy architecture registered in-process trains,
gets its family's targets, template and stop tokens, and is listed and estimated by the tools."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lora_finetune.models.families import (
    DEFAULT_FAMILY,
    Family,
    family_for,
    known_families,
    register_family,
    unregister_family,
)

from helpers import CHATML, tiny_config, train_tokenizer


class ToyConfig(LlamaConfig):
    model_type = "toyllama"


class ToyForCausalLM(LlamaForCausalLM):
    config_class = ToyConfig


AutoConfig.register("toyllama", ToyConfig, exist_ok=True)
AutoModelForCausalLM.register(ToyConfig, ToyForCausalLM, exist_ok=True)

TOY = Family(
    "toy",
    ("toyllama",),
    lora_targets=("q_proj", "v_proj"),
    end_of_turn=("<|im_start|>",),  # an odd choice on purpose: only this family stops on it
    auto_template="qa",
    layer_roles={
        "q_proj": "attn_in",
        "k_proj": "attn_in",
        "v_proj": "attn_in",
        "o_proj": "attn_out",
        "gate_proj": "mlp_in",
        "up_proj": "mlp_in",
        "down_proj": "mlp_out",
    },
)


@pytest.fixture
def toy_family():
    register_family(TOY)
    yield TOY
    unregister_family("toy")


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toyllama")
    train_tokenizer(folder, CHATML)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    cfg = ToyConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    ToyForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_unknown_model_types_get_the_default_family():
    assert family_for("toyllama") is DEFAULT_FAMILY
    assert family_for(None) is DEFAULT_FAMILY


def test_registering_and_unregistering(toy_family):
    assert family_for("toyllama") is toy_family
    assert toy_family in known_families()
    with pytest.raises(ValueError, match="already belongs to family 'qwen'"):
        register_family(Family("other", ("qwen3",), ("q_proj",)))
    with pytest.raises(ValueError, match="names no model_type"):
        register_family(Family("empty", (), ("q_proj",)))
    unregister_family("toy")
    assert family_for("toyllama") is DEFAULT_FAMILY
    register_family(toy_family)


def test_a_registered_family_is_used_end_to_end(toy_family, toy_folder, tmp_path):
    from lora_finetune.tools import list_modules
    from lora_finetune.training import train
    from lora_finetune.use import load_for_inference

    res = train(tiny_config(toy_folder, tmp_path / "run", steps=2, eval_fraction=0.0))
    assert res.resolved.model_type == "toyllama"
    assert res.resolved.target_modules == ["q_proj", "v_proj"]  # the family's targets
    assert res.resolved.template == "qa"  # the family's `auto` choice
    im = load_for_inference(res.output_dir)
    assert im.template.name == "qa"  # read back from the run record
    assert im.tokenizer.eos_token_id in im.stop_token_ids

    # The family's end-of-turn tokens are the stop tokens of its chat formats.
    from lora_finetune.models.families import template_for

    assert template_for("chat", im.tokenizer, "toyllama").stop_tokens == ("<|im_end|>", "<|im_start|>")
    assert template_for("chat", im.tokenizer, "llama").stop_tokens == ("<|im_end|>",)

    report = list_modules(str(toy_folder), r=4)
    assert report.targets == ["q_proj", "v_proj"]
    assert {g.suffix for g in report.groups if g.auto} == {"q_proj", "v_proj"}


def test_without_the_entry_the_same_model_trains_with_generic_defaults(toy_folder, tmp_path):
    """No entry: every linear layer but the head (a safe default), and the chat template."""
    from lora_finetune.training import train

    res = train(tiny_config(toy_folder, tmp_path / "run", steps=1, eval_fraction=0.0))
    assert res.resolved.template == "chat"
    assert set(res.resolved.target_modules) >= {"q_proj", "v_proj", "down_proj"}
    assert "lm_head" not in res.resolved.target_modules


def test_estimate_uses_the_family_targets(toy_family, toy_folder):
    from lora_finetune.tools import Setup, estimate_memory, load_shape

    est = estimate_memory(load_shape(str(toy_folder)), Setup(r=4, max_length=64, batch_size=1))
    assert est.targets == ["q_proj", "v_proj"]
    # per layer: q_proj 64->64 and v_proj 64->32 (2 kv heads of 16): r * (in + out) each
    assert est.lora_params == 2 * 4 * ((64 + 64) + (64 + 32))
