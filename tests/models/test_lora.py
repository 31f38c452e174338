"""Tests for lora_finetune.lora: same numbers as PEFT, merges exactly, trains, saves in PEFT's format.

Everything runs offline on a tiny randomly initialised Llama built in-process (no hub downloads).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from lora_finetune.errors import ModelError
from lora_finetune.models.lora import (
    LoRALinear,
    inject_lora,
    linear_suffixes,
    load_peft_adapter_into,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_peft_adapter,
    unmerge_lora,
)

TARGETS = ["q_proj", "v_proj", "down_proj"]
R, ALPHA = 4, 8


def tiny_llama(seed: int = 0, **overrides: object) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **overrides,
    )
    return LlamaForCausalLM(config).eval()


def input_ids(seed: int = 1, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def randomize_lora_b(model: nn.Module, seed: int = 2) -> None:
    """B starts at zero, which would make every comparison trivially pass; give it values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            w = layer.lora_B.weight
            w.copy_(torch.randn(w.shape, generator=gen) * 0.1)


def peft_copy_of(ours: nn.Module, base: nn.Module, targets: list[str], dropout: float = 0.0) -> PeftModel:
    """A PEFT model on a copy of `base` whose A and B are copied from our LoRA model."""
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=targets)
    )
    peft_params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for key, value in lora_state_dict(ours).items():
            # Saved files drop the adapter name; in memory PEFT keeps it: lora_A.default.weight.
            in_memory = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            )
            peft_params[in_memory].copy_(value)
    return peft_model.eval()


@pytest.fixture
def base() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def ours(base: LlamaForCausalLM) -> LlamaForCausalLM:
    model = copy.deepcopy(base)
    inject_lora(model, TARGETS, r=R, alpha=ALPHA, dropout=0.0)
    randomize_lora_b(model)
    return model.eval()


# --- same numbers as PEFT ---------------------------------------------------------------------


def test_layer_matches_peft_layer() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 24)
    peft_net = get_peft_model(
        nn.Sequential(copy.deepcopy(linear)), LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["0"])
    )
    peft_layer = peft_net.base_model.model[0]
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()

    layer = LoRALinear(copy.deepcopy(linear), r=R, alpha=ALPHA)
    with torch.no_grad():
        layer.lora_A.weight.copy_(peft_layer.lora_A["default"].weight)
        layer.lora_B.weight.copy_(peft_layer.lora_B["default"].weight)

    x = torch.randn(3, 5, 16)
    assert layer.scaling == peft_layer.scaling["default"] == ALPHA / R
    torch.testing.assert_close(layer(x), peft_layer(x), rtol=1.3e-6, atol=1e-6)
    assert not torch.equal(layer(x), linear(x)), "B is non-zero, so the LoRA branch must contribute"


