"""Where training data comes from: a file, a `datasets` folder, a hub dataset, or a dataset named
in LLaMA-Factory's `dataset_info.json`.

Every source ends as raw rows with their place (`line 3`, `row 5`) for the normalisation in
formats.py, and a sha256 that identifies the data for the run record (and for `--resume`):

- a file (json, jsonl, csv, parquet): readers.py; the sha256 of the file;
- a folder written by `datasets.Dataset.save_to_disk` (its `train` split for a DatasetDict);
- a hub dataset id (`org/name`): `datasets.load_dataset(id, split="train")`, from the local
  cache when offline;
- `dataset: NAME` with `data_path` the folder holding `dataset_info.json` (LLaMA-Factory's
  `dataset_dir`) or that file: the entry's `file_name`, `formatting` (alpaca or sharegpt),
  `columns` and `tags` are applied, so LLaMA-Factory datasets train as they are: instruction
  entries, preference entries (`ranking: true`, with `chosen`/`rejected` columns), KTO entries
  (a `kto_tag` column, read as `label`) and pretraining entries (only a `prompt` column, the
  text: `{"text": ...}` rows).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, listing
from .readers import read_rows

DATASET_INFO = "dataset_info.json"


@dataclass
class Source:
    rows: list[tuple[str, Any]]
    """Raw rows with where each came from."""
    sha256: str
    label: str
    """What to call the data in messages (a path, or `name in dataset_info.json`)."""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rows_sha256(rows: list[tuple[str, Any]]) -> str:
    digest = hashlib.sha256()
    for _, row in rows:
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and "." not in parts[1][-8:]


def _from_datasets(obj: Any, label: str) -> list[tuple[str, Any]]:
    from datasets import DatasetDict

    if isinstance(obj, DatasetDict):
        if "train" not in obj:
            raise DataError(f"{label} has no `train` split (it has {listing(list(obj.keys()))}).")
        obj = obj["train"]
    return [(f"row {i + 1}", dict(row)) for i, row in enumerate(obj)]


def _saved_dataset(path: Path) -> Source:
    from datasets import load_from_disk

    try:
        rows = _from_datasets(load_from_disk(str(path)), str(path))
    except DataError:
        raise
    except Exception as e:  # datasets raises many kinds for damaged folders
        raise DataError(
            f"{path} looks like a `datasets` folder (save_to_disk) but cannot be read "
            f"({type(e).__name__}: {str(e)[:160]}). Save it again, or export it as JSONL."
        ) from None
    return Source(rows, _rows_sha256(rows), str(path))


def _hub_dataset(name: str) -> Source:
    try:
        from datasets import load_dataset

        rows = _from_datasets(load_dataset(name, split="train"), name)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"data_path {name} is neither a local file or folder nor a hub dataset this machine can "
            f"get ({type(e).__name__}: {str(e).splitlines()[0][:160]}). Offline (HF_HUB_OFFLINE=1 or no "
            "network), only datasets already in the Hugging Face cache load; otherwise download it where "
            "you have network access and pass the file or `save_to_disk` folder as data_path."
        ) from None
    return Source(rows, _rows_sha256(rows), name)


# --------------------------------------------------------------------------- LLaMA-Factory
_ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    "system": "system",
    "tools": "tools",
    "chosen": "chosen",
    "rejected": "rejected",
    "kto_tag": "label",
}
_SHAREGPT_ROLES = ("user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
_SHAREGPT_DEFAULT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


def _dataset_info(data_path: Path, name: str) -> tuple[Path, dict[str, Any]]:
    info_path = data_path if data_path.name == DATASET_INFO else data_path / DATASET_INFO
    if not info_path.is_file():
        raise DataError(
            f"dataset: {name} needs LLaMA-Factory's {DATASET_INFO}: set data_path to the folder that holds "
            f"it (their dataset_dir) or to the file; {info_path} does not exist."
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{info_path} cannot be read as JSON ({e}).") from None
    if not isinstance(info, dict) or name not in info or not isinstance(info[name], dict):
        names = sorted(info) if isinstance(info, dict) else []
        raise DataError(f"{info_path} has no dataset `{name}`; it has {listing(names) or 'none'}.")
    return info_path, info[name]


def _apply_alpaca(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    out = {}
    for ours_in_lf, column in columns.items():
        key = _ALPACA_COLUMNS.get(ours_in_lf)
        if key and column in row:
            out[key] = row[column]
    return out


def _apply_sharegpt(row: dict[str, Any], columns: dict[str, str], tags: dict[str, str]) -> dict[str, Any]:
    messages = row.get(columns.get("messages", "conversations"))
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    # The entry's own spelling of each role -> the ShareGPT spelling our reader knows.
    roles = {tags[t]: _SHAREGPT_DEFAULT_TAGS[t] for t in _SHAREGPT_ROLES if t in tags}
    turns = []
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                role = roles.get(m.get(role_tag), m.get(role_tag))
                turns.append({"from": role, "value": m.get(content_tag)})
            else:
                turns.append(m)
    else:
        turns = messages
    out: dict[str, Any] = {"conversations": turns}
    if columns.get("system") in row:
        out["system"] = row[columns["system"]]
    if columns.get("tools") in row:
        out["tools"] = row[columns["tools"]]
    for answer in ("chosen", "rejected"):  # preference entries: one message each, in the entry's tags
        if columns.get(answer) in row:
            m = row[columns[answer]]
            out[answer] = (
                {"from": roles.get(m.get(role_tag), m.get(role_tag)), "value": m.get(content_tag)}
                if isinstance(m, dict)
                else m
            )
    if columns.get("kto_tag") in row:
        out["label"] = row[columns["kto_tag"]]
    return out


def _llama_factory(data_path: Path, name: str) -> Source:
    info_path, entry = _dataset_info(data_path, name)
    label = f"{name} ({info_path})"
    if "file_name" not in entry:
        remote = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("script_url")
        if remote:
            source = _hub_dataset(str(remote))
            rows = source.rows
        else:
            raise DataError(f"{info_path}, dataset `{name}`: no `file_name` (or `hf_hub_url`) to read.")
        sha = source.sha256
    else:
        file = info_path.parent / str(entry["file_name"])
        if file.is_dir() and _is_saved_dataset(file):
            source = _saved_dataset(file)
            rows, sha = source.rows, source.sha256
        else:
            rows = read_rows(file)
            sha = _file_sha256(file)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise DataError(f"{info_path}, dataset `{name}`: formatting `{formatting}`; use alpaca or sharegpt.")
    given = entry.get("columns", {})
    if formatting == "alpaca" and set(given) == {"prompt"}:
        # A pretraining entry (LLaMA-Factory's c4_demo, wiki_demo): its prompt column is the text.
        mapped = [(where, {"text": r.get(given["prompt"])} if isinstance(r, dict) else r) for where, r in rows]
    elif formatting == "alpaca":
        columns = {
            **{k: v for k, v in zip(_ALPACA_COLUMNS, ("instruction", "input", "output"))},
            **entry.get("columns", {}),
        }
        mapped = [(where, _apply_alpaca(r, columns) if isinstance(r, dict) else r) for where, r in rows]
    else:
        columns = {"messages": "conversations", **entry.get("columns", {})}
        tags = {**_SHAREGPT_DEFAULT_TAGS, **entry.get("tags", {})}
        mapped = [(where, _apply_sharegpt(r, columns, tags) if isinstance(r, dict) else r) for where, r in rows]
    return Source(mapped, sha, label)


# --------------------------------------------------------------------------- entry point
def read_source(data_path: Path | str, dataset: str | None = None) -> Source:
    """The rows of whatever `data_path` (and `dataset`) name, with a sha256 of the data."""
    path = Path(str(data_path)).expanduser()
    if dataset:
        return _llama_factory(path, dataset)
    if _is_saved_dataset(path):
        return _saved_dataset(path)
    if not path.exists() and _looks_like_hub_id(str(data_path)):
        return _hub_dataset(str(data_path))
    rows = read_rows(path)
    return Source(rows, _file_sha256(path), str(path))


__all__ = ["DATASET_INFO", "Source", "read_source"]
