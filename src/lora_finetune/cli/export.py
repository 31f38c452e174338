"""`export`: an adapter as files llama.cpp, Ollama and LM Studio run (GGUF, LoRA GGUF,
Modelfile). The work is in lora_finetune/export/; this module maps flags to it and prints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..choices import EXPORT_FORMATS, EXPORT_OUTTYPES
from .flags import bool_flag, opt


def cmd_export(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ..export import export_model

    hf_logging.disable_progress_bar()
    res = export_model(
        args.adapter,
        args.output,
        format=args.format,
        outtype=args.outtype,
        with_base=args.with_base,
        overwrite=args.overwrite,
        base_model=args.base_model,
    )
    for note in res.notes:
        print(f"Note: {note}.")
    print(
        f"Exported {args.adapter} as {res.format} ({res.outtype}, llama.cpp architecture {res.architecture}, "
        f"pre-tokenizer {res.pre_tokenizer}) -> {res.output_dir}"
    )
    for name in res.files:
        print(f"  {res.output_dir / name}")
    print(f"Stop tokens: {', '.join(res.stop_tokens)}; chat template: {res.chat_template}")
    model = next((f for f in res.files if f.startswith(("model-", "base-"))), None)
    lora = next((f for f in res.files if f.startswith("adapter-lora-")), None)
    if res.ollama_command:
        print(f"Create the Ollama model:\n  {res.ollama_command}")
    elif lora and model:
        print(f"Run it with llama.cpp:\n  llama-cli -m {res.output_dir / model} --lora {res.output_dir / lora}")
    elif lora:
        print(
            "Run it with llama.cpp on a GGUF of the base model (--with-base writes one):\n"
            f"  llama-cli -m BASE.gguf --lora {res.output_dir / lora}"
        )
    elif model:
        print(f"Run it with llama.cpp (or open it in LM Studio):\n  llama-cli -m {res.output_dir / model}")
    return 0


def register(sub: Any) -> None:
    e = sub.add_parser(
        "export",
        help="write the adapter for llama.cpp / Ollama / LM Studio (GGUF)",
        description="gguf: the merged model as one GGUF (tokenizer, stop tokens and chat template in its "
        "metadata). gguf-lora: the adapter alone as a llama.cpp LoRA GGUF (llama-cli --lora), with "
        "--with-base also the base as GGUF. ollama: the merged GGUF and a Modelfile. Supported: "
        "Llama, Qwen2, Qwen3 models with byte-level BPE tokenizers.",
    )
    opt(e, "adapter", type=Path, required=True, metavar="DIR", help="adapter folder (a training run's output_dir)")
    opt(e, "output", type=Path, required=True, metavar="DIR", help="new folder for the exported files")
    opt(e, "format", default="gguf", choices=EXPORT_FORMATS, help="what to write (default gguf)")
    opt(e, "outtype", default="f16", choices=EXPORT_OUTTYPES, help="weight type in the GGUF (default f16)")
    bool_flag(e, "with-base", help="gguf-lora: also write the base model as GGUF")
    bool_flag(e, "overwrite", help="replace an existing --output folder")
    opt(e, "base_model", metavar="NAME_OR_PATH", help="override the base in run_config.yaml")
    e.set_defaults(func=cmd_export)
    _register_export_adapter(sub)


# --------------------------------------------------------------------------- export-adapter
def cmd_export_adapter(args: argparse.Namespace) -> int:
    from ..export.chatglm_adapter import export_chatglm_adapter

    res = export_chatglm_adapter(args.adapter, args.output, overwrite=args.overwrite)
    rank = f"; query_key_value at rank {res.qkv_rank} (q, k, v fused)" if res.qkv_rank else ""
    print(f"Wrote a ChatGLM adapter for {res.base_model} to {res.output_dir} ({', '.join(res.target_modules)}{rank})")
    print(
        "  load it on the original checkpoint: PeftModel.from_pretrained(AutoModel.from_pretrained("
        f"'{res.base_model}', trust_remote_code=True), '{res.output_dir}')"
    )
    return 0


def _register_export_adapter(sub: Any) -> None:
    p = sub.add_parser(
        "export-adapter",
        help="rewrite an adapter for another checkpoint format (ChatGLM2/3 module names)",
        description="An adapter trained on a converted ChatGLM2/3 (native GLM names) rewritten for the "
        "original ChatGLM checkpoint: q/k/v LoRA fused exactly into query_key_value, the rest renamed.",
    )
    p.add_argument("--adapter", required=True, help="the adapter folder (output_dir of a training run)")
    p.add_argument("--format", choices=["chatglm"], default="chatglm", help="the target format (chatglm)")
    p.add_argument("--output", required=True, help="the folder to write")
    bool_flag(p, "overwrite", help="replace an earlier export in --output")
    p.set_defaults(func=cmd_export_adapter)
