"""The kinds of training data, told apart from the records' fields, each in one record shape.

    instruction  {"system", "messages": [user, assistant, ...], "source"}   (formats.py; sft)
    text         {"kind": "text", "text", "source"}                          (pt)
    preference   {"kind": "preference", "system", "messages": [..., user],
                  "chosen": {"role": "assistant", "content"}, "rejected": {...}, "source"}
                                                                             (dpo, orpo, simpo)
    kto          {"kind": "kto", "system", "messages": [..., user],
                  "completion": {"role": "assistant", "content"}, "label": bool, "source"} (kto)

What each kind is read from (`detect_kind`):

- text: a `text` field and none of the conversation fields (JSONL/JSON/Parquet, LLaMA-Factory's
  pretraining entries, the lines of a .txt file);
- preference: `chosen` and `rejected`. The prompt is TRL's `prompt` (a string, or a list of
  messages that may hold a system prompt and earlier turns), alpaca's `instruction`/`input`/
  `history`/`system` (LLaMA-Factory's alpaca preference records) or ShareGPT's `conversations`
  (LLaMA-Factory's sharegpt ones). Without a prompt, chosen and rejected are whole conversations
  sharing their start (TRL's "implicit prompt"): the shared start is the prompt. The answers are
  strings, messages, or one-message lists;
- kto: a `label` (TRL; true = desirable) or `kto_tag` (LLaMA-Factory) with TRL's `prompt` +
  `completion`, or with a conversation whose last turn is the labelled answer;
- instruction: the rest (alpaca, messages, ShareGPT), and TRL's `prompt` + `completion` without a
  label (its prompt-completion SFT format).

A label is never dropped: a preference or KTO file given to `sft` is refused with both names
(training/dataset.py), instead of training on the rejected and the undesirable answers too.
"""

from __future__ import annotations

from typing import Any

from ..choices import parse_bool
from ..errors import DataError
from .turns import Record, alpaca_record, gather, need_str, raise_all, turns_record

KIND_NAMES = {
    "instruction": "instructions with answers",
    "text": "raw text",
    "preference": "preference pairs (chosen / rejected)",
    "kto": "answers labelled desirable or not (KTO)",
}
_CONVERSATION = ("instruction", "output", "messages", "conversations", "prompt", "completion")


def record_kind(record: Record) -> str:
    return record.get("kind", "instruction")


def detect_kind(row: dict[str, Any]) -> str:
    """Which kind a raw row is (see the module docstring)."""
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "label" in row or "kto_tag" in row:
        return "kto"
    if "text" in row and not any(k in row for k in _CONVERSATION):
        return "text"
    return "instruction"


# --------------------------------------------------------------------------- text
def text_record(row: dict[str, Any], where: str, path: Any) -> Record:
    text = need_str(row, "text", where, path, required=True, allow_empty=False)
    return {"kind": "text", "text": text}


# --------------------------------------------------------------------------- prompts and answers
def _messages_row(messages: Any, system: Any = None) -> dict[str, Any]:
    return {"messages": messages, **({"system": system} if system is not None else {})}


def _prompt(row: dict[str, Any], where: str, path: Any) -> Record:
    """The conversation up to the answer: TRL's `prompt`, alpaca's fields or ShareGPT's turns.
    It must end on a user turn."""
    if "prompt" in row:
        prompt = row["prompt"]
        if isinstance(prompt, list):
            rec = turns_record(_messages_row(prompt, row.get("system")), where, path, "messages", require_answer=False)
        else:
            text = need_str(row, "prompt", where, path, required=True, allow_empty=False)
            rec = alpaca_record({"instruction": text, "system": row.get("system")}, where, path, require_answer=False)
    elif "conversations" in row or "messages" in row:
        fmt = "sharegpt" if "conversations" in row else "messages"
        rec = turns_record(row, where, path, fmt, require_answer=False)
    else:
        rec = alpaca_record({k: row[k] for k in ("instruction", "input", "history", "system") if k in row},
                            where, path, require_answer=False)  # fmt: skip
    if not rec["messages"] or rec["messages"][-1]["role"] != "user":
        raise DataError(
            f"{path}, {where}: the prompt must end with a user turn (the answers to compare come after "
            "it); move the last assistant turn into `chosen` / `completion`, or drop it."
        )
    return rec


