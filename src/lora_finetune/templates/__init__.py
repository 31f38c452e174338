"""Templates: how a conversation becomes tokens, and which tokens the model learns.

- `qa`:    问：{instruction}\\n补充信息：{input}\\n答：{output}<eos>  (plain text, qa.py; `seed` is
           its old name, still accepted)
- `chat`:  the tokenizer's own chat template (chat.py); `chatglm2` / `chatglm3` are the same with
           the templates written into converted ChatGLM tokenizers (chatglm.py)
- `chatglm`: ChatGLM-6B v1's [Round N] format (chatglm.py)
- `auto`:  resolved once per run: the model family's choice if it has one (models/families.py),
           else `chat` when the tokenizer has a chat template, else `qa`. The resolved name is
           stored in the run record, and later commands use that.

base.py holds the `Template` protocol, registry.py maps names to templates, encode.py turns
segments into ids and labels; pairs.py encodes preference pairs and KTO answers with the same
templates, text.py raw documents for continued pretraining.
"""

from __future__ import annotations

from .base import IGNORE_INDEX, Segment, Template, user_text
from .by_kind import encode_kind, row_length
from .chat import ChatTemplate
from .chatglm import ChatGLMV1Template
from .encode import Encoded, EncodeStats, bos_prefix, encode_prompt, encode_records, encode_segments, tokenize
from .pairs import encode_answer, encode_labelled, encode_pairs
from .qa import QATemplate, format_sample, qa_prompt
from .registry import TEMPLATE_NAMES, get_template, resolve_template_name
from .text import encode_documents

__all__ = [
    "IGNORE_INDEX",
    "TEMPLATE_NAMES",
    "ChatGLMV1Template",
    "ChatTemplate",
    "EncodeStats",
    "Encoded",
    "QATemplate",
    "Segment",
    "Template",
    "bos_prefix",
    "encode_answer",
    "encode_documents",
    "encode_kind",
    "encode_labelled",
    "encode_pairs",
    "encode_prompt",
    "encode_records",
    "encode_segments",
    "format_sample",
    "get_template",
    "qa_prompt",
    "resolve_template_name",
    "row_length",
    "tokenize",
    "user_text",
]
