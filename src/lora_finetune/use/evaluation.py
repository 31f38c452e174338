"""Evaluating an adapter on a data file: answer-token loss and generation metrics.

Loss and perplexity are measured on exactly the tokens training learns (labels built by
`templates.encode_records`, batches by `collate.PadCollator`): the mean cross-entropy over
all answer tokens of the file (token-weighted, not a mean of batch means), perplexity its exp.

Generation metrics follow ChatGLM's official fine-tuning evaluation:

* text containing Chinese is segmented into words with `jieba.cut`; other text is split on
  whitespace (whitespace tokens are dropped either way);
* ROUGE-1/2/L: `rouge_chinese.Rouge().get_scores(" ".join(pred_words), " ".join(ref_words))`,
  the F1 ("f") of each, x100;
* BLEU-4: `nltk.translate.bleu_score.sentence_bleu([ref_words], pred_words,
  smoothing_function=SmoothingFunction().method3)`, x100;
* each score is per sample, then averaged over samples; an empty prediction or reference
  scores 0 (as ChatGLM's script does);
* one deliberate difference: an exact match (the same word sequence) scores 100 on all four.
  The formulas alone give a short exact answer less: "北京。" (2 words) gets BLEU-4 59.46
  (no 3- and 4-grams to match, smoothed) and any 1-word answer ROUGE-2 0 (no bigrams).

All four are on a 0-100 scale: identical prediction and reference give 100 for each.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import PadCollator
from ..errors import ConfigError, DataError, LoraFinetuneError
from ..templates import IGNORE_INDEX, encode_records, user_text
from .files import read_prompt_records
from .inference import InferenceModel, generate, load_for_inference, prompt_record

log = logging.getLogger(__name__)

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
REPORT_NAME = "eval_report.json"
METRIC_INFO = {
    "scale": "BLEU-4 and ROUGE-1/2/L are x100 (0-100); loss is mean cross-entropy (nats) per "
    "answer token, perplexity = exp(loss)",
    "segmentation": "jieba.cut for text containing Chinese, whitespace split otherwise",
    "rouge": "rouge_chinese.Rouge F1 on space-joined words, per sample, averaged",
    "bleu-4": "nltk sentence_bleu, SmoothingFunction().method3, per sample, averaged",
    "exact_match": "a prediction with the same words as its reference scores 100 on all four",
}

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


class _Libs:
    """jieba, rouge_chinese and nltk, imported once and only when needed."""

    _loaded: tuple[Any, Any, Any, Any] | None = None

    @classmethod
    def get(cls) -> tuple[Any, Any, Any, Any]:
        if cls._loaded is None:
            try:
                import jieba
                from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
                from rouge_chinese import Rouge
            except ImportError as e:
                raise LoraFinetuneError(
                    f"Generation metrics need jieba, rouge-chinese and nltk ({e}). Install them "
                    "with `pip install 'lora-finetune[eval]'`, or pass --loss-only to measure "
                    "loss and perplexity alone."
                ) from None
            jieba.setLogLevel(logging.WARNING)
            cls._loaded = (jieba, Rouge(), sentence_bleu, SmoothingFunction().method3)
        return cls._loaded


def has_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def words(text: str, chinese: bool | None = None) -> list[str]:
    """Segment text: jieba words when it holds Chinese (or `chinese=True`), else whitespace."""
    if chinese is None:
        chinese = has_chinese(text)
    if not chinese:
        return text.split()
    jieba = _Libs.get()[0]
    return [w for w in jieba.cut(text) if w.strip()]


def sample_scores(prediction: str, reference: str) -> dict[str, float]:
    """BLEU-4 and ROUGE-1/2/L F1 (x100) of one prediction against its reference."""
    _, rouge, sentence_bleu, smooth = _Libs.get()
    chinese = has_chinese(prediction) or has_chinese(reference)
    hyp, ref = words(prediction, chinese), words(reference, chinese)
    if not hyp or not ref:
        return {m: 0.0 for m in METRICS}
    if hyp == ref:
        return {m: 100.0 for m in METRICS}
    scores = rouge.get_scores(" ".join(hyp), " ".join(ref))[0]
    out = {"bleu-4": round(100 * float(sentence_bleu([ref], hyp, smoothing_function=smooth)), 4)}
    for m in ("rouge-1", "rouge-2", "rouge-l"):
        out[m] = round(100 * float(scores[m]["f"]), 4)
    return out


def generation_metrics(
    predictions: list[str], references: list[str]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """(averages over samples, per-sample scores); each on a 0-100 scale."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    per = [sample_scores(p, r) for p, r in zip(predictions, references)]
    avg = {m: round(sum(s[m] for s in per) / len(per), 4) if per else None for m in METRICS}
    return avg, per  # type: ignore[return-value]


@torch.inference_mode()
def answer_loss(
    im: InferenceModel, records: list[dict[str, Any]], *, max_length: int = 4096, batch_size: int = 8
) -> dict[str, Any]:
    """Mean cross-entropy over the answer tokens (labels as training builds them)."""
    encoded, stats = encode_records(records, im.tokenizer, im.template, max_length)
    collate = PadCollator(im.tokenizer.pad_token_id)
    total, count = 0.0, 0
    device = im.device
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk])
        labels = batch.pop("labels").to(device)
        logits = im.model(**{k: v.to(device) for k, v in batch.items()}).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(loss)
        count += int((shift_labels != IGNORE_INDEX).sum())
    mean = total / count if count else None
    return {
        "loss": round(mean, 6) if mean is not None else None,
        "perplexity": round(math.exp(min(mean, 50.0)), 4) if mean is not None else None,
        "answer_tokens": count,
        "samples": stats.kept,
        "dropped_too_long": stats.too_long,
    }


