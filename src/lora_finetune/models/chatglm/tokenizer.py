"""A fast tokenizer for ChatGLM2/3, built from its SentencePiece model with the original ids,
special tokens and chat templates (no remote code)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelError, listing
from ...templates.chatglm import chat_template
from .sentencepiece import (
    _BPE,
    _CONTROL,
    _NORMAL,
    _UNIGRAM,
    _UNKNOWN,
    _USER_DEFINED,
    _read_sentencepiece,
    _SentencePiece,
)
from .version import ChatGLMVersion, _read_json, chatglm_version

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)

# The special tokens ChatGLM's SPTokenizer appends after the SentencePiece vocabulary, in its order:
# the ids are n, n+1, ... where n is the SentencePiece vocabulary size.
CHATGLM2_SPECIAL_TOKENS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
CHATGLM3_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
CHATGLM3_SPECIAL_TOKENS = CHATGLM2_SPECIAL_TOKENS + CHATGLM3_ROLE_TOKENS


def convert_chatglm_tokenizer(
    src_folder: str | os.PathLike[str], dst_folder: str | os.PathLike[str], *, version: ChatGLMVersion | None = None
) -> Path:
    """Write a fast tokenizer for ChatGLM2/3 built from `src_folder/tokenizer.model` into `dst_folder`.

    Ordinary text gets the SentencePiece model's ids; the ChatGLM special tokens follow the
    SentencePiece vocabulary in the original order; eos is </s>, pad is <unk> (id 0, as the original
    pads with unk_id), padding is on the left, and `tokenizer(text)` prepends [gMASK] sop like the
    original `build_inputs_with_special_tokens`.
    """
    src, dst = Path(src_folder), Path(dst_folder)
    version = version or chatglm_version(src)
    if version not in ("chatglm2", "chatglm3"):
        raise ModelError(
            f"{src} is {version}: only ChatGLM2/3's SentencePiece tokenizer is converted here. "
            "ChatGLM-6B v1 needs its remote tokenizer; GLM-4 uses tiktoken, so use the "
            "THUDM/glm-4-*-hf repository, whose tokenizer transformers loads natively."
        )
    model_file = src / "tokenizer.model"
    if not model_file.is_file():
        raise ModelError(f"{model_file} does not exist; copy ChatGLM's SentencePiece tokenizer.model there.")
    sp = _read_sentencepiece(model_file)
    specials = CHATGLM3_SPECIAL_TOKENS if version == "chatglm3" else CHATGLM2_SPECIAL_TOKENS
    fast = _fast_tokenizer(sp, specials, model_file)
    wrapper = _wrap(fast, sp, version, src)
    dst.mkdir(parents=True, exist_ok=True)
    wrapper.save_pretrained(dst)
    log.info(
        "wrote %s fast tokenizer to %s (%d SentencePiece pieces + %d special tokens)",
        version,
        dst,
        len(sp.pieces),
        len(specials),
    )
    return dst


def _check_tokenizer_support(sp: _SentencePiece, path: Path) -> None:
    if sp.model_type not in (_BPE, _UNIGRAM):
        raise ModelError(
            f"{path} is a SentencePiece model of type {sp.model_type} (word/char); only BPE and "
            "unigram models can be converted. Use the checkpoint's original tokenizer.model."
        )
    if sp.treat_whitespace_as_suffix:
        raise ModelError(
            f"{path} treats whitespace as a suffix, which ChatGLM's tokenizer never does; "
            "use the checkpoint's original tokenizer.model."
        )
    if not 0 <= sp.unk_id < len(sp.pieces) or not 0 <= sp.eos_id < len(sp.pieces):
        raise ModelError(
            f"{path} has no <unk> or </s> piece (unk_id {sp.unk_id}, eos_id {sp.eos_id}); "
            "ChatGLM's tokenizer.model has both. Use the original file."
        )


def _fast_tokenizer(sp: _SentencePiece, specials: list[str], path: Path) -> Tokenizer:
    from tokenizers import AddedToken, Tokenizer, decoders, processors

    _check_tokenizer_support(sp, path)
    user_defined = [p for p, _, t in sp.pieces if t == _USER_DEFINED]
    if user_defined:
        # SentencePiece matches these whole before segmenting; here they are ordinary pieces.
        log.warning(
            "%s has %d user-defined pieces (%s); text containing them may be split differently from SentencePiece",
            path,
            len(user_defined),
            listing(user_defined, 5),
        )
    tokenizer = Tokenizer(_tokenizer_model(sp))
    tokenizer.normalizer = _normalizer(sp)
    tokenizer.decoder = decoders.Sequence(_decoder_steps(sp, decoders))
    controls = [p for p, _, t in sp.pieces if t in (_CONTROL, _UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in controls])
    # "sop"/"eop" are plain letters: matched only as whole words, so "sophisticated" stays text.
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, single_word=t in ("sop", "eop")) for t in specials]
    )
    _check_special_ids(tokenizer, len(sp.pieces), specials, path)
    eos = sp.pieces[sp.eos_id][0]
    ids = {t: tokenizer.token_to_id(t) for t in ("[gMASK]", "sop", eos)}
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK] sop $A", pair=f"[gMASK] sop $A $B {eos}", special_tokens=list(ids.items())
    )
    return tokenizer


def _tokenizer_model(sp: _SentencePiece) -> Any:
    from tokenizers import models

    unk = sp.pieces[sp.unk_id][0]
    if sp.model_type == _UNIGRAM:
        return models.Unigram([(p, s) for p, s, _ in sp.pieces], unk_id=sp.unk_id, byte_fallback=sp.byte_fallback)
    vocab = {piece: i for i, (piece, _, _) in enumerate(sp.pieces)}
    return models.BPE(vocab, _bpe_merges(sp), unk_token=unk, fuse_unk=True, byte_fallback=sp.byte_fallback)


def _bpe_merges(sp: _SentencePiece) -> list[tuple[str, str]]:
    """Merges that replay SentencePiece BPE: it always joins the adjacent pair whose result has the
    highest score, so every split of a piece into two pieces is a merge ranked by that score."""
    mergeable = {p: (i, s) for i, (p, s, t) in enumerate(sp.pieces) if t in (_NORMAL, _USER_DEFINED)}
    ranked = []
    for piece, (pid, score) in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-score, pid, mergeable[left][0], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _normalizer(sp: _SentencePiece) -> Any:
    from tokenizers import Regex, normalizers

    steps: list[Any] = []
    if sp.precompiled_charsmap:
        steps.append(normalizers.Precompiled(sp.precompiled_charsmap))
    if sp.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    space = "▁" if sp.escape_whitespaces else " "
    if sp.add_dummy_prefix:
        # SentencePiece prefixes every encode() call; the fast tokenizer does so for every run of
        # text between special tokens, which is how the original's separate encodes line up.
        steps.append(normalizers.Prepend(space))
    if sp.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    return normalizers.Sequence(steps)


def _decoder_steps(sp: _SentencePiece, decoders: Any) -> list[Any]:
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if sp.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    return steps


def _check_special_ids(tokenizer: Tokenizer, n: int, specials: list[str], path: Path) -> None:
    got = {t: tokenizer.token_to_id(t) for t in specials}
    want = {t: n + i for i, t in enumerate(specials)}
    if got != want:
        raise ModelError(
            f"{path}: the ChatGLM special tokens would get ids {got} instead of {want}, because "
            "some of them already exist as SentencePiece pieces. This is not ChatGLM's tokenizer.model; "
            "use the original file."
        )


def _wrap(fast: Tokenizer, sp: _SentencePiece, version: str, src: Path) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    config_path = src / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    unk = sp.pieces[sp.unk_id][0]
    extra: dict[str, Any] = {}
    if isinstance(config.get("seq_length"), int):
        extra["model_max_length"] = config["seq_length"]
    return PreTrainedTokenizerFast(
        tokenizer_object=fast,
        unk_token=unk,
        pad_token=unk,  # the original pads with unk_id (0)
        eos_token=sp.pieces[sp.eos_id][0],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=chat_template(version),
        **extra,
    )
