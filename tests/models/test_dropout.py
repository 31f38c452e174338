"""CheapDropout (models/dropout.py): the same dropout as torch's, with a cheaper CPU mask."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_finetune.models.dropout import CheapDropout, keep_mask, use_cheap_cpu_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_keep_fraction_and_unbiased_scale(p):
    torch.manual_seed(0)
    keep, scale = keep_mask((1000, 1000), p)
    frac = keep.float().mean().item()
    # 1e6 Bernoulli draws: standard error <= 5e-4
    assert abs(frac - (1 - p)) < 3e-3
    # the scale is 1 / the exact keep probability of the 16-bit threshold
    dropped = round(p * 65536)
    assert scale == pytest.approx(65536 / (65536 - dropped))
    assert abs(scale - 1 / (1 - p)) < 1e-4 / (1 - p)


def test_every_16_bit_lane_is_uniform():
    """The four 16-bit values of each 64-bit draw are all used; none may be biased (plain int64
    random_() leaves the top bit 0, which would keep every fourth element far more often)."""
    torch.manual_seed(1)
    keep, _ = keep_mask((400_000, 4), 0.5)
    for lane in range(4):
        assert abs(keep[:, lane].float().mean().item() - 0.5) < 5e-3


def test_forward_and_backward_are_dropout():
    torch.manual_seed(2)
    x = torch.randn(300, 64, requires_grad=True)
    drop = CheapDropout(0.1).train()
    y = drop(x)
    kept = y != 0
    _, scale = keep_mask((1,), 0.1)
    assert torch.allclose(y[kept], x[kept] * scale)
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * scale)
    # unbiased: E[y] == x over many masks
    xs = torch.ones(2000, 500)
    assert drop(xs).mean().item() == pytest.approx(1.0, abs=3e-3)


def test_identity_in_eval_and_at_p_zero_and_repeatable_under_a_seed():
    x = torch.randn(50, 20)
    assert torch.equal(CheapDropout(0.3).eval()(x), x)
    assert torch.equal(CheapDropout(0.0).train()(x), x)
    d = CheapDropout(0.3).train()
    torch.manual_seed(7)
    a = d(x)
    torch.manual_seed(7)
    b = d(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, d(x))  # the generator moved on


def test_bad_probability_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        CheapDropout(1.0)


def test_lora_dropouts_are_swapped_and_others_left_alone():
    from peft import LoraConfig, get_peft_model

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8)
            self.v = nn.Linear(8, 8)
            self.attn_dropout = nn.Dropout(0.1)

        def forward(self, x):
            return self.v(self.attn_dropout(self.q(x)))

    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=4, lora_dropout=0.05, target_modules=["q", "v"]))
    assert use_cheap_cpu_dropout(model) == 2
    swapped = [m for m in model.modules() if isinstance(m, CheapDropout)]
    assert len(swapped) == 2 and all(m.p == 0.05 for m in swapped)
    assert type(model.base_model.model.attn_dropout) is nn.Dropout
    # the adapter's saved weights do not change: dropout has no state
    assert not any("dropout" in k for k in model.state_dict())
    model(torch.randn(3, 8)).sum().backward()


def test_training_uses_it(tiny_qwen3):
    """attach_lora (the training path) puts CheapDropout on every LoRA branch."""
    from transformers import AutoModelForCausalLM

    from lora_finetune.config import build_config
    from lora_finetune.models import attach_lora

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3)
    cfg = build_config({"model_name": str(tiny_qwen3), "dropout": 0.1})
    peft_model = attach_lora(model, cfg, ["q_proj", "v_proj"])
    drops = [m for m in peft_model.modules() if isinstance(m, CheapDropout)]
    assert len(drops) == 2 * model.config.num_hidden_layers
    assert not any(type(m) is nn.Dropout and m.p == 0.1 for m in peft_model.modules())
