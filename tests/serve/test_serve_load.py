"""A bounded load test: 16 concurrent clients send 64 requests (chat and completions, streamed
and not, two adapters and the base, different lengths). Every request is answered once, with
its own answer: the text sequential greedy generation gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from lora_finetune.templates.encode import bos_prefix

QUESTIONS = [
    "中国的首都是哪里？",
    "把“你好”翻译成英文。",
    "The quick brown fox",
    "计算 3 加 5 等于多少。",
    "太阳从东方升起。",
    "Hello world, hello LoRA!",
    "水的化学式是什么？",
    "一年有几个月？",
]
MODELS = ["a", "b", "qwen3"]
CLIENTS, REQUESTS, HARD_TIMEOUT_S = 16, 64, 300


def _case(i: int) -> dict:
    return {
        "model": MODELS[i % 3],
        "question": QUESTIONS[i % len(QUESTIONS)],
        "max_tokens": 4 + (i * 7) % 13,
        "stream": i % 2 == 0,
        "chat": (i // 2) % 2 == 0,
    }


@pytest.fixture(scope="module")
def sequential(adapter, adapter_b):
    """Greedy answers, one request at a time, from `use/inference.py`:
    {(model, question, max_tokens, chat): (text, tokens)}."""
    from lora_finetune.use.inference import generate, load_for_inference, stream_ids

    ims = {
        "a": load_for_inference(adapter, device="cpu"),
        "b": load_for_inference(adapter_b, device="cpu"),
        "qwen3": load_for_inference(adapter, base_only=True, device="cpu"),
    }
    out = {}
    for i in range(REQUESTS):
        c = _case(i)
        key = (c["model"], c["question"], c["max_tokens"], c["chat"])
        if key in out:
            continue
        im = ims[c["model"]]
        if c["chat"]:
            rec = {"system": None, "messages": [{"role": "user", "content": c["question"], "input": ""}]}
            res = generate(im, [rec], max_new_tokens=c["max_tokens"], batch_size=1)[0]
        else:
            ids = (
                bos_prefix(im.tokenizer, im.template)
                + im.tokenizer(c["question"], add_special_tokens=False)["input_ids"]
            )
            res = stream_ids(im, ids, max_new_tokens=c["max_tokens"])
        out[key] = (res["text"], res["tokens"])
    return out


def _ask(client, i: int) -> tuple[int, str, str, int]:
    c = _case(i)
    common = dict(model=c["model"], max_tokens=c["max_tokens"], temperature=0)
    if c["chat"]:
        messages = [{"role": "user", "content": c["question"]}]
        if c["stream"]:
            chunks = list(
                client.chat.completions.create(
                    messages=messages, stream=True, stream_options={"include_usage": True}, **common
                )
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            return i, chunks[0].model, text, chunks[-1].usage.completion_tokens
        r = client.chat.completions.create(messages=messages, **common)
        return i, r.model, r.choices[0].message.content, r.usage.completion_tokens
    if c["stream"]:
        chunks = list(
            client.completions.create(
                prompt=c["question"], stream=True, stream_options={"include_usage": True}, **common
            )
        )
        text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        return i, chunks[0].model, text, chunks[-1].usage.completion_tokens
    r = client.completions.create(prompt=c["question"], **common)
    return i, r.model, r.choices[0].text, r.usage.completion_tokens


def test_16_clients_64_requests_each_answered_once_and_right(server, sequential):
    client = server.client(timeout=120)
    batches_before = server.engine.batches
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_ask, client, i) for i in range(REQUESTS)]
        done, pending = wait(futures, timeout=HARD_TIMEOUT_S)
        assert not pending, f"{len(pending)} requests unanswered after {HARD_TIMEOUT_S}s"
    answers = [f.result() for f in futures]
    assert sorted(a[0] for a in answers) == list(range(REQUESTS))  # each once
    wrong = []
    for i, model, text, tokens in answers:
        c = _case(i)
        want_text, want_tokens = sequential[(c["model"], c["question"], c["max_tokens"], c["chat"])]
        if model != c["model"] or text.strip() != want_text or tokens != want_tokens:
            wrong.append((i, c, text, tokens, want_text, want_tokens))
    assert not wrong, wrong[:3]
    # Requests were really batched, not run one by one.
    assert server.engine.batches - batches_before < REQUESTS
    assert server.engine.stats()["waiting"] == 0
