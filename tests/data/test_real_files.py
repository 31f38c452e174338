"""The files users bring from other tools, as published (tests/fixtures/*/README.md says where
each comes from): LLaMA-Factory's `data/` folder with its `dataset_info.json`, TRL's documented
conversational formats, OpenAI's fine-tuning examples. Each is read by `lora-finetune data`
without a refusal, on a chat template that writes tools (Qwen2.5's) and on ChatGLM3, and the
tool-call sets train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lora_finetune.cli import main
from lora_finetune.data import load_source
from lora_finetune.tools.datacheck import check_data

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LF = FIXTURES / "llama_factory" / "data"
INFO = json.loads((LF / "dataset_info.json").read_text(encoding="utf-8"))

SFT = ["identity", "alpaca_en_demo", "alpaca_zh_demo", "glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"]
OTHER_KINDS = ["dpo_en_demo", "dpo_zh_demo", "kto_en_demo", "c4_demo", "wiki_demo"]  # tests/data/test_kinds.py
MULTIMODAL = ["mllm_demo", "mllm_audio_demo", "mllm_video_demo", "mllm_video_audio_demo"]  # images: not ours


def test_every_local_entry_of_dataset_info_is_covered():
    """A new file in the fixture cannot be skipped silently: each entry with a local file is
    either here, in the other kinds' tests, or multimodal (not a format this tool trains)."""
    local = {name for name, entry in INFO.items() if "file_name" in entry}
    assert local == set(SFT) | set(OTHER_KINDS) | set(MULTIMODAL)
    assert all((LF / INFO[name]["file_name"]).is_file() for name in SFT + OTHER_KINDS)


