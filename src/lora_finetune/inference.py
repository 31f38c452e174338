"""Using a trained adapter: load it from its folder alone, and generate.

`load_for_inference(adapter_dir)` reads `run_config.yaml` to find the base model, template,
dtype and quantisation the adapter was trained with (each can be overridden), loads the base,
attaches the adapter and returns an `InferenceModel`. `generate(...)` runs batched, left-padded
generation that stops at EOS and at the template's end-of-turn tokens; `stream_reply(...)` does
one prompt and hands text to a callback as it is generated (the chat); `generate_file(...)`
answers every record of a data file and writes the rows back with a `prediction` field.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .collate import PadCollator
from .errors import DataError, ModelError
from .io import verify_manifest
from .models import load_model, load_tokenizer, resolve_model
from .templates import Template, encode_prompt, get_template, resolve_template_name
from .train import read_run_config

log = logging.getLogger(__name__)

PREDICTION_FIELD = "prediction"


@dataclass
class InferenceModel:
    model: Any
    tokenizer: Any
    template: Template
    stop_token_ids: list[int]
    base_model: str
    adapter_dir: Path | None
    quantization: str = "none"
    run_config: dict[str, Any] = field(default_factory=dict)
    """The adapter's run_config.yaml (empty without an adapter)."""
    has_adapter: bool = False
    """True when `model` is a PeftModel carrying the adapter (False for --base-only)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def context_length(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        for key in ("max_position_embeddings", "n_positions", "seq_length",
                    "max_sequence_length"):
            val = getattr(cfg, key, None)
            if isinstance(val, int) and val > 0:
                return val
        return None


# --------------------------------------------------------------------------- stop tokens
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|user|>", "<|observation|>", "<eop>",
                "<|endoftext|>", "<end_of_turn>")


def stop_token_ids(tokenizer: Any, model: Any, template: Template | None = None) -> list[int]:
    """EOS ids from the tokenizer and generation config, common end-of-turn special tokens, and
    (given the template) the special token the template ends every learned answer with."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    specials = set(tokenizer.all_special_tokens or [])
    for tok in _END_OF_TURN:
        if tok in vocab and tok in specials and tok != tokenizer.unk_token:
            ids.append(vocab[tok])
    if template is not None:
        ids += template_stop_ids(tokenizer, template)
    return sorted({int(i) for i in ids})


def template_stop_ids(tokenizer: Any, template: Template) -> list[int]:
    """The special token that ends an answer in this template (what training taught the model
    to emit last), found by rendering a one-round conversation."""
    rec = {"system": None, "messages": [{"role": "user", "content": "hi", "input": ""},
                                        {"role": "assistant", "content": "ok", "input": ""}]}
    try:
        learned = [text for text, learn in template.segments(rec) if learn]
    except Exception as e:  # noqa: BLE001 - a template that cannot render this toy chat
        log.debug("template_stop_ids: %s", e)
        return []
    if not learned:
        return []
    ids = tokenizer(learned[-1], add_special_tokens=False)["input_ids"]
    if not ids:
        return []
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    special_ids |= set((tokenizer.get_added_vocab() or {}).values())
    return [int(ids[-1])] if ids[-1] in special_ids else []


# --------------------------------------------------------------------------- loading
def base_model_name(run: dict[str, Any], override: str | None) -> str | None:
    """The base to load: the override, else the folder the run trained on when it still exists,
    else the configured model_name (bundled alias, folder or hub id, resolved again)."""
    if override:
        return override
    resolved = run.get("resolved") or {}
    base = resolved.get("base_model")
    if base and Path(str(base)).is_dir():
        return str(base)
    return run.get("model_name") or base


