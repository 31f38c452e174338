"""The tokenizer as GGUF metadata: llama.cpp's `tokenizer.ggml.*` keys for a byte-level BPE
vocabulary (GPT-2, Qwen2/3, Llama 3, SmolLM2 style), or for the SentencePiece BPE vocabulary of
a converted ChatGLM2/3 (llama.cpp's `llama` tokenizer model, for the `chatglm` architecture
only), written the way llama.cpp's convert_hf_to_gguf.py writes them.

llama.cpp does not run the Hugging Face pre-tokenizer; it picks a built-in one by name
(`tokenizer.ggml.pre`). The name is chosen here from the structure of the fast tokenizer's
pre-tokenizer (the split regex and digit handling), not guessed; a pre-tokenizer we cannot
name is refused with the list of the ones we can, since a wrong name silently tokenises
differently.
"""

from __future__ import annotations

import json
import re
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

SENTENCEPIECE_PRE = {"chatglm": "chatglm-spm"}
"""Architectures whose GGUF may carry a SentencePiece (`llama` tokenizer model) vocabulary, and
the `tokenizer.ggml.pre` llama.cpp's converter writes for it (llama.cpp ignores it for SentencePiece)."""
SENTENCEPIECE_ADVICE = (
    "SentencePiece tokenizers are exported only for converted ChatGLM2/3 (llama.cpp `chatglm`); "
    "Llama 2 style tokenizers are not supported by export yet."
)

