"""Output folders: one writer, never deleting what the user made, damage detected (folders.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_finetune.errors import ConfigError, LoraFinetuneError
from lora_finetune.folders import (
    DamagedFolderError,
    OutputBusyError,
    atomic_dir,
    check_output_file,
    check_output_folder,
    lock_path,
    output_lock,
    verify_manifest,
    write_manifest,
)

SRC = Path(__file__).resolve().parents[1] / "src"

HOLDER = """
import sys, time
sys.path.insert(0, {src!r})
from lora_finetune.folders import output_lock
with output_lock({dst!r}, command="holder-test"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold(dst: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(src=str(SRC), dst=str(dst))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    dst = tmp_path / "out"
    proc = _hold(dst)
    try:
        with pytest.raises(OutputBusyError, match=rf"pid {proc.pid} on .*holder-test"):
            with output_lock(dst):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_note(tmp_path, caplog):
    dst = tmp_path / "out"
    proc = _hold(dst)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_path(dst).is_file()  # kill -9 left the file; the kernel released the lock
    with caplog.at_level(logging.WARNING, logger="lora_finetune.folders"):
        with output_lock(dst):
            assert json.loads(lock_path(dst).read_text())["pid"] == os.getpid()
    assert f"took over the lock left by pid {proc.pid}" in caplog.text and "no longer running" in caplog.text
    assert not lock_path(dst).exists()  # a clean exit removes it


def test_the_lock_is_released_when_the_block_fails(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with output_lock(dst):
            raise RuntimeError("boom")
    with output_lock(dst):  # free again
        pass


def test_two_training_commands_on_one_output_dir(tmp_path, tiny_qwen3, capsys):
    """The CLI: the second run exits 2 naming the first, and writes nothing."""
    from lora_finetune.cli import main

    out = tmp_path / "run"
    proc = _hold(out)
    try:
        code = main(["train", "--model_name", str(tiny_qwen3), "--output_dir", str(out), "--steps", "1"])
    finally:
        proc.kill()
        proc.wait()
    assert code == 2
    assert f"pid {proc.pid}" in capsys.readouterr().err
    assert not out.exists()


def test_overwrite_replaces_only_what_this_tool_made(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    for name in ("data.jsonl", "a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt"):
        (mine / name).write_text("x")
    with pytest.raises(ConfigError, match="already holds files. Pass --overwrite"):
        check_output_folder(mine, overwrite=False)
    with pytest.raises(ConfigError, match=r"did not make \(a.txt, b.txt, c.txt, d.txt, data.jsonl and 2 more\)"):
        check_output_folder(mine, overwrite=True)
    assert len(list(mine.iterdir())) == 7
    ours = tmp_path / "ours"
    with atomic_dir(ours) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
        write_manifest(tmp)
    check_output_folder(ours, overwrite=True)  # a folder with our manifest: fine
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", overwrite=False)  # empty: fine


def test_a_file_where_a_folder_should_be(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is a file, not a folder"):
            check_output_folder(f, overwrite)
    with pytest.raises(LoraFinetuneError, match="is a file, not a folder"):
        check_output_folder(f / "sub", overwrite=False)
    with pytest.raises(LoraFinetuneError, match="is a folder; give a file name"):
        check_output_file(tmp_path)


def test_unwritable_parent_is_named_before_any_work(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root may write anywhere: make the check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    else:
        ro.chmod(0o555)
    with pytest.raises(LoraFinetuneError, match=f"no permission to write in {ro}"):
        check_output_folder(ro / "run", overwrite=False)
    with pytest.raises(LoraFinetuneError, match="no permission"):
        check_output_file(ro / "pred.jsonl")


def _made(tmp_path: Path) -> Path:
    folder = tmp_path / "made"
    with atomic_dir(folder) as tmp:
        (tmp / "weights.bin").write_bytes(os.urandom(16384))
        (tmp / "config.json").write_text("{}")
        write_manifest(tmp)
    return folder


def test_damage_in_place_is_caught_by_sha256(tmp_path):
    folder = _made(tmp_path)
    verify_manifest(folder)
    data = bytearray((folder / "weights.bin").read_bytes())
    data[4096:8192] = bytes(4096)  # 4 KB overwritten, size unchanged
    (folder / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(DamagedFolderError, match="weights.bin does not match its sha256"):
        verify_manifest(folder)


def test_truncation_missing_files_and_a_damaged_manifest(tmp_path):
    folder = _made(tmp_path)
    with open(folder / "weights.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DamagedFolderError, match="weights.bin has 100 bytes"):
        verify_manifest(folder)
    (folder / "weights.bin").unlink()
    with pytest.raises(DamagedFolderError, match="weights.bin is missing"):
        verify_manifest(folder)
    (folder / "manifest.json").write_text('{"files": [1, 2]')
    with pytest.raises(DamagedFolderError, match="manifest.json is damaged"):
        verify_manifest(folder)


def test_old_size_only_manifests_still_verify(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"12345")
    (folder / "manifest.json").write_text(json.dumps({"files": {"a.bin": 5}}))
    verify_manifest(folder)
    (folder / "a.bin").write_bytes(b"1234")
    with pytest.raises(DamagedFolderError, match="a.bin has 4 bytes"):
        verify_manifest(folder)


def test_waiting_lock_for_shared_caches(tmp_path):
    """`wait=True` (the bundled-model and ChatGLM caches) blocks until the holder is done."""
    dst = tmp_path / "cache"
    proc = _hold(dst)
    t0 = time.monotonic()
    killer = subprocess.Popen([sys.executable, "-c", f"import os,time,signal; time.sleep(1); os.kill({proc.pid}, 9)"])
    with output_lock(dst, wait=True):
        waited = time.monotonic() - t0
    killer.wait()
    proc.wait()
    assert waited >= 0.9
