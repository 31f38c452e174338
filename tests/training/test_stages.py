"""Training stages beyond SFT (dpo, orpo, simpo, kto, pt) on the tiny models: the sequences they
train on, the reference they are measured against, what they report, and what comes out."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lora_finetune.data.formats import records_from_rows
from lora_finetune.errors import ConfigError, DataError
from lora_finetune.templates import encode_pairs, encode_records, get_template
from lora_finetune.training import train
from lora_finetune.training.callbacks import last_complete_checkpoint

from helpers import tiny_config

LF_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "llama_factory" / "data"
PAIRS = [
    {
        "prompt": [
            {"role": "system", "content": "简短回答"},
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "中国的首都是哪里？"},
        ],
        "chosen": "北京。",
        "rejected": "The capital is Beijing.",
    },  # fmt: skip
    {"instruction": "一周有几天？", "chosen": "七天。", "rejected": "Seven days."},
]


def _ids(tokenizer, template_name: str):
    template = get_template(template_name, tokenizer)
    records = records_from_rows(PAIRS, kinds=("preference",))
    return template, records


@pytest.mark.parametrize("template_name", ["chat", "qa"])
def test_the_chosen_sequence_is_the_sft_sequence_token_for_token(tiny_tokenizer, template_name):
    """What DPO scores for the chosen answer is what SFT trains on for the same conversation:
    the same tokens up to the end of the answer, and the answer (with its end-of-turn token) is
    the learned part of the last turn."""
    template, records = _ids(tiny_tokenizer, template_name)
    if template_name == "qa":  # the plain qa format has no system prompt or history
        records = records[1:]
    pairs, stats = encode_pairs(records, tiny_tokenizer, template, 768)
    assert stats.kept == len(records)
    for rec, pair in zip(records, pairs):
        sft_rec = {**rec, "messages": [*rec["messages"], rec["chosen"]]}
        (sft,), _ = encode_records([sft_rec], tiny_tokenizer, template, 768)
        dpo_seq = pair["prompt_ids"] + pair["chosen_ids"]
        assert sft.input_ids[: len(dpo_seq)] == dpo_seq
        # the tokens after the answer are never learned (ChatML's newline after <|im_end|>)
        assert all(label == -100 for label in sft.labels[len(dpo_seq) :])
        last_answer = sft.labels[len(pair["prompt_ids"]) : len(dpo_seq)]
        assert last_answer == pair["chosen_ids"] and tiny_tokenizer.eos_token_id in pair["chosen_ids"]
        text = tiny_tokenizer.decode(pair["chosen_ids"])
        assert rec["chosen"]["content"] in text
        # earlier assistant turns are prompt here, learned in SFT
        if len(rec["messages"]) > 1:
            assert any(label != -100 for label in sft.labels[: len(pair["prompt_ids"])])


def test_a_pair_too_long_is_dropped_and_counted(tiny_tokenizer):
    template, records = _ids(tiny_tokenizer, "chat")
    pairs, stats = encode_pairs(records, tiny_tokenizer, template, 768)
    longest = max(len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs)
    kept, stats = encode_pairs(records, tiny_tokenizer, template, longest - 1)
    assert stats.too_long >= 1 and len(kept) == len(pairs) - stats.too_long
    assert all(len(p["prompt_ids"]) + max(len(p["chosen_ids"]), len(p["rejected_ids"])) < longest for p in kept)


# --------------------------------------------------------------------------- the runs
def _history(res, key):
    return [(h["step"], h[key]) for h in res.metrics["log_history"] if key in h]


def test_dpo_learns_the_preference_and_writes_an_ordinary_adapter(tiny_qwen3, tmp_path):
    """The first loss is log 2 (the reference is the adapter as training starts); held-out reward
    accuracy ends high and the margin positive; the folder is the same adapter folder as SFT."""
    # dropout 0.1: TRL turns dropout off (the policy and its reference must score alike), ours too
    res = train(tiny_config(tiny_qwen3, tmp_path / "dpo", method="dpo", steps=12, learning_rate=2e-2,
                            eval_steps=6, save_steps=6, eval_fraction=0.2, dropout=0.1))  # fmt: skip
    first_loss = _history(res, "loss")[0][1]
    assert first_loss == pytest.approx(math.log(2), abs=1e-4)
    pref = res.metrics["preference"]
    assert pref["eval"]["accuracies"] >= 0.9 and pref["eval"]["margins"] > 0
    assert res.metrics["method"] == "dpo" and res.metrics["eval_perplexity"] is None
    out = res.output_dir
    assert not (out / "ref").exists()
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == ["adapter_model.safetensors"]
    record = yaml.safe_load((out / "run_config.yaml").read_text())
    assert record["method"] == "dpo" and record["beta"] == 0.1 and record["loss_type"] == "sigmoid"
    from lora_finetune.use import generate, load_for_inference

    question = [{"messages": [{"role": "user", "content": "一年有几个月？"}]}]
    assert generate(load_for_inference(out), question, max_new_tokens=4)[0]["tokens"] == 4
    # the model itself now prefers the chosen answers of the held-out pairs; the base did not
    from lora_finetune.data import demo_rows
    from lora_finetune.training import split_records
    from lora_finetune.use import preference_accuracy

    held = split_records(records_from_rows(demo_rows("preference"), kinds=("preference",)), 0.2, 42)[1]
    before = preference_accuracy(load_for_inference(out, base_only=True), held)
    after = preference_accuracy(load_for_inference(out), held)
    assert after > before, (before, after)


@pytest.mark.parametrize(("method", "metric"), [("dpo", "rewards/accuracies"), ("kto", "eval_rewards/margins")])
def test_the_best_checkpoint_is_chosen_by_a_reward_metric(tiny_qwen3, tmp_path, method, metric):
    """load_best_model_at_end keeps the checkpoint with the highest held-out reward metric
    (higher is better for rewards, unlike a loss), and the adapter is that step's."""
    res = train(tiny_config(tiny_qwen3, tmp_path / method, method=method, steps=6, learning_rate=2e-2,
                            eval_steps=2, save_steps=2, eval_fraction=0.2, load_best_model_at_end=True,
                            metric_for_best_model=metric))  # fmt: skip
    key = "eval_" + metric.removeprefix("eval_")
    *during, final = _history(res, key)  # the last evaluation is of the adapter kept
    best_step, best = max(during, key=lambda sv: (sv[1], -sv[0]))  # the Trainer keeps the first of equals
    assert [s for s, _ in during] == [2, 4, 6] and res.metrics["best_metric"] == pytest.approx(best)
    assert res.metrics["adapter_step"] == best_step and final[1] == pytest.approx(best)
    with pytest.raises(ConfigError, match="did you mean `rewards/accuracies`.*method dpo evaluates loss, rewards/acc"):
        tiny_config(tiny_qwen3, tmp_path / "x", method="dpo", eval_fraction=0.2, load_best_model_at_end=True,
                    metric_for_best_model="reward/accuracy")  # fmt: skip
    with pytest.raises(ConfigError, match="method kto evaluates loss, rewards/margins, rewards/chosen"):
        tiny_config(tiny_qwen3, tmp_path / "x", method="kto", eval_fraction=0.2, load_best_model_at_end=True,
                    metric_for_best_model="rewards/accuracies")  # fmt: skip


