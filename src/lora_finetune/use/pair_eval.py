"""`lora-finetune eval` on a file of preference pairs: which answer of each pair the model prefers.

Pairs say which of two answers is better, not what to write, so they are scored, not generated
against: per pair, the mean log-probability per token of the chosen and of the rejected answer
after the same prompt (preference.py), both encoded by the template the adapter was trained with.
The report gives the preference accuracy (the share of pairs whose chosen answer scores higher:
about 0.5 for a model the pairs mean nothing to) and the mean margin between the two; with
`compare_base`, the same for the base (adapter off), which is the "before" of a preference run.
No reference model is needed, so an SFT adapter, a DPO adapter and the bare base are measured
alike (DPO's own reward accuracy, in a run's metrics.json, is relative to its reference).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..templates import user_text
from .evaluation import EvalResult, _adapter_off, _write_json, default_report_path
from .inference import InferenceModel
from .preference import PairScore, score_pairs

log = logging.getLogger(__name__)

PAIR_METRIC_INFO = {
    "preference_accuracy": "share of pairs (0-1) whose chosen answer has the higher mean log-probability per "
    "answer token (end-of-turn token included) after the pair's prompt",
    "mean_margin": "mean over pairs of (chosen - rejected) mean log-probability per token, in nats",
}


def _measure(
    im: InferenceModel, records: list[dict[str, Any]], batch_size: int, progress: Callable[[int], Any] | None
) -> tuple[dict[str, Any], list[PairScore]]:
    scores = score_pairs(im, records, batch_size=batch_size, progress=progress)
    n = len(scores)
    metrics = {
        "preference_accuracy": sum(s.prefers_chosen for s in scores) / n,
        "mean_margin": sum(s.chosen - s.rejected for s in scores) / n,
        "pairs": n,
    }
    return metrics, scores


def evaluate_pairs(
    adapter_dir: str | Path | None,
    data_path: str | Path,
    records: list[dict[str, Any]],
    *,
    im: InferenceModel,
    max_samples: int | None = None,
    compare_base: bool = False,
    batch_size: int = 8,
    report_path: str | Path | None = None,
    write_report: bool = True,
    progress: Callable[[int], Any] | None = None,
) -> EvalResult:
    """Score `records` (preference records, as data.formats reads them) with `im`; the report
    goes to `report_path` (default: adapter_dir/eval_report.json, as for instruction data)."""
    data_path = Path(data_path)
    if max_samples is not None:
        records = records[:max_samples]
    name = "adapter" if im.has_adapter else "base"
    log.info("scoring %d pairs with the %s", len(records), name)
    results = {name: _measure(im, records, batch_size, progress)}
    if compare_base and im.has_adapter:
        with _adapter_off(im):
            results["base"] = _measure(im, records, batch_size, progress)
    elif compare_base:
        log.warning("--compare-base: the model has no adapter loaded; only base numbers exist")
    pairs = []
    for i, rec in enumerate(records):
        row: dict[str, Any] = {
            "source": rec.get("source"),
            "prompt": user_text(rec["messages"][-1]),
            "chosen": rec["chosen"]["content"],
            "rejected": rec["rejected"]["content"],
        }
        for label, (_, scores) in results.items():
            prefix = "" if label == name else f"{label}_"
            row[f"{prefix}chosen_logprob"] = round(scores[i].chosen, 6)
            row[f"{prefix}rejected_logprob"] = round(scores[i].rejected, 6)
            row[f"{prefix}prefers_chosen"] = scores[i].prefers_chosen
        pairs.append(row)
    report = {
        "adapter": str(adapter_dir) if adapter_dir is not None else None,
        "base_model": im.base_model,
        "data": str(data_path),
        "kind": "preference",
        "template": getattr(im.template, "name", None),
        "samples": len(records),
        "skipped_without_answer": 0,
        "metrics": {label: m for label, (m, _) in results.items()},
        "metric_info": PAIR_METRIC_INFO,
        "pairs": pairs,
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


__all__ = ["PAIR_METRIC_INFO", "evaluate_pairs"]