# gguf.TokenType values (constants kept here so this module imports without gguf).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")


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
    model: str = "gpt2"
    """llama.cpp's tokenizer model: `gpt2` (byte-level BPE, merges) or `llama` (SentencePiece,
    scores)."""
    scores: list[float] | None = None
    add_space_prefix: bool | None = None

    def write(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        if self.model == "gpt2":
            writer.add_token_merges(self.merges)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
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


def _special_ids(tokenizer: Any, vocab: dict[str, int], eot_token: str | None) -> dict[str, int]:
    """bos/eos/unk/pad ids the tokenizer has, and the end-of-turn token's when it is in the vocab."""
    ids: dict[str, int] = {}
    for name in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{name}_token_id", None)
        if tid is not None:
            ids[name] = int(tid)
    if eot_token is not None and eot_token in vocab:
        ids["eot"] = int(vocab[eot_token])
    return ids


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


def _sentencepiece_layout(data: dict[str, Any]) -> bool | None:
    """For a SentencePiece BPE tokenizer as models/chatglm/tokenizer.py builds it (no
    pre-tokenizer; a normalizer that only prepends and escapes spaces with U+2581): whether it
    prepends the space (llama.cpp's add_space_prefix). None for anything else."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or data.get("pre_tokenizer") is not None:
        return None
    norm = data.get("normalizer") or {}
    steps = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    prepend = {"type": "Prepend", "prepend": "\u2581"}
    escape = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    if steps == [prepend, escape]:
        return True
    if steps == [escape]:
        return False
    return None


def _sentencepiece_refusal(data: dict[str, Any]) -> str | None:
    """Why llama.cpp's SentencePiece tokenizer would not split like this tokenizer (None if it would)."""
    model = data.get("model") or {}
    if model.get("type") == "Unigram":
        return (
            "it is a unigram SentencePiece model; llama.cpp's `llama` tokenizer merges pieces by score "
            "(SentencePiece BPE) and would split text differently"
        )
    if _sentencepiece_layout(data) is None:
        norm = json.dumps(data.get("normalizer"))[:200]
        return (
            f"its normalizer ({norm}) does more than prepend and escape spaces (e.g. NFKC rules or "
            "removing extra whitespace), which llama.cpp's SentencePiece tokenizer does not do"
        )
    return None


def pre_tokenizer_name(tokenizer: PreTrainedTokenizerBase, arch: str | None = None) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or a ModelError listing the ones
    export can name. For an architecture in SENTENCEPIECE_PRE (ChatGLM), a SentencePiece BPE
    tokenizer is accepted too."""
    data = _tokenizer_json(tokenizer)
    if arch in SENTENCEPIECE_PRE:
        if _sentencepiece_layout(data) is not None:
            return SENTENCEPIECE_PRE[arch]
        if (data.get("model") or {}).get("type") == "Unigram" or data.get("pre_tokenizer") is None:
            raise ModelError(
                f"GGUF export cannot write this tokenizer for llama.cpp's `{arch}`: {_sentencepiece_refusal(data)}. "
                "Use `lora-finetune merge` for a transformers folder."
            )
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
            + ". "
            + SENTENCEPIECE_ADVICE
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
    arch: str | None = None,
) -> TokenizerMeta:
    """Tokens, types, merges and special ids for a model whose embedding has `vocab_size` rows
    (rows beyond the tokenizer's vocabulary become `[PADn]` tokens of type UNUSED, as
    convert_hf_to_gguf writes them)."""
    pre = pre_tokenizer_name(tokenizer, arch)
    data = _tokenizer_json(tokenizer)
    if arch in SENTENCEPIECE_PRE and pre == SENTENCEPIECE_PRE[arch]:
        return _sentencepiece_metadata(tokenizer, data, vocab_size, pre, eot_token, chat_template)
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
    ids = _special_ids(tokenizer, vocab, eot_token)
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


def _merge_scores(merges: list[str], vocab: dict[str, int]) -> dict[str, float]:
    """SentencePiece-style scores from the fast tokenizer's BPE merges. llama.cpp's `llama`
    tokenizer repeatedly joins the adjacent pair whose joined piece scores highest; the fast
    tokenizer applies the merge of lowest rank. A piece scores minus the rank of the first merge
    that makes it, so both pick the same pair. Pieces no merge makes score below every other."""
    scores: dict[str, float] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1)
        scores.setdefault(left + right, -float(rank))
    floor = -float(len(merges))
    for piece, i in vocab.items():
        scores.setdefault(piece, floor - i)
    return scores


def _sentencepiece_metadata(
    tokenizer: PreTrainedTokenizerBase,
    data: dict[str, Any],
    vocab_size: int,
    pre: str,
    eot_token: str | None,
    chat_template: str | None,
) -> TokenizerMeta:
    """A SentencePiece BPE vocabulary (converted ChatGLM2/3) as llama.cpp's `llama` tokenizer
    model: pieces with U+2581 for spaces, scores, and types (the unknown piece, control tokens,
    `<0xXX>` byte pieces when the model falls back to bytes)."""
    model = data.get("model") or {}
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size or max(vocab.values()) >= vocab_size:
        raise ModelError(
            f"the tokenizer has {len(vocab)} tokens (largest id {max(vocab.values())}) but the model's "
            f"embedding has {vocab_size} rows; the tokenizer does not belong to this model."
        )
    raw = model.get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw]
    scores = _merge_scores(merges, vocab)
    by_id = {i: t for t, i in vocab.items()}
    added = {a["content"]: a for a in data.get("added_tokens", [])}
    byte_fallback = bool(model.get("byte_fallback"))
    tokens, types, values = [], [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            values.append(0.0)
            continue
        if tok == tokenizer.unk_token:
            kind = UNKNOWN
        elif tok in added:
            kind = CONTROL if added[tok].get("special") else USER_DEFINED
        elif byte_fallback and _BYTE_PIECE.match(tok):
            kind = BYTE
        else:
            kind = NORMAL
        tokens.append(tok)
        types.append(kind)
        values.append(scores[tok] if kind in (NORMAL, USER_DEFINED) else 0.0)
    ids = _special_ids(tokenizer, vocab, eot_token)
    return TokenizerMeta(
        tokens=tokens,
        token_types=types,
        merges=[],
        pre=pre,
        special_ids=ids,
        # ChatGLM's [gMASK] sop prefix is two tokens, which llama.cpp cannot add by itself: the
        # chat template writes it, as in llama.cpp's own ChatGLM3 files.
        add_bos=_adds(tokenizer, ids.get("bos"), first=True),
        add_eos=_adds(tokenizer, ids.get("eos"), first=False),
        chat_template=chat_template,
        model="llama",
        scores=values,
        add_space_prefix=_sentencepiece_layout(data),
    )


__all__ = ["SENTENCEPIECE_PRE", "SUPPORTED_PRE", "TokenizerMeta", "pre_tokenizer_name", "tokenizer_metadata"]
