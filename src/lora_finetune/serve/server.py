"""Running the server: the address checks, the socket (bound before the model loads, so a busy
port is reported at once), uvicorn, and an orderly stop.

On SIGTERM or Ctrl-C uvicorn stops accepting connections and waits up to `shutdown_timeout`
seconds for the requests in flight; then the engine aborts what is left and the process exits.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run_record import open_adapter
from .engine import Engine, ServeError, load_models

log = logging.getLogger(__name__)

API_KEY_ENV = "LORA_FINETUNE_API_KEY"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class ServeOptions:
    adapters: list[tuple[str, Path]]
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    device: str | None = None
    max_batch_size: int = 8
    batch_window_ms: float = 10.0
    max_queue: int = 64
    default_max_tokens: int = 512
    shutdown_timeout: float = 30.0


def parse_adapter_arg(text: str) -> tuple[str, Path]:
    """`DIR` (named after the folder) or `NAME=DIR`."""
    name, sep, path = text.partition("=")
    if not sep or Path(text).exists():
        folder = Path(text)
        name = folder.resolve().name if folder.exists() else folder.name
        return name, folder
    if not NAME_RE.match(name):
        raise ServeError(
            f"--adapter {text}: {name!r} is not a usable model name (letters, digits, '.', '_' and '-', "
            "at most 64 characters)."
        )
    return name, Path(path)


def check_adapters(adapters: list[tuple[str, Path]]) -> None:
    seen: dict[str, Path] = {}
    for name, path in adapters:
        if not NAME_RE.match(name):
            raise ServeError(
                f"--adapter {path}: the folder name {name!r} is not a usable model name; "
                "name it with --adapter NAME=DIR (letters, digits, '.', '_' and '-')."
            )
        if name in seen:
            raise ServeError(
                f"Two adapters are named {name!r} ({seen[name]} and {path}); name them apart with --adapter NAME=DIR."
            )
        seen[name] = path
        if not Path(path).is_dir():
            raise ServeError(f"--adapter {name}={path}: no such folder. Point it at the output_dir of a training run.")
        open_adapter(path)  # an adapter folder, complete (its manifest), with a readable record


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a ServeError that says what to do."""
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port}: a port is a number from 1 to 65535.")
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ServeError(f"--host {host}: cannot resolve this address ({e.strerror}).") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(
                f"Port {port} on {host} is already in use (another server, perhaps another `lora-finetune "
                "serve`?). Stop it, or pick another --port."
            ) from None
        if e.errno == errno.EACCES:
            msg = f"Not allowed to listen on port {port} (ports below 1024 need root): pick another --port."
            raise ServeError(msg) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"--host {host}: not an address of this machine.") from None
        raise ServeError(f"Cannot listen on {host}:{port}: {e.strerror or e}.") from None
    sock.set_inheritable(True)
    return sock


def check_options(opts: ServeOptions) -> None:
    """Everything that can be checked before the model loads."""
    check_adapters(opts.adapters)
    if opts.api_key is not None and not opts.api_key.strip():
        raise ServeError("--api-key is empty: give a key, or leave the option out on 127.0.0.1.")
    if not is_loopback(opts.host) and not opts.api_key:
        raise ServeError(
            f"--host {opts.host} lets other machines reach this server: set an API key with --api-key KEY "
            f"(or the environment variable {API_KEY_ENV}), or bind 127.0.0.1."
        )
    for name, value, low in (
        ("--max-batch-size", opts.max_batch_size, 1),
        ("--max-queue", opts.max_queue, 1),
        ("--max-tokens", opts.default_max_tokens, 1),
    ):
        if value < low:
            raise ServeError(f"{name} {value}: must be at least {low}.")
    if opts.batch_window_ms < 0 or opts.shutdown_timeout < 0:
        raise ServeError("--batch-window-ms and --shutdown-timeout must not be negative.")


@contextlib.contextmanager
def _quiet_signals() -> Iterator[None]:
    """uvicorn handles SIGTERM/SIGINT while it runs, then raises them again with the handlers
    it found; these make that a no-op, so the engine is closed and the command exits 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def serve(opts: ServeOptions, on_ready: Any = None) -> None:
    """Check, bind, load, serve until SIGTERM/Ctrl-C. `on_ready(url, models)` is called once the
    model is loaded (the CLI prints it)."""
    import uvicorn

    from .app import create_app

    check_options(opts)
    sock = bind(opts.host, opts.port)
    engine = None
    try:
        models = load_models([(n, p) for n, p in opts.adapters], device=opts.device)
        engine = Engine(
            models,
            max_batch_size=opts.max_batch_size,
            batch_window_s=opts.batch_window_ms / 1000,
            max_queue=opts.max_queue,
        ).start()
        app = create_app(engine, api_key=opts.api_key, default_max_tokens=opts.default_max_tokens)
        config = uvicorn.Config(
            app,
            log_level="info",
            timeout_graceful_shutdown=opts.shutdown_timeout,
            lifespan="off",
            access_log=bool(os.environ.get("LORA_FINETUNE_ACCESS_LOG")),
        )
        server = uvicorn.Server(config)
        if on_ready is not None:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            on_ready(f"http://{shown}:{port}/v1", models)
        with _quiet_signals():
            server.run(sockets=[sock])
    finally:
        if engine is not None:
            engine.close(timeout=5.0)
        sock.close()


__all__ = ["API_KEY_ENV", "ServeOptions", "bind", "check_options", "is_loopback", "parse_adapter_arg", "serve"]
