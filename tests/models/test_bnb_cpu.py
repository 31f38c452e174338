"""4-bit on the CPU for layer sizes bitsandbytes' repacked CPU kernel cannot take (not
multiples of 64 inputs / 32 outputs): they run its generic path, and training, the evaluation
after it and generation work (before, the evaluation crashed inside bitsandbytes on CPUs with
AVX512-BF16: "N must be divisible by block_n")."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")


def _repacks() -> bool:
    """Whether this bitsandbytes repacks 4-bit weights for a faster CPU kernel (0.49 and later)."""
    import bitsandbytes as bnb

    from lora_finetune.models.bnb_cpu import FLAG

    return hasattr(bnb.nn.Linear4bit(64, 64), FLAG)


def _tiny80(folder: Path) -> Path:
    """A tiny Qwen3 whose widths (80, 160) are not multiples of 64."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    import helpers

    folder.mkdir(parents=True)
    helpers.train_tokenizer(folder, helpers.CHATML)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=80, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=20, max_position_embeddings=512,
                      tie_word_embeddings=True, **ids)  # fmt: skip
    Qwen3ForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_odd_widths_train_evaluate_and_generate_in_4bit(tmp_path):
    from lora_finetune.models.loading import quantization_available
    from lora_finetune.training import train
    from lora_finetune.use import generate, load_for_inference

    from helpers import tiny_config

    if not quantization_available()[0]:
        pytest.skip("bitsandbytes cannot run 4-bit here")
    model = _tiny80(tmp_path / "tiny80")
    res = train(tiny_config(model, tmp_path / "q4", quantization="4bit", steps=2))
    assert res.resolved.quantization == "4bit" and res.metrics["eval_loss"] is not None
    noted = any("model.layers.0.self_attn.q_proj (80 -> 80)" in n for n in res.resolved.notes)
    # bitsandbytes < 0.49 (our floor is 0.48) has no repacked CPU kernel: nothing to keep apart.
    assert noted == _repacks()
    im = load_for_inference(res.output_dir)
    out = generate(im, [{"messages": [{"role": "user", "content": "中国的首都是哪里？"}]}], max_new_tokens=3)
    assert len(out) == 1 and im.quantization == "4bit"


def test_only_the_layers_that_do_not_fit_leave_the_fast_kernel(tmp_path, tiny_qwen3):
    from lora_finetune.models import load_model
    from lora_finetune.models.bnb_cpu import FLAG, unpackable_layers
    from lora_finetune.models.loading import quantization_available

    if not quantization_available()[0]:
        pytest.skip("bitsandbytes cannot run 4-bit here")
    fits = load_model(str(tiny_qwen3), quantization="4bit", for_training=False).model  # widths 64 and 128
    assert unpackable_layers(fits) == []
    odd = load_model(str(_tiny80(tmp_path / "tiny80")), quantization="4bit", for_training=False).model
    bad = unpackable_layers(odd)
    if not _repacks():
        assert bad == []  # no layer carries the kernel choice: every one takes the generic path
        return
    assert ("model.layers.0.mlp.down_proj", 160, 80) in bad
    assert all(getattr(odd.get_submodule(name), FLAG) is False for name, _, _ in bad)
