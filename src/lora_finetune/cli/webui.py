"""`lora-finetune webui`: the workflow on a web page (webui/), served on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .flags import bool_flag


def cmd_webui(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("webui needs Gradio: pip install 'lora-finetune[ui]' (or: pip install gradio).") from None
    from ..webui.server import launch

    print(f"Starting the web UI on {args.host}:{args.port}, workdir {args.workdir.resolve()} ...", file=sys.stderr)
    launch(str(args.workdir), args.host, args.port, allow_remote=args.allow_remote)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "webui",
        allow_abbrev=False,
        help="a web page for the whole workflow: train (live loss), chat, evaluate, export",
        description="Serve a web page (Gradio) that trains, chats with, evaluates and exports adapters. "
        "It reads and writes only inside --workdir; training runs as a separate `lora-finetune train` "
        "process (Stop = Ctrl-C: a checkpoint is saved). Needs: pip install 'lora-finetune[ui]'.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("webui-work"),
        help="the folder the page works in: data/, outputs/, exports/ (default ./webui-work, created if missing)",
    )
    bool_flag(
        p,
        "allow-remote",
        help="allow a --host other machines can reach (the page has no login: trusted networks only)",
    )
    p.set_defaults(func=cmd_webui)