def _answer(value: Any, field: str, where: str, path: Any) -> dict[str, Any]:
    """An answer: a string, one assistant message ({"role", "content"} or ShareGPT's {"from",
    "value"}), or a list holding exactly one."""
    at = f"{path}, {where}, field `{field}`"
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(
                f"{at}: expected one assistant answer, found a list of {len(value)} messages. Put earlier "
                "turns in `prompt` and keep only the answer here."
            )
        value = value[0]
    if isinstance(value, dict):
        role = str(value.get("role", value.get("from", "assistant"))).strip().lower()
        if role not in ("assistant", "gpt"):
            raise DataError(f"{at}: the answer must be an assistant message, found role `{role}`.")
        value = value.get("content", value.get("value"))
    if value is None:
        raise DataError(f"{at}: missing. Add the {field} answer.")
    if not isinstance(value, str):
        raise DataError(f"{at}: expected text, found {type(value).__name__} {str(value)[:60]!r}. Make it a string.")
    if not value.strip():
        raise DataError(f"{at}: empty. An answer to compare must have text; fill it in or delete the record.")
    return {"role": "assistant", "content": value, "input": ""}


def _split_implicit(row: dict[str, Any], where: str, path: Any) -> dict[str, Any]:
    """TRL's implicit prompt: chosen and rejected are whole conversations (or texts) with a shared
    start, which is the prompt (for texts: up to the last space they share)."""
    chosen, rejected = row["chosen"], row["rejected"]
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if isinstance(chosen, str):
        n = chosen.rfind(" ", 0, n + 1) + 1 if " " in chosen[:n] else 0
    if n == 0:
        raise DataError(
            f"{path}, {where}: no `prompt`, and `chosen` and `rejected` do not start with the same turns, so "
            "the prompt they answer is unknown. Add a `prompt` field."
        )
    return {**{k: v for k, v in row.items() if k not in ("chosen", "rejected")}, "prompt": chosen[:n],
            "chosen": chosen[n:], "rejected": rejected[n:]}  # fmt: skip


def preference_record(row: dict[str, Any], where: str, path: Any) -> Record:
    problems: list[str] = []
    for field in ("chosen", "rejected"):
        if field not in row:
            problems.append(
                f"{path}, {where}, field `{field}`: missing. A preference pair needs a `chosen` and a "
                "`rejected` answer to the same prompt."
            )
    raise_all(problems)
    has_prompt = any(k in row for k in ("prompt", "instruction", "conversations", "messages"))
    same_type = type(row["chosen"]) is type(row["rejected"]) and isinstance(row["chosen"], (list, str))
    if not has_prompt and same_type:
        row = _split_implicit(row, where, path)
    rec = gather(problems, _prompt, row, where, path)
    chosen = gather(problems, _answer, row["chosen"], "chosen", where, path)
    rejected = gather(problems, _answer, row["rejected"], "rejected", where, path)
    if chosen and rejected and chosen["content"].strip() == rejected["content"].strip():
        problems.append(
            f"{path}, {where}: `chosen` and `rejected` are the same answer, so the pair teaches nothing; "
            "fix one of them or delete the record."
        )
    raise_all(problems)
    return {"kind": "preference", **rec, "chosen": chosen, "rejected": rejected}


def _label(value: Any, where: str, path: Any) -> bool:
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        try:
            return parse_bool(value)
        except ValueError:
            pass
    raise DataError(
        f"{path}, {where}, field `label`: expected true (a desirable answer) or false (undesirable), found {value!r}."
    )


def kto_record(row: dict[str, Any], where: str, path: Any) -> Record:
    problems: list[str] = []
    key = "label" if "label" in row else "kto_tag"
    label = gather(problems, _label, row[key], where, path)
    if "completion" in row:
        rec = gather(problems, _prompt, row, where, path)
        completion = gather(problems, _answer, row["completion"], "completion", where, path)
    else:  # a conversation whose last turn is the labelled answer (LLaMA-Factory)
        fmt = "sharegpt" if "conversations" in row else "messages"
        rec = gather(problems, turns_record, row, where, path, fmt, True)
        completion = None
        if rec is not None:
            completion = rec["messages"].pop()
            if not rec["messages"]:
                problems.append(f"{path}, {where}: the labelled answer has no prompt before it.")
    raise_all(problems)
    return {"kind": "kto", **rec, "completion": completion, "label": label}


def prompt_completion_row(row: dict[str, Any]) -> dict[str, Any]:
    """TRL's prompt-completion SFT row (no label) as a messages row for formats.py."""
    prompt, completion = row.get("prompt"), row.get("completion")
    turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    answer = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    out = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
    return {**out, "messages": [*turns, *answer]}


NORMALIZERS = {"text": text_record, "preference": preference_record, "kto": kto_record}


__all__ = [
    "KIND_NAMES",
    "NORMALIZERS",
    "detect_kind",
    "kto_record",
    "preference_record",
    "prompt_completion_row",
    "record_kind",
    "text_record",
]
