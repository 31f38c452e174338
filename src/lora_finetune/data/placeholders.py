"""Template placeholders left in answers: `{{name}}`, `{{author}}`.

LLaMA-Factory's `identity.json` is a template for the user to fill in (its README says to
replace `{{name}}` and `{{author}}`); trained as is, the model learns to call itself
"{{name}}". Nothing fails, so the check is ours: `lora-finetune data` and training say which
placeholders are left in how many answers.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w.\-]*\s*\}\}")


def answer_texts(record: dict[str, Any]) -> list[str]:
    """The text a record teaches: its assistant turns, a pair's answers, a KTO completion, or
    a pretraining document."""
    if record.get("kind") == "text":
        return [record.get("text") or ""]
    out = [m.get("content") or "" for m in record.get("messages", []) if m.get("role") == "assistant"]
    for key in ("chosen", "rejected", "completion"):
        answer = record.get(key)
        if isinstance(answer, dict):
            out.append(answer.get("content") or "")
    return out


def find_placeholders(records: list[dict[str, Any]]) -> tuple[Counter, int]:
    """(how many answers hold each placeholder, how many records hold any)."""
    found: Counter = Counter()
    records_with = 0
    for rec in records:
        names = {p for text in answer_texts(rec) for p in PLACEHOLDER.findall(text)}
        found.update(re.sub(r"\s+", "", p) for p in names)
        records_with += bool(names)
    return found, records_with


def placeholder_warning(records: list[dict[str, Any]], label: str) -> str | None:
    found, records_with = find_placeholders(records)
    if not found:
        return None
    which = ", ".join(f"{p} ({n})" for p, n in found.most_common(5))
    return (
        f"{label}: {records_with} of {len(records)} records have unreplaced placeholders in their answers: "
        f"{which}. Trained as they are, the model learns to say them literally. Replace them with your values "
        "first (LLaMA-Factory's identity.json expects your assistant's name and author in {{name}} and {{author}})."
    )


__all__ = ["PLACEHOLDER", "answer_texts", "find_placeholders", "placeholder_warning"]
