"""Reading instruction data into one record shape.

Every reader (JSON, JSONL, CSV, Parquet) and every format (alpaca, messages, ShareGPT) ends in
the same normalised record, so templates only ever see one thing:

    {"system": str | None,
     "messages": [{"role": "user" | "assistant", "content": str, "input": str}, ...],
     "source": "data.jsonl:12"}

`input` is alpaca's extra context on the first user turn ("" elsewhere); the seed template puts
it on its own 补充信息 line, chat templates append it to the user's text. `source` is where
the record came from, so later errors can point at the file and line.

Bad input raises `DataError` naming file, line or record, field and fix; nothing else escapes
(the fuzz tests in tests/test_data.py hold us to that).
"""
from __future__ import annotations

import csv
import difflib
import io
import json
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError

Record = dict[str, Any]

ALPACA_FIELDS = ("instruction", "input", "output", "system", "history")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "system": "system", "chatgpt": "assistant",
                  "bing": "assistant", "bard": "assistant"}
MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}
SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


# --------------------------------------------------------------------------- demo data
_DUMMY = [
    ("把“你好”翻译成英文。", "", "Hello."),
    ("中国的首都是哪里？", "", "北京。"),
    ("计算 3 加 5 等于多少。", "", "8。"),
    ("给出“快乐”的反义词。", "", "悲伤。"),
    ("用一个词形容大海。", "", "辽阔。"),
    ("一周有几天？", "", "七天。"),
    ("水的化学式是什么？", "", "H2O。"),
    ("判断这句话的情感。", "今天天气真好，我很开心。", "积极。"),
    ("把下面的句子翻译成英文。", "我爱学习。", "I love learning."),
    ("提取句子中的数字。", "我买了3个苹果和5个梨。", "3 和 5。"),
    ("太阳从哪个方向升起？", "", "东方。"),
    ("一年有几个月？", "", "十二个月。"),
    ("写出 10 的平方。", "", "100。"),
    ("总结这句话的主题。", "LoRA 只训练很少的低秩参数来微调大模型。", "高效微调大模型。"),
    ("给出“高”的反义词。", "", "矮。"),
    ("判断下面的数是奇数还是偶数。", "7", "奇数。"),
    ("地球上最大的海洋是什么？", "", "太平洋。"),
    ("把下面的单词翻译成中文。", "apple", "苹果。"),
    ("说出光的三原色。", "", "红、绿、蓝。"),
    ("LoRA 的全称是什么？", "", "Low-Rank Adaptation（低秩适配）。"),
]


def dummy_rows() -> list[dict[str, str]]:
    """The seed's 20 demo samples as plain alpaca rows."""
    return [{"instruction": i, "input": x, "output": o} for i, x, o in _DUMMY]


def build_dummy_dataset():
    """The seed's `build_dummy_dataset()`: 20 instruction/input/output samples as a `Dataset`."""
    from datasets import Dataset

    return Dataset.from_list(dummy_rows())


# --------------------------------------------------------------------------- readers
def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: the file is not UTF-8 text (bad byte 0x{raw[e.start]:02x} at "
            f"offset {e.start}). Convert it to UTF-8, e.g. `iconv -f GBK -t UTF-8 {path.name} "
            f"> fixed.{path.suffix.lstrip('.')}`.") from None


def _read_jsonl(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    # split on "\n" only: str.splitlines() also breaks at U+2028/U+0085, which JSON strings may
    # hold raw (json.dumps(..., ensure_ascii=False) writes them so)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {lineno}, column {e.colno}: not valid JSON ({e.msg}). Each line of "
                "a .jsonl file must be one complete JSON object; fix or delete that line.") \
                from None


def _read_json(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = (" It looks like JSON Lines (one object per line): rename the file to .jsonl."
                if e.msg.startswith("Extra data") else " Fix the syntax at that position.")
        raise DataError(f"{path}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})."
                        + hint) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        is_record = any(k in data for k in ("instruction", "output", "messages", "conversations"))
        if len(lists) == 1 and not is_record:  # {"data": [...]} and similar wrappers
            data = data[lists[0]]
        else:  # one record on its own
            data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records (objects), found a "
                        f"{type(data).__name__}. Wrap the records in [ ... ].")
    for i, row in enumerate(data):
        yield f"record {i + 1}", row


