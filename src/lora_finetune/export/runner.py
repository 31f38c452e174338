"""`export`: an adapter folder -> files llama.cpp, Ollama and LM Studio run.

    gguf        the merged model (base + adapter folded in) as one GGUF
    gguf-lora   the adapter as a llama.cpp LoRA GGUF (+ the base as GGUF with `with_base`)
    ollama      the merged GGUF + a Modelfile (FROM, TEMPLATE, stop PARAMETERs)

Everything that can be refused is refused before weights are loaded: format and out-type,
the output path, the architecture (families.py `gguf_arch`), rope scaling, the tokenizer's
pre-tokenizer, the adapter's LoRA features, free disk space. The output folder is written
like every other output: into a hidden sibling, with manifest.json, renamed when complete.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..choices import EXPORT_FORMATS
from ..errors import ConfigError, LoraFinetuneError, ModelError
from ..folders import atomic_dir, check_output_folder, output_lock, write_manifest
from ..models import load_model, load_tokenizer, read_model_config, resolve_model, template_for
from ..run_record import open_adapter
from .chat_format import (
    jinja_template,
    measure,
    render_jinja,
    render_ours,
    sample_conversations,
    with_default_enable_thinking,
)
from .gguf_lora import plan_lora, write_lora_gguf
from .gguf_model import arch_for, check_outtype, write_model_gguf
from .ollama import MODELFILE, model_name, modelfile
from .tokenizer_meta import pre_tokenizer_name, tokenizer_metadata

log = logging.getLogger(__name__)

EXPORT_INFO = "export_info.json"
BYTES_PER_WEIGHT = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}


@dataclass
class ExportResult:
    output_dir: Path
    format: str
    outtype: str
    architecture: str
    files: list[str]
    """File names inside output_dir, the GGUF(s) first."""
    pre_tokenizer: str
    stop_tokens: list[str]
    chat_template: str
    """Where the GGUF's chat template came from: tokenizer, derived (from our template), none."""
    ollama_template: bool = False
    tensor_types: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ollama_command(self) -> str | None:
        if MODELFILE not in self.files:
            return None
        return f"ollama create {model_name(self.output_dir.name)} -f {self.output_dir / MODELFILE}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_dir"] = str(self.output_dir)
        return d


# --------------------------------------------------------------------------- checks
def check_format(fmt: str) -> str:
    key = str(fmt).lower()
    if key not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt}: export writes {', '.join(EXPORT_FORMATS)}.")
    return key


def _existing_parent(path: Path) -> Path:
    p = path.absolute().parent
    while not p.exists():
        p = p.parent
    return p


def check_output(output_dir: Path, adapter_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"--output {output_dir} is a file; export writes a folder. Choose another --output.")
    out, ad = output_dir.resolve(), adapter_dir.resolve()
    if out == ad or ad in out.parents or out in ad.parents:
        raise ConfigError(
            f"--output {output_dir} overlaps the adapter folder {adapter_dir}; the export is a separate "
            "folder. Choose another --output."
        )
    # The rules every output follows: no file in the way, a writable place, and --overwrite only
    # for a folder this tool wrote (or an empty one).
    check_output_folder(output_dir, overwrite)


