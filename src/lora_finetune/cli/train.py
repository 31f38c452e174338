"""`lora-finetune train`: settings from --config FILE, overridden by --key value flags."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..choices import parse_bool
from .flags import parse_bool_flag


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config, parse_overrides
    from ..training import require_checkpoint, train
    from ..training.engines import end_process_group

    overrides = parse_overrides(args.overrides)
    if args.resume is not None:
        # `--resume` / `--resume true`: there must be a checkpoint; `--resume auto` is the config's
        # `resume: auto` (continue if there is one, else start); `--resume no` turns it off.
        overrides["resume"] = "no" if args.resume is False else "auto"
    if args.overwrite is not None:
        overrides["overwrite"] = args.overwrite
    cfg = load_config(args.config, overrides)
    if args.resume is True:
        require_checkpoint(cfg)
    result = train(cfg)
    end_process_group()  # under a launcher: this process trains once, and its group ends here
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun/accelerate only rank 0 reports
    m = result.metrics
    # The same figures, under the same names, as metrics.json.
    figures = [f"steps {m['steps']}", f"train_runtime_s {m['train_runtime_s']:.1f}"]
    figures += [f"final_train_loss {m['final_train_loss']:.4f}"] if m.get("final_train_loss") is not None else []
    figures += [f"train_loss (mean) {m['train_loss']:.4f}"] if m.get("train_loss") is not None else []
    if m.get("eval_loss") is not None:
        figures += [f"eval_loss {m['eval_loss']:.4f}"]
    if m.get("eval_perplexity") is not None:  # a language-modelling loss (sft, pt)
        figures += [f"eval_perplexity {m['eval_perplexity']:.2f}"]
    for split in ("train", "eval"):  # preference methods: reward accuracy and margin
        pref = (m.get("preference") or {}).get(split) or {}
        if pref.get("accuracies") is not None:
            figures += [f"{split} reward accuracy {pref['accuracies']:.2f}, margin {pref.get('margins', 0):.3f}"]
    if m.get("real_tokens_per_second") is not None:
        figures += [f"real_tokens_per_second {m['real_tokens_per_second']}"]
    if m.get("adapter_step") not in (None, m["steps"]):
        figures += [f"adapter_step {m['adapter_step']} (the best checkpoint)"]
    print(f"\nDone (metrics.json): {', '.join(figures)}")
    print(f"  trainable_params {m['trainable_params']:,} of total_params {m['total_params']:,}")
    print(
        f"  outputs in {result.output_dir}/: adapter_model.safetensors, adapter_config.json, "
        "tokenizer, run_config.yaml, metrics.json, loss_curve.png"
    )
    print(f"  try it: lora-finetune chat --adapter {result.output_dir}")
    return 0


def _resume_value(text: str) -> bool | str:
    """`--resume VALUE`: `auto`, or a yes/no word."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return parse_bool(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}") from None


def _settings_help() -> str:
    from ..config import describe_fields

    return "Settings (from --config FILE, overridden by --key value):\n" + describe_fields()


def register(sub: Any) -> None:
    t = sub.add_parser(
        "train",
        allow_abbrev=False,
        epilog=_settings_help(),
        help="fine-tune a model with LoRA (settings: --config FILE and/or --key value)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", type=Path, help="YAML or JSON config file")
    t.add_argument(
        "--resume",
        type=_resume_value,
        nargs="?",
        const=True,
        default=None,
        metavar="auto|true|false",
        help="continue an interrupted run from its last checkpoint (alone or `true`: there must be one; "
        "`auto`: if there is one, else start; `false`: start anew)",
    )
    t.add_argument(
        "--overwrite",
        type=parse_bool_flag,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="replace an existing output_dir (alone or `true`)",
    )
    # Every other --key value is a config setting, checked (all at once) by config.py.
    t.set_defaults(func=cmd_train, takes_overrides=True)
