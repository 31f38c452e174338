"""Model resolution, dtype/quantisation choices and LoRA target selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_finetune.errors import ModelError
from lora_finetune.models.families import family_for
from lora_finetune.models.loading import load_model, meta_model, pick_dtype, resolve_model
from lora_finetune.models.targets import resolve_target_modules


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("qwen3", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        ("llama", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        ("gpt2", ["c_attn", "c_proj", "c_fc"]),
    ],
)
def test_auto_targets_per_model_type(tiny_models, kind, expected):
    model = meta_model(str(tiny_models[kind]))
    assert resolve_target_modules("auto", model, model.config.model_type) == expected


def test_glm_and_chatglm_tables():
    assert list(family_for("glm").lora_targets) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert list(family_for("chatglm").lora_targets) == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def test_native_glm_module_names_exist():
    from transformers import GlmConfig, GlmForCausalLM

    cfg = GlmConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    model = GlmForCausalLM(cfg)
    assert resolve_target_modules("auto", model, "glm") == list(family_for("glm").lora_targets)


def test_unknown_model_type_gets_every_linear_but_the_head():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.ModuleDict({"mix": nn.Linear(4, 4), "gate": nn.Linear(4, 4)})
            self.lm_head = nn.Linear(4, 10)

    assert resolve_target_modules("auto", Odd(), "odd") == ["gate", "mix"]


def test_unknown_target_lists_real_names(tiny_models):
    model = meta_model(str(tiny_models["qwen3"]))
    with pytest.raises(ModelError) as e:
        resolve_target_modules(["query_key_value", "dense"], model, "qwen3")
    msg = str(e.value)
    assert "query_key_value" in msg and "q_proj" in msg and "down_proj" in msg


def test_missing_model_folder_and_missing_config(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_unreachable_hub_id_names_bundled_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lora_finetune.models.loading import read_model_config

    with pytest.raises(ModelError) as e:
        read_model_config("someone-not-real/model-xyz")
    assert "smollm2-135m-instruct" in str(e.value) and "--model_name PATH" in str(e.value)


def test_dtype_auto_on_cpu():
    if not torch.cuda.is_available():
        assert pick_dtype("auto") == torch.float32
    assert pick_dtype("bf16") == torch.bfloat16


def test_quantization_without_bitsandbytes_falls_back_and_records(tiny_models, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    loaded = load_model(str(tiny_models["qwen3"]), quantization="4bit")
    assert loaded.quantization == "none" and loaded.dtype == torch.float32
    assert loaded.notes and "bitsandbytes is not installed" in loaded.notes[0] and "full-precision" in loaded.notes[0]
    assert type(loaded.model).__name__ == "Qwen3ForCausalLM"


@pytest.mark.parametrize("bits,layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantization_runs_on_the_cpu(tiny_models, bits, layer):
    pytest.importorskip("bitsandbytes")
    loaded = load_model(str(tiny_models["qwen3"]), quantization=bits)
    assert loaded.quantization == bits and not loaded.notes
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ == layer
    assert loaded.model.model.layers[0].self_attn.q_proj.weight.device.type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )


def test_chatglm_v1_stand_in_tree_targets_and_template():
    """ChatGLM-6B v1 module names (a stand-in tree: the real model needs its remote code)."""
    from lora_finetune.templates import get_template, resolve_template_name

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.ModuleDict({"query_key_value": nn.Linear(8, 24), "dense": nn.Linear(8, 8)})
            self.mlp = nn.ModuleDict({"dense_h_to_4h": nn.Linear(8, 32), "dense_4h_to_h": nn.Linear(32, 8)})

    class ChatGLMStandIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict({"layers": nn.ModuleList([Layer(), Layer()])})
            self.lm_head = nn.Linear(8, 100)

    assert resolve_target_modules("auto", ChatGLMStandIn(), "chatglm") == list(family_for("chatglm").lora_targets)

    class Tok:
        chat_template = None
        eos_token = "<eop>"

    assert resolve_template_name("auto", Tok(), "chatglm") == "chatglm"
    tmpl = get_template("chatglm", Tok())
    rec = {
        "system": None,
        "messages": [
            {"role": "user", "content": "你好", "input": ""},
            {"role": "assistant", "content": "你好！", "input": ""},
        ],
    }
    assert tmpl.segments(rec) == [("你好[gMASK]", False), ("<sop>你好！<eop>", True)]


def test_uncached_hub_id_offline_fails_at_once_naming_the_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the local Hugging Face cache, and HF_HUB_OFFLINE is set") as e:
        resolve_model("someone-not-real/model-xyz")
    assert "smollm2-135m-instruct" in str(e.value) and "--model_name PATH" in str(e.value)


def test_unreachable_hub_is_one_probe_not_a_retry_loop(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def unreachable(self, name, timeout=None):
        calls.append(timeout)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(ModelError, match="hub could not be reached.*HF_HUB_OFFLINE=1"):
        resolve_model("someone-not-real/model-xyz")
    assert calls == [10]


def test_weightless_and_real_model_builds_in_threads_do_not_mix(tiny_models):
    """accelerate's init_empty_weights patches torch.nn.Module process-wide; the web UI and the
    server build models in threads. Real models built meanwhile must still have real weights."""
    import threading

    original = nn.Module.register_parameter
    loaded, errors = [], []

    def weightless():
        try:
            for _ in range(3):
                meta_model(str(tiny_models["qwen3"]))
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    def real():
        try:
            loaded.append(load_model(str(tiny_models["qwen3"]), for_training=False).model)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (weightless, real, weightless, real)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(loaded) == 2
    assert all(p.device.type != "meta" for m in loaded for p in m.parameters())
    assert nn.Module.register_parameter is original  # nothing left patched


def test_half_precision_on_a_cpu_without_native_support_warns(tiny_qwen3, monkeypatch, caplog):
    """bf16/fp16 on a CPU that emulates them is ~5x slower than fp32 (TRL's default bf16=True
    hits this): say so. A CPU with native bf16 (AVX512-BF16/AMX) gets no warning."""
    import logging

    import torch

    from lora_finetune.models import loading

    monkeypatch.setattr(loading, "cpu_native_half", lambda dtype: False)
    with caplog.at_level(logging.WARNING, logger="lora_finetune.models.loading"):
        loaded = loading.load_model(str(tiny_qwen3), dtype="bf16")
    assert loaded.model.dtype == torch.bfloat16
    assert "without native bf16" in caplog.text and "5x slower" in caplog.text
    caplog.clear()
    monkeypatch.setattr(loading, "cpu_native_half", lambda dtype: True)
    with caplog.at_level(logging.WARNING, logger="lora_finetune.models.loading"):
        loading.load_model(str(tiny_qwen3), dtype="bf16")
        loading.load_model(str(tiny_qwen3), dtype="auto")
    assert "native" not in caplog.text


def test_cpu_native_half_reads_torchs_probes(monkeypatch):
    import torch

    from lora_finetune.models.loading import cpu_native_half

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_native_half("bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False, raising=False)
    assert not cpu_native_half("bf16") and not cpu_native_half("fp16")