def load_for_inference(adapter_dir: str | Path | None = None, *, base_model: str | None = None,
                       base_only: bool = False, template: str | None = None,
                       dtype: str | None = None, quantization: str | None = None,
                       trust_remote_code: bool | None = None, device: str | None = None,
                       cache_dir: Path | None = None) -> InferenceModel:
    """Base model + adapter, configured from the adapter folder's run_config.yaml.

    `base_only=True` loads the same base, template and settings without the adapter (to compare).
    A 4-bit/8-bit run loads its base quantised again where CUDA and bitsandbytes exist, and in
    full precision elsewhere (with a warning).
    """
    run: dict[str, Any] = {}
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelError(f"{adapter_dir} is not an adapter folder (no adapter_config.json). "
                             "Point --adapter at the output_dir of a training run.")
        verify_manifest(adapter_dir)
        run = read_run_config(adapter_dir)
    resolved = run.get("resolved") or {}
    name = base_model_name(run, base_model)
    if not name:
        raise ModelError("No base model: the adapter folder has no run_config.yaml. Pass "
                         "--base_model NAME_OR_PATH.")
    trc = trust_remote_code if trust_remote_code is not None else bool(
        run.get("trust_remote_code", False))
    cache = cache_dir or (Path(run["cache_dir"]) if run.get("cache_dir") else None)
    path = resolve_model(str(name), cache) if not Path(str(name)).is_dir() else str(name)
    tok_src = str(adapter_dir) if adapter_dir is not None and \
        (adapter_dir / "tokenizer_config.json").is_file() else path
    tokenizer = load_tokenizer(tok_src, trc, padding_side="left")
    quant = quantization or resolved.get("quantization") or run.get("quantization", "none")
    model, _, quant_used, _ = load_model(
        path, dtype=dtype or run.get("dtype", "auto"), quantization=quant,
        trust_remote_code=trc, for_training=False)
    with_adapter = adapter_dir is not None and not base_only
    if with_adapter:
        # Both LoRA backends save peft's adapter format, so peft loads either.
        model = attach_adapter(model, adapter_dir)
    if quant_used == "none":
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(dev)
    model.eval()
    model_type = resolved.get("model_type") or getattr(getattr(model, "config", None),
                                                        "model_type", None)
    tmpl_name = resolve_template_name(
        template or resolved.get("template") or run.get("template", "auto"), tokenizer,
        model_type)
    tmpl = get_template(tmpl_name, tokenizer, run.get("system_prompt"))
    return InferenceModel(model, tokenizer, tmpl, stop_token_ids(tokenizer, model, tmpl),
                          str(name), adapter_dir, quant_used, run_config=run,
                          has_adapter=with_adapter)


def attach_adapter(model: Any, adapter_dir: str | Path) -> Any:
    """peft's PeftModel around `model` with the adapter's weights (inference mode)."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        # peft 0.21 calls a transformers method deprecated in 5.x; nothing for users to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return PeftModel.from_pretrained(model, str(adapter_dir))


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
        raise DataError(f"{where}: has no user turn to answer. Each record needs a question "
                        "(alpaca `instruction`, or a `user` message last or before the final "
                        "answer).")
    return {**record, "messages": messages}, reference


def _gen_kwargs(im: InferenceModel, max_new_tokens: int, temperature: float, top_p: float,
                repetition_penalty: float) -> dict[str, Any]:
    if max_new_tokens <= 0:
        raise ModelError(f"max_new_tokens={max_new_tokens}: must be a positive number of tokens.")
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": im.stop_token_ids,
                          "pad_token_id": im.tokenizer.pad_token_id,
                          "repetition_penalty": repetition_penalty}
    if temperature and temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def _finish(im: InferenceModel, row: list[int]) -> dict[str, Any]:
    stops = set(im.stop_token_ids)
    cut = next((i for i, t in enumerate(row) if t in stops), None)
    body = row if cut is None else row[:cut]
    text = im.tokenizer.decode(body, skip_special_tokens=True)
    if cut is None:  # cut at max_new_tokens, possibly inside a multi-byte character
        text = text.rstrip("\ufffd")
    return {"text": text.strip(), "tokens": len(body), "stopped": cut is not None}


# --------------------------------------------------------------------------- generation
@torch.inference_mode()
def generate(im: InferenceModel, records: Iterable[dict[str, Any]], *, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 0.9, repetition_penalty: float = 1.0,
             batch_size: int = 8, progress: Callable[[int], Any] | None = None
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
        idx = order[start:start + batch_size]
        batch = collate([{"input_ids": prompts[i]} for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        seqs = im.model.generate(**batch, **kw)
        for i, row in zip(idx, seqs[:, batch["input_ids"].shape[1]:].tolist()):
            out[i] = _finish(im, row)
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]


def _callback_streamer(tokenizer: Any, on_text: Callable[[str], Any]) -> Any:
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        """TextStreamer that hands text to a callback instead of printing it. It runs inside
        `generate` (no thread), so errors and Ctrl-C surface where generate was called."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@torch.inference_mode()
def stream_ids(im: InferenceModel, prompt_ids: list[int], *,
               on_text: Callable[[str], Any] | None = None, max_new_tokens: int = 512,
               temperature: float = 0.0, top_p: float = 0.9, repetition_penalty: float = 1.0
               ) -> dict[str, Any]:
    """Generate from one tokenised prompt, passing decoded text to `on_text` as it arrives.
    Returns `text` (the whole answer, up to the first stop token), `tokens`, `stopped`."""
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=im.device)
    kw = _gen_kwargs(im, max_new_tokens, temperature, top_p, repetition_penalty)
    if on_text is not None:
        kw["streamer"] = _callback_streamer(im.tokenizer, on_text)
    seqs = im.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    return _finish(im, seqs[0, ids.shape[1]:].tolist())


