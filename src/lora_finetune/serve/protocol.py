"""OpenAI's request and response shapes: the requests we accept (checked by pydantic, strict
types), the records they become, the error body, and tool calls parsed back out of the text.

Tool calls are read in the Hermes/Qwen form the chat templates of Qwen2.5/Qwen3 (and many
others) teach: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_STOP = 4
MAX_STOP_CHARS = 256
MAX_MESSAGES = 512
"""Each assistant turn in the history costs a render of the conversation (templates/chat.py), so
the history is bounded; a context-sized conversation fits well within it."""
MAX_TOOLS = 128
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


class APIError(Exception):
    """An error answered as OpenAI's `{"error": {...}}` with an HTTP status."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------- requests
class _Shape(BaseModel):
    # Unknown fields are ignored (clients send many); known ones must have the right JSON type.
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Shape):
    type: str
    text: str | None = None


class FunctionCall(_Shape):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Shape):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Shape):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Shape):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Shape):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Shape):
    include_usage: bool | None = False


class _Common(_Shape):
    model: str = Field(max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stops(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > MAX_STOP:
            raise APIError(400, f"stop: at most {MAX_STOP} stop sequences, got {len(stop)}.", param="stop")
        if any(not s for s in stop):
            raise APIError(400, "stop: stop sequences must not be empty strings.", param="stop")
        if any(len(s) > MAX_STOP_CHARS for s in stop):
            raise APIError(400, f"stop: stop sequences are at most {MAX_STOP_CHARS} characters.", param="stop")
        return tuple(stop)

    def unsupported(self) -> None:
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server.", param="logit_bias")


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.logprobs or self.top_logprobs:
            raise APIError(400, "logprobs are not supported by this server.", param="logprobs")
        if self.tool_choice not in (None, "auto", "none"):
            raise APIError(
                400,
                "tool_choice: only 'auto' and 'none' are supported (this server cannot force a tool call).",
                param="tool_choice",
            )


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> None:
        super().unsupported()
        for name, bad in (("echo", self.echo), ("logprobs", self.logprobs is not None), ("suffix", self.suffix)):
            if bad:
                raise APIError(400, f"{name} is not supported by this server.", param=name)
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of is not supported by this server.", param="best_of")

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise APIError(400, "prompt: give a string or a non-empty list of strings.", param="prompt")
        return prompts


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "ContentPart", "Message", "Tool", "ToolCall"}


def parse(model: type[_Shape], body: Any) -> Any:
    """Validate a decoded JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        # Union branches appear in the location as type tags (`str`, `list[ContentPart]`): drop them.
        loc = [str(x) for x in err["loc"] if "[" not in str(x) and str(x) not in _TYPE_TAGS]
        param = ".".join(loc) or None
        extra = f" ({len(e.errors())} problems)" if len(e.errors()) > 1 else ""
        raise APIError(400, f"{param or 'body'}: {err['msg']}{extra}", param=param) from None


# --------------------------------------------------------------------------- records
def _text(content: str | list[ContentPart] | None, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for p in content:
        if p.type != "text" or p.text is None:
            raise APIError(400, f"{where}: only text content parts are supported, got {p.type!r}.", param=where)
        parts.append(p.text)
    return "".join(parts)


def chat_record(req: ChatRequest, tools_ok: bool) -> dict[str, Any]:
    """The record (data/formats.py's shape) whose prompt answers the conversation."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        where = f"messages.{i}.content"
        text = _text(m.content, where)
        if m.role in ("system", "developer") and not messages:
            system.append(text)
            continue
        if m.role in ("system", "developer"):
            raise APIError(400, f"messages.{i}: system messages must come first.", param=f"messages.{i}.role")
        msg: dict[str, Any] = {"role": m.role, "content": text, "input": ""}
        if m.role in ("tool",) or m.tool_calls:
            if not tools_ok:
                raise APIError(
                    400,
                    f"messages.{i}: this model's chat template has no tool support, so tool calls and tool "
                    "results cannot be shown to it.",
                    param=f"messages.{i}",
                )
        if m.tool_calls:
            msg["tool_calls"] = [_call(c) for c in m.tool_calls]
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        if m.name and m.role == "tool":
            msg["name"] = m.name
        messages.append(msg)
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise APIError(
            400,
            "messages: the last message must be from the user (or a tool result) for the model to answer.",
            param="messages",
        )
    record: dict[str, Any] = {"system": "\n".join(system) if system else None, "messages": messages}
    if req.tools:
        if not tools_ok:
            raise APIError(
                400,
                "tools: this model's chat template does not support tools (it never shows them to the model).",
                param="tools",
            )
        record["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
    return record


def _call(c: ToolCall) -> dict[str, Any]:
    return {"type": "function", "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}


def _arguments(args: str | dict[str, Any]) -> Any:
    """Chat templates expect arguments as an object; OpenAI sends a JSON string."""
    if isinstance(args, dict):
        return args
    try:
        return json.loads(args)
    except ValueError:
        return args


# --------------------------------------------------------------------------- tool calls
_TOOL_RE = re.compile(re.escape(TOOL_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(TOOL_CLOSE) + r"|$)", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) from generated text. Blocks that are not valid JSON with a `name`
    stay in the content, so nothing the model wrote is lost."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    pos = 0
    for m in _TOOL_RE.finditer(text):
        try:
            obj = json.loads(m.group(1))
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        kept.append(text[pos : m.start()])
        pos = m.end()
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": obj["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                },
            }
        )
    kept.append(text[pos:])
    content = "".join(kept).strip() if calls else text
    return (content or None) if calls else text, calls


# --------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


__all__ = [
    "APIError",
    "ChatRequest",
    "CompletionRequest",
    "TOOL_OPEN",
    "chat_record",
    "error_body",
    "new_id",
    "parse",
    "parse_tool_calls",
    "sse",
    "usage",
]
