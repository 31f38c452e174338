"""Templates: how a conversation becomes tokens, and which tokens the model learns.

A template turns a normalised record (see data.py) into *segments*: `(text, learn)` pairs in
order. Prompt text (system, user turns, role markers) has `learn=False`; each assistant answer
has `learn=True` and ends with the token that stops generation (EOS or the template's
end-of-turn token). Each segment is tokenised on its own, which is also how inference sees the
prompt: a prompt tokenised alone, then the answer generated token by token.

Labels are then just the segment flags, position by position (alpaca-lora's one line:
`labels = [-100] * len(prompt) + answer`), so EOS stays learned even when pad == eos.

Templates:
- `seed`:  问：{instruction}\\n补充信息：{input}\\n答：{output}<eos>  (the seed document's format;
           the 补充信息 line is left out when input is empty; multi-turn rounds joined by "\\n")
- `chat`:  the tokenizer's own chat template (Qwen's or SmolLM2's ChatML, Llama 3, ChatGLM3 after
           conversion, ...), rendered once with the answers marked, then cut at the marks.
- `auto`:  `chat` when the tokenizer has a chat template, else `seed`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ConfigError

log = logging.getLogger(__name__)

Segment = tuple[str, bool]
IGNORE_INDEX = -100


class Template(Protocol):
    name: str

    def segments(self, record: dict[str, Any], add_generation_prompt: bool = False
                 ) -> list[Segment]:
        """Segments of the whole record; with add_generation_prompt the record must end on a
        user turn and the segments end with the prompt for the next answer."""
        ...


def user_text(message: dict[str, Any]) -> str:
    """A user turn's text for templates with no separate place for alpaca's `input`."""
    extra = message.get("input") or ""
    return f"{message['content']}\n{extra}" if extra else message["content"]


# --------------------------------------------------------------------------- seed
def format_sample(sample: dict[str, Any]) -> str:
    """The seed document's `format_sample`: 问/补充信息/答 in one string (no EOS)."""
    return _seed_prompt(sample.get("instruction", ""), sample.get("input", "")) + \
        str(sample.get("output", ""))


def _seed_prompt(instruction: str, inp: str) -> str:
    # The seed writes "补充信息：" even when input is empty; an empty line teaches nothing, so
    # it is left out then (documented in the README).
    if inp:
        return f"问：{instruction}\n补充信息：{inp}\n答："
    return f"问：{instruction}\n答："


@dataclass
class SeedTemplate:
    eos_token: str
    name: str = "seed"

    def segments(self, record: dict[str, Any], add_generation_prompt: bool = False
                 ) -> list[Segment]:
        out: list[Segment] = []
        if record.get("system"):
            out.append((record["system"] + "\n", False))
        for msg in record["messages"]:
            if msg["role"] == "user":
                sep = "\n" if out and out[-1][1] else ""
                out.append((sep + _seed_prompt(msg["content"], msg.get("input") or ""), False))
            else:
                # The answer and the EOS that ends it are both learned: without the EOS the model
                # never learns to stop (the seed's bug).
                out.append((msg["content"] + self.eos_token, True))
        return out


# --------------------------------------------------------------------------- chat
@dataclass
class ChatTemplate:
    """The tokenizer's own chat template, split into prompt and answer segments."""

    tokenizer: Any
    default_system: str | None = None
    name: str = "chat"

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt,
            # Qwen3's template adds an empty <think></think> block to the generation prompt only
            # with enable_thinking=False; with it the rendered prefixes line up. Ignored elsewhere.
            enable_thinking=False)

    def _chat(self, record: dict[str, Any]) -> list[dict[str, str]]:
        chat = []
        system = record.get("system") or self.default_system
        if system:
            chat.append({"role": "system", "content": system})
        for m in record["messages"]:
            chat.append({"role": m["role"], "content": user_text(m) if m["role"] == "user"
                         else m["content"]})
        return chat

    def segments(self, record: dict[str, Any], add_generation_prompt: bool = False
                 ) -> list[Segment]:
        # Render the whole conversation once, with each assistant answer replaced by a marker,
        # then cut the text at the markers. Rendering growing prefixes instead goes wrong for
        # templates that render history differently from the last turn (Qwen3 drops the
        # <think></think> block from earlier answers, so prefixes do not line up).
        chat = self._chat(record)
        answers: dict[str, str] = {}
        gen_prompts: dict[str, str] = {}
        masked: list[dict[str, str]] = []
        for i, msg in enumerate(chat):
            if msg["role"] == "assistant":
                mark = f"{_MARK_OPEN}{i}{_MARK_CLOSE}"
                answers[mark] = msg["content"]
                gen_prompts[mark] = self._generation_prompt(masked)
                msg = {**msg, "content": mark}
            masked.append(msg)
        text = self._render(masked, add_generation_prompt)
        pieces = _MARK_RE.split(text)
        if len(pieces) != 2 * len(answers) + 1 or any(pieces[k] not in answers
                                                      for k in range(1, len(pieces), 2)):
            raise ConfigError("this tokenizer's chat template does not write every assistant "
                              "answer once, as given, so answers cannot be located for the "
                              "labels. Use template: seed, or fix the chat template.")
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

    def _generation_prompt(self, history: list[dict[str, str]]) -> str:
        """The text the template adds to `history` to ask for the next answer."""
        asked = self._render(history, add_generation_prompt=True)
        plain = self._render(history, add_generation_prompt=False)
        return asked[len(plain):] if asked.startswith(plain) else ""

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


_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"  # private-use characters: never in real text
_MARK_RE = re.compile(f"({_MARK_OPEN}\\d+{_MARK_CLOSE})")


