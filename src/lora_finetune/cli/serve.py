"""`lora-finetune serve`: adapters behind an OpenAI-compatible HTTP API (serve/)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .flags import opt


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "serve needs FastAPI and uvicorn: pip install 'lora-finetune[serve]' (or: pip install fastapi uvicorn)."
        ) from None
    from ..serve.server import API_KEY_ENV, ServeOptions, parse_adapter_arg, serve

    opts = ServeOptions(
        adapters=[parse_adapter_arg(a) for a in args.adapter],
        host=args.host,
        port=args.port,
        api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV),
        device=args.device,
        max_batch_size=args.max_batch_size,
        batch_window_ms=args.batch_window_ms,
        max_queue=args.max_queue,
        default_max_tokens=args.max_tokens,
        shutdown_timeout=args.shutdown_timeout,
    )

    def ready(url: str, models: Any) -> None:
        names = ", ".join(f"{n} (base)" if s.path is None else n for n, s in models.served.items())
        print(f"Serving {names}", file=sys.stderr)
        print(f"  OpenAI API at {url}  (stop: Ctrl-C or SIGTERM)", file=sys.stderr, flush=True)

    serve(opts, on_ready=ready)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        allow_abbrev=False,
        help="serve adapters over an OpenAI-compatible HTTP API (chat, completions, streaming, tools)",
        description="Serve one or more adapters on their common base over OpenAI's API: /v1/models, "
        "/v1/chat/completions, /v1/completions, /health. Each adapter is a model name; the base is too.",
    )
    p.add_argument(
        "--adapter",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="adapter folder (a training run's output_dir), served under NAME (default: the folder's name); "
        "repeat for several adapters on the same base",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    opt(
        p,
        "api-key",
        default=None,
        metavar="KEY",
        help="require `Authorization: Bearer KEY` on every route but /health; needed to bind a non-loopback "
        "address (also read from LORA_FINETUNE_API_KEY)",
    )
    opt(p, "device", help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    opt(p, "max-batch-size", type=int, default=8, help="most sequences generated together (default 8; 1: no batching)")
    opt(
        p,
        "batch-window-ms",
        type=float,
        default=10.0,
        help="how long the first waiting request waits for others to batch with (default 10 ms)",
    )
    opt(p, "max-queue", type=int, default=64, help="requests allowed to wait; more are answered 429 (default 64)")
    opt(p, "max-tokens", type=int, default=512, help="max_tokens for requests that give none (default 512)")
    opt(
        p,
        "shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM/Ctrl-C, seconds to let requests in flight finish (default 30)",
    )
    p.set_defaults(func=cmd_serve)
