"""Loading an adapter from its folder alone, batched generation, streaming, and `generate` over
every data file format."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

QUESTIONS = ["中国的首都是哪里？", "Say hello to the quick brown fox, please.", "hi"]


def _rec(q: str, answer: str | None = None) -> dict:
    msgs = [{"role": "user", "content": q, "input": ""}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer, "input": ""})
    return {"system": None, "messages": msgs}


def test_load_reads_everything_from_the_adapter_folder(im, adapter, tiny_tokenizer):
    assert im.has_adapter and im.adapter_dir == adapter
    assert im.template.name == "chat"  # resolved at training time, read from run_config.yaml
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in im.stop_token_ids
    assert im.tokenizer.padding_side == "left"
    assert im.record.resolved.base_model == im.base_model
    assert type(im.model).__name__.startswith("Peft")


def test_template_stop_id_is_the_token_that_ends_learned_answers(im, tiny_tokenizer):
    # The template names its stop tokens; <|endoftext|> (a Qwen end-of-turn token) is this
    # tokenizer's unk token, so it is not one.
    assert im.template.stop_tokens == ("<|im_end|>",)


def test_prompt_record_drops_the_final_answer():
    from lora_finetune.errors import DataError
    from lora_finetune.use.inference import prompt_record

    rec = {
        "system": "s",
        "messages": [
            {"role": "user", "content": "q1", "input": ""},
            {"role": "assistant", "content": "a1", "input": ""},
            {"role": "user", "content": "q2", "input": ""},
            {"role": "assistant", "content": "a2", "input": ""},
        ],
        "source": "x:1",
    }
    prompt, ref = prompt_record(rec)
    assert ref == "a2" and [m["content"] for m in prompt["messages"]] == ["q1", "a1", "q2"]
    assert len(rec["messages"]) == 4  # the input record is not modified
    prompt, ref = prompt_record(_rec("q"))
    assert ref is None and len(prompt["messages"]) == 1
    with pytest.raises(DataError, match="no user turn"):
        prompt_record({"system": None, "messages": [], "source": "f.jsonl:line 3"})


def test_records_with_answers_generate_for_the_last_user_turn(im):
    from lora_finetune.use.inference import generate

    a = generate(im, [_rec(q) for q in QUESTIONS], max_new_tokens=6)
    b = generate(im, [_rec(q, "some answer") for q in QUESTIONS], max_new_tokens=6)
    assert a == b
    assert all(set(r) == {"text", "tokens", "stopped"} for r in a)


def test_batched_left_padded_generation_matches_one_at_a_time(im):
    from lora_finetune.use.inference import generate

    recs = [_rec(q) for q in QUESTIONS]
    calls = []
    batched = generate(im, recs, max_new_tokens=8, batch_size=3, repetition_penalty=2.0, progress=calls.append)
    single = generate(im, recs, max_new_tokens=8, batch_size=1, repetition_penalty=2.0)
    assert [r["text"] for r in batched] == [r["text"] for r in single]
    assert calls == [3]


def test_streaming_hands_over_the_same_text(im):
    import torch

    from lora_finetune.use.inference import stream_reply

    chunks: list[str] = []
    torch.manual_seed(0)
    out = stream_reply(im, _rec(QUESTIONS[1]), on_text=chunks.append, max_new_tokens=12, temperature=1.0, top_p=1.0)
    assert len(chunks) >= 1 and out["text"]
    assert "".join(chunks).strip() == out["text"]


def _write(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


ALPACA = [
    {"instruction": "中国的首都是哪里？", "input": "", "output": "北京。", "id": 1},
    {"instruction": "Translate.", "input": "我爱学习。", "output": "", "id": 2},
    {"instruction": "hi", "input": "", "id": 3},
]
MESSAGES = [
    {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "中国的首都是哪里？"},
        ],
        "tag": "a",
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello."},
        ],
        "tag": "b",
    },
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "id": "x"},
    {"conversations": [{"from": "human", "value": "中国的首都是哪里？"}], "id": "y"},
]
CASES = [
    ("alpaca", ".jsonl", ".jsonl"),
    ("alpaca", ".json", ".csv"),
    ("alpaca", ".parquet", ".json"),
    ("messages", ".jsonl", ".parquet"),
    ("messages", ".json", ".jsonl"),
    ("messages", ".parquet", ".json"),
    ("sharegpt", ".jsonl", ".csv"),
    ("sharegpt", ".json", ".parquet"),
]


def _rows(kind: str, suffix: str) -> list[dict]:
    rows = {"alpaca": ALPACA, "messages": MESSAGES, "sharegpt": SHAREGPT}[kind]
    if suffix in (".csv", ".parquet") and kind == "alpaca":
        return [
            {"instruction": r["instruction"], "input": r["input"], "output": r.get("output", ""), "id": str(r["id"])}
            for r in rows
        ]
    return rows


@pytest.mark.parametrize("kind,in_suffix,out_suffix", CASES)
def test_generate_file_round_trips_every_format(im, tmp_path, kind, in_suffix, out_suffix):
    from lora_finetune.data.readers import read_rows
    from lora_finetune.use.files import generate_file

    rows = _rows(kind, in_suffix)
    src = _write(tmp_path / f"in{in_suffix}", rows)
    dst = tmp_path / "sub" / f"out{out_suffix}"
    res = generate_file(im, src, dst, max_new_tokens=4, batch_size=2)
    assert res.rows == len(rows) and res.output_path == dst
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # no temp file left
    if out_suffix == ".csv":
        with open(dst, newline="", encoding="utf-8") as f:
            back = list(csv.DictReader(f))
    else:
        back = [r for _, r in read_rows(dst)]
    assert len(back) == len(rows)
    for orig, got in zip(rows, back):
        assert isinstance(got["prediction"], str)
        for key, value in orig.items():
            if out_suffix == ".csv" and not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)
            assert got[key] == value, key


def test_alpaca_csv_round_trips_through_csv(im, tmp_path):
    """CSV in, CSV out: the output is again a training-readable CSV with the same cells."""
    from lora_finetune.data.formats import load_records
    from lora_finetune.use.files import generate_file

    rows = _rows("alpaca", ".csv")
    src = _write(tmp_path / "in.csv", rows)
    generate_file(im, src, tmp_path / "out.csv", max_new_tokens=3)
    recs = load_records(tmp_path / "out.csv", require_answer=False)
    assert [r["messages"][0]["content"] for r in recs] == [r["instruction"] for r in rows]


def test_generate_file_refuses_to_overwrite_its_input(im, tmp_path):
    from lora_finetune.errors import DataError
    from lora_finetune.use.files import generate_file

    src = _write(tmp_path / "in.jsonl", ALPACA)
    before = src.read_bytes()
    with pytest.raises(DataError, match="is the input file"):
        generate_file(im, src, src, max_new_tokens=2)
    assert src.read_bytes() == before


def test_generate_file_reports_bad_records_by_line(im, tmp_path):
    from lora_finetune.errors import DataError
    from lora_finetune.use.files import generate_file

    src = tmp_path / "in.jsonl"
    src.write_text('{"instruction": "ok"}\n{"question": "no"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        generate_file(im, src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_generate_cli(adapter, tmp_path, capsys):
    from lora_finetune.cli import main

    src = _write(tmp_path / "in.json", ALPACA)
    out = tmp_path / "out.jsonl"
    rc = main(
        [
            "generate",
            "--adapter",
            str(adapter),
            "--input",
            str(src),
            "--output",
            str(out),
            "--batch_size",
            "2",
            "--max_new_tokens",
            "3",
            "--max_samples",
            "2",
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in lines] == [1, 2] and all("prediction" in r for r in lines)
    assert "Wrote 2 rows" in capsys.readouterr().out


def test_cli_errors_exit_2(tmp_path, capsys):
    from lora_finetune.cli import main

    rc = main(["generate", "--adapter", str(tmp_path), "--input", "x.jsonl", "--output", "y.jsonl"])
    assert rc == 2
    assert "not an adapter folder" in capsys.readouterr().err


def test_quantised_run_loads_quantised_again_or_falls_back(adapter, tmp_path, caplog, monkeypatch):
    """A run_config that says 4bit loads its base in 4 bit where bitsandbytes runs (CUDA or a
    recent bitsandbytes on the CPU), and in full precision, with a warning, where it cannot."""
    import importlib.util

    from lora_finetune.folders import write_manifest
    from lora_finetune.use.inference import load_for_inference

    copy = tmp_path / "q4"
    shutil.copytree(adapter, copy)
    run = yaml.safe_load((copy / "run_config.yaml").read_text(encoding="utf-8"))
    run["quantization"] = "4bit"
    run["resolved"]["quantization"] = "4bit"
    (copy / "run_config.yaml").write_text(yaml.safe_dump(run), encoding="utf-8")
    write_manifest(copy)
    if importlib.util.find_spec("bitsandbytes") is not None:
        assert load_for_inference(copy).quantization == "4bit"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with caplog.at_level("WARNING"):
        im4 = load_for_inference(copy)
    assert im4.quantization == "none"
    assert "quantization=4bit requested" in caplog.text


def test_missing_base_folder_falls_back_to_model_name(adapter, tiny_qwen3, tmp_path):
    """A run_config whose resolved base folder is gone (adapter copied to another machine)
    loads the configured model_name instead."""
    from lora_finetune.run_record import open_adapter

    folder = open_adapter(adapter)
    assert folder.base_to_load() == folder.record.resolved.base_model
    folder.record.resolved.base_model = str(tmp_path / "gone")
    assert folder.base_to_load() == str(tiny_qwen3)
    assert folder.base_to_load("other/model") == "other/model"
