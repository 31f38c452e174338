"""Using a trained adapter: load it from its folder alone, and generate.

`load_for_inference(adapter_dir)` opens the folder (run_record.open_adapter), reads from its run
record the base model, template, dtype and quantisation the adapter was trained with (each can
be overridden), loads the base, attaches the adapter and returns an `InferenceModel`.
`generate(...)` runs batched, left-padded generation that stops at EOS and at the template's
stop tokens; `stream_ids(...)` does one prompt and hands text to a callback as it is generated
(the chat). files.py answers whole data files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import PadCollator
from ..errors import DataError, ModelError
from ..models import attach_adapter, load_model, load_tokenizer, resolve_model, template_for
from ..run_record import RunRecord, open_adapter
from ..templates import Template, encode_prompt

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class InferenceModel:
    model: PreTrainedModel | PeftModel
    """The base model, or peft's PeftModel around it when the adapter is applied."""
    tokenizer: PreTrainedTokenizerBase
    template: Template
    stop_token_ids: list[int]
    base_model: str
    adapter_dir: Path | None
    quantization: str = "none"
    record: RunRecord | None = None
    """The adapter's run record (None without an adapter, or for another tool's adapter)."""
    has_adapter: bool = False
    """True when `model` is a PeftModel carrying the adapter (False for --base-only)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def context_length(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
            val = getattr(cfg, key, None)
            if isinstance(val, int) and val > 0:
                return val
        return None


# --------------------------------------------------------------------------- stop tokens
def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, template: Template | None = None
) -> list[int]:
    """What generation stops on: the EOS ids of the tokenizer and the generation config, and
    the template's stop tokens (the token its answers end with and the family's end-of-turn
    tokens)."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for token in template.stop_tokens if template is not None else ():
        if token in vocab:
            ids.append(vocab[token])
    return sorted({int(i) for i in ids})


# --------------------------------------------------------------------------- loading


def load_for_inference(
    adapter_dir: str | Path | None = None,
    *,
    base_model: str | None = None,
    base_only: bool = False,
    template: str | None = None,
    dtype: str | None = None,
    quantization: str | None = None,
    trust_remote_code: bool | None = None,
    device: str | None = None,
    cache_dir: Path | None = None,
) -> InferenceModel:
    """Base model + adapter, configured from the adapter folder's run_config.yaml.

    `base_only=True` loads the same base, template and settings without the adapter (to compare).
    A 4-bit/8-bit run loads its base quantised again where bitsandbytes runs (CUDA, or the CPU
    with a recent bitsandbytes), and in full precision elsewhere (with a warning).
    """
    folder = open_adapter(adapter_dir) if adapter_dir is not None else None
    record = folder.record if folder is not None else None
    if folder is None and not base_model:
        raise ModelError(
            "Nothing to load: pass an adapter folder, or --base_model NAME_OR_PATH to use a base model alone."
        )
    name = folder.base_to_load(base_model) if folder is not None else str(base_model)
    cfg = record.config if record is not None else None
    trc = trust_remote_code if trust_remote_code is not None else bool(cfg is not None and cfg.trust_remote_code)
    cache = cache_dir or (cfg.cache_dir if cfg is not None else None)
    path = resolve_model(name, cache)
    tokenizer = load_tokenizer(
        str(folder.path) if folder is not None and folder.has_tokenizer else path, trc, padding_side="left"
    )
    loaded = load_model(
        path,
        dtype=dtype or (cfg.dtype if cfg is not None else "auto"),
        quantization=quantization or (record.quantization if record else "none"),
        trust_remote_code=trc,
        for_training=False,
    )
    model = loaded.model
    with_adapter = folder is not None and not base_only
    if with_adapter:
        # Both LoRA backends save peft's adapter format, so peft loads either.
        trained_on = record.resolved.base_model or record.config.model_name if record is not None else None
        model = attach_adapter(model, folder.path, trained_on=trained_on, given=name)
    if loaded.quantization == "none":
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    tmpl, stops = template_and_stops(record, tokenizer, model, template)
    return InferenceModel(
        model,
        tokenizer,
        tmpl,
        stops,
        base_model=name,
        adapter_dir=folder.path if folder else None,
        quantization=loaded.quantization,
        record=record,
        has_adapter=with_adapter,
    )


def template_and_stops(
    record: RunRecord | None, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, override: str | None = None
) -> tuple[Template, list[int]]:
    """The template the adapter was trained with (resolved at training and stored in the run
    record; `override` replaces it) and the stop ids that go with it."""
    model_type = (record.resolved.model_type if record else None) or getattr(
        getattr(model, "config", None), "model_type", None
    )
    name = override or (record.template if record else "auto")
    system = record.config.system_prompt if record else None
    tmpl = template_for(name, tokenizer, model_type, system)
    return tmpl, stop_token_ids(tokenizer, model, tmpl)


