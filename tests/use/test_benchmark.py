"""Benchmarks through lm-evaluation-harness (use/benchmark.py): the numbers against a hand
computation on a tiny model, the prompt each template asks in, the adapter-vs-base comparison
and its paired standard error, and what happens without network. No test reaches the hub: the
tasks are the bundled `lora_demo_zh` and YAML files written here."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lora_finetune.errors import ConfigError, DataError
from lora_finetune.use import benchmark as bench

pytest.importorskip("lm_eval")

ITEMS = [
    json.loads(line) for line in bench.BUNDLED_TASKS.joinpath("lora_demo_zh.jsonl").read_text("utf-8").splitlines()
]


@pytest.fixture(scope="module")
def manager():
    return bench.task_manager()


@pytest.fixture(scope="module")
def demo_tasks(manager):
    return bench.load_tasks(manager, ["lora_demo_zh"], offline=True)


def _continuation_logprob(model, tok, context: str, continuation: str) -> float:
    """Log-probability of `continuation` after `context`, one unpadded forward pass (the harness
    splits the tokens of context + continuation where the context's end)."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def _by_hand(model, tok, subject: str) -> list[float]:
    """0-shot, plain format: C-Eval's prompt, the answer letter after a space; 1 if the gold
    letter has the highest log-probability."""
    hits = []
    for item in (r for r in ITEMS if r["subject"] == subject and r["split"] == "test"):
        prompt = f"{item['question']}\nA. {item['A']}\nB. {item['B']}\nC. {item['C']}\nD. {item['D']}\n答案："
        scores = [_continuation_logprob(model, tok, prompt, f" {letter}") for letter in "ABCD"]
        hits.append(float(max(range(4), key=scores.__getitem__) == "ABCD".index(item["answer"])))
    return hits


def test_accuracy_and_stderr_match_a_hand_computation(tiny_qwen3, demo_tasks):
    from lora_finetune.use import load_for_inference

    im = load_for_inference(base_model=str(tiny_qwen3), dtype="fp32", device="cpu")
    settings = bench.BenchmarkSettings(tasks=["lora_demo_zh"], num_fewshot=0, plain=True, batch_size=3)
    res = bench.benchmark(None, settings, im=im, loaded=demo_tasks, write_report=False)
    rows = {r["task"]: r for r in res.rows}
    assert [r["task"] for r in res.rows] == ["lora_demo_zh", "lora_demo_zh_knowledge", "lora_demo_zh_language"]
    assert [r["depth"] for r in res.rows] == [0, 1, 1] and rows["lora_demo_zh"]["group"]
    every = []
    for subject in ("knowledge", "language"):
        hits = _by_hand(im.model, im.tokenizer, subject)
        every += hits
        mean = sum(hits) / len(hits)
        sd = math.sqrt(sum((h - mean) ** 2 for h in hits) / (len(hits) - 1))
        row = rows[f"lora_demo_zh_{subject}"]
        assert row["n"] == 12 and row["metric"] == "acc"
        assert row["base"] == pytest.approx(mean, abs=1e-9)
        assert row["base_se"] == pytest.approx(sd / math.sqrt(len(hits)), abs=1e-9)
    # The group weights its tasks by size: the mean over all 24 items.
    assert rows["lora_demo_zh"]["base"] == pytest.approx(sum(every) / 24, abs=1e-9)
    assert rows["lora_demo_zh"]["n"] == 24 and "difference" not in rows["lora_demo_zh"]


def test_limit_and_fewshot_reach_the_harness(tiny_qwen3, demo_tasks, tmp_path):
    from lora_finetune.use import load_for_inference

    im = load_for_inference(base_model=str(tiny_qwen3), dtype="fp32", device="cpu")
    settings = bench.BenchmarkSettings(tasks=["lora_demo_zh"], num_fewshot=2, limit=5)
    res = bench.benchmark(None, settings, im=im, loaded=demo_tasks, report_path=tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert {r["task"]: r["n"] for r in res.rows} == {
        "lora_demo_zh": 10,
        "lora_demo_zh_knowledge": 5,
        "lora_demo_zh_language": 5,
    }
    assert report["n_shot"]["lora_demo_zh_knowledge"] == 2
    assert report["lm_eval_version"] == bench.require_harness()
    assert report["task_versions"] == {"lora_demo_zh": 1.0, "lora_demo_zh_knowledge": 1.0, "lora_demo_zh_language": 1.0}
    assert report["prompt_format"] == "template chat" and report["adapter"] is None


def test_adapter_and_base_in_one_pass_with_a_paired_difference(adapter, demo_tasks, tiny_qwen3):
    from lora_finetune.use import load_for_inference

    im = load_for_inference(adapter, dtype="fp32", device="cpu")
    settings = bench.BenchmarkSettings(tasks=["lora_demo_zh"], num_fewshot=1, compare_base=True)
    res = bench.benchmark(adapter, settings, im=im, loaded=demo_tasks)
    assert res.report_path == adapter / "bench_report.json" and res.report_path.is_file()
    # The base pass is the base: the same numbers as the base loaded on its own.
    alone = load_for_inference(adapter, base_only=True, dtype="fp32", device="cpu")
    base_only = bench.benchmark(adapter, settings, im=alone, loaded=demo_tasks, write_report=False)
    for with_both, by_itself in zip(res.rows, base_only.rows):
        assert with_both["base"] == pytest.approx(by_itself["base"], abs=1e-9)
        assert with_both["difference"] == pytest.approx(with_both["adapter"] - with_both["base"])
        assert with_both["difference_se"] is not None
    # The adapter changes what the model prefers (its log-likelihoods differ from the base's).
    a = res.report["results"]["adapter"]
    assert set(res.report["results"]) == {"adapter", "base"} and a


def _run(items: dict[str, tuple[list[float], list[float]]]) -> dict[str, dict]:
    """Fake harness results for tasks with per-item `acc` of the adapter and of the base."""
    runs = {}
    for k, label in enumerate(("adapter", "base")):
        results, samples, counts = {}, {}, {}
        for task, both in items.items():
            vals = both[k]
            mean = sum(vals) / len(vals)
            results[task] = {"acc,none": mean, "acc_stderr,none": 0.1}
            samples[task] = [{"doc_id": i, "filter": "none", "acc": v} for i, v in enumerate(vals)]
            counts[task] = {"original": len(vals), "effective": len(vals)}
        results["g"] = {"acc,none": 0.5, "acc_stderr,none": 0.1}
        runs[label] = {"results": results, "samples": samples, "n-samples": counts}
    return runs


def _group(weight_by_size: bool, children: list[str]):
    agg = SimpleNamespace(metric="acc", weight_by_size=weight_by_size)
    return SimpleNamespace(aggregate_metric_list=[agg], child_names=children)


@pytest.mark.parametrize("weight_by_size", [True, False])
def test_paired_standard_error_by_hand(weight_by_size):
    items = {"t1": ([1, 1, 0, 1], [1, 0, 0, 0]), "t2": ([0, 1], [0, 0])}
    loaded = {"g": {"tasks": {"t1": None, "t2": None}, "groups": {"g": _group(weight_by_size, ["t1", "t2"])}}}
    rows = {r["task"]: r for r in bench.compare(_run(items), loaded)}
    # t1: differences 0,1,0,1 -> mean 0.5, sample variance 1/3, se sqrt(1/3 / 4)
    v1 = (1 / 3) / 4
    assert rows["t1"]["difference"] == pytest.approx(0.5)
    assert rows["t1"]["difference_se"] == pytest.approx(math.sqrt(v1))
    # t2: differences 0,1 -> mean 0.5, sample variance 0.5, se sqrt(0.5 / 2)
    v2 = 0.5 / 2
    assert rows["t2"]["difference_se"] == pytest.approx(math.sqrt(v2))
    w = (4 / 6, 2 / 6) if weight_by_size else (0.5, 0.5)
    assert rows["g"]["difference_se"] == pytest.approx(math.sqrt(w[0] ** 2 * v1 + w[1] ** 2 * v2))
    assert not rows["t1"]["beyond_2se"]  # 0.5 < 2 x 0.289
    many = {"t1": ([1] * 30 + [0] * 10, [0] * 30 + [0] * 10), "t2": ([0, 1], [0, 0])}
    assert {r["task"]: r for r in bench.compare(_run(many), loaded)}["t1"]["beyond_2se"]


def test_identical_runs_are_not_marked():
    items = {"t1": ([1, 0, 1], [1, 0, 1])}
    loaded = {"t1": {"tasks": {"t1": None}, "groups": {}}}
    (row,) = bench.compare(_run(items), loaded)
    assert row["difference"] == 0 and row["difference_se"] == 0 and not row["beyond_2se"]


# --------------------------------------------------------------------------- prompts
def test_chat_adapters_are_asked_in_the_tokens_they_learned(im, manager):
    """With a ChatML template the prompt is the harness's own chat-template rendering, and its
    tokens are the ones training encoded (few-shot turns included)."""
    from lm_eval.models.huggingface import HFLM

    from lora_finetune.templates import encode_prompt

    lm, fmt = bench.harness_model(im, batch_size=2, plain=False)
    assert fmt == "template chat"
    history = [
        {"role": "user", "content": "一周有几天？\nA. 五天\nB. 七天\n答案："},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "中国的首都是哪里？\nA. 北京\nB. 上海\n答案："},
    ]
    text = lm.apply_chat_template(history)
    assert text == HFLM.apply_chat_template(lm, history)
    record = {"messages": [dict(m) for m in history]}
    assert lm.tok_encode(text) == encode_prompt(record, im.tokenizer, im.template)


def test_qa_adapters_are_asked_in_the_qa_template(adapter, tmp_path):
    from lora_finetune.templates import encode_prompt
    from lora_finetune.use import load_for_inference

    qa = load_for_inference(adapter, template="qa", dtype="fp32", device="cpu")
    lm, fmt = bench.harness_model(qa, batch_size=2, plain=False)
    assert fmt == "template qa"
    history = [
        {"role": "system", "content": "只回答字母。"},
        {"role": "user", "content": "一周有几天？"},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "中国的首都是哪里？"},
    ]
    text = lm.apply_chat_template(history)
    assert text.endswith("问：中国的首都是哪里？\n答：") and text.startswith("只回答字母。\n问：一周有几天？\n答：B")
    record = {"system": "只回答字母。", "messages": [dict(m) for m in history[1:]]}
    assert lm.tok_encode(text) == encode_prompt(record, qa.tokenizer, qa.template)
    # An answer begun (the harness's continue_final_message) continues after the prompt.
    begun = lm.apply_chat_template([*history, {"role": "assistant", "content": "答案是"}], add_generation_prompt=False)
    assert begun == text + "答案是"