def _read_csv(path: Path, text: str, require_answer: bool = True) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if not header:
        return
    required = ("instruction", "output") if require_answer else ("instruction",)
    if any(col not in header for col in required):
        known = ", ".join(f"`{h}`" for h in header)
        fixes = []
        for want in required:
            if want not in header:
                close = difflib.get_close_matches(want, header, n=1, cutoff=0.5)
                fixes.append(f"rename `{close[0]}` to `{want}`" if close else f"add a `{want}` column")
        raise DataError(f"{path}, line 1 (the header): a CSV must have the columns `instruction` "
                        f"and `output` (and optionally `input`, `system`); found {known}. "
                        f"Fix: {'; '.join(fixes)}.")
    try:
        for row in reader:
            if any(v not in (None, "") for v in row.values()):
                extra = row.pop(None, None)  # type: ignore[call-overload]
                if extra:
                    raise DataError(f"{path}, line {reader.line_num}: the row has more cells than "
                                    "the header has columns. Quote cells that contain commas.")
                yield f"line {reader.line_num}", {k: v for k, v in row.items() if v is not None}
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: broken CSV ({e}). Check the quoting.") \
            from None


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises many types for damaged files
        raise DataError(f"{path}: cannot read it as Parquet ({type(e).__name__}: {e}). "
                        "Check the file is complete, or export the data as JSONL.") from None
    for i, row in enumerate(rows):
        yield f"row {i + 1}", row


