"""Packing, length grouping and the throughput switches of a training run.

The central check: a packed batch (one row, positions restarting per sample, no attention mask)
gives the same loss as the same samples unpacked, token-weighted, to float32 tolerance, on the
tiny Qwen3 and Llama models (and a tiny native GLM, the ChatGLM3 target), with and without LoRA.
"""

from __future__ import annotations

import json

import pytest
import torch

from lora_finetune.data.collate import IGNORE_INDEX, PadCollator
from lora_finetune.data.demo import dummy_rows
from lora_finetune.data.formats import records_from_rows
from lora_finetune.errors import ConfigError
from lora_finetune.templates import get_template
from lora_finetune.templates.encode import encode_records
from lora_finetune.training.batching import (
    PackedCollator,
    make_collator,
    packed_boundaries,
    padding_stats,
    with_lengths,
)
from lora_finetune.training.kernels import apply_liger, resolve_liger_mode

from helpers import tiny_config


def encoded_rows(tokenizer, n: int = 6) -> list[dict[str, list[int]]]:
    records = records_from_rows(dummy_rows()[:n], source="test")
    enc, _ = encode_records(records, tokenizer, get_template("auto", tokenizer), 768)
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in enc]


def token_weighted_unpacked_loss(model, rows) -> torch.Tensor:
    """Sum of every sample's token losses (alone, unpadded) / number of predicted tokens."""
    total, count = torch.zeros(()), 0
    for r in rows:
        ids = torch.tensor([r["input_ids"]])
        labels = torch.tensor([r["labels"]])
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        total = total + model(input_ids=ids, labels=labels).loss * n
        count += n
    return total / count


def tiny_glm():
    from transformers import GlmConfig, GlmForCausalLM

    torch.manual_seed(0)
    cfg = GlmConfig(
        vocab_size=400,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        partial_rotary_factor=0.5,
        attention_bias=True,
        pad_token_id=0,
    )
    return GlmForCausalLM(cfg)


