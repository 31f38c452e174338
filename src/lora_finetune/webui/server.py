"""Serve the page: `lora-finetune webui`. Gradio reads its settings from the environment when it
is imported, so they are set here first: its temporary files (uploads in flight) live inside the
workdir, and it phones nowhere (no analytics, no share link)."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

from ..errors import ConfigError
from .paths import MAX_UPLOAD_BYTES, Workdir


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """A port already taken says so now, in words (Gradio would search for another one)."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: give a port between 1 and 65535 (default 7860).")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"Cannot listen on {host}:{port} ({e.strerror}): another program uses the port, or the "
                "address is not this machine's. Choose another --port."
            ) from None


def launch(
    workdir: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    allow_remote: bool = False,
    block: bool = True,
    quiet: bool = False,
) -> tuple[Any, str]:
    """Build the page for `workdir` and serve it; returns (Blocks, url) at once when not `block`."""
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"--host {host} would let other machines use this page, which trains, reads and writes files "
            "in the workdir and has no login. Keep the default 127.0.0.1 (use an SSH tunnel from "
            "elsewhere), or add --allow-remote if the network is trusted."
        )
    wd = Workdir.create(workdir)
    check_port(host, port)
    os.environ["GRADIO_TEMP_DIR"] = str(wd.state / "tmp")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from .app import build_app

    demo = build_app(wd)
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=True,
        quiet=quiet,
        max_file_size=MAX_UPLOAD_BYTES,
        footer_links=[],
        ssr_mode=False,
    )
    if not block:
        return demo, url
    try:
        demo.block_thread()
    finally:
        demo.webui.jobs.shutdown()
    return demo, url


__all__ = ["check_port", "is_loopback", "launch"]
