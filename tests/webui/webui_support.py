"""Shared bits of the web UI tests (imported by name: tests/webui is on sys.path)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

ROWS = [
    {"instruction": q, "input": "", "output": a}
    for q, a in [
        ("中国的首都是哪里？", "北京。"),
        ("一周有几天？", "七天。"),
        ("What is 2 + 2?", "4."),
        ("Name a primary colour.", "Red."),
        ("Capital of France?", "Paris."),
        ("一年有几个月？", "十二个月。"),
        ("Opposite of hot?", "Cold."),
        ("How many legs has a cat?", "Four."),
    ]
]


def write_jsonl(path: Path, rows: list[dict] = ROWS) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
