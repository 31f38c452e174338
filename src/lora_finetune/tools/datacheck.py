"""`lora-finetune data`: check a dataset before training, and write the demo data to a file.

The check runs the same reading, normalisation, template and encoding as training (nothing is
reimplemented), so what it reports is what training will see: how many records, in which
formats, how long they are in tokens with the model's tokenizer and template, how many
`max_length` would drop, duplicates, and the first samples rendered with the part that is
learned marked. Every data kind is checked (kinds.py): instructions, raw text (documents longer
than `max_length` are cut into pieces for pretraining, and counted), preference pairs (each
sample shown with its chosen and its rejected answer) and KTO answers (desirable / undesirable
counted).
"""

from __future__ import annotations

import json
import os
import statistics
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import DATA_KINDS
from ..data import demo_rows, detect_format, normalize_rows, record_kind
from ..data.placeholders import placeholder_warning
from ..data.sources import read_source
from ..errors import DataError
from ..folders import check_output_file
from ..models import load_tokenizer, resolve_model
from ..models.families import template_for, template_name_for
from ..models.loading import read_model_config
from ..templates import encode_kind, row_length

DEMO_SUFFIXES = (".jsonl", ".json")


@dataclass
class DataReport:
    label: str
    records: int
    formats: dict[str, int]
    template: str
    max_length: int
    kind: str = "instruction"
    """What the records are (data/kinds.py), which says the methods that train on them."""
    token_lengths: dict[str, int] = field(default_factory=dict)
    """min, median, p95 and max tokens of a whole sample (prompt + answer), as trained."""
    answer_tokens: int = 0
    prompt_tokens: int = 0
    too_long: int = 0
    no_answer: int = 0
    duplicates: int = 0
    """Records identical to an earlier one (same system prompt and turns)."""
    multi_turn: int = 0
    samples: list[list[tuple[str, bool]]] = field(default_factory=list)
    """The first records as (text, learned) segments, exactly as the template renders them."""
    sample_titles: list[str] = field(default_factory=list)
    """What each sample is (a pair shows its chosen and its rejected answer as two samples)."""
    labels: dict[str, int] = field(default_factory=dict)
    """KTO: how many answers are desirable and undesirable."""
    warnings: list[str] = field(default_factory=list)
    """What would train but probably not as meant (placeholders such as {{name}} left in)."""


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def check_data(
    data_path: Path | str,
    *,
    dataset: str | None = None,
    data_format: str = "auto",
    model: str = "smollm2-135m-instruct",
    template: str = "auto",
    max_length: int = 768,
    system_prompt: str | None = None,
    show: int = 2,
    cache_dir: Path | None = None,
) -> DataReport:
    """Read, normalise and encode a dataset as training would, and report on it."""
    source = read_source(data_path, dataset)
    if not source.rows:
        raise DataError(f"{source.label}: holds no records.")
    records = normalize_rows(source.rows, source.label, data_format, True, DATA_KINDS)
    kind = record_kind(records[0])
    formats = Counter(_form(row, kind, where, source.label) for where, row in source.rows)
    path = resolve_model(model, cache_dir)
    tokenizer = load_tokenizer(path)
    model_type = getattr(read_model_config(path), "model_type", None)
    name = template_name_for(template, tokenizer, model_type)
    tmpl = template_for(name, tokenizer, model_type, system_prompt)
    encoded, stats = encode_kind(kind, records, tokenizer, tmpl, 10**9)  # measure all; count drops below
    lengths = [row_length(e) for e in encoded]
    keys = [
        json.dumps({k: v for k, v in r.items() if k != "source"}, ensure_ascii=False, sort_keys=True) for r in records
    ]
    samples, titles = render_samples(records[:show], tmpl)
    report = DataReport(
        label=source.label,
        records=len(records),
        formats=dict(formats),
        kind=kind,
        template=name,
        max_length=max_length,
        answer_tokens=stats.answer_tokens,
        prompt_tokens=stats.prompt_tokens,
        too_long=sum(n > max_length for n in lengths),
        no_answer=stats.no_answer_tokens,
        duplicates=len(keys) - len(set(keys)),
        multi_turn=sum(sum(m["role"] == "user" for m in r.get("messages", [])) > 1 for r in records),
        samples=samples,
        sample_titles=titles,
    )
    placeholders = placeholder_warning(records, source.label)
    if placeholders:
        report.warnings.append(placeholders)
    if kind == "kto":
        good = sum(bool(r["label"]) for r in records)
        report.labels = {"desirable": good, "undesirable": len(records) - good}
    if lengths:
        report.token_lengths = {
            "min": min(lengths),
            "median": int(statistics.median(lengths)),
            "p95": _percentile(lengths, 0.95),
            "max": max(lengths),
        }
    return report


def _form(row: Any, kind: str, where: str, label: str) -> str:
    """The form a raw row is in: alpaca / messages / sharegpt for instructions and prompts, TRL's
    prompt fields, or text."""
    if kind == "instruction":
        if isinstance(row, dict) and "prompt" in row and "completion" in row:
            return "trl prompt-completion"
        return detect_format(row, where, label)
    if kind == "text":
        return "text"
    if "prompt" in row:
        return "trl"
    if "instruction" in row:
        return "alpaca"
    if "conversations" in row:
        return "sharegpt"
    return "messages" if "messages" in row else "trl (implicit prompt)"


def render_samples(records: list[dict[str, Any]], template: Any) -> tuple[list[list[tuple[str, bool]]], list[str]]:
    """The first records as the template renders them; a pair as two samples, chosen and rejected."""
    samples, titles = [], []
    for i, rec in enumerate(records, start=1):
        kind = record_kind(rec)
        if kind == "text":
            samples.append([(rec["text"], True)])
            titles.append(f"sample {i}")
        elif kind == "instruction":
            samples.append(template.segments(rec))
            titles.append(f"sample {i}")
        else:
            answers = (
                [("chosen", rec["chosen"]), ("rejected", rec["rejected"])]
                if kind == "preference"
                else [("desirable" if rec["label"] else "undesirable", rec["completion"])]
            )
            for which, answer in answers:
                segments = template.segments({**rec, "messages": [*rec["messages"], answer]})
                last = max(k for k, (_, learn) in enumerate(segments) if learn)
                samples.append([(text, learn and k == last) for k, (text, learn) in enumerate(segments)])
                titles.append(f"sample {i} ({which})")
    return samples, titles


def write_demo(path: Path | str, overwrite: bool = False, kind: str = "instruction") -> Path:
    """Write demo data as .jsonl or .json: the 20 instruction samples (the lesson's
    `build_dummy_dataset`), or the Chinese preference pairs, KTO answers or text (data/demo.py)."""
    path = Path(path)
    if path.suffix.lower() not in DEMO_SUFFIXES:
        raise DataError(f"{path}: write the demo data as {' or '.join(DEMO_SUFFIXES)}.")
    if kind not in DATA_KINDS:
        raise DataError(f"--kind {kind!r}: use one of {', '.join(DATA_KINDS)}.")
    check_output_file(path, overwrite=overwrite)
    rows: list[dict[str, Any]] = demo_rows(kind)
    text = (
        json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
        if path.suffix.lower() == ".json"
        else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["DataReport", "check_data", "render_samples", "write_demo"]
