"""The adapter's prompt format, for runtimes that render prompts themselves.

llama.cpp renders the Jinja chat template stored in the GGUF; Ollama renders a Go template
from the Modelfile. Both must produce exactly the text the adapter was trained on, which is
what our template (templates/) renders. So the format is *measured* from our template: a few
conversations with placeholder contents are rendered, and the text between consecutive
messages is read off as a table keyed by (previous role, role), plus what follows the last
user message (the generation prompt). A template whose text does not fit such a table (it
changes earlier turns depending on later ones) is reported as not representable, and the
export says so instead of writing a template that differs.

From the table come a Go template (Ollama's TEMPLATE) and, for templates that are not the
tokenizer's own chat template (`qa`), a Jinja template for the GGUF.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..templates import Template

ROLES = ("system", "user", "assistant")
_OPEN, _CLOSE = "\ue010", "\ue011"  # private-use characters: never in real text
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


@dataclass
class TurnTable:
    lead: dict[tuple[str, str], str] = field(default_factory=dict)
    """(previous role or "", role) -> the text written before this message's content."""
    tail: dict[str, str] = field(default_factory=dict)
    """last role -> the text written after the last message when an answer is asked for."""

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """What the Go and Jinja templates built from this table render (used to check them)."""
        out, prev = [], ""
        for m in messages:
            out.append(self.lead.get((prev, m["role"]), ""))
            out.append(m["content"])
            prev = m["role"]
        if add_generation_prompt:
            out.append(self.tail.get(prev, ""))
        return "".join(out)


def _conversations() -> list[tuple[str | None, list[str]]]:
    """(system, roles) of the conversations measured: with and without a system prompt, one
    to three rounds, each ending on a user turn (an answer is being asked for)."""
    out = []
    for system in (False, True):
        for rounds in (1, 2, 3):
            out.append(("system" if system else None, ["user", "assistant"] * (rounds - 1) + ["user"]))
    return out


def _record(system: bool, roles: list[str]) -> tuple[dict, list[tuple[str, str]]]:
    n = 0
    expected: list[tuple[str, str]] = []

    def sentinel(role: str) -> str:
        nonlocal n
        text = f"{_OPEN}{n}{_CLOSE}"
        expected.append((role, text))
        n += 1
        return text

    sys_text = sentinel("system") if system else None
    messages = [{"role": r, "content": sentinel(r), "input": ""} for r in roles]
    return {"system": sys_text, "messages": messages}, expected


def measure(template: Template) -> TurnTable | None:
    """The turn table of `template`, or None when its text does not fit one."""
    table = TurnTable()

    def put(d: dict, key, value: str) -> bool:
        if key in d and d[key] != value:
            return False
        d[key] = value
        return True

    for system, roles in _conversations():
        record, expected = _record(system is not None, roles)
        try:
            text = "".join(t for t, _ in template.segments(record, add_generation_prompt=True))
        except Exception:  # noqa: BLE001 - a template that cannot render this is simply not representable
            return None
        pieces = _SENTINEL.split(text)
        # pieces: gap0, id0, gap1, id1, ..., gapN
        ids = pieces[1::2]
        if ids != [str(i) for i in range(len(expected))]:
            return None
        gaps = pieces[0::2]
        prev = ""
        for (role, _), gap in zip(expected, gaps):
            if not put(table.lead, (prev, role), gap):
                return None
            prev = role
        if not put(table.tail, prev, gaps[-1]):
            return None
    return table


# --------------------------------------------------------------------------- Go (Ollama)
def _go_string(text: str) -> str:
    # JSON's escapes (\" \\ \n \uXXXX for control characters) are valid Go string escapes;
    # other characters stay as UTF-8, which Go reads as they are.
    return json.dumps(text, ensure_ascii=False)


