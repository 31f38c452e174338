"""Instruction conversations: alpaca, OpenAI-style messages and ShareGPT rows -> turns.

The parsing every data kind shares (formats.py, kinds.py): a row's conversation becomes a list
of `{"role", "content", "input"}` turns (plus tool calls and results), with every problem of a
record gathered into one `DataError` that names file, record and field.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from ..errors import DataError

Record = dict[str, Any]

ALPACA_FIELDS = ("instruction", "input", "output", "system", "history")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "observation": "tool",  # a tool's result (LLaMA-Factory, ChatGLM3)
    "tool": "tool",
    "function_call": "function_call",  # the assistant calling a tool: value is {"name", "arguments"}
}
MESSAGE_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "tool": "tool"}


def detect_format(row: Any, where: str, path: Path | str) -> str:
    if not isinstance(row, dict):
        raise DataError(
            f"{path}, {where}: expected an object with fields, found "
            f"{type(row).__name__} {str(row)[:60]!r}. Each record must be a JSON "
            'object such as {"instruction": ..., "output": ...}.'
        )
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    keys = list(row)
    guesses = []
    for key in keys:
        close = difflib.get_close_matches(
            key, ["instruction", "output", "messages", "conversations", "input"], n=1, cutoff=0.6
        )
        if close:
            guesses.append(f"`{key}` -> `{close[0]}`")
    hint = f" Did you mean {', '.join(guesses)}?" if guesses else ""
    raise DataError(
        f"{path}, {where}: cannot tell the data format from the fields "
        f"{', '.join(f'`{k}`' for k in keys) or '(none)'}. Use alpaca fields "
        "(`instruction`, `input`, `output`), `messages` (role/content) or ShareGPT "
        f"`conversations` (from/value).{hint}"
    )


def gather(problems: list[str], fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `fn`; on a DataError, note its message and go on (every problem of a record is
    reported at once, not just the first)."""
    try:
        return fn(*args, **kwargs)
    except DataError as e:
        problems.append(str(e))
        return None


def raise_all(problems: list[str]) -> None:
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError("\n".join(problems))


