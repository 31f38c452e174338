"""Generating for a whole data file: read prompts (answers optional), answer each, write the rows
back with a `prediction` field in the format the output path's suffix asks for."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import normalize_rows, read_rows
from ..errors import DataError
from ..folders import check_output_file, is_no_space, no_space_error, output_lock
from .inference import InferenceModel, generate

log = logging.getLogger(__name__)

PREDICTION_FIELD = "prediction"
OUTPUT_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class GenerateFileResult:
    output_path: Path
    rows: int
    stopped: int
    """Rows whose generation ended on a stop token (the rest hit max_new_tokens)."""
    generated_tokens: int
    seconds: float


def read_prompt_records(
    path: Path | str, data_format: str = "auto", kinds: tuple[str, ...] = ("instruction",)
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(raw rows, normalised records) of a data file of one of `kinds`; answers are optional."""
    rows = read_rows(path, require_answer=False)  # a prompts-only CSV needs no `output` column
    if not rows:
        raise DataError(f"{path}: the file holds no records. Add prompts, one per line (JSONL) or as a JSON list.")
    raw = [row for _, row in rows]
    records = normalize_rows(rows, path, data_format, require_answer=False, kinds=kinds)
    return raw, records


def _cell(value: Any) -> Any:
    """A CSV cell: nested values as JSON text, None as empty."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return value


def write_rows(rows: list[dict[str, Any]], path: Path | str) -> Path:
    """Write rows as .jsonl (the default for any other suffix), .json, .csv or .parquet, into a
    temporary sibling renamed into place, so `path` is never left half-written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        log.info("%s: suffix %r is not one of %s; writing JSON Lines", path, suffix, ", ".join(OUTPUT_SUFFIXES))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pa.Table.from_pylist(rows)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise DataError(
                    f"{path}: the rows cannot be stored as Parquet ({e}); a field "
                    "has mixed types across rows. Write .jsonl instead."
                ) from None
            pq.write_table(table, tmp)
        elif suffix == ".csv":
            columns: list[str] = []
            for row in rows:
                columns += [k for k in row if k not in columns]
            buf = io.StringIO(newline="")
            writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in columns})
            tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")
        elif suffix == ".json":
            tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1, default=str) + "\n", encoding="utf-8")
        else:
            tmp.write_text(
                "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows), encoding="utf-8"
            )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def generate_file(
    im: InferenceModel,
    input_path: Path | str,
    output_path: Path | str,
    *,
    data_format: str = "auto",
    max_samples: int | None = None,
    progress: Callable[[int], Any] | None = None,
    **gen_kw: Any,
) -> GenerateFileResult:
    """Answer every record of a data file (json/jsonl/csv/parquet; alpaca, messages or
    ShareGPT; answers optional) and write each input row back with a `prediction` field.

    `gen_kw` goes to `generate` (max_new_tokens, temperature, top_p, repetition_penalty,
    batch_size). The output format follows `output_path`'s suffix.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    check_output_path(input_path, output_path)
    with output_lock(output_path):
        return _generate_file(im, input_path, output_path, data_format, max_samples, progress, gen_kw)


def check_output_path(input_path: Path | str, output_path: Path | str) -> None:
    """Before anything is generated: the output can be written and is not the input."""
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise DataError(
            f"--output {output_path} is the input file; writing there would replace "
            "your data. Choose another output path."
        )
    check_output_file(output_path)


def _generate_file(
    im: InferenceModel,
    input_path: Path,
    output_path: Path,
    data_format: str,
    max_samples: int | None,
    progress: Callable[[int], Any] | None,
    gen_kw: dict[str, Any],
) -> GenerateFileResult:
    raw, records = read_prompt_records(input_path, data_format)
    if max_samples is not None:
        raw, records = raw[:max_samples], records[:max_samples]
    if any(PREDICTION_FIELD in r for r in raw):
        log.warning("%s already has a `%s` field; it is replaced by the new predictions", input_path, PREDICTION_FIELD)
    t0 = time.perf_counter()
    results = generate(im, records, progress=progress, **gen_kw)
    seconds = time.perf_counter() - t0
    rows = [{**row, PREDICTION_FIELD: res["text"]} for row, res in zip(raw, results)]
    try:
        write_rows(rows, output_path)
    except OSError as e:
        if not is_no_space(e):
            raise
        raise no_space_error(output_path) from None
    return GenerateFileResult(
        output_path, len(rows), sum(r["stopped"] for r in results), sum(r["tokens"] for r in results), seconds
    )


__all__ = [
    "GenerateFileResult",
    "OUTPUT_SUFFIXES",
    "PREDICTION_FIELD",
    "check_output_path",
    "generate_file",
    "read_prompt_records",
    "write_rows",
]
