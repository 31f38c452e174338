"""Damaged or mismatched adapters are named, never loaded as garbage (issue: an adapter
corrupted in place used to load and answer "")."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_finetune.cli import main
from lora_finetune.errors import LoraFinetuneError, ModelError
from lora_finetune.use import load_for_inference


def _copy(adapter: Path, tmp_path: Path, manifest: bool = True) -> Path:
    dst = tmp_path / "adapter"
    shutil.copytree(adapter, dst)
    if not manifest:
        (dst / "manifest.json").unlink()
    return dst


def test_bytes_changed_in_place_exit_2_naming_the_file(adapter, tmp_path, capsys):
    dst = _copy(adapter, tmp_path)
    weights = dst / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)
    weights.write_bytes(bytes(data))
    with pytest.raises(LoraFinetuneError, match="adapter_model.safetensors does not match its sha256"):
        load_for_inference(dst)
    assert main(["generate", "--adapter", str(dst), "--input", "x.jsonl", "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "sha256" in capsys.readouterr().err


def test_non_finite_lora_weights_are_refused(adapter, tmp_path):
    dst = _copy(adapter, tmp_path, manifest=False)
    weights = dst / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(weights))
    with pytest.raises(ModelError, match="NaN or infinite values in 1 tensors"):
        load_for_inference(dst)


@pytest.mark.parametrize("damage", ["header", "truncated"])
def test_corrupt_safetensors_without_a_manifest(adapter, tmp_path, damage):
    dst = _copy(adapter, tmp_path, manifest=False)
    weights = dst / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\xff" * 16 + data[16:] if damage == "header" else data[: len(data) // 2])
    with pytest.raises(ModelError, match="cannot be read as safetensors.*damaged or incomplete"):
        load_for_inference(dst)


def test_adapter_on_a_different_base_names_both(adapter, tiny_qwen3, tmp_path):
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    wider = tmp_path / "wider-qwen3"
    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        eos_token_id=tok.eos_token_id,
    )
    Qwen3ForCausalLM(cfg).save_pretrained(wider)
    tok.save_pretrained(wider)
    with pytest.raises(ModelError) as e:
        load_for_inference(adapter, base_model=str(wider))
    msg = str(e.value)
    assert "does not fit this base model" in msg and "size mismatch" in msg
    assert str(wider) in msg and f"trained on {tiny_qwen3}" in msg


def test_generate_output_is_checked_before_the_model_loads(adapter, tmp_path, monkeypatch, capsys):
    import lora_finetune.cli.use as cli_use

    def no_loading(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(cli_use, "_load", no_loading)
    data = tmp_path / "q.jsonl"
    data.write_text('{"instruction": "你好"}\n')
    (tmp_path / "folder").mkdir()
    code = main(["generate", "--adapter", str(adapter), "--input", str(data), "--output", str(tmp_path / "folder")])
    assert code == 2 and "is a folder; give a file name" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": ""}\n{"nothing": 1}\n')
    code = main(["generate", "--adapter", str(adapter), "--input", str(bad), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "2 of 2 records cannot be used" in err and "line 1" in err and "line 2" in err
