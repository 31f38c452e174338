"""Evaluation: loss on answer tokens as training builds them, and BLEU-4 / ROUGE as ChatGLM's
official evaluation computes them (x100), checked on hand-computed examples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("jieba")
pytest.importorskip("rouge_chinese")
pytest.importorskip("nltk")


ROWS = [
    {"instruction": "中国的首都是哪里？", "input": "", "output": "北京。"},
    {"instruction": "把下面的句子翻译成英文。", "input": "我爱学习。", "output": "I love learning."},
    {"instruction": "hi", "input": ""},  # no answer: skipped
    {"instruction": "一周有几天？", "input": "", "output": "七天。"},
]


@pytest.fixture()
def data(tmp_path) -> Path:
    p = tmp_path / "eval.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    return p


# --------------------------------------------------------------------------- metrics
def test_segmentation_jieba_for_chinese_whitespace_otherwise():
    from lora_finetune.use.evaluation import words

    assert words("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    assert words("The cat, sat.") == ["The", "cat,", "sat."]
    assert words("  ") == []


@pytest.mark.parametrize(
    "text", ["北京。", "中国的首都是北京，不是上海。", "I love learning.", "the cat sat on the mat", "H2O"]
)
def test_identical_prediction_and_reference_score_100(text):
    from lora_finetune.use.evaluation import sample_scores

    assert sample_scores(text, text) == {"bleu-4": 100.0, "rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0}


def test_known_partial_overlap_by_hand():
    """pred "the cat lay on the mat" vs ref "the cat sat on the mat" (6 words each):
    BLEU: p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3 -> method3 gives 1/(2*3); BP = 1.
    ROUGE (rouge_chinese counts distinct n-grams): unigrams {the,cat,lay,on,mat} vs
    {the,cat,sat,on,mat}: 4/5; bigrams 3/5; LCS "the cat on the mat" = 5 of 6 words."""
    from lora_finetune.use.evaluation import sample_scores

    s = sample_scores("the cat lay on the mat", "the cat sat on the mat")
    bleu = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert s["bleu-4"] == pytest.approx(bleu, abs=1e-3)  # 37.99
    assert s["rouge-1"] == pytest.approx(80.0, abs=1e-3)
    assert s["rouge-2"] == pytest.approx(60.0, abs=1e-3)
    assert s["rouge-l"] == pytest.approx(100 * 5 / 6, abs=1e-3)


def test_chinese_partial_overlap_by_hand():
    """北京。 vs 北京市。 -> jieba words [北京, 。] vs [北京市, 。]: one shared unigram of two.
    BLEU (nltk method3): p1 = 1/2; p2, p3, p4 have no match -> 1/2, 1/4, 1/8; BP = 1."""
    from lora_finetune.use.evaluation import sample_scores, words

    assert words("北京市。") == ["北京市", "。"]
    s = sample_scores("北京。", "北京市。")
    assert s["rouge-1"] == pytest.approx(50.0, abs=1e-3)
    assert s["rouge-2"] == 0.0
    assert s["rouge-l"] == pytest.approx(50.0, abs=1e-3)
    assert s["bleu-4"] == pytest.approx(100 * (1 / 2 * 1 / 2 * 1 / 4 * 1 / 8) ** 0.25, abs=1e-3)


def test_exact_match_rule_covers_answers_too_short_for_the_formulas():
    """ChatGLM's formulas alone give a 2-word exact match BLEU-4 59.46 and a 1-word one
    ROUGE-2 0; an exact match is 100 here."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    from lora_finetune.use.evaluation import sample_scores

    raw = 100 * sentence_bleu([["北京", "。"]], ["北京", "。"], smoothing_function=SmoothingFunction().method3)
    assert raw == pytest.approx(59.46, abs=0.01)
    assert sample_scores("北京。", "北京。")["bleu-4"] == 100.0
    assert sample_scores("H2O", "H2O")["rouge-2"] == 100.0
    # a different word order is not an exact match
    assert sample_scores("mat the on", "on the mat")["bleu-4"] < 100.0


def test_empty_prediction_scores_zero_and_averages():
    from lora_finetune.use.evaluation import generation_metrics, sample_scores

    assert set(sample_scores("", "北京。").values()) == {0.0}
    avg, per = generation_metrics(["北京。", ""], ["北京。", "七天。"])
    assert avg == {"bleu-4": 50.0, "rouge-1": 50.0, "rouge-2": 50.0, "rouge-l": 50.0}
    assert len(per) == 2


# --------------------------------------------------------------------------- loss
def test_answer_loss_matches_the_models_own_loss(im):
    import torch

    from lora_finetune.data.collate import PadCollator
    from lora_finetune.data.formats import records_from_rows
    from lora_finetune.templates.encode import encode_records
    from lora_finetune.use.evaluation import answer_loss

    recs = records_from_rows([ROWS[1]])
    enc, _ = encode_records(recs, im.tokenizer, im.template, 4096)
    batch = PadCollator(im.tokenizer.pad_token_id)([{"input_ids": enc[0].input_ids, "labels": enc[0].labels}])
    with torch.no_grad():
        hf = float(im.model(**batch).loss)
    got = answer_loss(im, recs)
    assert got["loss"] == pytest.approx(hf, abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(hf), rel=1e-4)
    assert got["answer_tokens"] == sum(1 for x in enc[0].labels[1:] if x != -100)


