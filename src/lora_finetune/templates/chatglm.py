"""ChatGLM prompt formats.

- ChatGLM2 and ChatGLM3: jinja chat templates, put into the fast tokenizer built for a converted
  checkpoint (models/chatglm/tokenizer.py) and then used like any chat template (`chat`).
- ChatGLM-6B (v1): `ChatGLMV1Template`, its own `[Round N]\\n问：...\\n答：` format, for the model
  that still runs through its remote code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ModelError
from .base import Segment, refuse_tools, user_text

# Both templates are prefix-stable: rendering the first k messages (with the generation prompt
# when the next message is an answer) gives a prefix of rendering them all, which is what lets
# templates/chat.py cut a conversation into prompt and answer segments. Neither writes the eos after an
# answer; the training code appends the tokenizer's eos (</s>) to each learned answer, as the
# official fine-tuning scripts do.
#
# ChatGLM3: build_single_message() encodes "<|role|>", then f"{metadata}\n", then the content, each
# with its own SentencePiece dummy prefix. The fast tokenizer gives every text run between special
# tokens a dummy prefix too, so rendering "\n " before the content reproduces the separate encodes
# (the chatglm3-6b repository published the same "\n " template).
# Tools (OpenAI form, as data/formats.py normalises them) are written ChatGLM3's way: a system
# turn listing them (after the system prompt, or with ChatGLM3's own tool prompt), the assistant's
# call as `<|assistant|>NAME` + a ```python tool_call(...)``` block (before any text, so the call is
# part of the learned answer), the result as `<|observation|>`.
CHATGLM3_CHAT_TEMPLATE = (
    "{{- '[gMASK]sop' -}}"
    "{%- set has_tools = tools is defined and tools -%}"
    "{%- if has_tools and (not messages or messages[0]['role'] != 'system') -%}"
    "{{- '<|system|>\\n Answer the following questions as best as you can. You have access to the following"
    " tools:\\n' ~ (tools | map(attribute='function') | list | tojson(indent=4)) -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set role = 'observation' if message['role'] == 'tool' else message['role'] -%}"
    "{%- if role not in ['system', 'user', 'assistant', 'observation'] -%}"
    "{{- raise_exception('ChatGLM3 knows the roles system, user, assistant and observation, not '"
    " ~ message['role']) -}}"
    "{%- endif -%}"
    "{%- set content = message['content'] if message['content'] else '' -%}"
    "{%- if role == 'system' and message['tools'] is defined and message['tools'] -%}"
    "{%- set content = content ~ '\\n' ~ (message['tools'] | tojson(indent=4)) -%}"
    "{%- elif role == 'system' and loop.first and has_tools -%}"
    "{%- set content = content ~ '\\n' ~ (tools | map(attribute='function') | list | tojson(indent=4)) -%}"
    "{%- endif -%}"
    "{%- set metadata = message['metadata'] if message['metadata'] is defined and message['metadata'] else '' -%}"
    "{%- if role == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- set call = message['tool_calls'][0]['function'] -%}"
    "{%- set ns = namespace(args='') -%}"
    "{%- for key, value in call['arguments'].items() -%}"
    "{%- set ns.args = ns.args ~ (', ' if ns.args else '') ~ key ~ '=' ~ (value | tojson) -%}"
    "{%- endfor -%}"
    "{%- set metadata = call['name'] -%}"
    "{%- set content = '```python\\ntool_call(' ~ ns.args ~ ')\\n```' ~ content -%}"
    "{%- endif -%}"
    "{{- '<|' ~ role ~ '|>' ~ metadata ~ '\\n' -}}"
    "{%- if content -%}{{- ' ' ~ content -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

# ChatGLM2: exactly tokenizer.build_prompt()'s rounds, numbered from 1, after the [gMASK]sop
# prefix; the generation prompt is the round's trailing "答：" itself. The "\n\n" between an
# answer and the next round is written with the next round, so a finished conversation ends with
# the answer (the official ptuning script follows it with eos only).
CHATGLM2_CHAT_TEMPLATE = (
    "{{- '[gMASK]sop' -}}"
    "{%- set ns = namespace(round=0) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if ns.round > 0 -%}{{- '\\n\\n' -}}{%- endif -%}"
    "{%- set ns.round = ns.round + 1 -%}"
    "{{- '[Round ' ~ ns.round ~ ']\\n\\n问：' ~ message['content'] ~ '\\n\\n答：' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{{- raise_exception('ChatGLM2 has only user and assistant turns, not ' ~ message['role']"
    " ~ '; put a system prompt into the first user message') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def chat_template(version: str) -> str:
    """The jinja chat template for "chatglm2" or "chatglm3"."""
    templates = {"chatglm2": CHATGLM2_CHAT_TEMPLATE, "chatglm3": CHATGLM3_CHAT_TEMPLATE}
    if version not in templates:
        raise ModelError(
            f"There is no chat template for {version!r}; ChatGLM2 and ChatGLM3 have one, ChatGLM-6B "
            "v1 uses chatglm_v1_prompt(), GLM-4 ships its own template in its -hf repository."
        )
    return templates[version]


def chatglm_v1_prompt(history: list[tuple[str, str]], query: str) -> str:
    """ChatGLM-6B v1's chat prompt, as its `chat()` builds it.

    With no history the prompt is the bare query; otherwise rounds are numbered from 0 with single
    newlines: "[Round 0]\\n问：q\\n答：a\\n...[Round N]\\n问：query\\n答：".
    """
    if not history:
        return query
    rounds = "".join(f"[Round {i}]\n问：{q}\n答：{a}\n" for i, (q, a) in enumerate(history))
    return f"{rounds}[Round {len(history)}]\n问：{query}\n答："


@dataclass
class ChatGLMV1Template:
    """ChatGLM-6B v1 as a template: (text, learn) segments of a record.

    v1's fine-tuning script trains one answer per sample: earlier rounds are prompt text in
    `chatglm_v1_prompt` form, and the tokens are prompt + [gMASK] <sop> + answer + <eop> (v1
    puts its [gMASK] <sop> after the prompt, not in front). So only the last answer is learned,
    together with the <sop> that opens it and the eos that closes it. v1 has no system role: a
    system prompt is put in front of the first question.
    """

    eos_token: str = "<eop>"
    name: str = "chatglm"
    gmask_token: str = "[gMASK]"
    sop_token: str = "<sop>"

    @property
    def stop_tokens(self) -> tuple[str, ...]:
        return (self.eos_token,)

    def segments(self, record: dict[str, Any], add_generation_prompt: bool = False) -> list[Segment]:
        refuse_tools(record, self.name)
        pairs, query, answer = self._rounds(record, add_generation_prompt)
        prompt = chatglm_v1_prompt(pairs, query) + self.gmask_token
        if answer is None:
            return [(prompt + self.sop_token, False)]
        return [(prompt, False), (self.sop_token + answer + self.eos_token, True)]

    def _rounds(
        self, record: dict[str, Any], add_generation_prompt: bool
    ) -> tuple[list[tuple[str, str]], str, str | None]:
        messages = list(record["messages"])
        answer = None
        if messages and messages[-1]["role"] == "assistant" and not add_generation_prompt:
            answer = messages.pop()["content"]
        if not messages or messages[-1]["role"] != "user":
            raise ModelError(
                "A ChatGLM-6B prompt must end with a user turn (the question to answer), but this "
                "record ends with an assistant turn. Drop the trailing answer to build a prompt."
            )
        questions = [user_text(m) for m in messages if m["role"] == "user"]
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        if record.get("system"):
            questions[0] = f"{record['system']}\n{questions[0]}"
        return list(zip(questions[:-1], replies)), questions[-1], answer
