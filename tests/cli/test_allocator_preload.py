"""`lora-finetune train` re-executes itself under tcmalloc when the system has it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import lora_finetune.cli as cli


class Exec(Exception):
    pass


@pytest.fixture
def execs(monkeypatch):
    calls = []

    def fake_execve(path, args, env):
        calls.append((path, args, env))
        raise Exec

    monkeypatch.setattr(cli.os, "execve", fake_execve)
    monkeypatch.setattr(cli.sys, "platform", "linux")
    monkeypatch.setattr(cli, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    return calls


def test_reexecs_with_tcmalloc_preloaded(execs):
    with pytest.raises(Exec):
        cli.preload_tcmalloc(["train", "--config", "x.yaml"], env={"PATH": "/bin", "LD_PRELOAD": "libfoo.so"})
    path, args, env = execs[0]
    assert path == sys.executable and args == [sys.executable, "-m", "lora_finetune", "train", "--config", "x.yaml"]
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libfoo.so" and env["PATH"] == "/bin"
    assert env[cli.ALLOCATOR_ENV] == "tcmalloc"  # the new process does not try again


@pytest.mark.parametrize(
    "env",
    [
        {cli.ALLOCATOR_ENV: "system"},  # the user's opt-out
        {cli.ALLOCATOR_ENV: "tcmalloc"},  # already re-executed
        {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},  # the user's own allocator
    ],
)
def test_leaves_the_process_alone(execs, env):
    cli.preload_tcmalloc(["train"], env=env)
    assert execs == []


def test_no_tcmalloc_installed_or_not_linux(execs, monkeypatch):
    monkeypatch.setattr(cli, "find_tcmalloc", lambda: None)
    cli.preload_tcmalloc(["train"], env={})
    monkeypatch.setattr(cli, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(cli.sys, "platform", "darwin")
    cli.preload_tcmalloc(["train"], env={})
    assert execs == []


def test_main_called_from_python_never_reexecs(execs, tmp_path):
    """Tests and the web UI call main(argv): replacing their process would be a disaster."""
    rc = cli.main(["train", "--config", str(tmp_path / "missing.yaml")])
    assert rc == 2 and execs == []


@pytest.mark.skipif(cli.find_tcmalloc() is None, reason="tcmalloc is not installed (make test installs it as root)")
def test_the_command_trains_under_tcmalloc(tiny_qwen3, tmp_path):
    """End to end: the real command re-executes under tcmalloc, says so, and trains."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", cli.ALLOCATOR_ENV)}
    out = subprocess.run(
        [sys.executable, "-m", "lora_finetune", "train", "--model_name", str(tiny_qwen3)]
        + ["--output_dir", str(tmp_path / "run"), "--steps", "1", "--eval_fraction", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "memory allocator: tcmalloc (preloaded by lora-finetune" in out.stderr
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


def test_an_exec_failure_trains_on_without_tcmalloc(monkeypatch):
    def failing_execve(path, args, env):
        raise OSError("exec format error")

    monkeypatch.setattr(cli.os, "execve", failing_execve)
    monkeypatch.setattr(cli.sys, "platform", "linux")
    monkeypatch.setattr(cli, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    assert cli.preload_tcmalloc(["train"], env={}) is None  # returned: the run goes on in this process
