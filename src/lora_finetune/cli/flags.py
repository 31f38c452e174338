"""Flags shared by the verb modules: the spelling rule, booleans, and the flag groups that
several verbs take (loading an adapter, generation settings). Choice lists come from
`choices.py`, like the config's."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..choices import DTYPES, QUANTIZATIONS, TEMPLATE_ALIASES, TEMPLATES, parse_bool


def opt(p: argparse.ArgumentParser | Any, name: str, **kw: Any) -> None:
    """--name_with_underscores also spelled --name-with-hyphens, and the other way round."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    elif "-" in name:
        flags.append(f"--{name.replace('-', '_')}")
    kw.setdefault("dest", name.replace("-", "_"))
    p.add_argument(*flags, **kw)


def parse_bool_flag(text: str) -> bool:
    """argparse `type=` for true/false flags (choices.parse_bool, with argparse's error)."""
    try:
        return parse_bool(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"{e} (a flag given without a value goes after the other arguments, or give it one: --flag true)"
        ) from None


def _count(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse `type=` for counts that must be at least 1 (samples, batch sizes, tokens)."""
    return _count(text, 1)


def non_negative_int(text: str) -> int:
    """argparse `type=` for counts that may be 0 (few-shot examples)."""
    return _count(text, 0)


def bool_flag(p: argparse.ArgumentParser | Any, name: str, help: str | None = None) -> None:
    """A true/false setting that is also a flag: `--name` alone means true, `--name true|false`
    (yes/no, on/off, 1/0) says it outright -- the spelling config files use, so `--overwrite true`
    works wherever `overwrite: true` does. Default false."""
    opt(p, name, type=parse_bool_flag, nargs="?", const=True, default=False, metavar="BOOL", help=help)


def load_flags(p: argparse.ArgumentParser, adapter_required: bool = True) -> None:
    """Which adapter to load, and overrides of what its run record says."""
    opt(
        p,
        "adapter",
        type=Path,
        required=adapter_required,
        metavar="DIR",
        help="adapter folder (a training run's output_dir)",
    )
    opt(p, "base_model", metavar="NAME_OR_PATH", help="override the base model named in run_config.yaml")
    opt(
        p,
        "template",
        choices=[*TEMPLATES, *TEMPLATE_ALIASES],
        help="override the prompt template the adapter was trained with",
    )
    opt(p, "dtype", choices=DTYPES, help="override the dtype")
    opt(
        p,
        "quantization",
        choices=QUANTIZATIONS,
        help="override the base's quantisation (4bit/8bit need bitsandbytes: on CUDA, or on the CPU "
        "with bitsandbytes >= 0.48; without it the base loads in full precision)",
    )
    opt(p, "device", help="cuda, cuda:1, cpu, ... (default: cuda when available)")


def gen_flags(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """Generation settings, with the verb's default answer length."""
    opt(
        p,
        "max_new_tokens",
        type=positive_int,
        default=max_new_tokens,
        help=f"longest answer in tokens (default {max_new_tokens})",
    )
    opt(p, "temperature", type=float, default=0.0, help="sampling temperature; 0 (default) is greedy decoding")
    opt(p, "top_p", type=float, default=0.9, help="nucleus sampling (with temperature > 0)")
    opt(p, "repetition_penalty", type=float, default=1.0, help="1.0 (default) is off")


__all__ = ["bool_flag", "gen_flags", "load_flags", "opt", "parse_bool_flag", "positive_int"]
