"""The server through the official `openai` client: models, chat, completions, streaming,
several adapters and the base in one batch (the same greedy text as `use.generate`), sampling
settings, tool calls and the API key."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from serve_helpers import TOOL_ANSWER, WEATHER_TOOL, start_server

QUESTION = "中国的首都是哪里？"


def _record(question: str) -> dict:
    return {"system": None, "messages": [{"role": "user", "content": question, "input": ""}]}


@pytest.fixture(scope="module")
def expected(adapter, adapter_b):
    """Greedy answers from `use.generate`, one model at a time: {model name: (text, tokens)}."""
    from lora_finetune.use import generate, load_for_inference

    out = {}
    for name, path, base_only in (("a", adapter, False), ("b", adapter_b, False), ("qwen3", adapter, True)):
        im = load_for_inference(path, base_only=base_only, device="cpu")
        res = generate(im, [_record(QUESTION)], max_new_tokens=12)[0]
        out[name] = (res["text"], res["tokens"])
    return out


def _stop_in(text: str) -> str | None:
    """A two-character piece from the middle of `text` to use as a stop string."""
    for i in range(2, len(text) - 2):
        piece = text[i : i + 2]
        if piece.strip() == piece and "\ufffd" not in piece and piece not in text[:i]:
            return piece
    return None


def test_health_and_models(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["a", "b", "qwen3"]


def test_chat_is_the_same_greedy_answer_as_generate(server, expected):
    client = server.client()
    for name in ("a", "b", "qwen3"):
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0
        )
        text, tokens = expected[name]
        assert r.choices[0].message.content.strip() == text
        assert r.choices[0].message.role == "assistant"
        assert r.usage.completion_tokens == tokens
        assert r.usage.prompt_tokens > 0
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.model == name


def test_two_adapters_and_the_base_batched_together(server, expected):
    client = server.client()
    before = server.engine.batches
    results: dict[str, str] = {}
    barrier = threading.Barrier(3)

    def ask(name: str) -> None:
        barrier.wait()
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=12, temperature=0
        )
        results[name] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(n,)) for n in ("a", "b", "qwen3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert server.engine.batches - before == 1, "the three requests should run as one batch"
    for name in ("a", "b", "qwen3"):
        assert results[name].strip() == expected[name][0]
    # The adapters really differ from each other and from the base on this prompt.
    assert len({expected[n] for n in ("a", "b", "qwen3")}) > 1


def test_chat_streaming_matches_the_whole_answer(server, expected):
    client = server.client()
    stream = client.chat.completions.create(
        model="b",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == expected["b"][0]
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == expected["b"][1]


def test_completions_plain_and_streamed(server):
    client = server.client()
    r = client.completions.create(model="qwen3", prompt="Hello world", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 8
    assert r.choices[0].finish_reason == "length"
    streamed = client.completions.create(model="qwen3", prompt="Hello world", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text
    # A list of prompts, n choices each: indexes prompt-major, as OpenAI numbers them.
    many = client.completions.create(model="a", prompt=["Hello", "LoRA"], max_tokens=4, n=2, temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text  # greedy: the same answer twice


def test_sampling_seed_n_and_stop(server):
    client = server.client()
    kw = dict(model="qwen3", prompt="The quick", max_tokens=10, temperature=1.0, top_p=0.9, seed=123)
    first = client.completions.create(**kw, n=3)
    again = client.completions.create(**kw, n=3)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeded: reproducible
    assert len({c.text for c in first.choices}) > 1  # each choice its own draw
    plain = client.completions.create(model="a", prompt="The quick", max_tokens=10, temperature=0).choices[0].text
    stop = _stop_in(plain)
    assert stop, plain
    cut = client.completions.create(model="a", prompt="The quick", max_tokens=10, temperature=0, stop=[stop, "never"])
    assert cut.choices[0].text == plain[: plain.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    # Penalties change greedy text once a token repeats; they are accepted and applied.
    pen = client.completions.create(
        model="qwen3", prompt="The quick", max_tokens=10, temperature=0, frequency_penalty=2.0, presence_penalty=2.0
    )
    assert pen.usage.completion_tokens > 0


def test_stop_strings_while_streaming(server):
    client = server.client()
    plain = client.completions.create(model="a", prompt="The quick", max_tokens=12, temperature=0).choices[0].text
    stop = _stop_in(plain)
    assert stop, plain
    chunks = list(
        client.completions.create(model="a", prompt="The quick", max_tokens=12, temperature=0, stop=stop, stream=True)
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain[: plain.index(stop)]


def test_multi_turn_and_system_prompt(server):
    client = server.client()
    r = client.chat.completions.create(
        model="a",
        messages=[
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": [{"type": "text", "text": "太阳从哪边升起？"}]},
        ],
        max_tokens=6,
        temperature=0,
    )
    assert r.usage.prompt_tokens > 20


def test_prompt_is_built_by_the_training_template(server, adapter):
    """The prompt the server sends is the one `use.generate` builds (byte for byte)."""
    from lora_finetune.templates import encode_prompt
    from lora_finetune.use import load_for_inference

    im = load_for_inference(adapter, device="cpu")
    ids = encode_prompt(_record(QUESTION), im.tokenizer, im.template)
    r = server.client().chat.completions.create(
        model="a", messages=[{"role": "user", "content": QUESTION}], max_tokens=1, temperature=0
    )
    assert r.usage.prompt_tokens == len(ids)


# --------------------------------------------------------------------------- tools
@pytest.fixture(scope="module")
def tool_server(tool_model):
    from lora_finetune.serve import load_models

    running = start_server(load_models([("tooly", tool_model)], device="cpu"))
    yield running
    running.stop()


def test_tool_calls_are_parsed_back(tool_server):
    client = tool_server.client()
    r = client.chat.completions.create(
        model="toolbase",
        messages=[{"role": "user", "content": "北京天气怎么样？"}],
        tools=[WEATHER_TOOL],
        max_tokens=120,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "北京"}
    assert call.id.startswith("call_") and choice.message.content is None
    # The same, streamed: no tool-call markup leaks into the content deltas.
    chunks = list(
        client.chat.completions.create(
            model="toolbase",
            messages=[{"role": "user", "content": "北京天气怎么样？"}],
            tools=[WEATHER_TOOL],
            max_tokens=120,
            temperature=0,
            stream=True,
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in content
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "北京"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Without tools the text is returned as it is.
    plain = client.chat.completions.create(
        model="toolbase", messages=[{"role": "user", "content": "北京天气怎么样？"}], max_tokens=120, temperature=0
    )
    assert plain.choices[0].message.tool_calls is None


def test_tool_results_go_back_into_the_prompt(tool_server):
    client = tool_server.client()
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}
    r = client.chat.completions.create(
        model="tooly",
        messages=[
            {"role": "user", "content": "北京天气怎么样？"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "晴，25度"},
        ],
        tools=[WEATHER_TOOL],
        max_tokens=5,
        temperature=0,
    )
    assert r.usage.prompt_tokens > 40


def test_tool_parsing_unit():
    from lora_finetune.serve.protocol import parse_tool_calls

    content, calls = parse_tool_calls("Let me check.\n" + TOOL_ANSWER)
    assert content == "Let me check." and calls[0]["function"]["name"] == "get_weather"
    assert parse_tool_calls("<tool_call>not json</tool_call>") == ("<tool_call>not json</tool_call>", [])
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}')  # cut before the close tag
    assert content is None and calls[0]["function"]["arguments"] == "{}"


def test_tools_refused_for_a_template_without_them(server):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(
            model="a", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL], max_tokens=2
        )
    assert e.value.body["param"] == "tools" and "does not support tools" in e.value.body["message"]


# --------------------------------------------------------------------------- api key
def test_api_key(models):
    import openai

    running = start_server(models, api_key="s3cret")
    try:
        assert httpx.get(f"{running.url}/health").status_code == 200  # /health needs no key
        with pytest.raises(openai.AuthenticationError) as e:
            running.client(api_key="wrong").models.list()
        assert e.value.body["code"] == "invalid_api_key"
        r = httpx.post(f"{running.url}/v1/completions", json={"model": "a", "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert [m.id for m in running.client(api_key="s3cret").models.list().data] == ["a", "b", "qwen3"]
        r = running.client(api_key="s3cret").completions.create(model="a", prompt="hi", max_tokens=2)
        assert r.usage.completion_tokens >= 1
    finally:
        running.stop()