def test_answer_loss_is_token_weighted_across_batches(im):
    from lora_finetune.data.formats import records_from_rows
    from lora_finetune.use.evaluation import answer_loss

    recs = records_from_rows([r for r in ROWS if r.get("output")])
    one = answer_loss(im, recs, batch_size=1)
    many = answer_loss(im, recs, batch_size=3)
    assert one["loss"] == pytest.approx(many["loss"], abs=1e-5)
    singles = [answer_loss(im, [r]) for r in recs]
    weighted = sum(s["loss"] * s["answer_tokens"] for s in singles) / sum(s["answer_tokens"] for s in singles)
    assert one["loss"] == pytest.approx(weighted, abs=1e-5)


def test_loss_on_the_held_out_split_equals_the_trainers_eval_loss(adapter, im):
    """Same labels, same numbers: the training run's eval_loss on its held-out samples."""
    from lora_finetune.data.demo import dummy_rows
    from lora_finetune.data.formats import records_from_rows
    from lora_finetune.training.dataset import split_records
    from lora_finetune.use.evaluation import answer_loss

    metrics = json.loads((adapter / "metrics.json").read_text(encoding="utf-8"))
    _, held = split_records(records_from_rows(dummy_rows()), 0.1, 42)
    assert answer_loss(im, held)["loss"] == pytest.approx(metrics["eval_loss"], abs=1e-4)


# --------------------------------------------------------------------------- evaluate
def test_evaluate_report(adapter, im, data, tmp_path):
    from lora_finetune.use.evaluation import evaluate

    report_path = tmp_path / "r.json"
    res = evaluate(adapter, data, im=im, compare_base=True, max_new_tokens=4, report_path=report_path)
    rep = json.loads(report_path.read_text(encoding="utf-8"))
    assert rep == json.loads(json.dumps(res.report))
    assert rep["samples"] == 3 and rep["skipped_without_answer"] == 1
    a, b = rep["metrics"]["adapter"], rep["metrics"]["base"]
    for m in (a, b):
        assert set(m) >= {"loss", "perplexity", "bleu-4", "rouge-1", "rouge-2", "rouge-l"}
        assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-3)
        assert m["answer_tokens"] == a["answer_tokens"]
    assert a["loss"] != b["loss"]  # the adapter changes the model
    assert [p["reference"] for p in rep["predictions"]] == ["北京。", "I love learning.", "七天。"]
    assert {"prediction", "base_prediction", "scores", "base_scores"} <= set(rep["predictions"][0])
    assert "jieba" in rep["metric_info"]["segmentation"]
    # the adapter is on again afterwards
    assert (
        evaluate(adapter, data, im=im, generation=False, write_report=False).report["metrics"]["adapter"]["loss"]
        == a["loss"]
    )


def test_perfect_predictions_give_100(adapter, im, data, monkeypatch):
    """With a generate that returns the references, every generation metric is 100."""
    import lora_finetune.use.evaluation as ev

    def echo(_im, prompts, **kw):
        refs = {
            "中国的首都是哪里？": "北京。",
            "把下面的句子翻译成英文。": "I love learning.",
            "一周有几天？": "七天。",
        }
        return [{"text": refs[p["messages"][-1]["content"]], "tokens": 1, "stopped": True} for p in prompts]

    monkeypatch.setattr(ev, "generate", echo)
    m = ev.evaluate(adapter, data, im=im, write_report=False).report["metrics"]["adapter"]
    assert (m["bleu-4"], m["rouge-1"], m["rouge-2"], m["rouge-l"]) == (100.0, 100.0, 100.0, 100.0)


def test_max_samples_and_default_report_path(adapter, im, data):
    from lora_finetune.use.evaluation import evaluate

    res = evaluate(adapter, data, im=im, max_samples=1, max_new_tokens=2)
    assert res.report["samples"] == 1
    assert res.report_path == adapter / "eval_report.json" and res.report_path.is_file()
    from lora_finetune.folders import verify_manifest

    verify_manifest(adapter)  # an extra report file does not break the adapter folder
    res.report_path.unlink()


def test_eval_without_answers_is_a_data_error(adapter, im, tmp_path):
    from lora_finetune.errors import DataError
    from lora_finetune.use.evaluation import evaluate

    p = tmp_path / "q.jsonl"
    p.write_text('{"instruction": "hi"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no record has an answer"):
        evaluate(adapter, p, im=im)


def test_eval_cli_table(adapter, data, tmp_path, capsys):
    from lora_finetune.cli import main

    rc = main(
        [
            "eval",
            "--adapter",
            str(adapter),
            "--data",
            str(data),
            "--compare-base",
            "--report",
            str(tmp_path / "rep.json"),
            "--max_new_tokens",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "adapter" in out and "base" in out and "ROUGE-L" in out and "perplexity" in out
    assert (tmp_path / "rep.json").is_file()
    rc = main(
        ["eval", "--adapter", str(adapter), "--data", str(data), "--loss-only", "--report", str(tmp_path / "rep2.json")]
    )
    assert rc == 0 and "BLEU" not in capsys.readouterr().out
