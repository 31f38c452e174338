"""Bad input through the CLI: one clear paragraph on stderr, exit code 2, nothing written."""

from __future__ import annotations

import json

import pytest

from lora_finetune.cli import main


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _data(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


CASES = {
    "malformed_jsonl": (
        "d.jsonl",
        '{"instruction": "a", "output": "b"}\n{"instruction": \n',
        ["d.jsonl, line 2", "not valid JSON"],
    ),
    "misnamed_field": ("d.jsonl", '{"instruction": "a", "answer": "b"}\n', ["line 1", "field `output`", "missing"]),
    "empty_output": ("d.jsonl", '{"instruction": "a", "output": ""}\n', ["field `output`: empty"]),
    "wrong_type": ("d.jsonl", '{"instruction": 3.5, "output": {"a": 1}}\n', ["field `output`", "expected text"]),
    "unknown_role": (
        "d.jsonl",
        json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n",
        ["unknown role `bot`"],
    ),
    "no_assistant": (
        "d.jsonl",
        json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n",
        ["no assistant turn"],
    ),
    "csv_header": ("d.csv", "q,a\nx,y\n", ["line 1 (the header)", "`instruction`"]),
    "empty_file": ("d.jsonl", "\n", ["no records"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data(capsys, tmp_path, tiny_qwen3, case):
    name, text, needles = CASES[case]
    out = tmp_path / "out"
    code, err = _run(
        capsys,
        [
            "train",
            "--model_name",
            str(tiny_qwen3),
            "--output_dir",
            str(out),
            "--data_path",
            _data(tmp_path, name, text),
            "--steps",
            "1",
        ],
    )
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_non_utf8_file(capsys, tmp_path, tiny_qwen3):
    p = tmp_path / "d.jsonl"
    p.write_bytes('{"instruction": "中文", "output": "好"}\n'.encode("gb18030"))
    code, err = _run(
        capsys, ["train", "--model_name", str(tiny_qwen3), "--output_dir", str(tmp_path / "o"), "--data_path", str(p)]
    )
    assert code == 2 and "not UTF-8" in err and "d.jsonl, line 1" in err


def test_every_sample_too_long(capsys, tmp_path, tiny_qwen3):
    code, err = _run(
        capsys, ["train", "--model_name", str(tiny_qwen3), "--output_dir", str(tmp_path / "o"), "--max_length", "4"]
    )
    assert code == 2 and "max_length=4" in err and "--max_length" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--r", "0"], ["r=0", "positive"]),
        (["--dropout", "1"], ["dropout=1.0", "[0, 1)"]),
        (["--eval_fraction", "1"], ["eval_fraction=1.0", "no training data"]),
        (["--lora_rnk", "8"], ["unknown key `lora_rnk`", "did you mean `lora_rank` (our `r`)"]),
        (["--r", "0", "--dropout", "2", "--bogus", "1"], ["3 problem(s)"]),
    ],
)
def test_bad_config(capsys, tmp_path, args, needles):
    code, err = _run(capsys, ["train", "--output_dir", str(tmp_path / "o"), *args])
    assert code == 2
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "o").exists()


def test_config_file_unknown_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora_alhpa: 16\nmodel_name: x\n")
    code, err = _run(capsys, ["train", "--config", str(cfg)])
    assert code == 2 and "unknown key `lora_alhpa`" in err and "(our `alpha`)" in err and str(cfg) in err


def test_model_path_missing_or_without_config(capsys, tmp_path):
    code, err = _run(capsys, ["train", "--model_name", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in err and "smollm2-135m-instruct" in err
    (tmp_path / "m").mkdir()
    code, err = _run(capsys, ["train", "--model_name", str(tmp_path / "m"), "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "no config.json" in err
    assert not (tmp_path / "o").exists()


def test_target_modules_matching_nothing(capsys, tmp_path, tiny_qwen3):
    code, err = _run(
        capsys,
        [
            "train",
            "--model_name",
            str(tiny_qwen3),
            "--output_dir",
            str(tmp_path / "o"),
            "--target_modules",
            "query_key_value,dense",
        ],
    )
    assert code == 2 and "query_key_value" in err and "q_proj" in err
    assert not (tmp_path / "o").exists()


def test_unexpected_errors_get_one_line_and_a_log_file(monkeypatch, tmp_path, capsys):
    """The safety net: a bug prints one line naming the verb and where the traceback is, exit 1."""
    import lora_finetune.cli.tools as tools

    monkeypatch.setenv("LORA_FINETUNE_CACHE", str(tmp_path / "cache"))

    def broken(args):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(tools, "cmd_modules", broken)
    code = main(["modules", "--model", "x"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "`lora-finetune modules` failed unexpectedly (RuntimeError: something nobody expected)" in err
    [log] = list((tmp_path / "cache" / "logs").glob("crash-modules-*.log"))
    assert log.name in err and "Traceback" in log.read_text() and "something nobody expected" in log.read_text()


@pytest.mark.parametrize("cpus,load,threads", [(2, 0.1, 2), (2, 0.9, 1), (2, 2.3, 1), (8, 3.0, 5), (4, 0.0, 4)])
def test_threads_are_what_other_work_leaves_free(cpus, load, threads):
    from lora_finetune.cli import choose_threads

    assert choose_threads(cpus, load) == threads


def test_threads_flag_and_env(monkeypatch):
    import torch

    from lora_finetune.cli import _setup_threads

    before = torch.get_num_threads()
    try:
        _setup_threads(1)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LORA_FINETUNE_THREADS", "2")
        _setup_threads(None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_busy_cores_is_a_share_of_the_machine():
    import os

    from lora_finetune.cli import _busy_cores

    busy = _busy_cores(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def test_a_file_where_a_folder_is_expected(capsys, tmp_path, tiny_qwen3, monkeypatch, adapter):
    """cache_dir (setting or environment) and eval's --report: exit 2 naming the setting, before
    any work, never the safety net's "failed unexpectedly"."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for cache in (afile, afile / "sub"):
        code, err = _run(capsys, ["train", "--model_name", "smollm2-135m-instruct", "--cache_dir", str(cache),
                                  "--output_dir", str(tmp_path / "out")])  # fmt: skip
        assert code == 2 and f"cache_dir={cache}: " in err and "give a folder" in err and "unexpectedly" not in err
    monkeypatch.setenv("LORA_FINETUNE_CACHE", str(afile))
    code, err = _run(capsys, ["modules", "--model", "smollm2-135m-instruct"])
    assert code == 2 and "LORA_FINETUNE_CACHE: " in err and "is a file, not a folder" in err
    monkeypatch.delenv("LORA_FINETUNE_CACHE")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the report path was checked")

    monkeypatch.setattr("lora_finetune.use.load_for_inference", no_model)
    data = _data(tmp_path, "q.jsonl", '{"instruction": "q", "output": "a"}\n')
    code, err = _run(capsys, ["eval", "--adapter", str(adapter), "--data", data, "--report", str(tmp_path)])
    assert code == 2 and "is a folder; give a file path" in err
