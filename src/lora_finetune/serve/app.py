"""The HTTP side: FastAPI routes in OpenAI's shapes, over an `Engine`.

Every error a client can cause is OpenAI's `{"error": {"message", "type", "param", "code"}}`
with its HTTP status (400 bad request, 401 key, 404 model, 413 body, 429 queue full); anything
unexpected is a 500 with a one-line message (the traceback goes to the server's log only).
Model names are the configured adapter names and the base's name; nothing in a request can
name a file or folder.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LoraFinetuneError
from ..templates import encode_prompt
from ..templates.encode import bos_prefix
from .engine import Delta, Engine, Failed, Finished, Job, QueueFull, Sampling, ServedModel
from .protocol import (
    TOOL_OPEN,
    APIError,
    ChatRequest,
    CompletionRequest,
    chat_record,
    error_body,
    new_id,
    now,
    parse,
    parse_tool_calls,
    sse,
    usage,
)

log = logging.getLogger(__name__)

_GONE = object()
"""Put on a job's event queue when its client disconnects."""


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    default_max_tokens: int = 512,
    max_body_bytes: int = 4 * 2**20,
) -> FastAPI:
    models = engine.models
    app = FastAPI(title="lora-finetune serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(msg, kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            error_body(f"internal server error ({type(exc).__name__}); see the server's log", "server_error"),
            status_code=500,
        )

    # ------------------------------------------------------------------ helpers
    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise APIError(
                401,
                "Missing or wrong API key: send the header `Authorization: Bearer KEY` with the key the "
                "server was started with (--api-key).",
                type="invalid_request_error",
                code="invalid_api_key",
            )

    async def read(request: Request, shape: type) -> Any:
        check_key(request)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            raise APIError(413, f"Request body over {max_body_bytes} bytes.", code="request_too_large")
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise APIError(413, f"Request body over {max_body_bytes} bytes.", code="request_too_large")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"The body is not valid JSON ({e}).", code="invalid_json") from None
        req = parse(shape, body)
        req.unsupported()
        return req

    def lookup(name: str) -> ServedModel:
        served = models.served.get(name)
        if served is None:
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise APIError(
                404,
                f"The model {shown!r} does not exist here; this server serves: {', '.join(models.served)}.",
                param="model",
                code="model_not_found",
            )
        return served

    def budget(req: Any, prompt_len: int, param: str) -> int:
        """max_tokens for a prompt: as asked (checked against the context), else the default."""
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        ctx = models.context_length
        if prompt_len == 0:
            raise APIError(400, f"{param}: the prompt is empty (0 tokens).", param=param)
        if ctx is not None and prompt_len + (asked or 1) > ctx:
            raise APIError(
                400,
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{prompt_len + (asked or 1)} tokens ({prompt_len} in the {param}, {asked or 1} in the "
                "completion). Please reduce the length of the prompt or the completion.",
                param=param,
                code="context_length_exceeded",
            )
        if asked is not None:
            return asked
        return min(default_max_tokens, ctx - prompt_len) if ctx is not None else default_max_tokens

    def make_job(served: ServedModel, req: Any, prompts: list[list[int]], param: str) -> Job:
        n = req.n or 1
        if n * len(prompts) > engine.max_batch_size:
            raise APIError(
                400,
                f"n: {n} choices x {len(prompts)} prompts = {n * len(prompts)} sequences; this server runs at "
                f"most {engine.max_batch_size} at once (--max-batch-size).",
                param="n",
            )
        stop = req.stops()
        job = Job(served, asyncio.get_running_loop())
        for ids in prompts:
            sampling = Sampling(
                max_tokens=budget(req, len(ids), param),
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0,
                seed=req.seed,
                stop=stop,
            )
            for _ in range(n):
                job.add_row(ids, sampling)
        return job

    def submit(job: Job) -> None:
        try:
            engine.submit(job)
        except QueueFull as e:
            raise APIError(
                429, f"The server is busy ({e}); retry shortly.", type="rate_limit_error", code="rate_limit_exceeded"
            ) from None

    async def encode(served: ServedModel, fn: Any) -> Any:
        def run() -> Any:
            with served.tokenizer_lock:
                return fn()

        try:
            return await run_in_threadpool(run)
        except LoraFinetuneError as e:
            raise APIError(400, str(e)) from None
        except Exception as e:  # the chat template refused the conversation (jinja's raise_exception)
            if type(e).__name__ in ("TemplateError", "TemplateSyntaxError", "UndefinedError"):
                msg = f"The model's chat template refused these messages: {e}"
                raise APIError(400, msg, param="messages") from None
            raise

    async def watch(request: Request, job: Job) -> None:
        try:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    job.cancel()
                    if job.events is not None:
                        job.events.put_nowait(_GONE)
                    return
        except Exception:  # the connection is gone or closed: nothing to watch
            return

    async def events(request: Request, job: Job) -> AsyncIterator[Any]:
        """The job's events until every row has finished; cancels the job on the way out."""
        watcher = asyncio.create_task(watch(request, job))
        left = len(job.rows)
        try:
            while left:
                ev = await job.events.get()  # type: ignore[union-attr]
                if ev is _GONE:
                    return
                if isinstance(ev, Finished):
                    if ev.reason == "cancelled":
                        raise APIError(503, "The server stopped this request (shutting down).", type="server_error")
                    left -= 1
                if isinstance(ev, Failed):
                    raise APIError(500, ev.message, type="server_error")
                yield ev
        finally:
            job.cancel()
            watcher.cancel()

    async def _whole(
        request: Request,
        job: Job,
        choice: Callable[[Finished], dict[str, Any]],
        rid: str,
        kind: str,
        created: int,
        model: str,
        prompt_tokens: int,
    ) -> Any:
        """A non-streamed answer: every row's finished choice, in order, with the usage."""
        choices: dict[int, dict[str, Any]] = {}
        tokens = 0
        async for ev in events(request, job):
            if isinstance(ev, Finished):
                tokens += ev.tokens
                choices[ev.index] = choice(ev)
        if len(choices) < len(job.rows):
            return JSONResponse(error_body("client disconnected", "invalid_request_error"), status_code=499)
        return {
            "id": rid,
            "object": kind,
            "created": created,
            "model": model,
            "choices": [choices[i] for i in sorted(choices)],
            "usage": usage(prompt_tokens, tokens),
        }

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **engine.stats()}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_key(request)
        created = now()
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "lora-finetune",
                "root": models.base_name,
                "parent": None if served.path is None else models.base_name,
            }
            for name, served in models.served.items()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        req: ChatRequest = await read(request, ChatRequest)
        served = lookup(req.model)
        record = chat_record(req, served.supports_tools)
        tools = bool(req.tools) and req.tool_choice != "none"
        ids = await encode(served, lambda: encode_prompt(record, served.tokenizer, served.template))
        job = make_job(served, req, [ids], "messages")
        submit(job)
        rid, created = new_id("chatcmpl"), now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(chat_stream(request, job, rid, created, req.model, tools, include_usage, len(ids)))

        def choice(ev: Finished) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": ev.text}
            reason = ev.reason
            if tools:
                content, calls = parse_tool_calls(ev.text)
                if calls:
                    message = {"role": "assistant", "content": content, "tool_calls": calls}
                    reason = "tool_calls"
            return {"index": ev.index, "message": message, "logprobs": None, "finish_reason": reason}

        return await _whole(request, job, choice, rid, "chat.completion", created, req.model, len(ids))

    async def chat_stream(
        request: Request,
        job: Job,
        rid: str,
        created: int,
        model: str,
        tools: bool,
        include_usage: bool,
        prompt_tokens: int,
    ) -> AsyncIterator[bytes]:
        def chunk(index: int, delta: dict[str, Any], reason: str | None = None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
            return sse(
                {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}
            )

        text = {r.index: "" for r in job.rows}
        sent = {r.index: 0 for r in job.rows}
        tokens = 0
        for r in job.rows:
            yield chunk(r.index, {"role": "assistant", "content": ""})
        try:
            async for ev in events(request, job):
                if isinstance(ev, Delta):
                    text[ev.index] += ev.text
                    shown = _before_tool_call(text[ev.index]) if tools else text[ev.index]
                    if len(shown) > sent[ev.index]:
                        yield chunk(ev.index, {"content": shown[sent[ev.index] :]})
                        sent[ev.index] = len(shown)
                elif isinstance(ev, Finished):
                    tokens += ev.tokens
                    reason = ev.reason
                    calls: list[dict[str, Any]] = []
                    if tools:
                        _, calls = parse_tool_calls(ev.text)
                        rest = "" if calls else ev.text[sent[ev.index] :]
                        if rest:
                            yield chunk(ev.index, {"content": rest})
                    if calls:
                        reason = "tool_calls"
                        yield chunk(ev.index, {"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]})
                    yield chunk(ev.index, {}, reason)
        except APIError as e:
            yield sse(e.body())
            yield sse("[DONE]")
            return
        if include_usage:
            yield sse(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage(prompt_tokens, tokens),
                }
            )
        yield sse("[DONE]")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req: CompletionRequest = await read(request, CompletionRequest)
        served = lookup(req.model)
        texts = req.prompts()
        prefix = await encode(served, lambda: bos_prefix(served.tokenizer, served.template))

        def tokenize() -> list[list[int]]:
            return [prefix + served.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

        prompts = await encode(served, tokenize)
        job = make_job(served, req, prompts, "prompt")
        submit(job)
        rid, created = new_id("cmpl"), now()
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(completion_stream(request, job, rid, created, req.model, include_usage, prompt_tokens))

        def choice(ev: Finished) -> dict[str, Any]:
            return {"index": ev.index, "text": ev.text, "logprobs": None, "finish_reason": ev.reason}

        return await _whole(request, job, choice, rid, "text_completion", created, req.model, prompt_tokens)

    async def completion_stream(
        request: Request, job: Job, rid: str, created: int, model: str, include_usage: bool, prompt_tokens: int
    ) -> AsyncIterator[bytes]:
        def chunk(index: int, text: str, reason: str | None = None) -> bytes:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
            head = {"id": rid, "object": "text_completion", "created": created, "model": model}
            return sse({**head, "choices": [choice]})

        tokens = 0
        try:
            async for ev in events(request, job):
                if isinstance(ev, Delta):
                    yield chunk(ev.index, ev.text)
                elif isinstance(ev, Finished):
                    tokens += ev.tokens
                    yield chunk(ev.index, "", ev.reason)
        except APIError as e:
            yield sse(e.body())
            yield sse("[DONE]")
            return
        if include_usage:
            yield sse(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage(prompt_tokens, tokens),
                }
            )
        yield sse("[DONE]")

    return app


def _before_tool_call(text: str) -> str:
    """The text a tool-using stream may show now: up to a `<tool_call>` (or the start of one)."""
    cut = text.find(TOOL_OPEN)
    if cut >= 0:
        return text[:cut]
    for k in range(min(len(TOOL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_OPEN[:k]):
            return text[:-k]
    return text


def _stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


__all__ = ["create_app"]
