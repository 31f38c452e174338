"""The tokenizer as GGUF metadata: llama.cpp's `tokenizer.ggml.*` keys for a byte-level BPE
vocabulary (GPT-2, Qwen2/3, Llama 3, SmolLM2 style), written the way llama.cpp's
convert_hf_to_gguf.py writes them.

llama.cpp does not run the Hugging Face pre-tokenizer; it picks a built-in one by name
(`tokenizer.ggml.pre`). The name is chosen here from the structure of the fast tokenizer's
pre-tokenizer (the split regex and digit handling), not guessed; a pre-tokenizer we cannot
name is refused with the list of the ones we can, since a wrong name silently tokenises
differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    from gguf import GGUFWriter
    from transformers import PreTrainedTokenizerBase

# The split regexes of the byte-level BPE tokenizers llama.cpp knows (its llama-vocab.cpp has
# the same expressions for these `tokenizer.ggml.pre` names).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE = {
    "gpt-2": "ByteLevel with GPT-2's regex",
    "qwen2": "Split(Qwen2 regex) + ByteLevel (Qwen2, Qwen2.5, Qwen3)",
    "llama-bpe": "Split(Llama 3 regex) + ByteLevel (Llama 3.x)",
    "smollm": "Digits(individual) + ByteLevel with GPT-2's regex (SmolLM, SmolLM2)",
}

# gguf.TokenType values (constants kept here so this module imports without gguf).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED = 1, 2, 3, 4, 5


@dataclass
class TokenizerMeta:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int] = field(default_factory=dict)
    """bos, eos, unk, pad, eot -> id (only those the tokenizer has)."""
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def write(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        writer.add_token_merges(self.merges)
        setters = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
            "eot": writer.add_eot_token_id,
        }
        for name, tid in self.special_ids.items():
            setters[name](tid)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _tokenizer_json(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(
            f"{type(tokenizer).__name__} is a slow (Python) tokenizer; GGUF export needs a fast "
            "tokenizer (tokenizer.json). Byte-level BPE tokenizers (Llama 3, Qwen2/3, SmolLM2) have one."
        )
    return json.loads(backend.to_str())


def _regex(node: dict[str, Any]) -> str | None:
    pattern = node.get("pattern") or {}
    return pattern.get("Regex") if isinstance(pattern, dict) else None


def pre_tokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or a ModelError listing the ones
    export can name."""
    data = _tokenizer_json(tokenizer)
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    norm = data.get("normalizer")
    found = None
    if model.get("type") == "BPE" and not model.get("byte_fallback"):
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        kinds = [s.get("type") for s in steps]
        if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
            found = "gpt-2"
        elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
            found = {QWEN2_SPLIT: "qwen2", LLAMA3_SPLIT: "llama-bpe"}.get(_regex(steps[0]) or "")
            if steps[0].get("behavior") != "Isolated" or steps[0].get("invert"):
                found = None
        elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
            found = "smollm"
    if found is not None and norm not in (None, {"type": "NFC"}):
        found = None  # llama.cpp applies no normalizer (NFC is a no-op on ordinary text)
    if found is None:
        what = f"model {model.get('type')}, pre-tokenizer {json.dumps(pre)[:200]}, normalizer {json.dumps(norm)[:80]}"
        raise ModelError(
            f"GGUF export cannot name this tokenizer's pre-tokenizer for llama.cpp ({what}). "
            "Supported: byte-level BPE tokenizers with "
            + "; ".join(f"{k} ({v})" for k, v in SUPPORTED_PRE.items())
            + ". SentencePiece tokenizers (Llama 2, ChatGLM) are not supported by export yet."
        )
    return found


def _adds(tokenizer: PreTrainedTokenizerBase, token_id: int | None, first: bool) -> bool:
    """Does encoding text add `token_id` at the start (first) / end of the ids?"""
    if token_id is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) <= len(without):
        return False
    return (with_special[0] if first else with_special[-1]) == token_id


def tokenizer_metadata(
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    *,
    eot_token: str | None = None,
    chat_template: str | None = None,
) -> TokenizerMeta:
    """Tokens, types, merges and special ids for a model whose embedding has `vocab_size` rows
    (rows beyond the tokenizer's vocabulary become `[PADn]` tokens of type UNUSED, as
    convert_hf_to_gguf writes them)."""
    pre = pre_tokenizer_name(tokenizer)
    data = _tokenizer_json(tokenizer)
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ModelError(
            f"the tokenizer has {len(vocab)} tokens (largest id {max(vocab.values())}) but the model's "
            f"embedding has {vocab_size} rows; the tokenizer does not belong to this model."
        )
    by_id = {i: t for t, i in vocab.items()}
    added = {a["content"]: a for a in data.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif tok in added:
            tokens.append(tok)
            types.append(CONTROL if added[tok].get("special") else USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(NORMAL)
    raw = (data.get("model") or {}).get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw]
    ids: dict[str, int] = {}
    for name in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if tid is not None:
            ids[name] = int(tid)
    if eot_token is not None and eot_token in vocab:
        ids["eot"] = int(vocab[eot_token])
    return TokenizerMeta(
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=pre,
        special_ids=ids,
        add_bos=_adds(tokenizer, ids.get("bos"), first=True),
        add_eos=_adds(tokenizer, ids.get("eos"), first=False),
        chat_template=chat_template,
    )


__all__ = ["SUPPORTED_PRE", "TokenizerMeta", "pre_tokenizer_name", "tokenizer_metadata"]
