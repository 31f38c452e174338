"""Readers and formats, and the errors bad data gets (file, line/record, field, fix)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_finetune.data.demo import build_dummy_dataset, dummy_rows
from lora_finetune.data.formats import load_records, normalize_row
from lora_finetune.errors import DataError, LoraFinetuneError

ALPACA = [
    {"instruction": "中国的首都是哪里？", "input": "", "output": "北京。"},
    {"instruction": "翻译", "input": "apple", "output": "苹果", "system": "be brief", "history": [["hi", "hello"]]},
]
MESSAGES = [
    {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ]
    }
]
SHAREGPT = [{"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}]}]


def write(tmp_path: Path, name: str, rows) -> Path:
    p = tmp_path / name
    if name.endswith(".jsonl"):
        p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    elif name.endswith(".json"):
        p.write_text(json.dumps(rows, ensure_ascii=False, indent=1), "utf-8")
    elif name.endswith(".csv"):
        import csv

        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in ("instruction", "input", "output")})
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = sorted({k for r in rows for k in r})  # from_pylist takes the schema from row 1
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), p)
    return p


def test_dummy_dataset_is_the_seeds_shape():
    ds = build_dummy_dataset()
    assert len(ds) == 20 and ds.column_names == ["instruction", "input", "output"]
    assert all(r["instruction"] and r["output"] for r in dummy_rows())
    assert sum(1 for r in dummy_rows() if r["input"]) >= 3  # some use the 补充信息 line


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_alpaca_in_every_file_type(tmp_path, suffix):
    rows = ALPACA if suffix != ".csv" else ALPACA[:1] + [{"instruction": "翻译", "input": "apple", "output": "苹果"}]
    recs = load_records(write(tmp_path, "d" + suffix, rows))
    assert recs[0]["messages"] == [
        {"role": "user", "content": "中国的首都是哪里？", "input": ""},
        {"role": "assistant", "content": "北京。", "input": ""},
    ]
    assert recs[1]["messages"][-2] == {"role": "user", "content": "翻译", "input": "apple"}
    if suffix in (".json", ".jsonl", ".parquet"):
        assert recs[1]["system"] == "be brief"
        assert [m["content"] for m in recs[1]["messages"]] == ["hi", "hello", "翻译", "苹果"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_messages_and_sharegpt(tmp_path, suffix):
    recs = load_records(write(tmp_path, "m" + suffix, MESSAGES))
    assert recs[0]["system"] == "sys"
    assert [(m["role"], m["content"]) for m in recs[0]["messages"]] == [
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
    ]
    recs = load_records(write(tmp_path, "s" + suffix, SHAREGPT))
    assert [(m["role"], m["content"]) for m in recs[0]["messages"]] == [("user", "q1"), ("assistant", "a1")]


def test_json_file_holding_json_lines_is_accepted(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("\n".join(json.dumps(r) for r in ALPACA), "utf-8")
    assert len(load_records(p)) == 2


def test_source_points_at_the_line(tmp_path):
    recs = load_records(write(tmp_path, "d.jsonl", ALPACA))
    assert recs[1]["source"] == "d.jsonl:line 2"


# --------------------------------------------------------------------------- errors
def _err(tmp_path, name, text: str | bytes) -> str:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(DataError) as e:
        load_records(p)
    return str(e.value)


def test_malformed_jsonl_line(tmp_path):
    msg = _err(tmp_path, "bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a", \n')
    assert "bad.jsonl, line 2" in msg and "fix or delete that line" in msg


def test_misnamed_field_suggests_closest(tmp_path):
    msg = _err(tmp_path, "d.jsonl", '{"instruction": "a", "ouput": "b"}\n')
    assert "line 1" in msg and "`output`" in msg and "rename it to `output`" in msg
    assert "`ouput`" in msg


def test_empty_output(tmp_path):
    msg = _err(tmp_path, "d.jsonl", '{"instruction": "a", "output": "  "}\n')
    assert "line 1" in msg and "field `output`: empty" in msg


def test_wrong_type(tmp_path):
    msg = _err(tmp_path, "d.json", '[{"instruction": ["a"], "output": "b"}]')
    assert "record 1" in msg and "field `instruction`" in msg and "expected text" in msg


def test_unknown_role(tmp_path):
    msg = _err(
        tmp_path,
        "d.jsonl",
        json.dumps({"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n",
    )
    assert "turn 1" in msg and "unknown role `human`" in msg and "user" in msg


def test_missing_assistant_turn(tmp_path):
    msg = _err(tmp_path, "d.jsonl", json.dumps({"messages": [{"role": "user", "content": "q"}]}))
    assert "line 1" in msg and "no assistant turn" in msg


def test_non_utf8(tmp_path):
    msg = _err(tmp_path, "d.jsonl", '{"instruction": "中国", "output": "x"}\n'.encode("gbk"))
    assert "not UTF-8" in msg and "line 1" in msg and "iconv" in msg


def test_csv_wrong_header(tmp_path):
    msg = _err(tmp_path, "d.csv", "question,answer\nq,a\n")
    assert "line 1 (the header)" in msg and "`instruction`" in msg


def test_csv_misspelt_header_suggests(tmp_path):
    msg = _err(tmp_path, "d.csv", "instruction,outputs\nq,a\n")
    assert "rename `outputs` to `output`" in msg


def test_empty_file(tmp_path):
    assert "no records" in _err(tmp_path, "d.jsonl", "\n\n")


def test_unsupported_suffix_and_missing_file(tmp_path):
    assert "unsupported file type" in _err(tmp_path, "d.docx", "hello")
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "nope.jsonl")


def test_unknown_format(tmp_path):
    msg = _err(tmp_path, "d.jsonl", '{"question": "a", "reply": "b"}\n')
    assert "cannot tell the data format" in msg and "`instruction`" in msg


def test_trl_prompt_completion_is_an_instruction(tmp_path):
    """TRL's prompt-completion SFT rows, as strings and as conversational messages."""
    p = tmp_path / "d.jsonl"
    p.write_text(
        '{"prompt": "a", "completion": "b"}\n'
        '{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], '
        '"completion": [{"role": "assistant", "content": "r"}]}\n'
    )
    first, second = load_records(p)
    assert [(m["role"], m["content"]) for m in first["messages"]] == [("user", "a"), ("assistant", "b")]
    assert second["system"] == "s" and [m["content"] for m in second["messages"]] == ["q", "r"]


