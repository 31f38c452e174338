"""Using a trained adapter: load it from its folder alone, and generate.

`load_for_inference(adapter_dir)` reads `run_config.yaml` to find the base model, template,
dtype and quantisation the adapter was trained with (each can be overridden), loads the base,
attaches the adapter and returns an `InferenceModel`. `generate(...)` runs batched, left-padded
generation that stops at EOS and at the template's end-of-turn tokens.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .collate import PadCollator
from .errors import ModelError
from .io import verify_manifest
from .models import load_model, load_tokenizer, resolve_model
from .templates import Template, encode_prompt, get_template
from .train import read_run_config

log = logging.getLogger(__name__)


@dataclass
class InferenceModel:
    model: Any
    tokenizer: Any
    template: Template
    stop_token_ids: list[int]
    base_model: str
    adapter_dir: Path | None
    quantization: str = "none"


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """EOS ids from the tokenizer and generation config, plus common end-of-turn tokens."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids += eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|user|>", "<|observation|>", "<eop>"):
        if tok in vocab and tok in (tokenizer.all_special_tokens or []):
            ids.append(vocab[tok])
    return sorted(set(int(i) for i in ids))


def load_for_inference(adapter_dir: str | Path | None = None, *, base_model: str | None = None,
                       base_only: bool = False, template: str | None = None,
                       dtype: str | None = None, quantization: str | None = None,
                       trust_remote_code: bool | None = None, device: str | None = None,
                       cache_dir: Path | None = None) -> InferenceModel:
    """Base model + adapter, configured from the adapter folder's run_config.yaml."""
    run: dict[str, Any] = {}
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelError(f"{adapter_dir} is not an adapter folder (no adapter_config.json). "
                             "Point --adapter at the output_dir of a training run.")
        verify_manifest(adapter_dir)
        run = read_run_config(adapter_dir)
    resolved = run.get("resolved", {})
    name = base_model or resolved.get("base_model") or run.get("model_name")
    if not name:
        raise ModelError("No base model: the adapter folder has no run_config.yaml. Pass "
                         "--base_model NAME_OR_PATH.")
    trc = trust_remote_code if trust_remote_code is not None else run.get("trust_remote_code",
                                                                          False)
    path = resolve_model(str(name), cache_dir) if not Path(str(name)).is_dir() else str(name)
    tok_src = str(adapter_dir) if adapter_dir is not None and \
        (adapter_dir / "tokenizer_config.json").is_file() else path
    tokenizer = load_tokenizer(tok_src, trc, padding_side="left")
    quant = quantization or resolved.get("quantization") or run.get("quantization", "none")
    model, _, quant_used, _ = load_model(
        path, dtype=dtype or run.get("dtype", "auto"), quantization=quant,
        trust_remote_code=trc, for_training=False)
    if adapter_dir is not None and not base_only:
        # Both LoRA backends save peft's adapter format, so peft loads either.
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if quant_used == "none":
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(dev)
    model.eval()
    tmpl = get_template(template or resolved.get("template") or run.get("template", "auto"),
                        tokenizer, run.get("system_prompt"))
    return InferenceModel(model, tokenizer, tmpl, stop_token_ids(tokenizer, model), str(name),
                          adapter_dir, quant_used)


def _gen_kwargs(im: InferenceModel, max_new_tokens: int, temperature: float, top_p: float,
                repetition_penalty: float) -> dict[str, Any]:
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": im.stop_token_ids,
                          "pad_token_id": im.tokenizer.pad_token_id,
                          "repetition_penalty": repetition_penalty}
    if temperature and temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


@torch.inference_mode()
def generate(im: InferenceModel, records: Iterable[dict[str, Any]], *, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 0.9, repetition_penalty: float = 1.0,
             batch_size: int = 8, progress: Any = None) -> list[dict[str, Any]]:
    """Answer each record's last user turn. Returns dicts with `text`, `tokens`, `stopped`
    (True when generation ended on a stop token rather than at max_new_tokens)."""
    records = list(records)
    prompts = [encode_prompt(r, im.tokenizer, im.template) for r in records]
    collate = PadCollator(im.tokenizer.pad_token_id, padding_side="left")
    device = next(im.model.parameters()).device
    stops = set(im.stop_token_ids)
    out: list[dict[str, Any]] = []
    kw = _gen_kwargs(im, max_new_tokens, temperature, top_p, repetition_penalty)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch = collate([{"input_ids": p} for p in chunk])
        batch = {k: v.to(device) for k, v in batch.items()}
        seqs = im.model.generate(**batch, **kw)
        for row in seqs[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            body = row if cut is None else row[:cut]
            out.append({"text": im.tokenizer.decode(body, skip_special_tokens=True).strip(),
                        "tokens": len(body), "stopped": cut is not None})
        if progress is not None:
            progress(len(chunk))
    return out


def answer(im: InferenceModel, question: str, input_text: str = "", **kw: Any) -> str:
    """One question in, one answer out (convenience for scripts and the demo)."""
    rec = {"system": None, "messages": [{"role": "user", "content": question,
                                         "input": input_text}]}
    return generate(im, [rec], **kw)[0]["text"]
