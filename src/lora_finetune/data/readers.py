"""Reading data files into raw rows, each with where it came from.

JSON, JSONL, CSV, Parquet, and plain text (.txt: each non-empty line is one document,
`{"text": line}`, for continued pretraining, as LLaMA-Factory reads its .txt datasets). Every row
comes with its place in the file (`line 3` for JSONL, CSV and text, `record 2` for a JSON list,
`row 5` for Parquet) so that any later error about it can name the file and the line.
Unreadable files raise `DataError` with the fix.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError, problem_list

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
_TOO_DEEP = (
    "JSON nested too deeply to read (thousands of levels of [ or {). A record is a flat object "
    "of text fields, or a list of messages; check how the file was generated"
)


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: the file is not UTF-8 text (bad byte 0x{raw[e.start]:02x} at "
            f"offset {e.start}). Convert it to UTF-8, e.g. `iconv -f GBK -t UTF-8 {path.name} "
            f"> fixed.{path.suffix.lstrip('.')}`."
        ) from None


def _read_jsonl(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    # split on "\n" only: str.splitlines() also breaks at U+2028/U+0085, which JSON strings may
    # hold raw (json.dumps(..., ensure_ascii=False) writes them so)
    bad: list[str] = []
    rows: list[tuple[str, Any]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            bad.append(f"{path}, line {lineno}, column {e.colno}: not valid JSON ({e.msg})")
        except RecursionError:
            bad.append(f"{path}, line {lineno}: {_TOO_DEEP}")
    if len(bad) == 1:
        raise DataError(
            f"{bad[0]}. Each line of a .jsonl file must be one complete JSON object; fix or delete that line."
        )
    if bad:
        raise DataError(
            f"{path}: {len(bad)} lines are not valid JSON. Each line of a .jsonl file must be one "
            f"complete JSON object; fix or delete them:\n{problem_list(bad)}"
        )
    yield from rows


def _read_json(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: {_TOO_DEEP}") from None
    except json.JSONDecodeError as e:
        hint = (
            " It looks like JSON Lines (one object per line): rename the file to .jsonl."
            if e.msg.startswith("Extra data")
            else " Fix the syntax at that position."
        )
        raise DataError(f"{path}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})." + hint) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        is_record = any(k in data for k in RECORD_FIELDS)
        if len(lists) == 1 and not is_record:  # {"data": [...]} and similar wrappers
            data = data[lists[0]]
        else:  # one record on its own
            data = [data]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of records (objects), found a "
            f"{type(data).__name__}. Wrap the records in [ ... ]."
        )
    for i, row in enumerate(data):
        yield f"record {i + 1}", row


RECORD_FIELDS = ("instruction", "output", "messages", "conversations", "prompt", "completion", "chosen", "text")
"""Fields that make a JSON object a record rather than a wrapper such as {"data": [...]}."""
CSV_KINDS = (
    ("instruction", "chosen", "rejected"),
    ("prompt", "chosen", "rejected"),
    ("prompt", "completion"),
    ("text",),
)
"""CSV headers of the other data kinds (preference pairs, TRL prompt-completion, raw text)."""


def _read_csv(path: Path, text: str, require_answer: bool = True) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if not header:
        return
    required = ("instruction", "output") if require_answer else ("instruction",)
    other_kind = any(all(col in header for col in cols) for cols in CSV_KINDS)
    if not other_kind and any(col not in header for col in required):
        known = ", ".join(f"`{h}`" for h in header)
        fixes = []
        for want in required:
            if want not in header:
                close = difflib.get_close_matches(want, header, n=1, cutoff=0.5)
                fixes.append(f"rename `{close[0]}` to `{want}`" if close else f"add a `{want}` column")
        raise DataError(
            f"{path}, line 1 (the header): a CSV must have the columns `instruction` "
            f"and `output` (and optionally `input`, `system`); found {known}. "
            f"Fix: {'; '.join(fixes)}."
        )
    try:
        for row in reader:
            if any(v not in (None, "") for v in row.values()):
                extra = row.pop(None, None)  # type: ignore[call-overload]
                if extra:
                    raise DataError(
                        f"{path}, line {reader.line_num}: the row has more cells than "
                        "the header has columns. Quote cells that contain commas."
                    )
                yield f"line {reader.line_num}", {k: v for k, v in row.items() if v is not None}
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: broken CSV ({e}). Check the quoting.") from None


def _read_txt(text: str) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield f"line {lineno}", {"text": line.rstrip("\r")}


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types for damaged files
        raise DataError(
            f"{path}: cannot read it as Parquet ({type(e).__name__}: {e}). "
            "Check the file is complete, or export the data as JSONL."
        ) from None
    for i, row in enumerate(rows):
        yield f"row {i + 1}", row


def read_rows(path: Path | str, require_answer: bool = True) -> list[tuple[str, Any]]:
    """Raw rows of a data file with where each came from (`line 3`, `record 2`, `row 5`).

    `require_answer=False` (prompts for generation) lets a CSV go without an `output` column."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"Data file {path} does not exist. Check data_path (relative paths are "
            f"relative to the directory you run the command from: {Path.cwd()})."
        )
    if path.is_dir():
        raise DataError(f"data_path {path} is a folder; point it at one .json, .jsonl, .csv, .parquet or .txt file.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type `{suffix or '(none)'}`. Use one of {', '.join(SUFFIXES)}.")
    if suffix == ".parquet":
        return list(_read_parquet(path))
    text = _decode(path, path.read_bytes())
    if suffix == ".jsonl":
        return list(_read_jsonl(path, text))
    if suffix == ".csv":
        return list(_read_csv(path, text, require_answer))
    if suffix == ".txt":
        return list(_read_txt(text))
    # A .json file that is really JSON Lines is common: accept it when every line parses.
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n" in stripped.strip():
        try:
            json.loads(text)
        except RecursionError:
            raise DataError(f"{path}: {_TOO_DEEP}") from None
        except json.JSONDecodeError as e:
            if e.msg.startswith("Extra data"):
                return list(_read_jsonl(path, text))
    return list(_read_json(path, text))