# --------------------------------------------------------------------------- fuzz
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "instruction",
                    "input",
                    "output",
                    "messages",
                    "conversations",
                    "role",
                    "content",
                    "from",
                    "value",
                    "system",
                    "history",
                    "x",
                ]
            ),
            c,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=json_values)
def test_fuzz_normalize_only_raises_our_error(row):
    try:
        normalize_row(row, "record 1", "fuzz.jsonl")
    except LoraFinetuneError:
        pass


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]))
def test_fuzz_files_only_raise_our_error(tmp_path, raw, suffix):
    p = tmp_path / ("f" + suffix)
    p.write_bytes(raw)
    try:
        load_records(p)
    except LoraFinetuneError:
        pass


def test_jsonl_with_raw_unicode_line_separators(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"instruction": "分段\u2028符号\u0085", "output": "好"}, {"instruction": "b", "output": "c"}]
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
    recs = load_records(p)
    assert len(recs) == 2 and recs[0]["messages"][0]["content"] == "分段\u2028符号\u0085"


def test_json_file_with_one_record_object(tmp_path):
    p = tmp_path / "one.json"
    p.write_text(json.dumps(MESSAGES[0]), "utf-8")
    assert [m["content"] for m in load_records(p)[0]["messages"]] == ["q1", "a1", "q2", "a2"]
    p.write_text(json.dumps(ALPACA[1], ensure_ascii=False), "utf-8")
    assert [m["content"] for m in load_records(p)[0]["messages"]] == ["hi", "hello", "翻译", "苹果"]


def test_every_bad_field_and_record_is_reported_at_once(tmp_path):
    rows = [
        {"instruction": "ok", "output": "fine"},
        {"instruction": "", "output": ["not", "text"], "history": 3},
        {"messages": [{"role": "bot", "content": ""}, {"role": "user"}]},
        "not an object",
    ]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError) as e:
        load_records(p)
    msg = str(e.value)
    assert "3 of 4 records cannot be used (7 problems)" in msg
    for part in (
        "line 2, field `instruction`: empty",
        "line 2, field `output`: expected text",
        "line 2, field `history`",
        "line 3, field `messages`, turn 1: unknown role `bot`",
        "turn 1, field `content`: empty",
        "turn 2, field `content`: missing",
        "line 4: expected an object",
    ):
        assert part in msg, part


def test_many_bad_records_list_20_then_a_count(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"instruction": f"q{i}"}) for i in range(50)))
    with pytest.raises(DataError) as e:
        load_records(p)
    msg = str(e.value)
    assert "50 of 50 records" in msg and msg.count("field `output`: missing") == 20 and "... and 30 more" in msg


def test_every_malformed_jsonl_line_is_listed(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{bad\n{"x": \n')
    with pytest.raises(DataError, match=r"2 lines are not valid JSON(.|\n)*line 2(.|\n)*line 3"):
        load_records(p)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deeply_nested_json_is_a_data_error(tmp_path, suffix):
    p = tmp_path / f"deep{suffix}"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        load_records(p)
