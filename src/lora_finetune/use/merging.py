"""Folding an adapter into its base model: a standalone model folder, no PEFT needed to load it.

    merge(adapter_dir, output_dir, dtype="bf16")

1. The base named in the adapter's run_config.yaml is loaded *unquantised* in the output dtype
   (an adapter trained on a 4-bit/8-bit base is merged onto the 16/32-bit weights: folding
   B A into NF4 codes would round the update away). The adapter is attached with peft; both
   LoRA backends save peft's format, so this covers `lora_backend: reference` too.
2. Logits of base+adapter are taken on a few prompts in the training template, the adapter is
   folded in (`merge_and_unload`: W += alpha/r * B A) and the model is saved as safetensors
   shards with its config, the adapter's tokenizer, and a generation_config whose
   `eos_token_id` lists every stop id (EOS and the template's end-of-turn token).
3. The saved folder is loaded back with plain `AutoModelForCausalLM.from_pretrained` and its
   logits are compared with those of step 2; the largest absolute difference is reported and
   stored in `merge_info.json`.

Everything is written into a temporary sibling, with a manifest, and renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..choices import MERGE_DTYPES
from ..errors import ConfigError, LoraFinetuneError
from ..folders import atomic_dir, check_output_folder, is_no_space, no_space_error, output_lock, write_manifest
from ..models import attach_adapter, load_model, load_tokenizer, resolve_model
from ..run_record import AdapterFolder, RunRecord, open_adapter
from ..templates import encode_records
from .inference import stop_token_ids, template_and_stops

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..templates import Template

log = logging.getLogger(__name__)

MERGE_INFO = "merge_info.json"
# Names a dtype may be given or recorded under -> the MERGE_DTYPES name.
DTYPE_NAMES = {**{d: d for d in MERGE_DTYPES}, "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Logit differences above this (fp32) mean the merged model does not match base+adapter.
FP32_TOLERANCE = 1e-3

CHECK_RECORDS = [
    {
        "system": None,
        "messages": [
            {"role": "user", "content": "中国的首都是哪里？", "input": ""},
            {"role": "assistant", "content": "北京。", "input": ""},
        ],
    },
    {
        "system": None,
        "messages": [
            {"role": "user", "content": "Translate into English.", "input": "我爱学习。"},
            {"role": "assistant", "content": "I love learning.", "input": ""},
        ],
    },
    {
        "system": None,
        "messages": [
            {"role": "user", "content": "What does LoRA stand for?", "input": ""},
            {"role": "assistant", "content": "Low-Rank Adaptation.", "input": ""},
        ],
    },
]


@dataclass
class MergeResult:
    output_dir: Path
    dtype: str
    base_model: str
    max_abs_diff: float | None
    """Largest |merged - (base+adapter)| logit over the check samples (None: check skipped)."""
    max_abs_logit: float | None = None
    """Largest |logit| of base+adapter on the check samples, the scale for max_abs_diff."""
    check_tokens: int = 0
    top1_agreement: float | None = None
    """Share of check positions where merged and base+adapter predict the same next token
    (1.0 in fp32; in bf16/fp16 two equivalent computations round differently)."""
    trained_quantization: str = "none"
    """4bit/8bit when the adapter was trained on a quantised base (merged onto full weights)."""
    stop_token_ids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        return d


def _output_dtype(requested: str | None, record: RunRecord | None) -> str:
    if requested:
        key = DTYPE_NAMES.get(str(requested).lower())
        if key is None:
            raise ConfigError(f"--dtype {requested}: use {', '.join(MERGE_DTYPES)}.")
        return key
    trained = (record.resolved.dtype or record.config.dtype) if record else "fp32"
    return DTYPE_NAMES.get(str(trained).lower(), "fp32")


def _trained_quantization(record: RunRecord | None) -> tuple[str, str]:
    """(quantization the base had during training, what the config asked for)."""
    if record is None:
        return "none", "none"
    return record.quantization, record.config.quantization


@torch.inference_mode()
def _logits(model: PreTrainedModel, samples: list[list[int]], device: torch.device) -> list[torch.Tensor]:
    out = []
    for ids in samples:
        x = torch.tensor([ids], dtype=torch.long, device=device)
        out.append(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().cpu())
    return out


def _check_samples(tokenizer: PreTrainedTokenizerBase, template: Template | None) -> list[list[int]]:
    samples: list[list[int]] = []
    if template is not None:
        try:
            encoded, _ = encode_records(CHECK_RECORDS, tokenizer, template, max_length=10**6)
            samples = [e.input_ids for e in encoded]
        except Exception as e:  # noqa: BLE001 - an odd template must not block the merge
            log.debug("merge check: template failed (%s); using plain strings", e)
    if not samples:
        samples = [tokenizer(t)["input_ids"] for t in ("Hello, LoRA!", "中国的首都是北京。")]
    return [s for s in samples if s]


def merge(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
    check: bool = True,
    base_model: str | None = None,
    max_shard_size: str | int = "2GB",
    device: str | None = None,
    trust_remote_code: bool | None = None,
) -> MergeResult:
    """Fold the adapter in `adapter_dir` into its base and write a standalone model folder.

    dtype: bf16, fp16 or fp32 (default: the dtype the adapter was trained in). The merge and
    the check run on `device` (default CPU, which holds any model that fits in RAM). The output
    folder is checked before anything loads and locked while it is written.
    """
    folder = open_adapter(adapter_dir)
    output_dir = Path(output_dir)
    if output_dir.resolve() == folder.path.resolve() or folder.path.resolve() in output_dir.resolve().parents:
        raise ConfigError(
            f"--output {output_dir} is (inside) the adapter folder; the merged "
            "model is a separate folder. Choose another --output."
        )
    check_output_folder(output_dir, overwrite)
    with output_lock(output_dir):
        try:
            return _merge(
                folder, output_dir, dtype, overwrite, check, base_model, max_shard_size, device, trust_remote_code
            )
        except OSError as e:
            if not is_no_space(e):
                raise
            raise no_space_error(output_dir) from None


def _merge(
    folder: AdapterFolder,
    output_dir: Path,
    dtype: str | None,
    overwrite: bool,
    check: bool,
    base_model: str | None,
    max_shard_size: str | int,
    device: str | None,
    trust_remote_code: bool | None,
) -> MergeResult:
    adapter_dir, record = folder.path, folder.record
    name = folder.base_to_load(base_model)
    cfg = record.config if record is not None else None
    trc = trust_remote_code if trust_remote_code is not None else bool(cfg is not None and cfg.trust_remote_code)
    cache = cfg.cache_dir if cfg is not None else None
    path = resolve_model(name, cache)
    out_dtype = _output_dtype(dtype, record)
    notes: list[str] = []
    used_q, asked_q = _trained_quantization(record)
    if used_q in ("4bit", "8bit"):
        notes.append(
            f"the adapter was trained on a {used_q} base; it is merged onto the base "
            f"reloaded unquantised in {out_dtype}, never onto quantised weights"
        )
    elif asked_q in ("4bit", "8bit"):
        notes.append(
            f"the run asked for {asked_q} but trained on full-precision weights "
            f"(bitsandbytes could not run then); merging onto the {out_dtype} base"
        )
    for n in notes:
        log.info("merge: %s", n)

    tokenizer = load_tokenizer(str(adapter_dir) if folder.has_tokenizer else path, trc)
    loaded = load_model(path, dtype=out_dtype, quantization="none", trust_remote_code=trc, for_training=False)
    torch_dtype = loaded.dtype
    dev = torch.device(device or "cpu")
    trained_on = record.resolved.base_model or record.config.model_name if record is not None else None
    model = attach_adapter(loaded.model, adapter_dir, trained_on=trained_on, given=name).to(dev).eval()
    del loaded
    # The template the adapter was trained with gives the check prompts and the stop ids.
    try:
        tmpl, stops = template_and_stops(record, tokenizer, model)
    except LoraFinetuneError as e:  # an odd template must not block the merge: EOS alone then
        log.warning("merge: no template for check prompts and stop ids (%s)", e)
        tmpl, stops = None, stop_token_ids(tokenizer, model, None)
    samples = _check_samples(tokenizer, tmpl) if check else []
    reference = _logits(model, samples, dev) if check else []

    merged = model.merge_and_unload()
    del model
    gen = merged.generation_config
    gen.eos_token_id = stops if len(stops) > 1 else (stops[0] if stops else None)
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config

    result = MergeResult(
        output_dir=output_dir,
        dtype=out_dtype,
        base_model=name,
        max_abs_diff=None,
        max_abs_logit=max((float(r.abs().max()) for r in reference), default=None),
        check_tokens=sum(len(s) for s in samples),
        trained_quantization=used_q,
        stop_token_ids=stops,
        notes=notes,
    )
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        if trc and Path(path).is_dir():  # remote-code models need their .py files alongside
            for py in Path(path).glob("*.py"):
                shutil.copy2(py, tmp / py.name)
        del merged
        if check:
            result.max_abs_diff, result.top1_agreement = _compare_saved(tmp, samples, reference, torch_dtype, trc, dev)
            tol = FP32_TOLERANCE if torch_dtype == torch.float32 else None
            if tol is not None and result.max_abs_diff > tol:
                log.warning("merged logits differ from base+adapter by up to %.3g (> %g)", result.max_abs_diff, tol)
        info = {
            **result.to_json(),
            "adapter_dir": str(adapter_dir.resolve()),
            "base_path": str(path),
            "check_samples": len(samples),
        }
        info.pop("output_dir")
        (tmp / MERGE_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
        _readable(tmp)
        write_manifest(tmp)
    return result


def _readable(folder: Path) -> None:
    """Shards written through a private temp file come out 0600; give them the mode the other
    files of the folder have, so a model folder shared with others is readable by them."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for p in folder.iterdir():
        if p.is_file() and (p.stat().st_mode & 0o777) == 0o600:
            p.chmod(0o666 & ~umask)


def _compare_saved(
    folder: Path,
    samples: list[list[int]],
    reference: list[torch.Tensor],
    torch_dtype: torch.dtype,
    trust_remote_code: bool,
    dev: torch.device,
) -> tuple[float, float]:
    """Load the written folder with plain transformers and compare its logits with
    base+adapter's: (largest absolute difference, share of positions with the same argmax)."""
    # load_model is AutoModelForCausalLM.from_pretrained (AutoModel for ChatGLM-6B v1, whose
    # remote code registers no causal-LM class).
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[torch_dtype]
    again = load_model(
        str(folder), dtype=name, quantization="none", trust_remote_code=trust_remote_code, for_training=False
    ).model
    again.to(dev).eval()
    got = _logits(again, samples, dev)
    del again
    diff = max((float((a - b).abs().max()) for a, b in zip(got, reference)), default=0.0)
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(got, reference))
    total = sum(a.shape[0] for a in got)
    return diff, (same / total if total else 1.0)


__all__ = ["MERGE_INFO", "MergeResult", "merge"]