@pytest.mark.parametrize("method", ["orpo", "simpo", "kto"])
def test_the_other_preference_methods_train_and_report(tiny_qwen3, tmp_path, method):
    res = train(tiny_config(tiny_qwen3, tmp_path / method, method=method, steps=4, learning_rate=1e-2))
    assert res.metrics["method"] == method and res.metrics["preference"]["train"]
    assert "rewards/chosen" in {k for h in res.metrics["log_history"] for k in h}
    state = load_file(str(res.output_dir / "adapter_model.safetensors"))
    assert state and all(torch.isfinite(t).all() for t in state.values())


def test_reference_log_probs_are_the_init_adapters(tiny_qwen3, tmp_path, monkeypatch):
    """DPO after SFT: the reference is the SFT adapter (TRL's frozen copy, no second model),
    checked against the base with the SFT adapter loaded on its own, summed over the chosen
    answer's tokens; it does not move while the trained adapter does."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import lora_finetune.training.run as run_module
    from lora_finetune.training.stages.preference import pair_features

    sft = train(tiny_config(tiny_qwen3, tmp_path / "sft", steps=4, learning_rate=3e-2, r=8, alpha=16))
    measured: dict = {}
    real = run_module.run_trainer

    def measure(trainer, *a, **k):
        row = trainer.train_dataset[0]
        batch = trainer.data_collator([row])
        measured["row"] = row
        measured["before"] = float(trainer.compute_ref_log_probs(trainer.model, batch)[0][0])
        out = real(trainer, *a, **k)
        measured["after"] = float(trainer.compute_ref_log_probs(trainer.model, batch)[0][0])
        return out

    monkeypatch.setattr(run_module, "run_trainer", measure)
    res = train(tiny_config(tiny_qwen3, tmp_path / "dpo", method="dpo", init_adapter=str(sft.output_dir),
                            steps=4, learning_rate=3e-2))  # fmt: skip
    assert any(n.startswith("continued from") for n in res.resolved.notes)
    separate = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen3), str(sft.output_dir)).eval()
    feats = pair_features(measured["row"])
    ids, labels = torch.tensor([feats["chosen_input_ids"]]), torch.tensor([feats["chosen_labels"]])
    with torch.no_grad():
        logits = separate(input_ids=ids).logits[0, :-1].float()
    target = labels[0, 1:]
    keep = target != -100
    expected = float(torch.log_softmax(logits, -1)[keep].gather(-1, target[keep][:, None]).sum())
    assert measured["before"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert measured["after"] == pytest.approx(measured["before"], rel=1e-5, abs=1e-5)
    # the trained adapter did move away from it
    trained = load_file(str(res.output_dir / "adapter_model.safetensors"))
    start = load_file(str(sft.output_dir / "adapter_model.safetensors"))
    assert any(not torch.equal(trained[k], start[k]) for k in start)


# --------------------------------------------------------------------------- continued pretraining
def test_pretraining_learns_every_token_with_documents_separated(tiny_qwen3, tiny_tokenizer, tmp_path):
    from lora_finetune.templates import encode_documents

    docs = records_from_rows([{"text": "太阳从东方升起。"}, {"text": "LoRA " * 40}], kinds=("text",))
    rows, stats = encode_documents(docs, tiny_tokenizer, max_length=32)
    eos = tiny_tokenizer.eos_token_id
    assert rows[0]["labels"] == rows[0]["input_ids"] and rows[0]["input_ids"][-1] == eos
    assert stats.too_long == 1 and all(len(r["input_ids"]) <= 32 for r in rows)
    long_doc = [t for r in rows[1:] for t in r["input_ids"]]
    assert long_doc[-1] == eos and long_doc.count(eos) == 1  # one document, cut in pieces, one EOS
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"第{i}篇：太阳从东方升起，月亮绕着地球转。" for i in range(12)), encoding="utf-8")
    res = train(tiny_config(tiny_qwen3, tmp_path / "pt", method="pt", data_path=str(text), steps=3))
    record = yaml.safe_load((res.output_dir / "run_config.yaml").read_text())
    assert record["method"] == "pt" and record["packing"] is True  # packing is pretraining's default
    assert res.metrics["eval_perplexity"] is not None and res.metrics["tokens"]["prompt_masked"] == 0


# --------------------------------------------------------------------------- data that does not fit
@pytest.mark.parametrize(
    ("method", "dataset", "needle"),
    [
        ("sft", "dpo_zh_demo", "holds preference pairs (chosen / rejected), but method sft trains on instructions"),
        ("sft", "kto_en_demo", "holds answers labelled desirable or not (KTO), but method sft"),
        ("dpo", "kto_en_demo", "Use method: kto for this data"),
        ("dpo", "c4_demo", "holds raw text, but method dpo trains on preference pairs"),
        ("pt", "dpo_zh_demo", "Use method: dpo or orpo or simpo for this data"),
    ],
)
def test_data_of_another_kind_is_refused_naming_both(tiny_qwen3, tmp_path, method, dataset, needle):
    cfg = tiny_config(tiny_qwen3, tmp_path / "run", method=method, data_path=str(LF_DATA), dataset=dataset)
    with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_llama_factory_names_are_recorded_under_ours(tiny_qwen3, tmp_path):
    from lora_finetune.config import build_config

    cfg = build_config({"stage": "dpo", "pref_loss": "simpo", "pref_beta": 2.0, "pref_ftx": 0.1, "simpo_gamma": 0.3})
    assert (cfg.method, cfg.beta, cfg.sft_weight, cfg.simpo_gamma, cfg.loss_type) == ("simpo", 2.0, 0.1, 0.3, "sigmoid")
    cfg = build_config({"beta": 0.2, "loss_type": "ipo", "method": "dpo"})
    assert (cfg.method, cfg.loss_type) == ("dpo", "ipo")
    with pytest.raises(ConfigError) as e:
        build_config({"method": "rlhf", "loss_type": "sigmod", "beta": -1, "desirable_weight": 0})
    msg = str(e.value)
    assert "4 problem(s)" in msg and "did you mean `sigmoid`" in msg and "method='rlhf'" in msg
    with pytest.raises(ConfigError, match="kto_pair' is no longer in TRL"):
        build_config({"stage": "dpo", "pref_loss": "kto_pair"})
    with pytest.raises(ConfigError, match="trains method: sft only"):
        build_config({"method": "dpo", "lora_backend": "reference"})
    with pytest.raises(ConfigError, match="method kto needs at least 2"):
        build_config({"method": "kto", "batch_size": 1})


def test_a_preference_run_takes_the_output_lock(tiny_qwen3, tmp_path):
    """One writer per output folder, whatever the method: a second run is refused, naming the first."""
    from lora_finetune.folders import OutputBusyError, output_lock

    with output_lock(tmp_path / "run", command="the first dpo run"):
        with pytest.raises(OutputBusyError, match="being written by another process.*the first dpo run"):
            train(tiny_config(tiny_qwen3, tmp_path / "run", method="dpo"))
    assert not (tmp_path / "run").exists()


def test_an_init_adapter_that_cannot_be_continued_is_refused_before_work(tiny_qwen3, tmp_path):
    from lora_finetune.config import build_config
    from lora_finetune.errors import ModelError

    with pytest.raises(ConfigError, match="would replace the adapter it starts from.*outputs/x-dpo"):
        build_config({"method": "dpo", "init_adapter": "outputs/x/", "output_dir": "./outputs/x"})
    with pytest.raises(ConfigError, match="reference LoRALinear starts fresh"):
        build_config({"init_adapter": "outputs/x", "lora_backend": "reference"})
    (tmp_path / "file").write_text("x")
    for where in (tmp_path / "missing", tmp_path / "file", tmp_path):
        with pytest.raises(ModelError, match="is not an adapter folder"):
            train(tiny_config(tiny_qwen3, tmp_path / "run", method="dpo", init_adapter=str(where)))
        assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- quantised bases, memory
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_dpo_on_a_quantised_base(tiny_models, tmp_path, quantization):
    """bitsandbytes runs 4-bit and 8-bit on the CPU (fp32 compute); the 4-bit tiny model needs
    layer widths that are multiples of 64 (the Llama one has them)."""
    pytest.importorskip("bitsandbytes")
    res = train(tiny_config(tiny_models["llama"], tmp_path / quantization, method="dpo", steps=2,
                            quantization=quantization, eval_fraction=0.0))  # fmt: skip
    assert res.resolved.quantization == quantization
    state = load_file(str(res.output_dir / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())


def test_memory_planning_counts_both_answers(tiny_qwen3, tmp_path):
    import torch as _torch

    from lora_finetune.training.planning import plan_memory

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    def peak(method):
        cfg = tiny_config(tiny_qwen3, tmp_path / "x", method=method, batch_size=4, memory_budget="1000GB")
        return plan_memory(cfg, str(tiny_qwen3), targets, 128, _torch.float32).estimate

    sft, dpo, orpo = peak("sft"), peak("dpo"), peak("orpo")
    assert orpo > sft  # two sequences per sample, full logits (ORPO's trainer builds them)
    assert dpo > 0 and dpo != orpo  # two sequences, TRL's fused LM head: no full logits


# --------------------------------------------------------------------------- resume
KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{src!r}, {tests!r}]
    from transformers import TrainerCallback
    from helpers import tiny_config
    from lora_finetune.training import train

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)

    train(tiny_config({model!r}, {out!r}, **{settings!r}), callbacks=[Kill()])
""")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_sigkill_then_resume_is_bit_for_bit(tiny_qwen3, tmp_path, method):
    settings = dict(method=method, steps=6, save_steps=2, eval_steps=100, logging_steps=1, learning_rate=1e-2)
    ref = train(tiny_config(tiny_qwen3, tmp_path / "ref", **settings))
    out = tmp_path / "run"
    code = KILLER.format(src=str(Path(__file__).resolve().parents[2] / "src"), tests=str(Path(__file__).parents[1]),
                         kill_at=4, model=str(tiny_qwen3), out=str(out), settings=settings)  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert last_complete_checkpoint(tmp_path / ".run.partial" / "checkpoints").name == "checkpoint-4"
    resumed = train(tiny_config(tiny_qwen3, out, resume="auto", **settings))
    expected = load_file(str(ref.output_dir / "adapter_model.safetensors"))
    got = load_file(str(resumed.output_dir / "adapter_model.safetensors"))
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    losses = lambda r: [h["loss"] for h in json.loads((r.output_dir / "metrics.json").read_text())["log_history"]  # noqa: E731
                        if "loss" in h and h["step"] > 4]  # fmt: skip
    assert losses(resumed) == losses(ref)


