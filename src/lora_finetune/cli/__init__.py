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

from ..errors import LoraFinetuneError

log = logging.getLogger(__name__)


def _setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[lora-finetune] %(message)s"))
    root = logging.getLogger("lora_finetune")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # transformers' own warnings stay, its info chatter goes.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: `--r 8` must reach the config as `r`, not be taken for `--resume`.
    p = argparse.ArgumentParser(
        prog="lora-finetune",
        allow_abbrev=False,
        description="LoRA / QLoRA fine-tuning for ChatGLM and Qwen-class causal language models.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for module in VERB_MODULES:
        import_module(f".{module}", __name__).register(sub)
    return p


# Each module here has `register(subparsers)`, adding its verbs with `set_defaults(func=...)`;
# `func(args) -> int` does the work. Imports inside the functions keep `--help` fast.
VERB_MODULES: list[str] = ["train", "use", "tools", "convert", "export"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    _setup_logging(args.verbose)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "takes_overrides", False):
            args.overrides = rest
        elif rest:
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
