"""`lora-finetune convert-chatglm SRC DST`: ChatGLM2/3 folder -> native GLM folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import bool_flag


def cmd_convert(args: argparse.Namespace) -> int:
    from ..models.chatglm import convert_chatglm

    dst = convert_chatglm(args.src, args.dst, version=args.version, overwrite=args.overwrite)
    print(f"Converted {args.src} -> {dst} (native GlmForCausalLM, safetensors, fast tokenizer; no remote code needed).")
    print(f"Train on it: lora-finetune train --model_name {dst} --data_path ...")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-chatglm",
        allow_abbrev=False,
        help="convert a local ChatGLM2-6B / ChatGLM3-6B folder to native GLM "
        "(training does this automatically, once, into the cache)",
    )
    p.add_argument("src", type=Path, help="ChatGLM2/3 folder (config.json, weights, tokenizer.model)")
    p.add_argument("dst", type=Path, help="where to write the native GLM folder")
    p.add_argument(
        "--version",
        choices=["chatglm2", "chatglm3", "glm4"],
        default=None,
        help="override version detection (normally read from the folder)",
    )
    bool_flag(p, "overwrite", help="replace an existing DST")
    p.set_defaults(func=cmd_convert)
