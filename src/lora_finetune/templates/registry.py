"""The template names and what each one builds: `get_template(name, tokenizer)`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..choices import TEMPLATES, canonical_template
from ..errors import ConfigError
from .base import Template
from .chat import ChatTemplate
from .chatglm import ChatGLMV1Template
from .qa import QATemplate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEMPLATE_NAMES = TEMPLATES


def resolve_template_name(name: str, tokenizer: PreTrainedTokenizerBase, auto_template: str | None = None) -> str:
    """The template `name` stands for: `auto` becomes `auto_template` (the model family's
    choice) if given, else `chat` when the tokenizer has a chat template, else `qa`."""
    name = canonical_template(name)
    if name != "auto":
        return name
    if auto_template:
        return auto_template
    return "chat" if getattr(tokenizer, "chat_template", None) else "qa"


def get_template(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    system_prompt: str | None = None,
    *,
    end_of_turn: Sequence[str] = (),
    auto_template: str | None = None,
) -> Template:
    """The template called `name` for this tokenizer.

    `end_of_turn`: the model family's end-of-turn tokens (stop tokens of chat templates);
    `auto_template`: what `auto` means for the family. models/families.py `template_for` passes
    both from the family table."""
    name = resolve_template_name(name, tokenizer, auto_template)
    if name == "qa":
        if not tokenizer.eos_token:
            raise ConfigError(
                "template `qa` needs an EOS token to end answers, and this "
                "tokenizer has none. Use a tokenizer with an eos_token."
            )
        return QATemplate(eos_token=tokenizer.eos_token)
    if name in ("chat", "chatglm3", "chatglm2"):
        # ChatGLM2/3 tokenizers converted by models/chatglm carry their own chat template.
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"template `{name}` needs the tokenizer's chat template, and this "
                "tokenizer has none. Use template: qa, or a chat/instruct model."
            )
        return ChatTemplate(tokenizer=tokenizer, default_system=system_prompt, end_of_turn=tuple(end_of_turn))
    if name == "chatglm":
        return ChatGLMV1Template(eos_token=tokenizer.eos_token or "<eop>")
    raise ConfigError(f"template `{name}` is unknown; use one of {', '.join(TEMPLATE_NAMES)}.")
