"""Merging: the merged folder computes what base+adapter computes, and loads without peft."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from helpers import shared_adapter, tiny_config


@pytest.fixture(scope="module")
def adapters(tiny_qwen3, tmp_path_factory) -> dict[str, Path]:
    """One adapter per LoRA backend (the reference LoRALinear saves peft's format too)."""
    from lora_finetune.training.run import train

    ref = tmp_path_factory.mktemp("merge") / "reference"
    train(tiny_config(tiny_qwen3, ref, lora_backend="reference", learning_rate=2e-2, save_steps=100, eval_fraction=0))
    return {"peft": shared_adapter(tiny_qwen3, tmp_path_factory), "reference": ref}


@pytest.fixture(scope="module")
def merged(adapters, tmp_path_factory):
    from lora_finetune.use.merging import merge

    out = tmp_path_factory.mktemp("merged") / "model"
    return merge(adapters["peft"], out, dtype="fp32")


IDS = [[1, 20, 30, 40, 50, 60, 70, 80, 2, 100, 101], [1, 5, 6, 7, 250, 300, 2, 1]]


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        x = torch.tensor([ids])
        return model(input_ids=x).logits[0].float()


def test_merged_logits_equal_base_plus_adapter(adapters, merged):
    from transformers import AutoModelForCausalLM

    from lora_finetune.use.inference import load_for_inference

    assert merged.max_abs_diff is not None and merged.max_abs_diff < 1e-4
    assert merged.check_tokens > 0 and merged.dtype == "fp32"
    im = load_for_inference(adapters["peft"], dtype="fp32")
    plain = AutoModelForCausalLM.from_pretrained(merged.output_dir)
    assert type(plain).__name__ == "Qwen3ForCausalLM"
    for ids in IDS:
        want = _logits(im.model, ids)
        assert (_logits(plain, ids) - want).abs().max() < 1e-4
        with im.model.disable_adapter():
            base = _logits(im.model, ids)
        assert (base - want).abs().max() > 1e-3  # the adapter does change the outputs


def test_merged_folder_contents(merged, tiny_tokenizer):
    from lora_finetune.folders import verify_manifest

    out = merged.output_dir
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "manifest.json",
        "merge_info.json",
    } <= names
    assert not any(n.startswith("adapter_") for n in names)
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp folders
    verify_manifest(out)
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"]
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    info = json.loads((out / "merge_info.json").read_text())
    assert info["max_abs_diff"] == merged.max_abs_diff and info["dtype"] == "fp32"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config


def test_merged_folder_loads_without_peft(merged):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["peft"] = None  # any `import peft` now fails
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(merged.output_dir)!r})
        model = AutoModelForCausalLM.from_pretrained({str(merged.output_dir)!r})
        ids = tok("hello", return_tensors="pt")
        out = model(**ids).logits
        assert torch.isfinite(out).all()
        try:
            import peft
        except ImportError:
            print("OK no peft")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK no peft" in proc.stdout


def test_reference_backend_adapter_merges(adapters, tmp_path):
    from transformers import AutoModelForCausalLM

    from lora_finetune.use.inference import load_for_inference
    from lora_finetune.use.merging import merge

    res = merge(adapters["reference"], tmp_path / "m", dtype="fp32")
    assert res.max_abs_diff < 1e-4
    im = load_for_inference(adapters["reference"], dtype="fp32")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    for ids in IDS:
        want = _logits(im.model, ids)
        assert (_logits(plain, ids) - want).abs().max() < 1e-4


def test_refuses_existing_output_without_overwrite(adapters, merged, tmp_path):
    from lora_finetune.errors import LoraFinetuneError
    from lora_finetune.use.merging import merge

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LoraFinetuneError, match="--overwrite"):
        merge(adapters["peft"], out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(LoraFinetuneError, match="adapter folder"):
        merge(adapters["peft"], adapters["peft"] / "merged")
    # --overwrite replaces only what this tool made: the user's file is never deleted
    with pytest.raises(LoraFinetuneError, match=r"did not make \(keep.txt\)"):
        merge(adapters["peft"], out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    merge(adapters["peft"], out, check=False)  # an empty folder is fine
    res = merge(adapters["peft"], out, overwrite=True, check=False, dtype="bf16")  # ours: replaced
    assert res.max_abs_diff is None
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_adapter_trained_on_4bit_base_merges_onto_full_weights(adapters, tmp_path, capsys):
    from lora_finetune.cli import main
    from lora_finetune.folders import write_manifest

    copy = tmp_path / "q4"
    shutil.copytree(adapters["peft"], copy)
    run = yaml.safe_load((copy / "run_config.yaml").read_text(encoding="utf-8"))
    run["quantization"] = "4bit"
    run["resolved"]["quantization"] = "4bit"
    run["resolved"]["dtype"] = "bfloat16"
    (copy / "run_config.yaml").write_text(yaml.safe_dump(run), encoding="utf-8")
    write_manifest(copy)
    rc = main(["merge", "--adapter", str(copy), "--output", str(tmp_path / "m4")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "trained on a 4bit base" in out and "never onto quantised weights" in out
    assert "bf16" in out  # the training compute dtype is the default output dtype
    assert "largest absolute difference" in out
    config = json.loads((tmp_path / "m4" / "config.json").read_text())
    assert "quantization_config" not in config


def test_merge_cli_errors_exit_2(adapters, tmp_path, capsys):
    from lora_finetune.cli import main

    rc = main(["merge", "--adapter", str(tmp_path), "--output", str(tmp_path / "x")])
    assert rc == 2 and "not an adapter folder" in capsys.readouterr().err