# --------------------------------------------------------------------------- prompts
def prompt_record(record: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the record to prompt with, the reference answer or None).

    A record that ends with an assistant turn is a sample with its answer: the answer is
    dropped from the prompt and returned as the reference, so generation answers the last user
    turn with the earlier turns as history.
    """
    messages = list(record.get("messages") or [])
    reference = None
    if messages and messages[-1]["role"] == "assistant":
        reference = messages.pop()["content"]
    if not messages or messages[-1]["role"] != "user":
        where = record.get("source", "a record")
        raise DataError(
            f"{where}: has no user turn to answer. Each record needs a question "
            "(alpaca `instruction`, or a `user` message last or before the final "
            "answer)."
        )
    return {**record, "messages": messages}, reference


def _gen_kwargs(
    im: InferenceModel, max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float
) -> dict[str, Any]:
    if max_new_tokens <= 0:
        raise ModelError(f"max_new_tokens={max_new_tokens}: must be a positive number of tokens.")
    kw: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": im.stop_token_ids,
        "pad_token_id": im.tokenizer.pad_token_id,
        "repetition_penalty": repetition_penalty,
    }
    if temperature and temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def _finish(im: InferenceModel, row: list[int]) -> dict[str, Any]:
    stops = set(im.stop_token_ids)
    cut = next((i for i, t in enumerate(row) if t in stops), None)
    body = row if cut is None else row[:cut]
    # A trailing U+FFFD is the start of a character the answer never finished (cut at
    # max_new_tokens, or a stop token in the middle of a multi-byte sequence): never text.
    text = im.tokenizer.decode(body, skip_special_tokens=True).rstrip("\ufffd")
    return {"text": text.strip(), "tokens": len(body), "stopped": cut is not None}


# --------------------------------------------------------------------------- generation
@torch.inference_mode()
def generate(
    im: InferenceModel,
    records: Iterable[dict[str, Any]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    batch_size: int = 8,
    progress: Callable[[int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Answer each record's last user turn (a record that ends with its answer has the answer
    dropped first). Returns, in input order, dicts with `text`, `tokens` and `stopped` (True
    when generation ended on a stop token rather than at max_new_tokens).

    Prompts are sorted by length before batching so each left-padded batch wastes little.
    `progress(n)` is called after each batch with the number of records it finished.
    """
    records = list(records)
    if batch_size <= 0:
        raise ModelError(f"batch_size={batch_size}: must be a positive integer.")
    prompts = [encode_prompt(prompt_record(r)[0], im.tokenizer, im.template) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    collate = PadCollator(im.tokenizer.pad_token_id, padding_side="left")
    device = im.device
    kw = _gen_kwargs(im, max_new_tokens, temperature, top_p, repetition_penalty)
    out: list[dict[str, Any] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([{"input_ids": prompts[i]} for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        seqs = im.model.generate(**batch, **kw)
        for i, row in zip(idx, seqs[:, batch["input_ids"].shape[1] :].tolist()):
            out[i] = _finish(im, row)
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]


def _callback_streamer(tokenizer: PreTrainedTokenizerBase, on_text: Callable[[str], Any]) -> Any:
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        """TextStreamer that hands text to a callback instead of printing it. It runs inside
        `generate` (no thread), so errors and Ctrl-C surface where generate was called."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if stream_end:  # what `_finish` drops from the answer is not streamed either
                text = text.rstrip("\ufffd")
            if text:
                on_text(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@torch.inference_mode()
def stream_ids(
    im: InferenceModel,
    prompt_ids: list[int],
    *,
    on_text: Callable[[str], Any] | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
) -> dict[str, Any]:
    """Generate from one tokenised prompt, passing decoded text to `on_text` as it arrives.
    Returns `text` (the whole answer, up to the first stop token), `tokens`, `stopped`."""
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=im.device)
    kw = _gen_kwargs(im, max_new_tokens, temperature, top_p, repetition_penalty)
    if on_text is not None:
        kw["streamer"] = _callback_streamer(im.tokenizer, on_text)
    seqs = im.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    return _finish(im, seqs[0, ids.shape[1] :].tolist())


def stream_reply(
    im: InferenceModel, record: dict[str, Any], *, on_text: Callable[[str], Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """`stream_ids` for a record (its last user turn is answered)."""
    prompt = encode_prompt(prompt_record(record)[0], im.tokenizer, im.template)
    return stream_ids(im, prompt, on_text=on_text, **kw)


def answer(im: InferenceModel, question: str, input_text: str = "", **kw: Any) -> str:
    """One question in, one answer out (convenience for scripts and the demo)."""
    rec = {"system": None, "messages": [{"role": "user", "content": question, "input": input_text}]}
    return generate(im, [rec], **kw)[0]["text"]


__all__ = [
    "InferenceModel",
    "answer",
    "generate",
    "load_for_inference",
    "prompt_record",
    "stop_token_ids",
    "stream_ids",
    "stream_reply",
    "template_and_stops",
]
