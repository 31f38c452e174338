"""`lora-finetune benchmark` as people run it: the table, the base loaded once, and every
refusal before the model loads (unknown task, bad numbers, not an adapter folder, no network,
no lm-eval)."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

from lora_finetune.cli import main

pytest.importorskip("lm_eval")


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything loads a model."""

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("lora_finetune.use.load_for_inference", refuse)


def test_adapter_vs_base_table_with_the_base_loaded_once(adapter, capsys, monkeypatch):
    import lora_finetune.use.inference as inference

    loads = []
    real = inference.load_model
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    code = main(["benchmark", "--adapter", str(adapter), "--tasks", "lora_demo_zh", "--compare-base",
                 "--limit", "4", "--num_fewshot", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and len(loads) == 1
    assert "with lm-eval 0.4" in out and "prompts in the template chat format, 1-shot" in out
    header, *lines = out.split("Benchmarked")[1].splitlines()[1:5]
    assert header.split()[:5] == ["task", "metric", "n", "adapter", "base"] and "adapter - base" in header
    assert lines[0].split()[:3] == ["lora_demo_zh", "acc", "8"] and lines[1].startswith("  lora_demo_zh_knowledge")
    report = json.loads((adapter / "bench_report.json").read_text())
    top = report["rows"][0]
    assert f"{top['adapter']:.4f} ± {top['adapter_se']:.4f}" in lines[0]
    assert f"{top['difference']:+.4f} ± {top['difference_se']:.4f}" in lines[0]
    assert report["task_versions"]["lora_demo_zh_language"] == 1.0 and report["n_samples"]


def test_alias_and_base_model_alone(tiny_qwen3, tmp_path, capsys):
    report = tmp_path / "base.json"
    code = main(["bench-eval", "--base_model", str(tiny_qwen3), "--tasks", "lora_demo_zh_language", "--limit", "3",
                 "--plain", "--report", str(report)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "prompts in the plain format, 0-shot" in out and "adapter - base" not in out
    rows = json.loads(report.read_text())["rows"]
    assert [(r["task"], r["n"]) for r in rows] == [("lora_demo_zh_language", 3)] and "base" in rows[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "ceval-vaild"], "did you mean ceval-valid"),
        (["--tasks", ""], "name at least one task"),
        (["--tasks", "lora_demo_zh", "--include_path", "{file}"], "is a file; give a folder"),
        (["--tasks", "lora_demo_zh", "--report", "{dir}"], "is a folder; give a file path"),
    ],
)
def test_refused_before_any_model_loads(adapter, tmp_path, capsys, no_model, args, message):
    (tmp_path / "f.txt").write_text("x")
    args = [a.format(file=tmp_path / "f.txt", dir=tmp_path) for a in args]
    code = main(["benchmark", "--adapter", str(adapter), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("limit", ["0", "-2", "abc", "1.5", "nan"])
def test_limit_must_be_a_positive_count_or_share(adapter, capsys, limit):
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "--adapter", str(adapter), "--tasks", "lora_demo_zh", f"--limit={limit}"])
    assert e.value.code == 2 and "--limit" in capsys.readouterr().err


def test_not_an_adapter_folder_is_said_before_the_task_index(tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.setattr("lora_finetune.use.benchmark.task_manager", lambda *a: pytest.fail("index read"))
    code = main(["benchmark", "--adapter", str(tmp_path), "--tasks", "lora_demo_zh"])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path) in err and "adapter" in err


def test_hub_task_without_network(adapter, capsys, monkeypatch, no_model):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code = main(["benchmark", "--adapter", str(adapter), "--tasks", "ceval-valid"])
    err = capsys.readouterr().err
    assert code == 2 and "task ceval-valid reads its data from the Hugging Face Hub" in err
    assert "--download-only" in err and "Traceback" not in err


def test_without_the_harness_says_what_to_install(adapter, capsys, monkeypatch, no_model):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr("lora_finetune.use.benchmark.metadata.version", missing)
    code = main(["benchmark", "--adapter", str(adapter), "--tasks", "mmlu"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'lora-finetune[bench]'" in err


def test_list_tasks(capsys):
    assert main(["benchmark", "--list-tasks", "lora_demo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["lora_demo_zh\tgroup", "lora_demo_zh_knowledge\ttask", "lora_demo_zh_language\ttask"]


def test_download_only_loads_the_data_and_no_model(capsys, no_model):
    assert main(["benchmark", "--tasks", "lora_demo_zh", "--download-only"]) == 0
    assert "The data of 2 task(s) is in the caches" in capsys.readouterr().out


def test_a_full_disk_keeps_the_numbers(adapter, capsys, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lora_finetune.use.benchmark._write_json", full)
    code = main(["benchmark", "--adapter", str(adapter), "--tasks", "lora_demo_zh_language", "--limit", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "lora_demo_zh_language" in out
    assert "The report could not be written" in out and "No space left on device" in out


def test_report_under_a_file_is_refused_first(adapter, tmp_path, capsys, no_model):
    (tmp_path / "afile").write_text("x")
    code = main(["benchmark", "--adapter", str(adapter), "--tasks", "lora_demo_zh",
                 "--report", str(tmp_path / "afile" / "r.json")])  # fmt: skip
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_a_4bit_adapter_is_benchmarked_on_its_4bit_base(tiny_qwen3, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    from lora_finetune.training import train

    from helpers import tiny_config

    out = tmp_path / "q4"
    res = train(tiny_config(tiny_qwen3, out, quantization="4bit", steps=2, save_steps=100, eval_steps=100))
    if res.resolved.quantization != "4bit":
        pytest.skip("bitsandbytes cannot run 4-bit here")
    code = main(["benchmark", "--adapter", str(out), "--tasks", "lora_demo_zh_knowledge", "--limit", "2"])
    assert code == 0 and "4bit" in capsys.readouterr().out
    assert json.loads((out / "bench_report.json").read_text())["quantization"] == "4bit"