@pytest.fixture(scope="module")
def tools_model(tiny_qwen3, tmp_path_factory) -> Path:
    """The tiny Qwen3 with Qwen2.5's published chat template, which writes tools and calls."""
    from templates.test_tool_calls import QWEN_TOOLS

    folder = tmp_path_factory.mktemp("qwen-tools") / "model"
    shutil.copytree(tiny_qwen3, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = QWEN_TOOLS
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def chatglm3_model(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny ChatGLM3 checkpoint in its original format, the cache its conversion goes to)."""
    from chatglm_helpers import chatglm3_checkpoint, train_sentencepiece

    root = tmp_path_factory.mktemp("chatglm3-data")
    train_sentencepiece(root / "spm")
    return chatglm3_checkpoint(root / "chatglm3", root / "spm" / "tokenizer.model"), root / "cache"


@pytest.mark.parametrize("name", SFT)
def test_llama_factory_sft_entries_are_read_without_refusal(name, tools_model, capsys):
    code = main(["data", str(LF), "--dataset", name, "--model", str(tools_model), "--show", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    records = len(json.loads((LF / INFO[name]["file_name"]).read_text(encoding="utf-8")))
    assert out.startswith(f"{name} ({LF / 'dataset_info.json'}): {records} records")
    assert "train with method sft" in out and "[[" in out  # a sample with its learned part marked


@pytest.mark.parametrize("name", ["glaive_toolcall_zh_demo", "glaive_toolcall_en_demo", "alpaca_zh_demo"])
def test_llama_factory_sft_entries_on_chatglm3(name, chatglm3_model):
    model, cache = chatglm3_model
    rep = check_data(LF, dataset=name, model=str(model), cache_dir=cache, show=1)
    assert rep.records == len(json.loads((LF / INFO[name]["file_name"]).read_text(encoding="utf-8")))
    assert rep.answer_tokens > 0 and rep.no_answer == 0
    text = "".join(t for t, _ in rep.samples[0])
    assert text.startswith("[gMASK]sop")


def test_glaive_tool_calls_are_learned_and_results_masked(tools_model):
    """LLaMA-Factory's function_call / observation turns: the call is learned, the tool's result
    is prompt, on the Qwen template."""
    records, _ = load_source(LF, dataset="glaive_toolcall_zh_demo")
    rec = next(r for r in records if any(m.get("tool_calls") for m in r["messages"]))
    call = next(m for m in rec["messages"] if m.get("tool_calls"))["tool_calls"][0]["function"]
    result = next(m for m in rec["messages"] if m["role"] == "tool")["content"]
    from lora_finetune.templates import get_template

    segments = get_template("chat", AutoTokenizer.from_pretrained(tools_model)).segments(rec)
    learned = "".join(t for t, learn in segments if learn)
    prompt = "".join(t for t, learn in segments if not learn)
    assert f'"name": "{call["name"]}"' in learned and result in prompt and result not in learned


def test_training_on_llama_factorys_tool_call_set(tools_model, tmp_path):
    from lora_finetune.training import train

    from helpers import tiny_config

    res = train(tiny_config(tools_model, tmp_path / "run", data_path=str(LF), dataset="glaive_toolcall_zh_demo",
                            steps=2, eval_fraction=0.0, max_length=8192))  # fmt: skip
    assert res.metrics["samples"]["train"] > 0 and res.metrics["steps"] == 2


def test_a_chat_template_without_tools_refuses_tool_data(tiny_qwen3, capsys):
    """SmolLM2's (and the tiny test model's ChatML) template drops tools and calls: training on
    them would teach empty answers, so the data check says so instead."""
    code = main(["data", str(LF), "--dataset", "glaive_toolcall_en_demo", "--model", str(tiny_qwen3)])
    err = capsys.readouterr().err
    assert code == 2 and "does not write them" in err and "glaive_toolcall_en_demo" in err


def test_identity_placeholders_are_warned_about(tools_model, capsys, caplog):
    assert main(["data", str(LF), "--dataset", "identity", "--model", str(tools_model), "--show", "0"]) == 0
    out = capsys.readouterr().out
    assert "warning: identity" in out and "85 of 91 records have unreplaced placeholders" in out
    assert "{{name}} (77)" in out and "{{author}} (60)" in out


# --------------------------------------------------------------------------- TRL and OpenAI
def test_trls_documented_conversational_formats(tools_model):
    rep = check_data(FIXTURES / "trl" / "conversational.jsonl", model=str(tools_model), max_length=4096)
    assert rep.records == 3 and rep.no_answer == 0 and rep.too_long == 0
    [plain, listed, as_text] = load_source(FIXTURES / "trl" / "conversational.jsonl")[0]
    assert listed["tools"] == as_text["tools"] and listed["messages"] == as_text["messages"]
    assert listed["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"room": "living room", "state": "on"}
    for name in ("prompt_completion.jsonl", "prompt_completion_conversational.jsonl"):
        rep = check_data(FIXTURES / "trl" / name, model=str(tools_model))
        assert rep.records == 1 and rep.formats == {"trl prompt-completion": 1} and rep.answer_tokens > 0


def test_openais_fine_tuning_examples(tools_model):
    toy = FIXTURES / "openai" / "toy_chat_fine_tuning.jsonl"
    rep = check_data(toy, model=str(tools_model))
    assert rep.records == 5 and rep.too_long == 1  # the "Eat a banana!" x 2000 answer is dropped, not cut
    records = load_source(toy)[0]
    assert [m["role"] for m in records[3]["messages"]] == ["assistant"]  # an answer after the system prompt only
    drone = FIXTURES / "openai" / "drone_training_first5.jsonl"
    rep = check_data(drone, model=str(tools_model), max_length=8192)
    assert rep.records == 5 and rep.too_long == 0 and rep.answer_tokens > 0
    calls = [r["messages"][-1]["tool_calls"][0]["function"] for r in load_source(drone)[0]]
    # the arguments as written (JSON text) and as exported twice-encoded both become the object
    assert calls[0]["arguments"] == {"altitude": 100} and calls[2]["arguments"] == {"location": "current"}
