"""`lora-finetune VERB ...`: verbs mapped to functions. The CLI package is the only place that
prints or exits.

Every `LoraFinetuneError` becomes its message on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import import_module
from pathlib import Path
from typing import Callable

from ..errors import LoraFinetuneError

log = logging.getLogger("lora_finetune")


def _setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[lora-finetune] %(message)s"))
    root = logging.getLogger("lora_finetune")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # transformers' own warnings stay, its info chatter goes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from ..config import load_config, parse_overrides
    from ..train import require_checkpoint, train

    overrides = parse_overrides(rest)
    if args.resume:
        overrides["resume"] = "auto"
    if args.overwrite:
        overrides["overwrite"] = "true"
    cfg = load_config(args.config, overrides)
    if args.resume:
        require_checkpoint(cfg)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun/accelerate only rank 0 reports
    m = result.metrics
    print(f"\nDone: {m['steps']} steps in {m['train_runtime_s']:.1f}s, "
          f"{m['real_tokens_per_second']} real tokens/s")
    print(f"  train loss {m['final_train_loss']:.4f}" + (
        f", eval loss {m['eval_loss']:.4f} (perplexity {m['eval_perplexity']:.2f})"
        if m.get("eval_loss") is not None else ""))
    print(f"  trainable parameters: {m['trainable_params']:,} of {m['total_params']:,}")
    print(f"  outputs in {result.output_dir}/: adapter_model.safetensors, adapter_config.json, "
          "tokenizer, run_config.yaml, metrics.json, loss_curve.png")
    print(f"  try it: lora-finetune chat --adapter {result.output_dir}")
    return 0


def _train_help() -> str:
    from ..config import describe_fields

    return ("Settings (from --config FILE, overridden by --key value):\n" + describe_fields())


# --------------------------------------------------------------------------- parser
VERBS: dict[str, tuple[Callable[..., int], str]] = {
    "train": (cmd_train, "fine-tune a model with LoRA (settings: --config FILE and/or --key value)"),
}


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--r 8` must reach the config as `r`, not be taken for `--resume`.
    p = argparse.ArgumentParser(prog="lora-finetune", allow_abbrev=False,
                                description="LoRA / QLoRA fine-tuning for ChatGLM and Qwen-class "
                                            "causal language models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    t = sub.add_parser("train", help=VERBS["train"][1], epilog=_train_help(), allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", type=Path, help="YAML or JSON config file")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    for module in VERB_MODULES:
        import_module(f".{module}", __name__).register(sub)
    return p


# Each module here has `register(subparsers)`, adding its verbs with `set_defaults(func=...)`;
# `func(args) -> int` does the work. Imports inside the functions keep `--help` fast.
VERB_MODULES: list[str] = ["convert", "use", "tools"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    _setup_logging(args.verbose)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        if args.verb == "train":
            return cmd_train(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except LoraFinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
