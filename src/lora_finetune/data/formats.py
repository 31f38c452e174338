"""Instruction data in one record shape.

Every reader (JSON, JSONL, CSV, Parquet) and every format (alpaca, messages, ShareGPT) ends in
the same normalised record, so templates only ever see one thing:

    {"system": str | None,
     "messages": [{"role": "user" | "assistant", "content": str, "input": str}, ...],
     "source": "data.jsonl:12"}

`input` is alpaca's extra context on the first user turn ("" elsewhere); the qa template puts
it on its own 补充信息 line (`qa` template), chat templates append it to the user's text. `source` is where
the record came from, so later errors can point at the file and line.

Bad input raises `DataError` naming file, line or record, field and fix; nothing else escapes
(the fuzz tests in tests/data/ hold us to that).

Other kinds of data (raw text, preference pairs, KTO-labelled answers) are told apart from the
fields and normalised in kinds.py; one file holds one kind, and `kinds=` says which a caller
accepts (everything but training reads instructions only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError, problem_list
from .kinds import KIND_NAMES, NORMALIZERS, detect_kind, prompt_completion_row, record_kind
from .readers import read_rows
from .sources import read_source
from .turns import alpaca_record, detect_format, turns_record

Record = dict[str, Any]


INSTRUCTIONS = ("instruction",)


def source_name(path: Any) -> str:
    """How a record's source is named in messages: a file by its name, a dataset of
    LLaMA-Factory's dataset_info.json (labelled "NAME (…/dataset_info.json)") by its name."""
    text = str(path)
    if " (" in text and text.endswith(")"):
        return text.split(" (", 1)[0]
    return Path(text).name


def normalize_row(row: Any, where: str, path: Any = "<data>", fmt: str = "auto", require_answer: bool = True) -> Record:
    """One raw row -> the normalised record (see the module docstring)."""
    if isinstance(row, dict):
        kind = detect_kind(row)
        if kind != "instruction":
            rec = NORMALIZERS[kind](row, where, path)
            rec["source"] = f"{source_name(path)}:{where}"
            return rec
        if "prompt" in row and "completion" in row:
            row = prompt_completion_row(row)
    detected = detect_format(row, where, path)
    if fmt not in ("auto", detected):
        raise DataError(
            f"{path}, {where}: data_format is `{fmt}` but the record looks like "
            f"`{detected}` (fields {', '.join(map(str, row))}). Set data_format: "
            f"{detected} or auto."
        )
    if detected == "alpaca":
        rec = alpaca_record(row, where, path, require_answer)
    else:
        rec = turns_record(row, where, path, detected, require_answer)
    rec["source"] = f"{source_name(path)}:{where}"
    return rec


def normalize_rows(
    rows: list[tuple[str, Any]],
    path: Path | str,
    fmt: str,
    require_answer: bool,
    kinds: tuple[str, ...] = INSTRUCTIONS,
) -> list[Record]:
    """Every row normalised, or one DataError listing every bad record (the first 20 in full).
    The records must be of one kind, one of `kinds`."""
    records: list[Record] = []
    bad: list[str] = []
    bad_records = 0
    for where, row in rows:
        try:
            records.append(normalize_row(row, where, path, fmt, require_answer))
        except DataError as e:
            bad_records += 1
            bad += str(e).split("\n")
    if bad_records == 1 and len(bad) == 1:
        raise DataError(bad[0])
    if bad:
        raise DataError(
            f"{path}: {bad_records} of {len(rows)} records cannot be used ({len(bad)} problems). "
            f"Fix or delete them:\n{problem_list(bad)}"
        )
    check_kind(records, path, kinds)
    return records


def check_kind(records: list[Record], path: Path | str, kinds: tuple[str, ...]) -> None:
    """One kind per file, and one the caller reads."""
    by_kind: dict[str, list[str]] = {}
    for rec in records:
        by_kind.setdefault(record_kind(rec), []).append(str(rec.get("source", "?")).rsplit(":", 1)[-1])
    if len(by_kind) > 1:
        parts = [
            f"{len(w)} {KIND_NAMES[k]} ({', '.join(w[:3])}{', ...' if len(w) > 3 else ''})" for k, w in by_kind.items()
        ]
        raise DataError(
            f"{path}: holds records of {len(by_kind)} kinds: {'; '.join(parts)}. A dataset trains one kind; "
            "split the file."
        )
    kind = next(iter(by_kind), "instruction")
    if kind not in kinds:
        wanted = " or ".join(KIND_NAMES[k] for k in kinds)
        raise DataError(f"{path}: holds {KIND_NAMES[kind]}, but {wanted} are read here.")


def load_records(
    path: Path | str, fmt: str = "auto", require_answer: bool = True, kinds: tuple[str, ...] = INSTRUCTIONS
) -> list[Record]:
    """Read a data file into normalised records; a DataError lists every bad record at once."""
    rows = read_rows(path, require_answer)
    if not rows:
        raise DataError(f"{path}: the file holds no records. Add samples, one per line (JSONL) or as a JSON list.")
    return normalize_rows(rows, path, fmt, require_answer, kinds)


def load_source(
    path: Path | str, fmt: str = "auto", dataset: str | None = None, kinds: tuple[str, ...] = INSTRUCTIONS
) -> tuple[list[Record], str]:
    """Training records from any source (a file, a `datasets` folder, a hub dataset, a dataset
    in LLaMA-Factory's dataset_info.json: sources.py) and the sha256 identifying the data."""
    source = read_source(path, dataset)
    if not source.rows:
        raise DataError(f"{source.label}: holds no records. Add samples, one per line (JSONL) or as a JSON list.")
    return normalize_rows(source.rows, source.label, fmt, True, kinds), source.sha256


def records_from_rows(
    rows: list[dict],
    fmt: str = "auto",
    source: str = "<memory>",
    require_answer: bool = True,
    kinds: tuple[str, ...] = INSTRUCTIONS,
) -> list[Record]:
    return normalize_rows([(f"record {i + 1}", r) for i, r in enumerate(rows)], source, fmt, require_answer, kinds)