def go_template(table: TurnTable) -> str:
    """Ollama TEMPLATE text: every literal is a Go string constant inside an action, so no
    whitespace of the template itself reaches the prompt."""
    parts = ['{{ $prev := "" }}{{ range .Messages }}']
    branches = [f'(and (eq $prev "{prev}") (eq .Role "{role}"))' for (prev, role), text in table.lead.items() if text]
    texts = [text for text in table.lead.values() if text]
    for i, (cond, text) in enumerate(zip(branches, texts)):
        parts.append(("{{ if " if i == 0 else "{{ else if ") + cond + " }}{{ " + _go_string(text) + " }}")
    if branches:
        parts.append("{{ end }}")
    parts.append("{{ .Content }}{{ $prev = .Role }}{{ end }}")
    tails = [(role, text) for role, text in table.tail.items() if text]
    for i, (role, text) in enumerate(tails):
        parts.append(("{{ if " if i == 0 else "{{ else if ") + f'eq $prev "{role}" }}}}{{{{ {_go_string(text)} }}}}')
    if tails:
        parts.append("{{ end }}")
    return "".join(parts)


# --------------------------------------------------------------------------- Jinja (GGUF)
def _jinja_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return "'" + escaped.replace("\t", "\\t") + "'"


def jinja_template(table: TurnTable) -> str:
    """A chat template (Jinja) rendering the same text; literals are string expressions, so
    trim_blocks/lstrip_blocks settings of the renderer cannot change them."""
    parts = ["{%- set ns = namespace(prev='') -%}{%- for message in messages -%}"]
    first = True
    for (prev, role), text in table.lead.items():
        if not text:
            continue
        kw = "if" if first else "elif"
        parts.append(
            f"{{%- {kw} ns.prev == '{prev}' and message['role'] == '{role}' -%}}{{{{ {_jinja_string(text)} }}}}"
        )
        first = False
    if not first:
        parts.append("{%- endif -%}")
    parts.append("{{ message['content'] }}{%- set ns.prev = message['role'] -%}{%- endfor -%}")
    parts.append("{%- if add_generation_prompt -%}")
    first = True
    for role, text in table.tail.items():
        if not text:
            continue
        parts.append(f"{{%- {'if' if first else 'elif'} ns.prev == '{role}' -%}}{{{{ {_jinja_string(text)} }}}}")
        first = False
    if not first:
        parts.append("{%- endif -%}")
    parts.append("{%- endif -%}")
    return "".join(parts)


def render_jinja(template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True, **kw) -> str:
    """Render a chat template the way transformers does (sandboxed, trim_blocks, lstrip_blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **kw)


def with_default_enable_thinking(chat_template: str) -> str:
    """Qwen3's template, as the adapter was trained: `enable_thinking=False` unless the caller
    passes it (llama.cpp passes nothing, so the empty <think></think> block is written)."""
    if "enable_thinking" not in chat_template:
        return chat_template
    return "{%- if enable_thinking is not defined -%}{%- set enable_thinking = false -%}{%- endif -%}" + chat_template


def sample_conversations() -> list[list[dict[str, str]]]:
    """Conversations the templates are checked on (also used by the tests)."""
    return [
        [{"role": "user", "content": "中国的首都是哪里？"}],
        [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Hello world, hello LoRA!"}],
        [
            {"role": "user", "content": "问：把“你好”翻译成英文。"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "The quick brown fox\njumps."},
        ],
    ]


def as_record(messages: list[dict[str, str]]) -> dict:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    rest = messages[1:] if system is not None else messages
    return {"system": system, "messages": [{**m, "input": ""} for m in rest]}


def render_ours(template: Template, messages: list[dict[str, str]]) -> str:
    """The prompt text our template renders for `messages` (ending on a user turn)."""
    return "".join(t for t, _ in template.segments(as_record(messages), add_generation_prompt=True))


__all__ = [
    "TurnTable",
    "as_record",
    "go_template",
    "jinja_template",
    "measure",
    "render_jinja",
    "render_ours",
    "sample_conversations",
    "with_default_enable_thinking",
]
