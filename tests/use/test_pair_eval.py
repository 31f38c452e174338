"""`eval` on a file of preference pairs: the preference accuracy and margin of the adapter and of
the base, the numbers `use.preference` computes pair by pair, and refusals before the model loads."""

from __future__ import annotations

import json

import pytest

from lora_finetune.cli import main
from lora_finetune.data import demo_rows
from lora_finetune.data.formats import records_from_rows
from lora_finetune.training import split_records, train

from helpers import tiny_config


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_pairs_are_scored_for_the_adapter_and_the_base(tiny_qwen3, tmp_path, capsys):
    from lora_finetune.use import load_for_inference, score_pairs
    from lora_finetune.use.preference import answer_logprob

    res = train(tiny_config(tiny_qwen3, tmp_path / "dpo", method="dpo", steps=12, learning_rate=2e-2,
                            eval_fraction=0.2, save_steps=100, eval_steps=100))  # fmt: skip
    held = split_records(records_from_rows(demo_rows("preference"), kinds=("preference",)), 0.2, 42)[1]
    rows = [  # TRL's format, as a user would hand them in
        {"prompt": r["messages"][-1]["content"], "chosen": r["chosen"]["content"], "rejected": r["rejected"]["content"]}
        for r in held
    ]
    data = _write(tmp_path / "pairs.jsonl", rows)
    code = main(["eval", "--adapter", str(res.output_dir), "--data", str(data), "--compare-base"])
    out = capsys.readouterr().out
    assert code == 0 and "preference pair(s)" in out and "preference accuracy" in out
    report = json.loads((res.output_dir / "eval_report.json").read_text())
    assert report["kind"] == "preference" and report["samples"] == len(held) == len(report["pairs"])
    adapter, base = report["metrics"]["adapter"], report["metrics"]["base"]
    assert adapter["preference_accuracy"] > base["preference_accuracy"] and adapter["mean_margin"] > base["mean_margin"]
    # the batched (right-padded) scores are each answer's scored alone, pair by pair
    im = load_for_inference(res.output_dir)
    records = records_from_rows(rows, kinds=("preference",))
    alone = [(answer_logprob(im, r, r["chosen"]), answer_logprob(im, r, r["rejected"])) for r in records]
    got = [(p["chosen_logprob"], p["rejected_logprob"]) for p in report["pairs"]]
    assert [x for pair in got for x in pair] == pytest.approx([x for pair in alone for x in pair], abs=1e-4)
    assert adapter["preference_accuracy"] == pytest.approx(sum(c > r for c, r in alone) / len(alone))
    assert [s.chosen for s in score_pairs(im, records, batch_size=1)] == pytest.approx([c for c, _ in alone], abs=1e-4)
    assert "base_chosen_logprob" in report["pairs"][0] and "prediction" not in report["pairs"][0]


def test_a_mixed_or_kto_file_is_refused_before_the_model_loads(tmp_path, capsys):
    mixed = _write(tmp_path / "mixed.jsonl", [
        {"prompt": "a?", "chosen": "yes.", "rejected": "no."},
        {"instruction": "b?", "output": "ok."},
    ])  # fmt: skip
    kto = _write(tmp_path / "kto.jsonl", [{"prompt": "a?", "completion": "yes.", "label": True}])
    for path, needle in ((mixed, "holds records of 2 kinds"), (kto, "labelled desirable or not")):
        code = main(["eval", "--adapter", str(tmp_path / "no-such-adapter"), "--data", str(path)])
        err = capsys.readouterr().err
        assert code != 0 and needle in err and "Traceback" not in err, err