def check_space(output_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(_existing_parent(output_dir)).free
    if needed > free:
        raise LoraFinetuneError(
            f"not enough disk space for the export: about {needed / 2**30:.2f} GiB needed, "
            f"{free / 2**30:.2f} GiB free under {_existing_parent(output_dir)}. Free some space or choose "
            "another --output (or a smaller --outtype: q8_0 is about half of f16)."
        )


def _n_params(config: Any) -> int:
    """Weights of a llama-style model from its config (for the disk-space check)."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or h // heads
    attn = h * hd * heads * 2 + h * hd * kv * 2
    emb = config.vocab_size * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return n * (attn + 3 * h * i) + emb


def _write_error(e: OSError, where: Path) -> LoraFinetuneError:
    if e.errno == errno.ENOSPC:
        return LoraFinetuneError(
            f"the disk filled up while writing the export under {where.parent} ({e.strerror}); nothing was "
            "left behind. Free some space or choose another --output."
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return LoraFinetuneError(
            f"cannot write the export under {where.parent} ({e.strerror}). Choose a folder you can write."
        )
    return LoraFinetuneError(f"writing the export under {where.parent} failed: {e}. Nothing was left behind.")


# --------------------------------------------------------------------------- the chat format
def _renders_as_trained(jinja: str, tmpl: Any) -> bool:
    """Does the Jinja template render the sample conversations as our template does?"""
    try:
        return all(render_jinja(jinja, c) == render_ours(tmpl, c) for c in sample_conversations())
    except Exception:  # noqa: BLE001 - a template that cannot render them is not the trained format
        return False


def _gguf_chat_template(tmpl: Any, tokenizer: Any, table: Any, notes: list[str]) -> tuple[str | None, str]:
    """(the Jinja chat template for the GGUF, where it came from)."""
    own = getattr(tokenizer, "chat_template", None)
    if getattr(tmpl, "name", None) == "chat" and isinstance(own, str):
        own = with_default_enable_thinking(own)
        if _renders_as_trained(own, tmpl):
            return own, "tokenizer"
        # ChatGLM3's template ends an answer with the next role token, while training appends
        # EOS to every answer (templates/chat.py): the file gets the format the model learned.
        notes.append(
            "the tokenizer's chat template renders conversations differently from the format the adapter "
            "was trained on (EOS after each answer); the GGUF has a template derived from the training format"
        )
    if table is not None:
        jinja = jinja_template(table)
        if _renders_as_trained(jinja, tmpl):
            return jinja, "derived"
    notes.append(
        f"the adapter's template {getattr(tmpl, 'name', '?')!r} could not be written as a chat template; "
        "the GGUF has none, so format prompts yourself as in training"
    )
    return None, "none"


# --------------------------------------------------------------------------- export
def export_model(
    adapter_dir: str | Path,
    output_dir: str | Path,
    *,
    format: str = "gguf",
    outtype: str = "f16",
    with_base: bool = False,
    overwrite: bool = False,
    base_model: str | None = None,
) -> ExportResult:
    """Export the adapter in `adapter_dir` (see the module docstring for the formats)."""
    fmt, outtype = check_format(format), check_outtype(outtype)
    if with_base and fmt != "gguf-lora":
        raise ConfigError("--with-base goes with --format gguf-lora (the other formats already hold the whole model).")
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not adapter_dir.exists():
        raise ModelError(f"--adapter {adapter_dir} does not exist. Point it at the output_dir of a training run.")
    check_output(output_dir, adapter_dir, overwrite)
    folder = open_adapter(adapter_dir)
    record = folder.record
    name = folder.base_to_load(base_model)
    cfg = record.config if record is not None else None
    if cfg is not None and cfg.trust_remote_code:
        raise ModelError("GGUF export does not support models that run their own code (trust_remote_code).")
    path = resolve_model(name, cfg.cache_dir if cfg is not None else None) if not Path(name).is_dir() else name
    config = read_model_config(path)
    arch = arch_for(config)
    tokenizer = load_tokenizer(str(adapter_dir) if folder.has_tokenizer else path)
    pre = pre_tokenizer_name(tokenizer, arch.name)
    model_type = (record.resolved.model_type if record else None) or config.model_type
    tmpl = template_for(
        record.template if record else "auto", tokenizer, model_type, cfg.system_prompt if cfg else None
    )
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan = plan_lora(adapter_dir, arch, tied) if fmt == "gguf-lora" else None
    n = _n_params(config)
    copies = (0 if fmt == "gguf-lora" else 1) + (1 if with_base else 0)
    check_space(output_dir, int(n * BYTES_PER_WEIGHT[outtype] * copies) + (64 << 20))

    notes: list[str] = []
    vocab_size = int(config.vocab_size)
    stops = list(tmpl.stop_tokens)
    eot = next((t for t in stops if t != tokenizer.eos_token), None) or (stops[0] if stops else None)
    table = measure(tmpl)
    chat_template, chat_source = _gguf_chat_template(tmpl, tokenizer, table, notes)
    meta = tokenizer_metadata(tokenizer, vocab_size, eot_token=eot, chat_template=chat_template, arch=arch.name)
    label = adapter_dir.resolve().name
    files: list[str] = []
    types: dict[str, dict[str, int]] = {}
    model_file = f"model-{outtype}.gguf"
    base_file = f"base-{outtype}.gguf"
    lora_file = f"adapter-lora-{outtype}.gguf"
    extra = {"lora_finetune.adapter": label, "lora_finetune.base_model": str(name)}

    def weights(merge: bool) -> Any:
        loaded = load_model(path, dtype="fp32", quantization="none", for_training=False).model
        if not merge:
            return loaded.eval()
        from ..models import attach_adapter

        return attach_adapter(loaded, adapter_dir).merge_and_unload().eval()

    if record is not None and record.quantization in ("4bit", "8bit"):
        notes.append(
            f"the adapter was trained on a {record.quantization} base; it is exported with the base's "
            "full-precision weights, never the quantised ones"
        )
    try:
        with output_lock(output_dir), atomic_dir(output_dir, overwrite=overwrite) as tmp:

            def write_model(file: str, merge: bool, title: str, meta_extra: dict[str, Any] | None = None) -> None:
                model = weights(merge=merge)
                types[file] = write_model_gguf(
                    tmp / file,
                    arch=arch,
                    config=config,
                    state_dict=model.state_dict(),
                    tokenizer=meta,
                    outtype=outtype,
                    name=title,
                    extra=meta_extra,
                )
                files.append(file)

            if fmt in ("gguf", "ollama"):
                write_model(model_file, True, f"{label} (merged)", extra)
            else:
                assert plan is not None
                types[lora_file] = write_lora_gguf(tmp / lora_file, adapter_dir, plan, arch, outtype, label)
                files.append(lora_file)
                if with_base:
                    write_model(base_file, False, f"{Path(str(name)).name} (base)")
            go = None
            if fmt == "ollama":
                from .chat_format import go_template

                go = go_template(table) if table is not None else None
                if go is None:
                    notes.append("the adapter's template could not be written as an Ollama TEMPLATE")
                (tmp / MODELFILE).write_text(
                    modelfile(model_file, template=go, stops=stops, system=None),
                    encoding="utf-8",
                )
                files.append(MODELFILE)
            result = ExportResult(
                output_dir=output_dir,
                format=fmt,
                outtype=outtype,
                architecture=arch.name,
                files=files,
                pre_tokenizer=pre,
                stop_tokens=stops,
                chat_template=chat_source,
                ollama_template=go is not None,
                tensor_types=types,
                notes=notes,
            )
            info = {
                **result.to_json(),
                "adapter_dir": str(adapter_dir.resolve()),
                "base_model": str(name),
                "base_path": str(path),
                "template": getattr(tmpl, "name", None),
                "lora_alpha": plan.alpha if plan else None,
            }
            info.pop("output_dir")
            (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
            write_manifest(tmp)
    except OSError as e:
        raise _write_error(e, output_dir) from None
    for note in notes:
        log.info("export: %s", note)
    return result


__all__ = ["EXPORT_INFO", "ExportResult", "check_format", "check_output", "export_model"]
