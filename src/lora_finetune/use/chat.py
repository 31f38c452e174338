"""Multi-turn chat with an adapter: the history, the prompt, the in-chat commands.

The history is a record's `messages` list (see data/formats.py), rendered by the same template the
adapter was trained with, so round N's prompt is exactly what training showed the model for a
conversation of N rounds. Nothing here prints: `ChatSession.send` hands streamed text to a
callback, and `ChatSession.command` returns the text to show; the terminal loop lives in the
CLI (`lora-finetune chat`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import LoraFinetuneError
from ..templates import encode_prompt
from .inference import InferenceModel, stream_ids

log = logging.getLogger(__name__)

HELP = """Commands:
  /reset               forget the conversation (start a new one)
  /exit, /quit         leave (Ctrl-D does too)
  /set NAME VALUE      change a generation setting, e.g. /set temperature 0.7
  /settings            show the generation settings
  /system TEXT         set the system prompt for the rest of the chat (clears the history)
  /help                this list"""


class ChatCommandError(LoraFinetuneError):
    """A mistyped in-chat command; the chat shows the message and goes on."""


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 0.0
    """0 is greedy decoding (the same answer every time)."""
    top_p: float = 0.9
    repetition_penalty: float = 1.0

    def check(self) -> None:
        if self.max_new_tokens <= 0:
            raise ChatCommandError(f"max_new_tokens={self.max_new_tokens}: must be positive.")
        if self.temperature < 0:
            raise ChatCommandError(f"temperature={self.temperature}: must be >= 0 (0 is greedy).")
        if not 0 < self.top_p <= 1:
            raise ChatCommandError(f"top_p={self.top_p}: must be in (0, 1].")
        if self.repetition_penalty <= 0:
            raise ChatCommandError(f"repetition_penalty={self.repetition_penalty}: must be positive (1.0 is off).")

    def describe(self) -> str:
        mode = "greedy" if self.temperature == 0 else "sampling"
        return (
            f"max_new_tokens={self.max_new_tokens} temperature={self.temperature} ({mode}) "
            f"top_p={self.top_p} repetition_penalty={self.repetition_penalty}"
        )

    def set(self, name: str, value: str) -> None:
        names = {f.name: f for f in fields(self)}
        key = name.replace("-", "_")
        if key not in names:
            raise ChatCommandError(f"unknown setting `{name}`; settings are {', '.join(names)}.")
        kind = int if key == "max_new_tokens" else float
        try:
            new = kind(value)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ChatCommandError(f"/set {name}: `{value}` is not {what}.") from None
        old = getattr(self, key)
        setattr(self, key, new)
        try:
            self.check()
        except ChatCommandError:
            setattr(self, key, old)
            raise


@dataclass
class ChatReply:
    text: str
    tokens: int
    stopped: bool
    """False when the answer was cut at max_new_tokens."""
    prompt_tokens: int
    dropped_rounds: int = 0
    """Oldest rounds left out of the prompt so it fits the model's context."""


@dataclass
class ChatSession:
    im: InferenceModel
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    last_prompt_ids: list[int] | None = None

    def reset(self) -> None:
        self.history = []
        self.last_prompt_ids = None

    def record(self, user_text: str, skip_rounds: int = 0) -> dict[str, Any]:
        """The conversation so far plus the new user turn, as a record."""
        past = self.history[2 * skip_rounds :]
        return {"system": self.system, "messages": past + [{"role": "user", "content": user_text, "input": ""}]}

    def prompt_ids(self, user_text: str) -> tuple[list[int], int]:
        """(prompt token ids, rounds dropped): the oldest rounds go first when the prompt and
        max_new_tokens would not fit the model's context."""
        limit = self.im.context_length()
        rounds = len(self.history) // 2
        for skip in range(rounds + 1):
            ids = encode_prompt(self.record(user_text, skip), self.im.tokenizer, self.im.template)
            if limit is None or len(ids) + self.settings.max_new_tokens <= limit:
                return ids, skip
        return ids, rounds

    def send(self, user_text: str, on_text: Callable[[str], Any] | None = None) -> ChatReply:
        """Answer `user_text`, streaming to `on_text`; the round joins the history."""
        ids, dropped = self.prompt_ids(user_text)
        s = self.settings
        max_new = s.max_new_tokens
        limit = self.im.context_length()
        if limit is not None and len(ids) + max_new > limit:
            max_new = limit - len(ids)  # even alone the message leaves less room than asked
            if max_new <= 0:
                raise ChatCommandError(
                    f"the message is {len(ids)} tokens with the template, and the model reads "
                    f"at most {limit}; send a shorter message."
                )
        self.last_prompt_ids = ids
        out = stream_ids(
            self.im,
            ids,
            on_text=on_text,
            max_new_tokens=max_new,
            temperature=s.temperature,
            top_p=s.top_p,
            repetition_penalty=s.repetition_penalty,
        )
        if dropped:
            self.history = self.history[2 * dropped :]
        self.history += [
            {"role": "user", "content": user_text, "input": ""},
            {"role": "assistant", "content": out["text"], "input": ""},
        ]
        return ChatReply(out["text"], out["tokens"], out["stopped"], len(ids), dropped)

    def command(self, line: str) -> tuple[str, bool]:
        """Run an in-chat command (a line starting with `/`). Returns (text to show, keep
        going). A mistyped command raises ChatCommandError; the chat shows it and goes on."""
        parts = line.strip().split(maxsplit=2)
        cmd = parts[0].lower()
        if cmd in ("/exit", "/quit", "/q"):
            return "bye", False
        if cmd in ("/reset", "/clear", "/new"):
            self.reset()
            return "history cleared", True
        if cmd in ("/help", "/?"):
            return HELP, True
        if cmd in ("/settings", "/show"):
            return self.settings.describe(), True
        if cmd == "/set":
            if len(parts) != 3:
                raise ChatCommandError(
                    f"usage: /set NAME VALUE, e.g. /set temperature 0.7 ({self.settings.describe()})"
                )
            self.settings.set(parts[1], parts[2])
            return self.settings.describe(), True
        if cmd == "/system":
            self.system = line.strip()[len(parts[0]) :].strip() or None
            self.reset()
            return f"system prompt {'set' if self.system else 'cleared'}; history cleared", True
        raise ChatCommandError(f"unknown command `{parts[0]}`; /help lists the commands.")


__all__ = ["HELP", "ChatCommandError", "ChatReply", "ChatSession", "GenerationSettings"]
