"""The Template protocol: how a conversation becomes text segments, and which are learned.

A template turns a normalised record (see data/formats.py) into *segments*: `(text, learn)`
pairs in order. Prompt text (system, user turns, role markers) has `learn=False`; each assistant
answer has `learn=True` and ends with the token that stops generation (EOS or the template's
end-of-turn token). Each segment is tokenised on its own, which is also how inference sees the
prompt: a prompt tokenised alone, then the answer generated token by token (encode.py).

A template also says which tokens end an answer (`stop_tokens`: generation stops on them) and
whether its text already holds the special tokens a sequence starts with (`renders_special_
tokens`: chat templates write their own BOS; plain-text ones get the tokenizer's prefix).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..data.collate import IGNORE_INDEX
from ..errors import ConfigError

Segment = tuple[str, bool]
"""(text, learn): a piece of the rendered conversation and whether its tokens are labels."""


class Template(Protocol):
    name: str
    renders_special_tokens: bool

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        """Special tokens that end an answer in this template (generation stops on them)."""
        ...

    def segments(self, record: dict[str, Any], add_generation_prompt: bool = False) -> list[Segment]:
        """Segments of the whole record; with add_generation_prompt the record must end on a
        user turn and the segments end with the prompt for the next answer."""
        ...


def user_text(message: dict[str, Any]) -> str:
    """A user turn's text for templates with no separate place for alpaca's `input`."""
    extra = message.get("input") or ""
    return f"{message['content']}\n{extra}" if extra else message["content"]


def uses_tools(record: dict[str, Any]) -> bool:
    """The record offers tools, calls one, or holds a tool's result."""
    return bool(record.get("tools")) or any(m["role"] == "tool" or m.get("tool_calls") for m in record["messages"])


def refuse_tools(record: dict[str, Any], template: str) -> None:
    """Plain-text templates have no way to write tools or tool calls: say so (never drop them)."""
    if uses_tools(record):
        raise ConfigError(
            f"{record.get('source', 'a record')} has tools or tool calls, which template `{template}` cannot "
            "write. Use template: chat with a model whose chat template supports tools (Qwen2.5/Qwen3, "
            "ChatGLM3 or GLM-4), or drop the tool turns."
        )


__all__ = ["IGNORE_INDEX", "Segment", "Template", "refuse_tools", "user_text", "uses_tools"]
