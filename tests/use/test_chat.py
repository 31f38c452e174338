"""The chat: history in the training template, /reset, /set, streaming, piped stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest


def _session(im, **settings):
    from lora_finetune.use.chat import ChatSession, GenerationSettings

    return ChatSession(im, GenerationSettings(**{"max_new_tokens": 6, **settings}))


def test_history_is_rendered_with_the_training_template(im):
    from lora_finetune.templates.encode import encode_prompt

    s = _session(im)
    first = s.send("hi")
    assert s.history == [
        {"role": "user", "content": "hi", "input": ""},
        {"role": "assistant", "content": first.text, "input": ""},
    ]
    s.send("中国的首都是哪里？")
    expected = encode_prompt(
        {
            "system": None,
            "messages": [
                {"role": "user", "content": "hi", "input": ""},
                {"role": "assistant", "content": first.text, "input": ""},
                {"role": "user", "content": "中国的首都是哪里？", "input": ""},
            ],
        },
        im.tokenizer,
        im.template,
    )
    assert s.last_prompt_ids == expected
    text = im.tokenizer.decode(s.last_prompt_ids)
    assert text.count("<|im_start|>user") == 2 and text.endswith("<|im_start|>assistant\n")


def test_reset_gives_the_same_prompt_as_a_fresh_chat(im):
    s = _session(im)
    s.send("hi")
    s.send("hello")
    with_history = list(s.last_prompt_ids)
    msg, go = s.command("/reset")
    assert go and "cleared" in msg and s.history == []
    s.send("hello")
    fresh = _session(im)
    fresh.send("hello")
    assert s.last_prompt_ids == fresh.last_prompt_ids
    assert len(s.last_prompt_ids) < len(with_history)


def test_set_and_bad_commands(im):
    from lora_finetune.use.chat import ChatCommandError

    s = _session(im)
    msg, go = s.command("/set temperature 0.7")
    assert go and s.settings.temperature == 0.7 and "sampling" in msg
    s.command("/set max-new-tokens 9")
    assert s.settings.max_new_tokens == 9
    for bad in ("/set temperature hot", "/set temperature -1", "/set colour red", "/set", "/frobnicate"):
        with pytest.raises(ChatCommandError):
            s.command(bad)
    assert s.settings.temperature == 0.7  # a rejected value leaves the old one
    assert s.command("/exit") == ("bye", False)
    msg, _ = s.command("/system You are terse.")
    assert s.system == "You are terse." and "cleared" in msg


def test_old_rounds_are_dropped_to_fit_the_context(im):
    s = _session(im, max_new_tokens=100)
    limit = im.context_length()
    assert limit == 512
    long = "The quick brown fox jumps over the lazy dog. " * 12
    for i in range(6):
        s.history += [
            {"role": "user", "content": f"{i} {long}", "input": ""},
            {"role": "assistant", "content": long, "input": ""},
        ]
    ids, dropped = s.prompt_ids("hi")
    assert dropped > 0 and len(ids) + 100 <= limit
    reply = s.send("hi")
    assert reply.dropped_rounds == dropped and len(s.history) == 2 * (6 - dropped + 1)


def test_answer_length_is_capped_by_the_context_left(im, monkeypatch):
    from lora_finetune.use.chat import ChatCommandError

    s = _session(im, max_new_tokens=50)
    ids, _ = s.prompt_ids("hi")
    monkeypatch.setattr(im, "context_length", lambda: len(ids) + 3)
    reply = s.send("hi")
    assert reply.tokens <= 3
    s.reset()
    with pytest.raises(ChatCommandError, match="shorter message"):
        s.send("hi " * 10)
    assert s.history == []


def test_streamed_text_is_the_reply(im):
    import torch

    s = _session(im, max_new_tokens=12, temperature=1.0, top_p=1.0)
    chunks: list[str] = []
    torch.manual_seed(1)
    reply = s.send("Say hello.", on_text=chunks.append)
    assert chunks and "".join(chunks).strip() == reply.text
    assert reply.prompt_tokens == len(s.last_prompt_ids)


def test_chat_loop_with_io_streams(im):
    from lora_finetune.cli.use import chat_loop

    s = _session(im)
    out = io.StringIO()
    rc = chat_loop(s, io.StringIO("hi\n\n/reset\nhello\n/set temperature x\n/exit\nnever\n"), out)
    text = out.getvalue()
    assert rc == 0
    assert text.count("Assistant: ") == 2
    assert "You: hi\n" in text and "[history cleared]" in text and "not a number" in text
    assert "never" not in text  # nothing is read after /exit
    assert [m["content"] for m in s.history if m["role"] == "user"] == ["hello"]


def test_chat_loop_ends_at_end_of_input_and_sends_double_slash_as_text(im):
    from lora_finetune.cli.use import chat_loop

    s = _session(im)
    assert chat_loop(s, io.StringIO("//not a command\n"), io.StringIO()) == 0
    assert s.history[0]["content"] == "/not a command"


def test_interactive_loop_reads_with_input_and_ends_on_eof(im, monkeypatch):
    from lora_finetune.cli.use import chat_loop

    lines = iter(["hi", "/settings"])

    def fake_input(prompt: str) -> str:
        assert prompt.endswith("You: ")
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    s = _session(im)
    out = io.StringIO()
    assert chat_loop(s, io.StringIO(), out, interactive=True) == 0
    assert "You: hi" not in out.getvalue()  # the terminal shows what the user typed
    assert out.getvalue().count("Assistant: ") == 1 and "greedy" in out.getvalue()


def test_chat_subprocess_through_stdin(adapter):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lora_finetune", "chat", "--adapter", str(adapter), "--max_new_tokens", "5"],
        input="hi\n/reset\nhello\n/exit\n",
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Assistant: ") == 2
    assert "You: hello" in proc.stdout and "[history cleared]" in proc.stdout
    assert "Chatting with" in proc.stderr and "Traceback" not in proc.stderr


def test_base_only_chat_uses_the_same_template_without_adapter(adapter):
    from lora_finetune.use.inference import load_for_inference

    base = load_for_inference(adapter, base_only=True)
    assert not base.has_adapter and base.template.name == "chat"
    assert type(base.model).__name__ == "Qwen3ForCausalLM"
    assert _session(base).send("hi").prompt_tokens > 0
