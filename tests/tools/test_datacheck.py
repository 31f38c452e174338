"""`lora-finetune data`: the dataset as training would see it, without training."""

from __future__ import annotations

import json

import pytest

from lora_finetune.cli import main
from lora_finetune.errors import DataError
from lora_finetune.tools.datacheck import check_data, write_demo


def test_report_counts_what_training_would_see(tiny_qwen3, tmp_path):
    rows = [
        {"instruction": "中国的首都是哪里？", "output": "北京。"},
        {"instruction": "中国的首都是哪里？", "output": "北京。"},  # a duplicate
        {
            "messages": [
                {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！"},
                {"role": "user", "content": "再见"},
                {"role": "assistant", "content": "再见！" * 40},
            ]
        },
    ]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    rep = check_data(p, model=str(tiny_qwen3), max_length=60, show=1)
    assert rep.records == 3 and rep.formats == {"alpaca": 2, "messages": 1}
    assert rep.duplicates == 1 and rep.multi_turn == 1 and rep.template == "chat"
    assert rep.too_long == 1 and rep.token_lengths["max"] > 60 >= rep.token_lengths["min"]
    [segments] = rep.samples
    learned = [text for text, learn in segments if learn]
    assert not segments[0][1] and learned == ["北京。<|im_end|>"]


def test_bad_data_is_reported_all_at_once(tiny_qwen3, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"instruction": "q"}\n{"output": "a"}\n')
    with pytest.raises(DataError, match="2 of 2 records cannot be used"):
        check_data(p, model=str(tiny_qwen3))


def test_write_demo_then_check_it_from_the_cli(tiny_qwen3, tmp_path, capsys):
    demo = tmp_path / "demo.jsonl"
    assert main(["data", "--write-demo", str(demo)]) == 0
    assert len(demo.read_text(encoding="utf-8").splitlines()) == 20
    assert main(["data", "--write-demo", str(demo)]) == 2  # never replaced silently
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", str(demo), "--model", str(tiny_qwen3), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "20 records (20 alpaca)" in out and "[[" in out and "would be dropped at max_length=768" in out
    write_demo(tmp_path / "demo.json")
    assert len(json.loads((tmp_path / "demo.json").read_text(encoding="utf-8"))) == 20
    with pytest.raises(DataError, match=".jsonl or .json"):
        write_demo(tmp_path / "demo.csv")


def test_data_checks_preference_kto_and_text_files(capsys, tmp_path):
    """`lora-finetune data` on the other kinds: what they are, which methods train on them, and a
    pair shown with both answers, the learned part of each marked."""
    from pathlib import Path

    from lora_finetune.cli import main

    lf = Path(__file__).resolve().parents[1] / "fixtures" / "llama_factory" / "data"
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "--write-demo", str(pairs), "--kind", "preference"]) == 0
    assert "Wrote the demo data (preference)" in capsys.readouterr().out
    assert main(["data", str(pairs), "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "30 records" in out and "preference pairs (chosen / rejected): train with method dpo, orpo, simpo" in out
    assert "sample 1 (chosen)" in out and "[[中国的首都是北京。" in out
    assert "sample 1 (rejected)" in out and "[[北京。" in out
    assert main(["data", str(lf), "--dataset", "kto_en_demo", "--show", "0"]) == 0
    assert "150 desirable, 150 undesirable answers" in capsys.readouterr().out
    assert main(["data", str(lf), "--dataset", "c4_demo", "--show", "0", "--max_length", "1024"]) == 0
    out = capsys.readouterr().out
    assert "raw text: train with method pt" in out and "cut into pieces" in out and "0 prompt tokens masked" in out
    with pytest.raises(SystemExit) as e:
        main(["data", "--write-demo", str(tmp_path / "x.jsonl"), "--kind", "nope"])
    assert e.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