# --------------------------------------------------------------------------- choosing
TEMPLATE_NAMES = ("auto", "chat", "seed", "chatglm3", "chatglm2", "chatglm")


def resolve_template_name(name: str, tokenizer: Any, model_type: str | None = None) -> str:
    if name == "auto":
        if model_type == "chatglm":  # ChatGLM-6B v1 (v2/v3 are converted and carry a template)
            return "chatglm"
        return "chat" if getattr(tokenizer, "chat_template", None) else "seed"
    return name


def get_template(name: str, tokenizer: Any, system_prompt: str | None = None) -> Template:
    """The template called `name` (after `auto` is resolved) for this tokenizer."""
    name = resolve_template_name(name, tokenizer)
    if name == "seed":
        if not tokenizer.eos_token:
            raise ConfigError("template `seed` needs an EOS token to end answers, and this "
                              "tokenizer has none. Use a tokenizer with an eos_token.")
        return SeedTemplate(eos_token=tokenizer.eos_token)
    if name in ("chat", "chatglm3", "chatglm2"):
        # ChatGLM2/3 tokenizers converted by chatglm.py carry their own chat template.
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"template `{name}` needs the tokenizer's chat template, and this "
                              "tokenizer has none. Use template: seed, or a chat/instruct model.")
        return ChatTemplate(tokenizer=tokenizer, default_system=system_prompt)
    if name == "chatglm":
        from .chatglm import ChatGLMV1Template  # only for ChatGLM-6B v1 (remote code)

        return ChatGLMV1Template(eos_token=tokenizer.eos_token or "<eop>")
    raise ConfigError(f"template `{name}` is unknown; use one of {', '.join(TEMPLATE_NAMES)}.")


# --------------------------------------------------------------------------- encoding
@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]


def bos_prefix(tokenizer: Any, template: Template) -> list[int]:
    """Tokens the tokenizer puts before any text (BOS, ChatGLM's [gMASK]sop) for templates that
    build plain text; chat templates write their own."""
    if isinstance(template, ChatTemplate):
        return []
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    if with_special[-len(plain):] == plain:
        return list(with_special[: len(with_special) - len(plain)])
    return []


def encode_segments(segments: list[Segment], tokenizer: Any, prefix: list[int]) -> Encoded:
    texts = [t for t, _ in segments]
    ids_per_segment = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    input_ids = list(prefix)
    labels = [IGNORE_INDEX] * len(prefix)
    for (_, learn), ids in zip(segments, ids_per_segment):
        input_ids += ids
        labels += ids if learn else [IGNORE_INDEX] * len(ids)
    return Encoded(input_ids, labels)


def encode_prompt(record: dict[str, Any], tokenizer: Any, template: Template) -> list[int]:
    """Token ids of the prompt for the next answer (inference)."""
    segs = template.segments(record, add_generation_prompt=True)
    return encode_segments(segs, tokenizer, bos_prefix(tokenizer, template)).input_ids


@dataclass
class EncodeStats:
    total: int = 0
    kept: int = 0
    too_long: int = 0
    no_answer_tokens: int = 0
    prompt_tokens: int = 0
    answer_tokens: int = 0
    longest: int = 0

    def summary(self, max_length: int) -> str:
        msg = (f"{self.kept} of {self.total} samples kept; {self.answer_tokens} answer tokens "
               f"learned, {self.prompt_tokens} prompt tokens masked; longest {self.longest} tokens")
        if self.too_long:
            msg += (f"; {self.too_long} dropped for being longer than max_length={max_length} "
                    "(raise max_length to keep them)")
        return msg


def encode_records(records: list[dict[str, Any]], tokenizer: Any, template: Template,
                   max_length: int) -> tuple[list[Encoded], EncodeStats]:
    """Encode records; samples longer than max_length are dropped and counted, never cut.

    Why drop rather than truncate: cutting the end removes the EOS (the model then never learns
    to stop on such samples) and cutting the start can remove the question the answer refers to.
    """
    prefix = bos_prefix(tokenizer, template)
    stats = EncodeStats(total=len(records))
    out: list[Encoded] = []
    for rec in records:
        enc = encode_segments(template.segments(rec), tokenizer, prefix)
        n = len(enc.input_ids)
        stats.longest = max(stats.longest, n)
        n_learn = sum(1 for x in enc.labels if x != IGNORE_INDEX)
        if n > max_length:
            stats.too_long += 1
            continue
        if n_learn == 0:
            stats.no_answer_tokens += 1
            continue
        stats.kept += 1
        stats.answer_tokens += n_learn
        stats.prompt_tokens += n - n_learn
        out.append(enc)
    return out, stats


def tokenize(dataset: Any, tokenizer: Any, template: str | Template = "auto",
             max_length: int = 768, system_prompt: str | None = None):
    """The seed's `tokenize(dataset, tokenizer)`, done right.

    Takes a `datasets.Dataset` (or list of dicts) in alpaca / messages / ShareGPT form and returns
    a Dataset with `input_ids` and `labels` (prompt tokens -100, answer + EOS learned). Unlike the
    seed it does not pad to max_length: the collator pads each batch to its longest sample.
    """
    from datasets import Dataset

    from .data import records_from_rows

    rows = list(dataset) if not isinstance(dataset, list) else dataset
    records = records_from_rows(rows, source="dataset")
    tmpl = get_template(template, tokenizer, system_prompt) if isinstance(template, str) \
        else template
    encoded, stats = encode_records(records, tokenizer, tmpl, max_length)
    log.info("tokenize: %s", stats.summary(max_length))
    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded],
                              "labels": [e.labels for e in encoded]})
