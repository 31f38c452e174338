"""Serving adapters over HTTP in OpenAI's API: one base, many adapters, batched together.

`engine.py` loads the base once with every adapter and runs the batching generation worker;
`protocol.py` holds OpenAI's request and response shapes and tool-call parsing; `app.py` the
FastAPI routes; `server.py` the address checks, socket and uvicorn. Needs the `serve` extra
(fastapi, uvicorn). Like `use/`, nothing here imports `training/`.
"""

from __future__ import annotations

from .engine import BASE_ADAPTER, Engine, Models, ServeError, load_models
from .server import ServeOptions, serve

__all__ = ["BASE_ADAPTER", "Engine", "Models", "ServeError", "ServeOptions", "load_models", "serve"]
