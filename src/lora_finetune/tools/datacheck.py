"""`lora-finetune data`: check a dataset before training, and write the demo data to a file.

The check runs the same reading, normalisation, template and encoding as training (nothing is
reimplemented), so what it reports is what training will see: how many records, in which
formats, how long they are in tokens with the model's tokenizer and template, how many
`max_length` would drop, duplicates, and the first samples rendered with the part that is
learned marked.
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

from ..data import detect_format, dummy_rows, normalize_rows
from ..data.sources import read_source
from ..errors import DataError
from ..folders import check_output_file
from ..models import load_tokenizer, resolve_model
from ..models.families import template_for, template_name_for
from ..models.loading import read_model_config
from ..templates import encode_records

DEMO_SUFFIXES = (".jsonl", ".json")


@dataclass
class DataReport:
    label: str
    records: int
    formats: dict[str, int]
    template: str
    max_length: int
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
    records = normalize_rows(source.rows, source.label, data_format, True)
    formats = Counter(detect_format(row, where, source.label) for where, row in source.rows)
    path = resolve_model(model, cache_dir)
    tokenizer = load_tokenizer(path)
    model_type = getattr(read_model_config(path), "model_type", None)
    name = template_name_for(template, tokenizer, model_type)
    tmpl = template_for(name, tokenizer, model_type, system_prompt)
    encoded, stats = encode_records(records, tokenizer, tmpl, 10**9)  # measure all; count drops below
    lengths = [len(e.input_ids) for e in encoded]
    keys = [json.dumps([r.get("system"), r["messages"]], ensure_ascii=False, sort_keys=True) for r in records]
    report = DataReport(
        label=source.label,
        records=len(records),
        formats=dict(formats),
        template=name,
        max_length=max_length,
        answer_tokens=stats.answer_tokens,
        prompt_tokens=stats.prompt_tokens,
        too_long=sum(n > max_length for n in lengths),
        no_answer=stats.no_answer_tokens,
        duplicates=len(keys) - len(set(keys)),
        multi_turn=sum(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in records),
        samples=[tmpl.segments(r) for r in records[:show]],
    )
    if lengths:
        report.token_lengths = {
            "min": min(lengths),
            "median": int(statistics.median(lengths)),
            "p95": _percentile(lengths, 0.95),
            "max": max(lengths),
        }
    return report


def write_demo(path: Path | str, overwrite: bool = False) -> Path:
    """Write the 20 demo samples (the lesson's `build_dummy_dataset`) as .jsonl or .json."""
    path = Path(path)
    if path.suffix.lower() not in DEMO_SUFFIXES:
        raise DataError(f"{path}: write the demo data as {' or '.join(DEMO_SUFFIXES)}.")
    check_output_file(path, overwrite=overwrite)
    rows: list[dict[str, Any]] = dummy_rows()
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


__all__ = ["DataReport", "check_data", "write_demo"]
