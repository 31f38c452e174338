"""`chat`: the tokenizer's own chat template (Qwen's or SmolLM2's ChatML, Llama 3, ChatGLM3 after
conversion, ...), rendered once with the answers marked, then cut at the marks into prompt and
answer segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Segment, user_text

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class ChatTemplate:
    """The tokenizer's own chat template, split into prompt and answer segments."""

    tokenizer: PreTrainedTokenizerBase
    default_system: str | None = None
    name: str = "chat"
    end_of_turn: tuple[str, ...] = ()
    """The model family's end-of-turn tokens (models/families.py); those the tokenizer has as
    special tokens are stop tokens besides EOS."""
    renders_special_tokens: bool = True

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        tok = self.tokenizer
        specials = set(tok.all_special_tokens or []) | set(tok.get_added_vocab() or {})
        found = [t for t in self.end_of_turn if t in specials and t != tok.unk_token]
        eos = [tok.eos_token] if tok.eos_token else []
        return tuple(dict.fromkeys(eos + found))

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, tools: list | None = None) -> str:
        extra = {"tools": tools} if tools else {}  # function definitions (the server's `tools`)
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            # Qwen3's template adds an empty <think></think> block to the generation prompt only
            # with enable_thinking=False; with it the rendered prefixes line up. Ignored elsewhere.
            enable_thinking=False,
            **extra,
        )

    def _chat(self, record: dict[str, Any]) -> list[dict[str, str]]:
        chat = []
        system = record.get("system") or self.default_system
        if system:
            chat.append({"role": "system", "content": system})
        for m in record["messages"]:
            msg = {"role": m["role"], "content": user_text(m) if m["role"] == "user" else m["content"]}
            # Tool calls and tool results (OpenAI-style messages from the server) keep their fields.
            msg.update({k: m[k] for k in _TOOL_FIELDS if m.get(k) is not None})
            chat.append(msg)
        return chat

    def segments(self, record: dict[str, Any], add_generation_prompt: bool = False) -> list[Segment]:
        # Render the whole conversation once, with each assistant answer replaced by a marker,
        # then cut the text at the markers. Rendering growing prefixes instead goes wrong for
        # templates that render history differently from the last turn (Qwen3 drops the
        # <think></think> block from earlier answers, so prefixes do not line up).
        chat = self._chat(record)
        tools = record.get("tools")
        text, answers, gen_prompts = self._marked(chat, tools, add_generation_prompt, in_name=False)
        if any(m["role"] == "assistant" and m.get("tool_calls") and not m["content"] for m in chat):
            # A tool call without text: templates write the call after the (empty) content, some
            # with a separator only when there is content (Qwen: "\n" + content). Then a marker
            # in the content changes the text around it; marking the call's name instead keeps
            # it exact. Whichever reproduces the real rendering is used.
            real = self._render(chat, add_generation_prompt, tools)
            if _unmark(text, answers) != real:
                text, answers, gen_prompts = self._marked(chat, tools, add_generation_prompt, in_name=True)
                if _unmark(text, answers) != real:
                    raise ConfigError(
                        "this tokenizer's chat template writes tool calls in a way whose text cannot be "
                        "split into prompt and answer; use a chat template that writes tool calls after "
                        "the assistant's content (Qwen2.5/Qwen3, ChatGLM3)."
                    )
        if tools or any(m.get("tool_calls") for m in chat):
            self._check_writes_tools(_unmark(text, answers), tools, chat, record.get("source"))
        pieces = _MARK_RE.split(text)
        if len(pieces) != 2 * len(answers) + 1 or any(pieces[k] not in answers for k in range(1, len(pieces), 2)):
            raise ConfigError(
                "this tokenizer's chat template does not write every assistant "
                "answer once, as given, so answers cannot be located for the "
                "labels. Use template: qa, or fix the chat template."
            )
        out: list[Segment] = []
        prompt = pieces[0]
        for k in range(1, len(pieces), 2):
            mark = pieces[k]
            # What the template writes between its generation prompt and the answer (ChatGLM3's
            # "\n " after <|assistant|>) is generated at inference, so it is learned too.
            gen = gen_prompts[mark]
            cut = prompt.rindex(gen) + len(gen) if gen and gen in prompt else len(prompt)
            if prompt[:cut]:
                out.append((prompt[:cut], False))
            learned_end, rest = self._split_turn_end(pieces[k + 1])
            out.append((prompt[cut:] + answers[mark] + learned_end, True))
            prompt = rest
        if prompt:
            out.append((prompt, False))
        return out

    def _marked(
        self, chat: list[dict[str, Any]], tools: list | None, add_generation_prompt: bool, in_name: bool
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        """The conversation rendered with a marker where each assistant answer is, the answers
        by marker, and the generation prompt before each. `in_name`: a tool call without text is
        marked at the start of its first call's name (the marker then stands for "")."""
        answers: dict[str, str] = {}
        gen_prompts: dict[str, str] = {}
        masked: list[dict[str, Any]] = []
        for i, msg in enumerate(chat):
            if msg["role"] == "assistant":
                mark = f"{_MARK_OPEN}{i}{_MARK_CLOSE}"
                gen_prompts[mark] = self._generation_prompt(masked, tools)
                if in_name and msg.get("tool_calls") and not msg["content"]:
                    first, *rest = msg["tool_calls"]
                    fn = first["function"]
                    msg = {**msg, "tool_calls": [{**first, "function": {**fn, "name": mark + fn["name"]}}, *rest]}
                    answers[mark] = ""
                else:
                    answers[mark] = msg["content"]
                    msg = {**msg, "content": mark}
            masked.append(msg)
        return self._render(masked, add_generation_prompt, tools), answers, gen_prompts

    def _check_writes_tools(
        self, rendered: str, tools: list | None, chat: list[dict[str, Any]], source: str | None
    ) -> None:
        """A chat template without tool support drops the tool definitions and the calls
        silently (SmolLM2's does): the model would learn empty answers where it should call a
        tool. Every tool's and every call's name must be in the rendered text."""
        names = [t.get("function", t).get("name") for t in tools or [] if isinstance(t, dict)]
        names += [c["function"]["name"] for m in chat for c in m.get("tool_calls") or []]
        missing = sorted({n for n in names if isinstance(n, str) and n and n not in rendered})
        if missing:
            raise ConfigError(
                f"{source or 'a record'} has tools or tool calls, and this model's chat template does not write "
                "them (the rendered conversation lacks "
                f"{', '.join(missing[:3])}), so the model would learn empty answers where it calls a tool. Train "
                "tool-call data on a model whose chat template supports tools (Qwen2.5/Qwen3, ChatGLM3, GLM-4, "
                "Llama 3.1), or drop the records with tools."
            )

    def _generation_prompt(self, history: list[dict[str, Any]], tools: list | None = None) -> str:
        """The text the template adds to `history` to ask for the next answer."""
        asked = self._render(history, add_generation_prompt=True, tools=tools)
        plain = self._render(history, add_generation_prompt=False, tools=tools)
        return asked[len(plain) :] if asked.startswith(plain) else ""

    def _split_turn_end(self, after: str) -> tuple[str, str]:
        """What follows an answer: its end-of-turn token is learned, the rest is prompt.

        With an EOS in the text (ChatML's <|im_end|>) everything up to and including the first
        one is learned; without one (templates whose turns end with the next role marker, or a
        base model whose EOS differs from the template's end-of-turn) EOS is appended so the
        model still learns to stop."""
        eos = self.tokenizer.eos_token
        if eos and eos in after:
            cut = after.index(eos) + len(eos)
            return after[:cut], after[cut:]
        return eos or "", after


def _unmark(text: str, answers: dict[str, str]) -> str:
    return _MARK_RE.sub(lambda m: answers.get(m.group(1), m.group(1)), text)


_TOOL_FIELDS = ("tool_calls", "tool_call_id", "name")
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"  # private-use characters: never in real text
_MARK_RE = re.compile(f"({_MARK_OPEN}\\d+{_MARK_CLOSE})")