def need_str(row: dict, key: str, where: str, path: Any, *, required: bool, allow_empty: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            close = difflib.get_close_matches(key, [str(k) for k in row], n=1, cutoff=0.5)
            hint = f" The record has `{close[0]}`: rename it to `{key}`." if close else f" Add a `{key}` field."
            raise DataError(f"{path}, {where}, field `{key}`: missing.{hint}")
        return ""
    val = row[key]
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        val = str(val)  # CSV/parquet numbers ("7") are text to us
    if not isinstance(val, str):
        raise DataError(
            f"{path}, {where}, field `{key}`: expected text, found "
            f"{type(val).__name__} {str(val)[:60]!r}. Make it a string."
        )
    if not allow_empty and not val.strip():
        raise DataError(
            f"{path}, {where}, field `{key}`: empty. A sample needs a non-empty "
            f"`{key}`; fill it in or delete the record."
        )
    return val


def alpaca_record(row: dict, where: str, path: Any, require_answer: bool) -> Record:
    problems: list[str] = []
    instruction = gather(problems, need_str, row, "instruction", where, path, required=True, allow_empty=False)
    inp = gather(problems, need_str, row, "input", where, path, required=False)
    output = gather(
        problems, need_str, row, "output", where, path, required=require_answer, allow_empty=not require_answer
    )
    system = gather(problems, need_str, row, "system", where, path, required=False) or None
    messages: list[dict[str, str]] = []
    history = row.get("history") or []
    if not isinstance(history, list):
        problems.append(
            f"{path}, {where}, field `history`: expected a list of [question, answer] "
            f"pairs, found {type(history).__name__}."
        )
        history = []
    for k, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            problems.append(
                f"{path}, {where}, field `history`, item {k + 1}: expected a [question, answer] pair of strings."
            )
            continue
        messages += [
            {"role": "user", "content": pair[0], "input": ""},
            {"role": "assistant", "content": pair[1], "input": ""},
        ]
    tools = gather(problems, _tools, row.get("tools"), f"{path}, {where}")
    raise_all(problems)
    messages.append({"role": "user", "content": instruction, "input": inp})
    if output:
        messages.append({"role": "assistant", "content": output, "input": ""})
    record: Record = {"system": system, "messages": messages}
    if tools:
        record["tools"] = tools
    return record


def turns_record(row: dict, where: str, path: Any, fmt: str, require_answer: bool) -> Record:
    key, role_key, text_key, roles = (
        ("messages", "role", "content", MESSAGE_ROLES)
        if fmt == "messages"
        else ("conversations", "from", "value", SHAREGPT_ROLES)
    )
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(
            f"{path}, {where}, field `{key}`: expected a non-empty list of "
            f'{{"{role_key}": ..., "{text_key}": ...}} objects.'
        )
    problems: list[str] = []
    system = gather(problems, need_str, row, "system", where, path, required=False) or None
    messages: list[dict[str, str]] = []
    for k, turn in enumerate(turns):
        try:
            system = _turn(turn, k, where, path, key, role_key, text_key, roles, messages, system)
        except DataError as e:
            problems.append(str(e))
    tools = gather(problems, _tools, row.get("tools"), f"{path}, {where}")
    raise_all(problems)
    if not messages:
        raise DataError(f"{path}, {where}, field `{key}`: has no user turn.")
    if require_answer and messages[-1]["role"] != "assistant":
        raise DataError(
            f"{path}, {where}, field `{key}`: the conversation has no assistant turn "
            "after the last user turn, so there is nothing to learn. Add the "
            "assistant's answer or delete the record."
        )
    record: Record = {"system": system, "messages": messages}
    if tools:
        record["tools"] = tools
    return record


def _turn(
    turn: Any,
    k: int,
    where: str,
    path: Any,
    key: str,
    role_key: str,
    text_key: str,
    roles: dict[str, str],
    messages: list[dict[str, str]],
    system: str | None,
) -> str | None:
    """Check one turn and append it to `messages`; returns the system prompt (a leading system
    turn sets it)."""
    at = f"{where}, field `{key}`, turn {k + 1}"
    if not isinstance(turn, dict):
        raise DataError(
            f"{path}, {at}: expected an object with `{role_key}` and `{text_key}`, found {type(turn).__name__}."
        )
    problems: list[str] = []
    raw_role = gather(problems, need_str, turn, role_key, at, path, required=True, allow_empty=False)
    role = roles.get(raw_role.strip().lower()) if raw_role is not None else None
    if raw_role is not None and role is None:
        problems.append(f"{path}, {at}: unknown {role_key} `{raw_role}`. Use one of {', '.join(sorted(set(roles)))}.")
    calls = None
    if role == "function_call":  # ShareGPT: the call is the turn's value, as JSON
        role, calls = "assistant", gather(problems, _sharegpt_call, turn.get(text_key), f"{path}, {at}")
        content = ""
    else:
        if role == "assistant" and turn.get("tool_calls") is not None:
            calls = gather(problems, _tool_calls, turn["tool_calls"], f"{path}, {at}, field `tool_calls`")
        empty_ok = role == "system" or (role == "assistant" and calls is not None)
        content = gather(problems, need_str, turn, text_key, at, path, required=not empty_ok, allow_empty=empty_ok)
    raise_all(problems)
    if role == "system":
        if messages:
            raise DataError(f"{path}, {at}: a system message may only come first.")
        return content
    previous = messages[-1] if messages else None
    if previous is None:
        # An answer may open the conversation (after a system prompt): OpenAI's fine-tuning
        # format allows it, and its own example file has such a record.
        allowed = ("user", "assistant")
    elif previous["role"] == "assistant" and not previous.get("tool_calls"):
        # A tool result may follow an answer that wrote its call as text (LLaMA-Factory accepts
        # this, and its own glaive_toolcall demo sets have such records).
        allowed = ("user", "tool")
    elif previous["role"] == "assistant":
        allowed = ("tool",)  # a call is answered by its result
    elif previous["role"] == "tool":
        allowed = ("tool", "assistant")
    else:
        allowed = ("assistant",)
    if role not in allowed:
        raise DataError(
            f"{path}, {at}: expected a `{' or '.join(allowed)}` turn here but found `{role}`. Turns alternate "
            "user, assistant, user, ...; an assistant turn that calls tools is followed by their results "
            "(`tool` / `observation` turns), then by the assistant again."
        )
    message: dict[str, Any] = {"role": role, "content": content or "", "input": ""}
    if calls is not None:
        message["tool_calls"] = calls
    if role == "tool" and isinstance(turn.get("name"), str):
        message["name"] = turn["name"]
    messages.append(message)
    return system


def _function(call: Any, where: str) -> dict[str, Any]:
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]
    if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]):
        raise DataError(
            f'{where}: a tool call needs a `name` (and `arguments`), like {{"name": "f", "arguments": {{}}}}.'
        )
    args = call.get("arguments", {})
    # JSON text of the arguments; some exports encode it twice (a JSON string holding the JSON
    # text: OpenAI's own drone_training.jsonl example does), so a string is decoded again.
    for _ in range(2):
        if not isinstance(args, str):
            break
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: the `arguments` of {call['name']} are not valid JSON ({e.msg}).") from None
    if not isinstance(args, dict):
        raise DataError(f"{where}: the `arguments` of {call['name']} must be an object of named arguments.")
    return {"type": "function", "function": {"name": call["name"], "arguments": args}}


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise DataError(f"{where}: an empty list of tool calls; drop the field or add the call.")
    return [_function(c, where) for c in calls]


def _sharegpt_call(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(
                f'{where}: a function_call turn\'s value must be JSON {{"name", "arguments"}} ({e.msg}).'
            ) from None
    return _tool_calls(value, where)


def _tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """A record's `tools` (a list, or its JSON text as LLaMA-Factory stores it) in OpenAI's form."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}, field `tools`: not valid JSON ({e.msg}).") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DataError(f"{where}, field `tools`: expected a list of tool (function) descriptions.")
    out = []
    for tool in value:
        fn = tool.get("function", tool) if tool.get("type", "function") == "function" else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataError(f"{where}, field `tools`: every tool needs a `name` (and `parameters`).")
        out.append({"type": "function", "function": fn})
    return out