def stream_reply(im: InferenceModel, record: dict[str, Any], *,
                 on_text: Callable[[str], Any] | None = None, **kw: Any) -> dict[str, Any]:
    """`stream_ids` for a record (its last user turn is answered)."""
    prompt = encode_prompt(prompt_record(record)[0], im.tokenizer, im.template)
    return stream_ids(im, prompt, on_text=on_text, **kw)


def answer(im: InferenceModel, question: str, input_text: str = "", **kw: Any) -> str:
    """One question in, one answer out (convenience for scripts and the demo)."""
    rec = {"system": None, "messages": [{"role": "user", "content": question,
                                         "input": input_text}]}
    return generate(im, [rec], **kw)[0]["text"]


# --------------------------------------------------------------------------- files
OUTPUT_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class GenerateFileResult:
    output_path: Path
    rows: int
    stopped: int
    """Rows whose generation ended on a stop token (the rest hit max_new_tokens)."""
    generated_tokens: int
    seconds: float


def read_prompt_records(path: Path | str, data_format: str = "auto"
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(raw rows, normalised records) of a data file; answers are optional."""
    from .data import normalize_row, read_rows

    rows = read_rows(path, require_answer=False)  # a prompts-only CSV needs no `output` column
    if not rows:
        raise DataError(f"{path}: the file holds no records. Add prompts, one per line (JSONL) "
                        "or as a JSON list.")
    raw = [row for _, row in rows]
    records = [normalize_row(row, where, path, data_format, require_answer=False)
               for where, row in rows]
    return raw, records


def _cell(value: Any) -> Any:
    """A CSV cell: nested values as JSON text, None as empty."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return value


def write_rows(rows: list[dict[str, Any]], path: Path | str) -> Path:
    """Write rows as .jsonl (the default for any other suffix), .json, .csv or .parquet, into a
    temporary sibling renamed into place, so `path` is never left half-written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        log.info("%s: suffix %r is not one of %s; writing JSON Lines", path, suffix,
                 ", ".join(OUTPUT_SUFFIXES))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pa.Table.from_pylist(rows)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise DataError(f"{path}: the rows cannot be stored as Parquet ({e}); a field "
                                "has mixed types across rows. Write .jsonl instead.") from None
            pq.write_table(table, tmp)
        elif suffix == ".csv":
            columns: list[str] = []
            for row in rows:
                columns += [k for k in row if k not in columns]
            buf = io.StringIO(newline="")
            writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in columns})
            tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")
        elif suffix == ".json":
            tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1, default=str) + "\n",
                           encoding="utf-8")
        else:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                   for r in rows), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def generate_file(im: InferenceModel, input_path: Path | str, output_path: Path | str, *,
                  data_format: str = "auto", max_samples: int | None = None,
                  progress: Callable[[int], Any] | None = None, **gen_kw: Any
                  ) -> GenerateFileResult:
    """Answer every record of a data file (json/jsonl/csv/parquet; alpaca, messages or
    ShareGPT; answers optional) and write each input row back with a `prediction` field.

    `gen_kw` goes to `generate` (max_new_tokens, temperature, top_p, repetition_penalty,
    batch_size). The output format follows `output_path`'s suffix.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise DataError(f"--output {output_path} is the input file; writing there would replace "
                        "your data. Choose another output path.")
    raw, records = read_prompt_records(input_path, data_format)
    if max_samples is not None:
        raw, records = raw[:max_samples], records[:max_samples]
    if any(PREDICTION_FIELD in r for r in raw):
        log.warning("%s already has a `%s` field; it is replaced by the new predictions",
                    input_path, PREDICTION_FIELD)
    t0 = time.perf_counter()
    results = generate(im, records, progress=progress, **gen_kw)
    seconds = time.perf_counter() - t0
    rows = [{**row, PREDICTION_FIELD: res["text"]} for row, res in zip(raw, results)]
    write_rows(rows, output_path)
    return GenerateFileResult(output_path, len(rows), sum(r["stopped"] for r in results),
                              sum(r["tokens"] for r in results), seconds)


__all__ = [
    "GenerateFileResult",
    "InferenceModel",
    "answer",
    "attach_adapter",
    "base_model_name",
    "generate",
    "generate_file",
    "load_for_inference",
    "prompt_record",
    "read_prompt_records",
    "stop_token_ids",
    "stream_ids",
    "stream_reply",
    "template_stop_ids",
    "write_rows",
]