def load(kind, tiny_models, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    if kind == "glm":
        m = tiny_glm()
        m.config._attn_implementation = attn
        return m
    return AutoModelForCausalLM.from_pretrained(tiny_models[kind], attn_implementation=attn)


@pytest.mark.parametrize("kind", ["qwen3", "llama", "glm"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_token_weighted_unpacked_loss(tiny_models, tiny_tokenizer, kind, attn):
    model = load(kind, tiny_models, attn).eval()
    rows = encoded_rows(tiny_tokenizer)
    assert len({len(r["input_ids"]) for r in rows}) > 1  # different lengths: a real packing case
    packed = PackedCollator(tiny_tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        want = token_weighted_unpacked_loss(model, rows)
        got = model(**packed).loss
        # The padded (per-batch) layout agrees as well: the Trainer's token mean over a batch.
        padded = model(**PadCollator(tiny_tokenizer.pad_token_id)(rows)).loss
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_packed_logits_match_each_sample_alone(tiny_models, tiny_tokenizer, kind):
    model = load(kind, tiny_models).eval()
    rows = encoded_rows(tiny_tokenizer, 3)
    packed = PackedCollator(tiny_tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        out = model(**packed).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([r["input_ids"]])).logits[0] for r in rows])
    torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)


def test_without_use_cache_false_transformers_attends_across_samples(tiny_models, tiny_tokenizer):
    """Why the packed batch carries use_cache=False: with the model's default use_cache=True a
    DynamicCache is built even in training, and transformers then ignores restarting
    position_ids. If this starts passing, transformers fixed it and the flag is harmless."""
    model = load("qwen3", tiny_models).eval()
    assert model.config.use_cache
    rows = encoded_rows(tiny_tokenizer, 3)
    packed = PackedCollator(tiny_tokenizer.pad_token_id)(rows)
    packed.pop("use_cache")
    with torch.no_grad():
        leaky = model(**packed).loss
        want = token_weighted_unpacked_loss(model, rows)
    assert not torch.allclose(leaky, want, rtol=1e-4)


def test_packed_loss_and_gradients_match_with_lora(tiny_models, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        load("qwen3", tiny_models),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    rows = encoded_rows(tiny_tokenizer)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    g_packed = grads(model(**PackedCollator(tiny_tokenizer.pad_token_id)(rows)).loss)
    g_unpacked = grads(token_weighted_unpacked_loss(model, rows))
    for a, b in zip(g_packed, g_unpacked):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_collator_layout():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    b = PackedCollator(pad_token_id=0, pad_to_multiple_of=8)(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    # Each sample's first label is -100 (no prediction across the boundary); padding is -100.
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100]]
    assert "attention_mask" not in b and b["use_cache"] is False
    assert packed_boundaries(b["position_ids"]) == [0, 3, 5]
    assert isinstance(make_collator(0, packing=True, on_gpu=False), PackedCollator)
    pad = make_collator(0, packing=False, on_gpu=True)
    assert isinstance(pad, PadCollator) and pad.pad_to_multiple_of == 8


def test_padding_stats_and_lengths():
    lengths = [10, 50, 12, 48]
    seed = padding_stats(lengths, [[0, 1], [2, 3]], pad_to=768)
    per_batch = padding_stats(lengths, [[0, 1], [2, 3]])
    grouped = padding_stats(lengths, [[0, 2], [1, 3]])
    assert seed["real_tokens"] == per_batch["real_tokens"] == 120
    assert seed["padded_tokens"] == 4 * 768
    assert per_batch["padded_tokens"] == 2 * 50 + 2 * 48
    assert grouped["padded_tokens"] == 2 * 12 + 2 * 50 < per_batch["padded_tokens"]
    assert with_lengths([{"input_ids": [1, 2, 3]}])[0]["length"] == 3


def test_liger_modes():
    assert resolve_liger_mode(True) == "true" and resolve_liger_mode("off") == "false"
    assert resolve_liger_mode("AUTO") == "auto"
    with pytest.raises(ConfigError, match="auto, true or false"):
        resolve_liger_mode("fast")
    model = tiny_glm()
    assert apply_liger(model, "auto", on_gpu=False) is None  # skipped, logged
    assert apply_liger(model, "false", on_gpu=True) is None
    with pytest.raises(ConfigError, match="CUDA"):
        apply_liger(model, "true", on_gpu=False)


def test_training_with_packing_and_gradient_checkpointing(tiny_qwen3, tmp_path):
    from lora_finetune.training.run import train

    res = train(tiny_config(tiny_qwen3, tmp_path / "run", packing=True, gradient_checkpointing=True, steps=4))
    m = json.loads((res.output_dir / "metrics.json").read_text())
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert len(losses) >= 4 and all(torch.isfinite(torch.tensor(losses)))
    assert m["eval_loss"] is not None and m["real_tokens_seen"] > 0
    assert (res.output_dir / "adapter_model.safetensors").is_file()


def test_gradient_checkpointing_gives_the_same_losses(tiny_qwen3, tmp_path):
    """Non-reentrant checkpointing with LoRA: same numbers, only recomputed (dropout 0)."""
    from lora_finetune.training.run import train

    runs = [
        train(tiny_config(tiny_qwen3, tmp_path / f"gc{gc}", gradient_checkpointing=gc, steps=3, eval_fraction=0.0))
        for gc in (False, True)
    ]
    curves = [[h["loss"] for h in r.metrics["log_history"] if "loss" in h] for r in runs]
    assert curves[0] == pytest.approx(curves[1], rel=1e-4)
    norms = [h["grad_norm"] for h in runs[1].metrics["log_history"] if "grad_norm" in h]
    assert norms and all(float(n) > 0 for n in norms)  # LoRA got gradients through checkpoints


@pytest.mark.parametrize("kind", ["qwen3", "llama", "glm", "gpt2"])
@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("mode", ["mask", "positions"])
def test_label_logits_only_gives_the_same_loss_and_gradients(tiny_models, tiny_tokenizer, kind, packing, mode):
    """Both ways of passing `logits_to_keep` (a boolean mask on transformers >= 5.22, positions
    kept in every row on every 5.x) leave the loss and the LoRA gradients as they were."""
    from peft import LoraConfig, get_peft_model

    from lora_finetune.training.batching import LabelLogitsCollator, label_logits_mode

    torch.manual_seed(0)
    targets = ["c_attn"] if kind == "gpt2" else ["q_proj", "v_proj"]
    model = get_peft_model(
        load(kind, tiny_models), LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    )
    assert label_logits_mode(model) in ("mask", "positions")
    if mode == "mask" and label_logits_mode(model) != "mask":
        pytest.skip("this transformers (< 5.22) slices no boolean logits_to_keep mask; positions are used")
    rows = encoded_rows(tiny_tokenizer)
    inner = make_collator(tiny_tokenizer.pad_token_id, packing=packing, on_gpu=False)
    full, lean = inner(rows), LabelLogitsCollator(inner, mode)(rows)
    n_learned = sum(sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in rows)
    assert int((lean["shift_labels"] != IGNORE_INDEX).sum()) == n_learned
    if mode == "mask":
        assert int(lean["logits_to_keep"].sum()) == len(lean["shift_labels"]) == n_learned

    def run(batch):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        return out, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    (out_full, g_full), (out_lean, g_lean) = run(full), run(lean)
    torch.testing.assert_close(out_lean.loss, out_full.loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_lean, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    kept = out_lean.logits.shape[-2]
    if mode == "mask":
        assert kept == n_learned < out_full.logits.shape[-2]
    else:  # the positions where any row learns: fewer than all, at least the longest row's answer
        assert out_lean.logits.shape[0] == out_full.logits.shape[0]
        assert kept < out_full.logits.shape[-2]
        assert kept >= max(sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in rows)
    made = make_collator(0, packing=packing, on_gpu=False, model=model, label_logits_only=True)
    assert made.__class__ is LabelLogitsCollator and made.mode == label_logits_mode(model)


def test_label_logits_mode_follows_the_models_module(tiny_models, monkeypatch):
    """A model class whose module slices with transformers' `slice_logits_to_keep` (>= 5.22) takes
    the boolean mask; the same class in a module without it (transformers 5.0-5.21, where a
    boolean 2-D mask crashed every run with `IndexError: too many indices`) takes positions."""
    import sys

    from lora_finetune.training.batching import label_logits_mode

    model = load("qwen3", tiny_models)
    module = sys.modules[type(model).__module__]
    has_slicer = getattr(module, "slice_logits_to_keep", None) is not None
    assert label_logits_mode(model) == ("mask" if has_slicer else "positions")
    if has_slicer:
        monkeypatch.delattr(module, "slice_logits_to_keep")
        assert label_logits_mode(model) == "positions"

    class Remote(torch.nn.Module):  # remote code: never touched
        def forward(self, input_ids=None, logits_to_keep=0):
            return input_ids

    assert label_logits_mode(Remote()) is None