def _adapter_off(im: InferenceModel) -> Any:
    """A context in which the model runs without its adapter (peft's disable_adapter)."""
    import contextlib

    if im.has_adapter and hasattr(im.model, "disable_adapter"):
        return im.model.disable_adapter()
    return contextlib.nullcontext()


def default_report_path(adapter_dir: Path | None, data_path: Path, base_only: bool = False) -> Path:
    """adapter_dir/eval_report.json (eval_report_base.json for the base alone), or next to the
    data when there is no adapter folder or it is read-only."""
    import os

    name = REPORT_NAME.replace(".json", "_base.json") if base_only else REPORT_NAME
    if adapter_dir is not None and os.access(adapter_dir, os.W_OK):
        return Path(adapter_dir) / name
    return data_path.parent / f"{data_path.stem}.{name}"


@dataclass
class EvalResult:
    report: dict[str, Any]
    report_path: Path | None


def evaluate(
    adapter_dir: str | Path | None,
    data_path: str | Path,
    *,
    im: InferenceModel | None = None,
    data_format: str = "auto",
    max_samples: int | None = None,
    compare_base: bool = False,
    generation: bool = True,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    max_length: int | None = None,
    report_path: str | Path | None = None,
    write_report: bool = True,
    progress: Callable[[int], Any] | None = None,
    **load_kw: Any,
) -> EvalResult:
    """Loss/perplexity on answer tokens and BLEU-4/ROUGE (greedy generation) on `data_path`.

    Pass `im` to reuse a loaded model (else it is loaded from `adapter_dir`, with `load_kw`
    going to `load_for_inference`). `compare_base` measures the base model too (the adapter
    switched off in the same model). Records without an answer are skipped. The report is
    written to `report_path` (default: adapter_dir/eval_report.json).
    """
    data_path = Path(data_path)
    if im is None:
        im = load_for_inference(adapter_dir, **load_kw)
    _, records = read_prompt_records(data_path, data_format)
    with_answer = [r for r in records if r["messages"][-1]["role"] == "assistant"]
    if not with_answer:
        raise DataError(
            f"{data_path}: no record has an answer, so there is nothing to compare "
            "with. Evaluation needs reference answers (alpaca `output`, or a final "
            "assistant turn); use `lora-finetune generate` for prompts alone."
        )
    skipped = len(records) - len(with_answer)
    if max_samples is not None:
        with_answer = with_answer[:max_samples]
    max_length = max_length or (im.record.config.max_length if im.record else 4096)
    prompts, references = zip(*(prompt_record(r) for r in with_answer))

    def measure(label: str) -> tuple[dict[str, Any], list[str], list[dict[str, float]]]:
        log.info("evaluating %s on %d samples", label, len(with_answer))
        metrics = answer_loss(im, with_answer, max_length=max_length, batch_size=batch_size)
        preds: list[str] = []
        per: list[dict[str, float]] = []
        if generation:
            outs = generate(im, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
            preds = [o["text"] for o in outs]
            avg, per = generation_metrics(preds, list(references))
            metrics.update(avg)
            metrics["hit_max_new_tokens"] = sum(not o["stopped"] for o in outs)
        return metrics, preds, per

    name = "adapter" if im.has_adapter else "base"
    results = {name: measure(name)}
    if compare_base and im.has_adapter:
        with _adapter_off(im):
            results["base"] = measure("base")
    elif compare_base:
        log.warning("--compare-base: the model has no adapter loaded; only base numbers exist")

    samples = []
    for i, (rec, ref) in enumerate(zip(with_answer, references)):
        row: dict[str, Any] = {
            "source": rec.get("source"),
            "question": user_text(rec["messages"][-2]),
            "reference": ref,
        }
        for label, (_, preds, per) in results.items():
            if preds:
                key = "prediction" if label == name else f"{label}_prediction"
                row[key] = preds[i]
                row["scores" if label == name else f"{label}_scores"] = per[i]
        samples.append(row)
    report = {
        "adapter": str(adapter_dir) if adapter_dir is not None else None,
        "base_model": im.base_model,
        "data": str(data_path),
        "template": getattr(im.template, "name", None),
        "samples": len(with_answer),
        "skipped_without_answer": skipped,
        "settings": {
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            "max_length": max_length,
            "generation": generation,
        },
        "metrics": {label: m for label, (m, _, _) in results.items()},
        "metric_info": METRIC_INFO,
        "predictions": samples,
    }
    path = None
    if write_report:
        path = (
            Path(report_path)
            if report_path
            else default_report_path(
                Path(adapter_dir) if adapter_dir is not None else None, data_path, base_only=not im.has_adapter
            )
        )
        _write_json(report, path)
    return EvalResult(report, path)


def check_report_path(path: str | Path | None) -> None:
    """A --report that cannot be written is said before the run (minutes to hours), not after it."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--report {path} is a folder; give a file path such as {path / 'report.json'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--report {path}: {parent} is a file, not a folder; choose another path")
            break


def _write_json(obj: Any, path: Path) -> None:
    import os
    import uuid

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


__all__ = [
    "METRICS",
    "check_report_path",
    "METRIC_INFO",
    "EvalResult",
    "answer_loss",
    "evaluate",
    "generation_metrics",
    "sample_scores",
    "words",
]
