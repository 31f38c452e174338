"""`lora-finetune export` attacked as a hostile user would: every mistake is refused with a
message that says what to do (exit code 2), before any weights are loaded, and leaves nothing
behind."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from lora_finetune.cli import main
from lora_finetune.errors import LoraFinetuneError
from lora_finetune.export import export_model
from lora_finetune.export import runner as export_runner


def _cli(capsys, *args) -> tuple[int, str]:
    try:
        code = main(["export", *map(str, args)])
    except SystemExit as e:  # argparse's own refusals (choices)
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _no_weights(monkeypatch):
    """Any attempt to load weights fails the test: refusals must come before."""

    def boom(*a, **k):
        raise AssertionError("weights were loaded before the problem was reported")

    monkeypatch.setattr(export_runner, "load_model", boom)


def test_unsupported_outtype_lists_the_supported_ones(export_adapters, tmp_path, capsys):
    code, text = _cli(capsys, "--adapter", export_adapters["llama"], "--output", tmp_path / "o", "--outtype", "q4_0")
    assert code == 2 and "f16" in text and "bf16" in text and "q8_0" in text
    with pytest.raises(LoraFinetuneError, match="f16, bf16, q8_0"):
        export_model(export_adapters["llama"], tmp_path / "o", outtype="q4_k_m")
    assert not (tmp_path / "o").exists()


def test_unsupported_format(export_adapters, tmp_path, capsys):
    code, text = _cli(capsys, "--adapter", export_adapters["llama"], "--output", tmp_path / "o", "--format", "onnx")
    assert code == 2 and "gguf-lora" in text and "ollama" in text
    with pytest.raises(LoraFinetuneError, match="gguf, gguf-lora, ollama"):
        export_model(export_adapters["llama"], tmp_path / "o", format="safetensors")


def test_output_is_an_existing_file(export_adapters, tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    target = tmp_path / "model.gguf"
    target.write_text("precious")
    code, text = _cli(capsys, "--adapter", export_adapters["llama"], "--output", target)
    assert code == 2 and "is a file" in text and "another --output" in text
    code, text = _cli(capsys, "--adapter", export_adapters["llama"], "--output", target, "--overwrite")
    assert code == 2 and "is a file" in text
    assert target.read_text() == "precious"


def test_output_exists_needs_overwrite(export_adapters, tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    code, text = _cli(capsys, "--adapter", export_adapters["llama"], "--output", tmp_path / "o")
    assert code == 2 and "--overwrite" in text
    assert (tmp_path / "o" / "keep.txt").is_file()


def test_output_inside_the_adapter_folder(export_adapters, tmp_path, capsys, monkeypatch):
    _no_weights(monkeypatch)
    adapter = tmp_path / "adapter"
    shutil.copytree(export_adapters["llama"], adapter)
    code, text = _cli(capsys, "--adapter", adapter, "--output", adapter / "gguf")
    assert code == 2 and "overlaps the adapter folder" in text


@pytest.mark.parametrize("what", ["missing", "not-an-adapter", "truncated"])
def test_adapter_missing_or_broken(export_adapters, tmp_path, capsys, monkeypatch, what):
    _no_weights(monkeypatch)
    adapter = tmp_path / "adapter"
    if what == "not-an-adapter":
        adapter.mkdir()
    elif what == "truncated":
        shutil.copytree(export_adapters["llama"], adapter)
        (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    code, text = _cli(capsys, "--adapter", adapter, "--output", tmp_path / "o")
    assert code == 2
    expected = {"missing": "does not exist", "not-an-adapter": "not an adapter folder", "truncated": "damaged"}[what]
    assert expected in text, text
    assert not (tmp_path / "o").exists()


def test_architecture_not_supported_lists_the_supported_ones(tiny_models, tmp_path, capsys, monkeypatch):
    from lora_finetune.training import train

    from helpers import tiny_config

    adapter = tmp_path / "gpt2-adapter"
    train(tiny_config(tiny_models["gpt2"], adapter, steps=1, save_steps=100, eval_steps=100))
    _no_weights(monkeypatch)
    code, text = _cli(capsys, "--adapter", adapter, "--output", tmp_path / "o")
    assert code == 2 and "'gpt2'" in text
    for supported in ("llama", "qwen2", "qwen3"):
        assert supported in text
    assert "lora-finetune merge" in text


def test_rope_scaling_not_supported(export_adapters, tmp_path, monkeypatch):
    adapter = tmp_path / "adapter"
    shutil.copytree(export_adapters["llama"], adapter)
    base = tmp_path / "base"
    from lora_finetune.run_record import RunRecord

    shutil.copytree(RunRecord.read(adapter).resolved.base_model, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
    (base / "config.json").write_text(json.dumps(cfg))
    _no_weights(monkeypatch)
    with pytest.raises(LoraFinetuneError, match="rope scaling 'yarn'"):
        export_model(adapter, tmp_path / "o", base_model=str(base))


def test_tokenizer_llama_cpp_cannot_name(export_adapters, tmp_path, monkeypatch):
    """A pre-tokenizer llama.cpp has no name for would tokenise differently: refused."""
    from tokenizers import pre_tokenizers

    from lora_finetune.models import load_tokenizer

    adapter = tmp_path / "adapter"
    shutil.copytree(export_adapters["llama"], adapter)
    tok = load_tokenizer(str(adapter))
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.save_pretrained(adapter)
    (adapter / "manifest.json").unlink()  # the adapter was edited on purpose
    _no_weights(monkeypatch)
    with pytest.raises(LoraFinetuneError, match="pre-tokenizer.*Supported: byte-level BPE"):
        export_model(adapter, tmp_path / "o")


def test_with_base_needs_gguf_lora(export_adapters, tmp_path):
    with pytest.raises(LoraFinetuneError, match="--with-base goes with --format gguf-lora"):
        export_model(export_adapters["llama"], tmp_path / "o", with_base=True)


def test_dora_adapter_cannot_be_a_lora_gguf(export_adapters, tmp_path, monkeypatch):
    adapter = tmp_path / "adapter"
    shutil.copytree(export_adapters["llama"], adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    (adapter / "manifest.json").unlink()
    _no_weights(monkeypatch)
    with pytest.raises(LoraFinetuneError, match="DoRA.*--format gguf"):
        export_model(adapter, tmp_path / "o", format="gguf-lora")


def test_not_enough_disk_space_is_refused_before_work(export_adapters, tmp_path, monkeypatch):
    _no_weights(monkeypatch)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(export_runner.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(LoraFinetuneError, match="not enough disk space.*q8_0"):
        export_model(export_adapters["llama"], tmp_path / "o")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_permission_denied_while_writing(export_adapters, tmp_path, monkeypatch, code):
    def fail(*a, **k):
        raise OSError(code, "simulated")

    monkeypatch.setattr(export_runner, "write_model_gguf", fail)
    with pytest.raises(LoraFinetuneError) as e:
        export_model(export_adapters["llama"], tmp_path / "o")
    assert ("disk filled up" if code == errno.ENOSPC else "cannot write") in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no hidden temp folder


def test_output_folder_not_writable(export_adapters, tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "access", lambda p, mode: False)  # root ignores chmod
    _no_weights(monkeypatch)
    with pytest.raises(LoraFinetuneError, match="no permission to write"):
        export_model(export_adapters["llama"], tmp_path / "o")


@pytest.mark.parametrize(
    "name",
    ["gpt-2", "qwen2", "llama-bpe", "smollm", "metaspace"],
)
def test_pre_tokenizer_names(name):
    """The llama.cpp pre-tokenizer is named from the fast tokenizer's structure."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lora_finetune.export.tokenizer_meta import LLAMA3_SPLIT, QWEN2_SPLIT, pre_tokenizer_name

    tok = Tokenizer(models.BPE())
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.pre_tokenizer = {
        "gpt-2": pre_tokenizers.ByteLevel(add_prefix_space=False),
        "qwen2": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), "isolated"), bl]),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), bl]),
        "smollm": pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        ),
        "metaspace": pre_tokenizers.Metaspace(),
    }[name]
    if name == "qwen2":
        tok.normalizer = normalizers.NFC()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    if name == "metaspace":
        with pytest.raises(LoraFinetuneError, match="Supported: byte-level BPE"):
            pre_tokenizer_name(fast)
    else:
        assert pre_tokenizer_name(fast) == name


def test_overwrite_never_replaces_a_folder_the_tool_did_not_make(export_adapters, tmp_path, monkeypatch):
    _no_weights(monkeypatch)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(LoraFinetuneError, match=r"did not make \(notes.txt\)"):
        export_model(export_adapters["llama"], mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep"
