"""Offline, every verb's stderr says only things about the user's run.

Each verb runs as a user runs it (a separate `lora-finetune` process, HF_HUB_OFFLINE=1 as on a
machine without network) on a tiny model, the 4-bit adapter loading bitsandbytes on the CPU
(which asks the Hub for a kernel and says so when it cannot). Every stderr line must be one of
ours: the tool's log lines, its own notes (loading, the benchmark's stages) or a progress bar.
`serve` and `webui` run until stopped; their output is tested in tests/serve and tests/webui.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

OURS = re.compile(
    r"^(\[lora-finetune\] |Loading .* \.\.\.$|Loaded in [\d.]+s\.$|Chatting with |Type /help|"
    r"Reading the task index|Loading the data of |Running the benchmark on |"
    r"\d+ task\(s\), group\(s\) and tag\(s\))"
)
BAR = re.compile(r"(\d+%\|.*\|)|(\d+/\d+ \[)")  # tqdm: "45%|####  | 9/20 [00:01<...]"


def not_ours(stderr: str) -> list[str]:
    lines = [part.strip() for line in stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if line and not OURS.match(line) and not BAR.search(line)]


def run(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_DATASETS_OFFLINE", None)
    return subprocess.run(
        [sys.executable, "-m", "lora_finetune", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_every_verb_is_quiet_offline(tiny_qwen3, tmp_path):
    pytest.importorskip("bitsandbytes")
    model, q4 = str(tiny_qwen3), str(tmp_path / "q4")
    data = tmp_path / "q.jsonl"
    data.write_text('{"instruction": "中国的首都是哪里？", "output": "北京。"}\n' * 2, encoding="utf-8")
    verbs = [
        ("train", "--model_name", model, "--output_dir", q4, "--quantization", "4bit", "--steps", "2",
         "--eval_steps", "2", "--save_steps", "2"),
        ("data", str(data), "--model", model, "--show", "0"),
        ("estimate", "--model", model),
        ("modules", "--model", model),
        ("generate", "--adapter", q4, "--input", str(data), "--output", str(tmp_path / "out.jsonl"),
         "--max_new_tokens", "4"),
        ("eval", "--adapter", q4, "--data", str(data), "--max_new_tokens", "4", "--compare-base"),
        ("merge", "--adapter", q4, "--output", str(tmp_path / "merged")),
        ("export", "--adapter", q4, "--format", "gguf", "--output", str(tmp_path / "gguf")),
    ]  # fmt: skip
    try:
        import lm_eval  # noqa: F401

        verbs.append(("benchmark", "--adapter", q4, "--tasks", "lora_demo_zh_language", "--limit", "1"))
    except ImportError:
        pass
    problems = {}
    for args in verbs:
        res = run(*args)
        assert res.returncode == 0, f"{args[0]} failed: {res.stderr[-2000:]}"
        if extra := not_ours(res.stderr):
            problems[args[0]] = extra
    chat = run("chat", "--adapter", q4, "--max_new_tokens", "4", stdin="你好\n/exit\n")
    assert chat.returncode == 0, chat.stderr[-2000:]
    if extra := not_ours(chat.stderr):
        problems["chat"] = extra
    assert not problems, f"lines that are not about the run: {problems}"


def test_the_filter_would_catch_the_lines_users_saw():
    seen = (
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face "
        "Hub is in offline mode.\n"
        "Failed to load CPU gemm_4bit_forward from kernels-community: Version 1 of ... offline mode.\n"
        "[lora-finetune] step 1/2  loss 6.0253\n"
        "Loading weights:  50%|#####     | 12/24 [00:00<00:00, 1966.69it/s]\n"
    )
    assert not_ours(seen) == [seen.splitlines()[0], seen.splitlines()[1]]
