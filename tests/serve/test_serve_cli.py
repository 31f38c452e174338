"""`lora-finetune serve` as a hostile user starts it: busy ports, two servers on one port,
missing and corrupt adapters, adapters on different bases, a public address without a key, bad
names. Each is one clean message and exit code 2, before any model loads where possible. And
SIGTERM: in-flight requests finish, then the process exits 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import lora_finetune
from lora_finetune.cli import main

from helpers import tiny_config


def _serve(capsys, *args: str) -> tuple[int, str]:
    code = main(["serve", *args])
    return code, capsys.readouterr().err


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def test_port_in_use_is_one_clean_message(capsys, adapter, busy_port):
    code, err = _serve(capsys, "--adapter", str(adapter), "--port", str(busy_port))
    assert code == 2 and "already in use" in err and "--port" in err and "Traceback" not in err


def test_missing_and_non_adapter_folders(capsys, tmp_path):
    code, err = _serve(capsys, "--adapter", str(tmp_path / "nope"))
    assert code == 2 and "no such folder" in err
    code, err = _serve(capsys, "--adapter", f"x={tmp_path}")
    assert code == 2 and "not an adapter folder" in err


def test_corrupt_adapters(capsys, adapter, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(adapter, truncated)
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, err = _serve(capsys, "--adapter", str(truncated))
    assert code == 2 and "damaged" in err and "adapter_model.safetensors" in err
    garbage = tmp_path / "garbage"
    shutil.copytree(adapter, garbage)
    weights = garbage / "adapter_model.safetensors"
    weights.write_bytes(b"\x00" * weights.stat().st_size)  # same size: the manifest's sha256 tells
    code, err = _serve(capsys, "--adapter", str(garbage), "--port", "0")
    assert code == 2 and "does not match its sha256" in err and "Traceback" not in err
    (garbage / "manifest.json").unlink()  # no manifest: the file itself is checked
    code, err = _serve(capsys, "--adapter", str(garbage), "--port", "0")
    assert code == 2 and "cannot be read as safetensors" in err and "Traceback" not in err


def test_adapters_on_different_bases_are_refused(capsys, adapter, tiny_models, tmp_path):
    from lora_finetune.training import train

    other = tmp_path / "llama-adapter"
    train(tiny_config(tiny_models["llama"], other, steps=1, save_steps=100, eval_steps=100))
    code, err = _serve(capsys, "--adapter", f"q={adapter}", "--adapter", f"l={other}", "--port", "0")
    assert code == 2 and "different base models" in err and "one `lora-finetune serve` per base" in err


def test_address_key_and_name_checks(capsys, adapter, monkeypatch):
    monkeypatch.delenv("LORA_FINETUNE_API_KEY", raising=False)
    code, err = _serve(capsys, "--adapter", str(adapter), "--host", "0.0.0.0")
    assert code == 2 and "--api-key" in err
    code, err = _serve(capsys, "--adapter", str(adapter), "--api-key", " ")
    assert code == 2 and "--api-key is empty" in err
    code, err = _serve(capsys, "--adapter", f"a={adapter}", "--adapter", f"a={adapter}")
    assert code == 2 and "Two adapters are named 'a'" in err
    code, err = _serve(capsys, "--adapter", f"bad name={adapter}")
    assert code == 2 and "not a usable model name" in err
    code, err = _serve(capsys, "--adapter", str(adapter), "--port", "70000")
    assert code == 2 and "--port 70000" in err
    code, err = _serve(capsys, "--adapter", str(adapter), "--max-batch-size", "0")
    assert code == 2 and "--max-batch-size" in err


def test_help_lists_serve(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--adapter" in out and "--api-key" in out and "127.0.0.1" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits(capsys, adapter):
    port = _free_port()
    src = str(Path(lora_finetune.__file__).parents[1])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "lora_finetune", "serve", "--adapter", f"a={adapter}", "--port", str(port)]
    proc = subprocess.Popen(cmd + ["--shutdown-timeout", "20"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if "OpenAI API at" in line:
                break
        else:
            pytest.fail("the server did not start:\n" + "".join(lines))
        drain = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        drain.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        # A second server on the same port: one clean message.
        code, err = _serve(capsys, "--adapter", str(adapter), "--port", str(port))
        assert code == 2 and "already in use" in err

        body = {"model": "a", "prompt": "hello", "max_tokens": 300, "temperature": 0, "stream": True}
        events: list[str] = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    if not events:
                        proc.send_signal(signal.SIGTERM)  # mid-generation
                    events.append(line[5:].strip())
        assert events[-1] == "[DONE]"
        finals = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if e.startswith("{")]
        assert finals[-1] == "length"  # the request ran to its end
        assert proc.wait(timeout=30) == 0, "".join(lines)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health")
        assert "Traceback" not in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
