"""Bad requests and overload, as a hostile client sends them: each is OpenAI's error JSON with
the right status, never a 500 with a traceback; a full queue is a 429; a client that goes away
cancels its generation."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from serve_helpers import start_server

HI = [{"role": "user", "content": "hi"}]


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"]
    return err


@pytest.mark.parametrize(
    "kw, param",
    [
        ({"max_tokens": "5"}, "max_tokens"),  # wrong JSON type
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 10**6}, "n"),
        ({"n": 9}, "n"),  # more than --max-batch-size sequences
        ({"seed": 2**70}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stop": "x" * 1000}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}] * 600}, "messages"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}] * 200}, "tools"),
        ({"stream": "yes"}, "stream"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]}, "messages.1.role"),
        ({"model": 42}, "model"),
        ({"max_tokens": 600}, "messages"),  # over the model's 512-token context
    ],
)
def test_bad_chat_requests_are_400_naming_the_field(server, kw, param):
    body = {"model": "a", "messages": HI, "max_tokens": 4, **kw}
    err = _error(httpx.post(f"{server.url}/v1/chat/completions", json=body), 400)
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"


def test_the_openai_client_sees_the_errors(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=HI)
    assert e.value.body["code"] == "model_not_found" and "a, b, qwen3" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="a", prompt="x " * 2000, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="a", messages=HI, max_tokens=10**6)
    assert e.value.body["code"] == "context_length_exceeded"


@pytest.mark.parametrize("name", ["../../etc/passwd", "/tmp", ".", "a/../b", "__base__", "A", "a ", ""])
def test_model_names_are_only_the_configured_names(server, name):
    err = _error(httpx.post(f"{server.url}/v1/completions", json={"model": name, "prompt": "x"}), 404)
    assert err["code"] == "model_not_found"


def test_malformed_bodies(server):
    url = f"{server.url}/v1/chat/completions"
    assert _error(httpx.post(url, content=b"{not json"), 400)["code"] == "invalid_json"
    assert _error(httpx.post(url, content=b"\xff\xfe\x00"), 400)["code"] == "invalid_json"
    _error(httpx.post(url, content=b""), 400)
    _error(httpx.post(url, json=[1, 2]), 400)
    _error(httpx.post(url, json=None), 400)
    assert _error(httpx.post(url, content=b"x" * (5 * 2**20)), 413)["code"] == "request_too_large"
    _error(httpx.get(url), 405)
    _error(httpx.get(f"{server.url}/v1/nothing"), 404)
    _error(httpx.post(f"{server.url}/v1/completions", json={"model": "a", "prompt": ""}), 400)
    _error(httpx.post(f"{server.url}/v1/completions", json={"model": "a", "prompt": []}), 400)
    _error(httpx.post(f"{server.url}/v1/completions", json={"model": "a", "prompt": [1, 2]}), 400)
    _error(httpx.post(f"{server.url}/v1/completions", json={"model": "a", "prompt": "x", "echo": True}), 400)


def test_a_huge_prompt_is_refused_not_run(server):
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "a", "prompt": "你好" * 200_000}, timeout=60)
    assert _error(r, 400)["code"] == "context_length_exceeded"
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_a_full_queue_answers_429(models):
    running = start_server(models, max_batch_size=1, max_queue=1, batch_window_s=0.0)
    try:
        client = running.client()
        outcomes: list[str] = []
        barrier = threading.Barrier(6)

        def ask() -> None:
            barrier.wait()
            try:
                client.completions.create(model="a", prompt="hello", max_tokens=200, temperature=0)
                outcomes.append("ok")
            except openai.RateLimitError as e:
                assert e.body["code"] == "rate_limit_exceeded"
                outcomes.append("429")

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(outcomes) == 6 and "429" in outcomes and "ok" in outcomes
    finally:
        running.stop()


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_goes_away_cancels_its_generation(server):
    engine = server.engine
    body = {"model": "b", "prompt": "hello", "max_tokens": 480, "temperature": 0, "stream": True}
    before = engine.cancelled_rows
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                break  # the first token is here: hang up
    assert _wait_for(lambda: engine.cancelled_rows > before), "the streamed generation went on"
    assert _wait_for(lambda: engine.stats()["running"] == 0)
    # Not streamed: the client gives up waiting.
    before = engine.cancelled_rows
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}, timeout=0.3)
    assert _wait_for(lambda: engine.cancelled_rows > before), "the generation went on after the client left"
    # The server is still fine.
    assert server.client().completions.create(model="a", prompt="hi", max_tokens=2).usage.completion_tokens >= 1