def read_rows(path: Path | str, require_answer: bool = True) -> list[tuple[str, Any]]:
    """Raw rows of a data file with where each came from (`line 3`, `record 2`, `row 5`).

    `require_answer=False` (prompts for generation) lets a CSV go without an `output` column."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {path} does not exist. Check data_path (relative paths are "
                        f"relative to the directory you run the command from: {Path.cwd()}).")
    if path.is_dir():
        raise DataError(f"data_path {path} is a folder; point it at one .json, .jsonl, .csv or "
                        ".parquet file.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type `{suffix or '(none)'}`. Use one of "
                        f"{', '.join(SUFFIXES)}.")
    if suffix == ".parquet":
        return list(_read_parquet(path))
    text = _decode(path, path.read_bytes())
    if suffix == ".jsonl":
        return list(_read_jsonl(path, text))
    if suffix == ".csv":
        return list(_read_csv(path, text, require_answer))
    # A .json file that is really JSON Lines is common: accept it when every line parses.
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n" in stripped.strip():
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg.startswith("Extra data"):
                return list(_read_jsonl(path, text))
    return list(_read_json(path, text))


# --------------------------------------------------------------------------- normalising
def detect_format(row: Any, where: str, path: Path | str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{path}, {where}: expected an object with fields, found "
                        f"{type(row).__name__} {str(row)[:60]!r}. Each record must be a JSON "
                        "object such as {\"instruction\": ..., \"output\": ...}.")
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    keys = list(row)
    guesses = []
    for key in keys:
        close = difflib.get_close_matches(key, ["instruction", "output", "messages",
                                                "conversations", "input"], n=1, cutoff=0.6)
        if close:
            guesses.append(f"`{key}` -> `{close[0]}`")
    hint = f" Did you mean {', '.join(guesses)}?" if guesses else ""
    raise DataError(f"{path}, {where}: cannot tell the data format from the fields "
                    f"{', '.join(f'`{k}`' for k in keys) or '(none)'}. Use alpaca fields "
                    "(`instruction`, `input`, `output`), `messages` (role/content) or ShareGPT "
                    f"`conversations` (from/value).{hint}")


def _need_str(row: dict, key: str, where: str, path: Any, *, required: bool,
              allow_empty: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            close = difflib.get_close_matches(key, [str(k) for k in row], n=1, cutoff=0.5)
            hint = f" The record has `{close[0]}`: rename it to `{key}`." if close else \
                f" Add a `{key}` field."
            raise DataError(f"{path}, {where}, field `{key}`: missing.{hint}")
        return ""
    val = row[key]
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        val = str(val)  # CSV/parquet numbers ("7") are text to us
    if not isinstance(val, str):
        raise DataError(f"{path}, {where}, field `{key}`: expected text, found "
                        f"{type(val).__name__} {str(val)[:60]!r}. Make it a string.")
    if not allow_empty and not val.strip():
        raise DataError(f"{path}, {where}, field `{key}`: empty. A sample needs a non-empty "
                        f"`{key}`; fill it in or delete the record.")
    return val


def _alpaca(row: dict, where: str, path: Any, require_answer: bool) -> Record:
    instruction = _need_str(row, "instruction", where, path, required=True, allow_empty=False)
    inp = _need_str(row, "input", where, path, required=False)
    output = _need_str(row, "output", where, path, required=require_answer,
                       allow_empty=not require_answer)
    system = _need_str(row, "system", where, path, required=False) or None
    messages: list[dict[str, str]] = []
    history = row.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{path}, {where}, field `history`: expected a list of [question, answer] "
                        f"pairs, found {type(history).__name__}.")
    for k, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(p, str) for p in pair)):
            raise DataError(f"{path}, {where}, field `history`, item {k + 1}: expected a "
                            "[question, answer] pair of strings.")
        messages += [{"role": "user", "content": pair[0], "input": ""},
                     {"role": "assistant", "content": pair[1], "input": ""}]
    messages.append({"role": "user", "content": instruction, "input": inp})
    if output:
        messages.append({"role": "assistant", "content": output, "input": ""})
    return {"system": system, "messages": messages}


def _turns(row: dict, where: str, path: Any, fmt: str, require_answer: bool) -> Record:
    key, role_key, text_key, roles = (("messages", "role", "content", MESSAGE_ROLES)
                                      if fmt == "messages" else
                                      ("conversations", "from", "value", SHAREGPT_ROLES))
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{path}, {where}, field `{key}`: expected a non-empty list of "
                        f"{{\"{role_key}\": ..., \"{text_key}\": ...}} objects.")
    system = _need_str(row, "system", where, path, required=False) or None
    messages: list[dict[str, str]] = []
    for k, turn in enumerate(turns):
        at = f"{where}, field `{key}`, turn {k + 1}"
        if not isinstance(turn, dict):
            raise DataError(f"{path}, {at}: expected an object with `{role_key}` and "
                            f"`{text_key}`, found {type(turn).__name__}.")
        raw_role = _need_str(turn, role_key, at, path, required=True, allow_empty=False)
        role = roles.get(raw_role.strip().lower())
        if role is None:
            raise DataError(f"{path}, {at}: unknown {role_key} `{raw_role}`. Use one of "
                            f"{', '.join(sorted(set(roles)))}.")
        content = _need_str(turn, text_key, at, path, required=True,
                            allow_empty=role == "system")
        if role == "system":
            if messages:
                raise DataError(f"{path}, {at}: a system message may only come first.")
            system = content
            continue
        expected = "user" if not messages or messages[-1]["role"] == "assistant" else "assistant"
        if role != expected:
            raise DataError(f"{path}, {at}: expected a `{expected}` turn here but found "
                            f"`{role}`. Turns must alternate user, assistant, user, ...")
        messages.append({"role": role, "content": content, "input": ""})
    if not messages:
        raise DataError(f"{path}, {where}, field `{key}`: has no user turn.")
    if require_answer and messages[-1]["role"] != "assistant":
        raise DataError(f"{path}, {where}, field `{key}`: the conversation has no assistant turn "
                        "after the last user turn, so there is nothing to learn. Add the "
                        "assistant's answer or delete the record.")
    return {"system": system, "messages": messages}


def normalize_row(row: Any, where: str, path: Any = "<data>", fmt: str = "auto",
                  require_answer: bool = True) -> Record:
    """One raw row -> the normalised record (see the module docstring)."""
    detected = detect_format(row, where, path)
    if fmt not in ("auto", detected):
        raise DataError(f"{path}, {where}: data_format is `{fmt}` but the record looks like "
                        f"`{detected}` (fields {', '.join(map(str, row))}). Set data_format: "
                        f"{detected} or auto.")
    if detected == "alpaca":
        rec = _alpaca(row, where, path, require_answer)
    else:
        rec = _turns(row, where, path, detected, require_answer)
    rec["source"] = f"{Path(str(path)).name}:{where}"
    return rec


def load_records(path: Path | str, fmt: str = "auto", require_answer: bool = True
                 ) -> list[Record]:
    """Read a data file into normalised records; raises DataError on the first bad record."""
    rows = read_rows(path, require_answer)
    if not rows:
        raise DataError(f"{path}: the file holds no records. Add samples, one per line (JSONL) "
                        "or as a JSON list.")
    return [normalize_row(row, where, path, fmt, require_answer) for where, row in rows]


def records_from_rows(rows: list[dict], fmt: str = "auto", source: str = "<memory>",
                      require_answer: bool = True) -> list[Record]:
    return [normalize_row(r, f"record {i + 1}", source, fmt, require_answer)
            for i, r in enumerate(rows)]
