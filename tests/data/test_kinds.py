"""Data kinds: raw text, preference pairs and KTO-labelled answers, told apart from the fields,
read from the files of the tools they come from (LLaMA-Factory's data/, TRL's documented
formats), with every bad record named in one message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_finetune.data.formats import load_records, load_source, records_from_rows
from lora_finetune.data.kinds import record_kind
from lora_finetune.errors import DataError

ALL = ("instruction", "text", "preference", "kto")
LF_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "llama_factory" / "data"


# --------------------------------------------------------------------------- LLaMA-Factory's files
@pytest.mark.parametrize(
    ("name", "kind", "count"),
    [
        ("dpo_zh_demo", "preference", 300),
        ("dpo_en_demo", "preference", 300),
        ("kto_en_demo", "kto", 300),
        ("c4_demo", "text", 300),
        ("wiki_demo", "text", 30),
    ],  # fmt: skip
)
def test_llama_factory_entries_read_as_their_kind(name, kind, count):
    records, sha = load_source(LF_DATA, dataset=name, kinds=ALL)
    assert len(records) == count and {record_kind(r) for r in records} == {kind} and len(sha) == 64
    first = records[0]
    if kind == "preference":
        assert first["messages"][-1]["role"] == "user"
        assert first["chosen"]["role"] == first["rejected"]["role"] == "assistant"
        assert first["chosen"]["content"] != first["rejected"]["content"]
    if kind == "text":
        assert first["text"].strip()


def test_the_kto_label_column_is_kept_not_dropped():
    """kto_en_demo marks half of its answers undesirable; read as SFT it used to train on them."""
    records, _ = load_source(LF_DATA, dataset="kto_en_demo", kinds=ALL)
    raw = json.loads((LF_DATA / "kto_en_demo.json").read_text(encoding="utf-8"))
    assert [r["label"] for r in records] == [r["label"] for r in raw]
    assert sum(not r["label"] for r in records) == sum(not r["label"] for r in raw) == 150
    assert records[0]["completion"]["content"] == raw[0]["messages"][-1]["content"]
    # a reader of instructions refuses it, naming what it is
    with pytest.raises(DataError, match="answers labelled desirable or not"):
        load_source(LF_DATA, dataset="kto_en_demo")


# --------------------------------------------------------------------------- TRL's documented formats
# Quoted from TRL's docs/source/dataset_formats.md ("Preference", "Unpaired preference").
TRL_PREFERENCE = [
    ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}, ["The sky is"], " blue.", " green."),
    ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, ["The sky is "], "blue.", "green."),
    (
        {
            "prompt": [{"role": "user", "content": "What color is the sky?"}],
            "chosen": [{"role": "assistant", "content": "It is blue."}],
            "rejected": [{"role": "assistant", "content": "It is green."}],
        },
        ["What color is the sky?"],
        "It is blue.",
        "It is green.",
    ),
    (
        {
            "chosen": [
                {"role": "user", "content": "What color is the sky?"},
                {"role": "assistant", "content": "It is blue."},
            ],
            "rejected": [
                {"role": "user", "content": "What color is the sky?"},
                {"role": "assistant", "content": "It is green."},
            ],
        },
        ["What color is the sky?"],
        "It is blue.",
        "It is green.",
    ),
]


@pytest.mark.parametrize(("row", "prompt", "chosen", "rejected"), TRL_PREFERENCE)
def test_trl_preference_formats(row, prompt, chosen, rejected):
    (rec,) = records_from_rows([row], kinds=ALL)
    assert record_kind(rec) == "preference"
    assert [m["content"] for m in rec["messages"]] == prompt
    assert (rec["chosen"]["content"], rec["rejected"]["content"]) == (chosen, rejected)


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "The sky is", "completion": " blue.", "label": True},
        {
            "prompt": [{"role": "user", "content": "What color is the sky?"}],
            "completion": [{"role": "assistant", "content": "It is blue."}],
            "label": True,
        },
    ],
)
def test_trl_unpaired_preference_is_kto(row):
    (rec,) = records_from_rows([row], kinds=ALL)
    assert record_kind(rec) == "kto" and rec["label"] is True and rec["completion"]["role"] == "assistant"


def test_a_shared_history_stays_in_the_prompt():
    row = {
        "prompt": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "2+2?"},
        ],
        "chosen": "4",
        "rejected": "5",
    }
    (rec,) = records_from_rows([row], kinds=ALL)
    assert rec["system"] == "be brief" and [m["role"] for m in rec["messages"]] == ["user", "assistant", "user"]


def test_alpaca_and_sharegpt_preference_records():
    alpaca = {"instruction": "翻译", "input": "你好", "chosen": "Hello.", "rejected": "Hi there, friend!"}
    sharegpt = {
        "conversations": [{"from": "human", "value": "2+2?"}],
        "chosen": {"from": "gpt", "value": "4"},
        "rejected": {"from": "gpt", "value": "5"},
    }
    a = records_from_rows([alpaca], kinds=ALL)[0]
    b = records_from_rows([sharegpt], kinds=ALL)[0]
    assert a["messages"][-1]["input"] == "你好" and a["chosen"]["content"] == "Hello."
    assert b["messages"][-1]["content"] == "2+2?" and b["rejected"]["content"] == "5"


# --------------------------------------------------------------------------- bad records
def test_every_bad_record_is_named_at_once(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a"},  # no rejected
        {"prompt": "q2", "chosen": "same", "rejected": " same "},  # the same answer
        {"prompt": "q3", "chosen": "", "rejected": "b"},  # empty answer
        {"prompt": "q4", "chosen": 3, "rejected": ["x", "y"]},  # wrong types
        {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "chosen": "c",
            "rejected": "d",
        },  # fmt: skip  (the prompt ends with an answer)
        {"prompt": "q6", "chosen": "ok", "rejected": "fine"},  # good
    ]
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_records(f, kinds=ALL)
    msg = str(e.value)
    assert "5 of 6 records cannot be used" in msg
    for needle in (
        "line 1, field `rejected`: missing",
        "line 2: `chosen` and `rejected` are the same answer",
        "line 3, field `chosen`: empty",
        "line 4, field `chosen`: expected text",
        "line 4, field `rejected`: expected one assistant answer, found a list of 2",
        "line 5: the prompt must end with a user turn",
    ):
        assert f"pairs.jsonl, {needle}" in msg, needle


def test_bad_kto_labels_and_mixed_kinds(tmp_path):
    f = tmp_path / "k.jsonl"
    f.write_text('{"prompt": "q", "completion": "a", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"line 1, field `label`: expected true .* found 'maybe'"):
        load_records(f, kinds=ALL)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        '{"instruction": "q", "output": "a"}\n{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"text": "doc"}\n'
    )
    with pytest.raises(DataError) as e:
        load_records(mixed, kinds=ALL)
    assert "holds records of 3 kinds" in str(e.value) and "split the file" in str(e.value)
    assert "1 preference pairs (chosen / rejected) (line 2)" in str(e.value)


def test_text_files_and_csv_headers_of_other_kinds(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("第一篇文档。\n\n  \nsecond document\n", encoding="utf-8")
    docs = load_records(txt, kinds=ALL)
    assert [(record_kind(d), d["text"], d["source"]) for d in docs] == [
        ("text", "第一篇文档。", "corpus.txt:line 1"),
        ("text", "second document", "corpus.txt:line 4"),
    ]
    csv = tmp_path / "pairs.csv"
    csv.write_text("instruction,chosen,rejected\n2+2?,4,5\n", encoding="utf-8")
    (pair,) = load_records(csv, kinds=ALL)
    assert record_kind(pair) == "preference" and pair["chosen"]["content"] == "4"
    with pytest.raises(DataError, match="holds raw text, but instructions with answers are read here"):
        load_records(txt)


def test_a_saved_trl_preference_dataset_loads_as_pairs(tmp_path):
    """What `load_dataset("trl-lib/ultrafeedback_binarized").save_to_disk(...)` leaves: a DatasetDict
    whose rows hold conversational chosen/rejected lists with the prompt inside (implicit prompt)."""
    from datasets import Dataset, DatasetDict

    rows = [
        {
            "chosen": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"Good {i}."}],
            "rejected": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": "Bad."}],
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        }
        for i in range(3)
    ]
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "uf")
    )
    records, sha = load_source(tmp_path / "uf", kinds=ALL)
    assert len(records) == 3 and len(sha) == 64
    assert {record_kind(r) for r in records} == {"preference"}
    assert [m["content"] for m in records[1]["messages"]] == ["Q1?"]
    assert (records[1]["chosen"]["content"], records[1]["rejected"]["content"]) == ("Good 1.", "Bad.")
    with pytest.raises(DataError, match="preference"):  # an SFT run is told what the folder holds
        load_source(tmp_path / "uf")
