"""Small argparse helpers shared by the verb modules."""
from __future__ import annotations

import argparse
from typing import Any


def opt(p: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """--name_with_underscores also spelled --name-with-hyphens, and the other way round."""
    flags = [f"--{name}"]
    if "_" in name:
        flags.append(f"--{name.replace('_', '-')}")
    elif "-" in name:
        flags.append(f"--{name.replace('-', '_')}")
    kw.setdefault("dest", name.replace("-", "_"))
    p.add_argument(*flags, **kw)


def parse_bool(text: str) -> bool:
    v = str(text).strip().lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