def test_dropout_is_on_the_input_like_peft() -> None:
    """Same seed -> same dropout mask; only equal if both drop x (not the LoRA output)."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 24)
    peft_net = get_peft_model(
        nn.Sequential(copy.deepcopy(linear)), LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.5, target_modules=["0"])
    )
    peft_layer = peft_net.base_model.model[0]
    layer = LoRALinear(copy.deepcopy(linear), r=R, alpha=ALPHA, dropout=0.5)
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
        layer.lora_A.weight.copy_(peft_layer.lora_A["default"].weight)
        layer.lora_B.weight.copy_(peft_layer.lora_B["default"].weight)
    peft_layer.train()
    layer.train()

    x = torch.randn(4, 16)
    torch.manual_seed(123)
    expected = peft_layer(x)
    torch.manual_seed(123)
    got = layer(x)
    torch.testing.assert_close(got, expected, rtol=1.3e-6, atol=1e-6)


def test_whole_model_logits_match_peft(base: LlamaForCausalLM, ours: LlamaForCausalLM) -> None:
    peft_model = peft_copy_of(ours, base, TARGETS)
    ids = input_ids()
    with torch.no_grad():
        got = ours(ids).logits
        expected = peft_model(input_ids=ids).logits
        plain = base(ids).logits
    torch.testing.assert_close(got, expected, rtol=1.3e-6, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-4), "the adapter must change the logits"


def test_state_dict_keys_are_the_ones_peft_saves(
    tmp_path: Path, base: LlamaForCausalLM, ours: LlamaForCausalLM
) -> None:
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS))
    peft_model.save_pretrained(tmp_path)
    peft_saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    mine = lora_state_dict(ours)
    assert set(mine) == set(peft_saved)
    assert all(mine[k].shape == peft_saved[k].shape for k in mine)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in mine


# --- merge / unmerge --------------------------------------------------------------------------


def test_merge_equals_unmerged_and_unmerge_restores(ours: LlamaForCausalLM) -> None:
    ids = input_ids()
    q_proj = lora_layers(ours)["model.layers.0.self_attn.q_proj"]
    original_weight = q_proj.base_layer.weight.detach().clone()
    with torch.no_grad():
        unmerged = ours(ids).logits
        merge_lora(ours)
        assert q_proj.merged
        assert not torch.allclose(q_proj.base_layer.weight, original_weight), "delta_W was folded in"
        merged = ours(ids).logits  # would differ if forward added the branch a second time
        unmerge_lora(ours)
        again = ours(ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q_proj.base_layer.weight, original_weight, rtol=0, atol=1e-6)


def test_merged_layer_is_a_plain_linear_with_delta_weight() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(5, 8)
    expected = layer(x)
    w_plus_delta = layer.base_layer.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, w_plus_delta)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_merge_refuses_tied_weights() -> None:
    model = tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    inject_lora(model, ["lm_head"], r=R, alpha=ALPHA)
    with pytest.raises(ModelError, match="shared"):
        merge_lora(model)


# --- initialisation: the reference notes' bug ------------------------------------------------


def grads_after_one_backward(layer: LoRALinear) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    target = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    loss = ((layer(x) - target) ** 2).mean()
    loss.backward()
    return layer.lora_A.weight.grad, layer.lora_B.weight.grad


def test_zero_zero_init_never_trains() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=4)
    nn.init.zeros_(layer.lora_A.weight)  # the reference notes' initialisation
    grad_a, grad_b = grads_after_one_backward(layer)
    assert torch.count_nonzero(grad_a) == 0
    assert torch.count_nonzero(grad_b) == 0


def test_kaiming_zero_init_gets_a_gradient_for_b() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0  # starts exactly as the base layer
    assert torch.count_nonzero(layer.lora_A.weight) > 0
    grad_a, grad_b = grads_after_one_backward(layer)
    assert torch.count_nonzero(grad_b) > 0
    assert torch.count_nonzero(grad_a) == 0  # B = 0 still blocks A's gradient for one step


def test_fresh_adapter_does_not_change_the_model(base: LlamaForCausalLM) -> None:
    model = copy.deepcopy(base)
    inject_lora(model, TARGETS, r=R, alpha=ALPHA)
    ids = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=0)


# --- training ---------------------------------------------------------------------------------


def test_training_reduces_loss_and_keeps_base_frozen(base: LlamaForCausalLM) -> None:
    model = copy.deepcopy(base)
    names = inject_lora(model, TARGETS, r=R, alpha=ALPHA, dropout=0.0)
    assert len(names) == 2 * len(TARGETS)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".lora_A.weight", ".lora_B.weight")) for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = input_ids(batch=4, length=16)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < losses[0] - 1e-3, losses
    for name, param in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), f"{name} changed but should be frozen"


# --- PEFT-format files ------------------------------------------------------------------------


def test_saved_adapter_loads_in_peft_with_equal_logits(
    tmp_path: Path, base: LlamaForCausalLM, ours: LlamaForCausalLM
) -> None:
    out = save_peft_adapter(
        ours,
        tmp_path / "adapter",
        base_model_name_or_path="tiny-llama",
        target_modules=TARGETS,
        r=R,
        alpha=ALPHA,
        dropout=0.05,
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == R and config["lora_alpha"] == ALPHA
    assert sorted(config["target_modules"]) == sorted(TARGETS)
    assert config["base_model_name_or_path"] == "tiny-llama"

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), out).eval()
    ids = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, ours(ids).logits, rtol=1.3e-6, atol=1e-5)


def test_saving_from_a_merged_model_stores_the_same_adapter(tmp_path: Path, ours: LlamaForCausalLM) -> None:
    before = lora_state_dict(ours)
    merge_lora(ours)
    save_peft_adapter(
        ours, tmp_path, base_model_name_or_path=None, target_modules=TARGETS, r=R, alpha=ALPHA, dropout=0.0
    )
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(saved) == set(before) and all(torch.equal(saved[k], before[k]) for k in saved)


def test_save_rejects_a_config_that_does_not_describe_the_layers(tmp_path: Path, ours: LlamaForCausalLM) -> None:
    with pytest.raises(ModelError, match="alpha"):
        save_peft_adapter(
            ours, tmp_path, base_model_name_or_path=None, target_modules=TARGETS, r=R, alpha=2 * ALPHA, dropout=0.0
        )
    with pytest.raises(ModelError, match="matches none"):
        save_peft_adapter(
            ours, tmp_path, base_model_name_or_path=None, target_modules=["q_proj"], r=R, alpha=ALPHA, dropout=0.0
        )


def test_peft_adapter_loads_into_our_layers(tmp_path: Path, base: LlamaForCausalLM) -> None:
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    peft_model.save_pretrained(tmp_path)

    model = copy.deepcopy(base)
    names = load_peft_adapter_into(model, tmp_path)
    assert len(names) == 2 * len(TARGETS)
    ids = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(ids).logits, peft_model.eval()(input_ids=ids).logits, rtol=1.3e-6, atol=1e-5
        )


# --- targets and errors -----------------------------------------------------------------------


def test_target_matching_follows_peft(base: LlamaForCausalLM) -> None:
    model = copy.deepcopy(base)
    assert inject_lora(model, ["model.layers.1.self_attn.q_proj"], r=R, alpha=ALPHA) == [
        "model.layers.1.self_attn.q_proj"
    ]
    with pytest.raises(ModelError):
        inject_lora(copy.deepcopy(base), ["proj"], r=R, alpha=ALPHA)  # not a whole name component


def test_no_match_raises_and_lists_linear_modules(base: LlamaForCausalLM) -> None:
    with pytest.raises(ModelError) as excinfo:
        inject_lora(copy.deepcopy(base), ["query_key_value"], r=R, alpha=ALPHA)
    message = str(excinfo.value)
    assert "query_key_value" in message
    for suffix in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"):
        assert suffix in message
    assert linear_suffixes(base) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    )


@pytest.mark.parametrize("r, alpha, dropout", [(0, 8, 0.0), (4, 0, 0.0), (4, 8, 1.0)])
def test_bad_hyperparameters_raise(base: LlamaForCausalLM, r: int, alpha: float, dropout: float) -> None:
    with pytest.raises(ModelError):
        inject_lora(copy.deepcopy(base), TARGETS, r=r, alpha=alpha, dropout=dropout)
