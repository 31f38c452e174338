"""`qa`: the plain-text 问/补充信息/答 format (the teaching script's, where it was called `seed`;
that name is still accepted).

    问：{instruction}\n补充信息：{input}\n答：{output}<eos>

The 补充信息 line is left out when `input` is empty (an empty line teaches nothing);
multi-turn rounds are joined by "\n"; a system prompt goes first on its own line. Used for
base models without a chat template (`template: auto` picks it then).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Segment, refuse_tools


def format_sample(sample: dict[str, Any]) -> str:
    """The teaching script's `format_sample`: 问/补充信息/答 in one string (no EOS)."""
    return qa_prompt(sample.get("instruction", ""), sample.get("input", "")) + str(sample.get("output", ""))


def qa_prompt(instruction: str, inp: str) -> str:
    # The teaching script writes "补充信息：" even when input is empty; an empty line teaches
    # nothing, so it is left out then (documented in docs/lesson.md).
    if inp:
        return f"问：{instruction}\n补充信息：{inp}\n答："
    return f"问：{instruction}\n答："


@dataclass
class QATemplate:
    eos_token: str
    name: str = "qa"
    renders_special_tokens: bool = False

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        return (self.eos_token,)

    def segments(self, record: dict[str, Any], add_generation_prompt: bool = False) -> list[Segment]:
        refuse_tools(record, self.name)
        out: list[Segment] = []
        if record.get("system"):
            out.append((record["system"] + "\n", False))
        for msg in record["messages"]:
            if msg["role"] == "user":
                sep = "\n" if out and out[-1][1] else ""
                out.append((sep + qa_prompt(msg["content"], msg.get("input") or ""), False))
            else:
                # The answer and the EOS that ends it are both learned: without the EOS the model
                # never learns to stop (the teaching script's bug).
                out.append((msg["content"] + self.eos_token, True))
        return out
