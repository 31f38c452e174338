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


__all__ = ["IGNORE_INDEX", "Segment", "Template", "user_text"]