@pytest.mark.parametrize("method", ["dpo", "orpo", "pt"])
def test_the_cli_reports_each_method(tiny_qwen3, tmp_path, capsys, method):
    from lora_finetune.cli import main

    argv = ["train", "--model_name", str(tiny_qwen3), "--output_dir", str(tmp_path / method), "--method", method]
    assert main([*argv, "--steps", "2", "--r", "4", "--save_steps", "2", "--eval_steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "Done (metrics.json)" in out
    if method == "pt":
        assert "eval_perplexity" in out and "reward accuracy" not in out
    else:
        assert "eval reward accuracy" in out and "eval_perplexity" not in out


def test_what_a_preference_run_makes_is_used_like_any_adapter(tiny_qwen3, tmp_path):
    """chat, merge, GGUF and Ollama export read an ORPO adapter folder exactly as an SFT one
    (serving: tests/serve/test_serve_preference.py)."""
    from lora_finetune.export import export_model
    from lora_finetune.use import ChatSession, load_for_inference, merge

    res = train(tiny_config(tiny_qwen3, tmp_path / "orpo", method="orpo", steps=2, eval_fraction=0.0))
    session = ChatSession(load_for_inference(res.output_dir))
    session.settings.set("max_new_tokens", "4")
    assert session.send("中国的首都是哪里？").tokens <= 4
    merged = merge(res.output_dir, tmp_path / "merged")
    assert (merged.output_dir / "config.json").is_file()
    exported = export_model(res.output_dir, tmp_path / "gguf")
    assert any(p.suffix == ".gguf" for p in exported.output_dir.iterdir())
    ollama = export_model(res.output_dir, tmp_path / "ollama", format="ollama")
    modelfile = (ollama.output_dir / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