def test_plain_format_uses_the_harness_default(im):
    lm, fmt = bench.harness_model(im, batch_size=2, plain=True)
    assert fmt == "plain" and type(lm).__name__ == "HFLM"


# --------------------------------------------------------------------------- refusals
def test_unknown_task_names_suggest_the_right_one(manager, tmp_path):
    with pytest.raises(ConfigError) as e:
        bench.check_task_names(manager, ["ceval-vaild", "lora_demo_zh", str(tmp_path / "mine.yaml")])
    msg = str(e.value)
    assert "ceval-vaild (did you mean ceval-valid" in msg and "mine.yaml (no such file)" in msg
    assert "lora_demo_zh;" not in msg and "--list-tasks" in msg


def test_hub_task_without_network_fails_at_once_saying_what_to_download(manager, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert not bench.hub_reachable(timeout=1)
    with pytest.raises(DataError) as e:
        bench.load_tasks(manager, ["arc_easy"])
    msg = str(e.value)
    assert msg.startswith("task arc_easy reads its data from the Hugging Face Hub, and this machine cannot reach")
    assert "--tasks arc_easy --download-only" in msg and "HF_DATASETS_OFFLINE=1" in msg
    hub_cache, ds_cache = bench.cache_folders()
    assert hub_cache in msg and ds_cache in msg
    # The offline switch was scoped to the loading.
    import datasets.config

    assert datasets.config.HF_HUB_OFFLINE == bench._offline_env()


def test_settings_report_every_problem_at_once(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    s = bench.BenchmarkSettings(
        tasks=[" ", ""], num_fewshot=-1, limit=2.5, batch_size=0, include_path=[tmp_path / "file.txt"]
    )
    with pytest.raises(ConfigError) as e:
        s.check()
    msg = str(e.value)
    assert msg.startswith("5 problem(s)") and "include_path" in msg and "is a file" in msg
    for bad in ("0", "-3", "abc", "1.5", "nan", "inf"):
        with pytest.raises(ValueError):
            bench.parse_limit(bad)
    assert bench.parse_limit("10") == 10 and bench.parse_limit("0.25") == 0.25


def test_missing_harness_says_what_to_install(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(bench.metadata, "version", missing)
    with pytest.raises(ConfigError, match=r"pip install 'lora-finetune\[bench\]'"):
        bench.require_harness()
    monkeypatch.setattr(bench.metadata, "version", lambda name: "0.4.2")
    with pytest.raises(ConfigError, match="needs lm-eval >= 0.4.13; this environment has 0.4.2"):
        bench.require_harness()


def test_a_users_own_task_yaml_with_local_data(tiny_qwen3, manager, tmp_path):
    """The format users write their own tasks in: a YAML file naming a local JSON file."""
    from lora_finetune.use import load_for_inference

    data = tmp_path / "yes_no.jsonl"
    data.write_text(
        "".join(json.dumps({"q": f"问题 {i}", "label": i % 2}, ensure_ascii=False) + "\n" for i in range(6)), "utf-8"
    )
    task = tmp_path / "yes_no.yaml"
    task.write_text(
        "task: my_yes_no\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}？"\ndoc_to_choice: ["否", "是"]\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 3.0\n",
        "utf-8",
    )
    bench.check_task_names(manager, [str(task)])
    loaded = bench.load_tasks(manager, [str(task)], offline=True)
    im = load_for_inference(base_model=str(tiny_qwen3), dtype="fp32", device="cpu")
    res = bench.benchmark(None, bench.BenchmarkSettings(tasks=[str(task)]), im=im, loaded=loaded, write_report=False)
    (row,) = res.rows
    assert row["task"] == "my_yes_no" and row["n"] == 6 and 0 <= row["base"] <= 1
    assert res.report["task_versions"] == {"my_yes_no": 3.0}


def test_a_broken_task_yaml_is_named(manager, tmp_path):
    task = tmp_path / "broken.yaml"
    task.write_text("task: broken\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: /nonexistent.jsonl\n")
    with pytest.raises(DataError, match="task .*broken.yaml"):
        bench.load_tasks(manager, [str(task)], offline=True)


def test_chatglm3_adapters_are_asked_with_gmask_once(tmp_path):
    """ChatGLM3 (converted; its chat template): [gMASK]sop once, and the tokens training saw."""
    from lora_finetune.templates import encode_prompt
    from lora_finetune.training import train
    from lora_finetune.use import load_for_inference

    from chatglm_helpers import chatglm3_checkpoint, train_sentencepiece
    from helpers import tiny_config

    train_sentencepiece(tmp_path / "spm")
    src = chatglm3_checkpoint(tmp_path / "chatglm3", tmp_path / "spm" / "tokenizer.model")
    out = tmp_path / "adapter"
    train(tiny_config(src, out, cache_dir=str(tmp_path / "cache"), steps=1, save_steps=100, eval_steps=100))
    history = [{"role": "user", "content": "一周有几天？"}, {"role": "assistant", "content": "B"},
               {"role": "user", "content": "中国的首都是哪里？"}]  # fmt: skip
    im = load_for_inference(out, dtype="fp32", device="cpu")
    lm, fmt = bench.harness_model(im, batch_size=2, plain=False)
    assert fmt == "template chat"
    text = lm.apply_chat_template(history)
    assert text.startswith("[gMASK]sop") and text.count("[gMASK]") == 1
    assert lm.tok_encode(text) == encode_prompt({"messages": [dict(m) for m in history]}, im.tokenizer, im.template)
    # The harness's own rendering lacks the EOS training puts after each answer (ChatGLM3's
    # template ends a turn with the next role marker only): the few-shot turns would not look
    # like what the adapter learned.
    from lm_eval.models.huggingface import HFLM

    assert HFLM.apply_chat_template(lm, history) == text.replace("B</s>", "B")


def test_generation_tasks_run_in_the_adapters_template(im, manager, tmp_path):
    """A generate_until task (the harness's other kind, e.g. GSM8K): our template, the harness's
    stop sequences, its exact-match metric."""
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"{i} 加 1 等于几？", "a": str(i + 1)}) + "\n" for i in range(3)))
    task = tmp_path / "gen.yaml"
    task.write_text(
        f"task: my_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        'test_split: test\noutput_type: generate_until\ndoc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\nmetadata:\n  version: 1.0\n"
    )
    loaded = bench.load_tasks(manager, [str(task)], offline=True)
    res = bench.benchmark(None, bench.BenchmarkSettings(tasks=[str(task)]), im=im, loaded=loaded, write_report=False)
    (row,) = res.rows
    assert row["metric"] == "exact_match" and row["n"] == 3 and row["adapter"] is not None


def test_tasks_that_run_model_written_code_are_refused(manager, tmp_path):
    task = tmp_path / "code.yaml"
    task.write_text(
        "task: my_code\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: x.jsonl\nunsafe_code: true\n"
        'test_split: test\noutput_type: generate_until\ndoc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
    )
    (tmp_path / "x.jsonl").write_text('{"q": "1", "a": "2"}\n')
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ConfigError, match="runs code the model writes"):
            bench.load_tasks(manager, [str(task)], offline=True)
    finally:
        os.chdir(cwd)
