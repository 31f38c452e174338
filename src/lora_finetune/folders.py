"""Output folders: one writer each, complete or absent, never replacing what the user made.

- `output_lock(dst)`: an exclusive lock (`fcntl.flock` on `.NAME.lock` beside `dst`, holding
  pid, host and command) for as long as a command writes `dst`. A second writer exits with the
  holder's name; a lock left by a killed process is released by the kernel, taken over, and
  noted. Every command that writes an output takes it: train, merge, convert-chatglm, generate.
- `check_output_folder(dst, overwrite)`: before any expensive work, refuse a `dst` that is a
  file, sits in a folder we cannot write, or (with `--overwrite`) holds files this tool did not
  make. Only a folder with our `manifest.json`, or an empty folder, is ever replaced.
- `atomic_dir(dst)`: the folder is written into a temporary sibling and renamed into place,
  with `manifest.json` (each file's size and sha256) written last. `verify_manifest` checks a
  folder against it when it is opened, so a truncated, half-copied or damaged folder is
  reported by file name instead of loading as an empty adapter.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError, LoraFinetuneError, listing

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class FolderExistsError(ConfigError):
    """The destination folder exists (or appeared while we wrote) and may not be replaced."""


class OutputBusyError(LoraFinetuneError):
    """Another process holds the lock of the output folder."""


class DamagedFolderError(LoraFinetuneError):
    """A folder this tool wrote no longer matches its manifest."""


# --------------------------------------------------------------------------- manifests
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record every file's size and sha256 (checkpoints excluded: they are not the result)."""
    folder = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST and not rel.startswith("checkpoints/"):
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    (folder / MANIFEST).write_text(json.dumps({"version": 2, "files": files}, indent=1), encoding="utf-8")


def is_complete(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def verify_manifest(folder: Path) -> None:
    """Raise a clear error naming the first missing, truncated or changed file.

    Sizes and sha256 sums are both checked: a file overwritten in place keeps its size but not
    its sum. (Manifests of version 1 hold sizes only; those are checked as they are.)"""
    folder = Path(folder)
    man = folder / MANIFEST
    if not man.is_file():
        return  # folders made by other tools have no manifest; nothing to check against
    try:
        files = json.loads(man.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise ValueError("`files` is not a mapping")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DamagedFolderError(
            f"{man} is damaged ({e}); the folder may be incomplete. Re-run the command that produced it."
        ) from None
    for rel, entry in files.items():
        size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (entry, None)
        p = folder / rel
        if not p.is_file():
            raise DamagedFolderError(
                f"{folder} is incomplete: {rel} is missing (the manifest "
                "lists it). Copy the whole folder again or re-run the "
                "command that produced it."
            )
        if p.stat().st_size != size:
            raise DamagedFolderError(
                f"{folder} is damaged: {rel} has {p.stat().st_size} bytes, "
                f"the manifest says {size}. The file was truncated or "
                "changed; copy it again or re-run the command."
            )
        if digest and _sha256(p) != digest:
            raise DamagedFolderError(
                f"{folder} is damaged: {rel} does not match its sha256 in {MANIFEST} (the file "
                "changed after it was written: disk or copy damage, or an edit). Copy it again "
                "from the original, or re-run the command that produced the folder."
            )


# --------------------------------------------------------------------------- one writer
def _holder(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a process that left no details"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since} ({holder.get('command', '?')})"


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def lock_path(dst: Path) -> Path:
    dst = Path(dst)
    return dst.parent / f".{dst.name}.lock"


@contextmanager
def output_lock(dst: Path, command: str | None = None, *, wait: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of the output `dst` (a folder or file) while the block runs.

    Another holder: `OutputBusyError` naming it. The lock is an `flock` on `.NAME.lock` beside
    `dst`, which the kernel releases when its process dies however it dies; the file is removed
    on a clean exit, and one left by a killed process is taken over with a note. `wait`: block
    until the holder is done instead (for shared caches, where the other process is doing the
    same work)."""
    dst = Path(dst)
    path = lock_path(dst)
    check_writable_parent(dst)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise OutputBusyError(
                f"{dst} is being written by another process: {_describe(holder)}. Wait for it to "
                f"finish or stop it, or choose another output. (Lock file: {path}.)"
            ) from None
        try:  # the previous holder may have removed the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        left = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if left:
            state = "no longer running" if not _alive(left.get("pid")) else "gone"
            log.warning("%s: took over the lock left by %s (%s)", dst, _describe(left), state)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "command": command or " ".join(["lora-finetune", *sys.argv[1:]])[:200],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


# --------------------------------------------------------------------------- before writing
def check_writable_parent(dst: Path) -> None:
    """The folder that will hold `dst` exists (or can be made) and we may write in it."""
    dst = Path(dst)
    parent = dst.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LoraFinetuneError(
            f"Cannot create {dst}: {existing} is a file, not a folder. Choose another output location."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LoraFinetuneError(
            f"Cannot write {dst}: no permission to write in {existing}. Choose an output location "
            "you can write to (e.g. under your home folder)."
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LoraFinetuneError(f"Cannot create the folder {parent} ({e.strerror}). Choose another output.") from None


def made_by_us(folder: Path) -> bool:
    """A folder this tool wrote (it has our manifest), or an empty one."""
    folder = Path(folder)
    return is_complete(folder) or not any(folder.iterdir())


def check_output_folder(dst: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse, before any work, an output folder we must not write: a file, an unwritable
    place, an existing folder without `overwrite`, or (even with it) a folder holding files this
    tool did not make: those would be lost."""
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise FolderExistsError(f"{dst} is a file, not a folder. Choose another output folder (or move the file).")
    check_writable_parent(dst)
    if not dst.exists() or not any(dst.iterdir()):
        return
    if not overwrite:
        kind = "a finished result of this tool" if is_complete(dst) else "files"
        raise FolderExistsError(
            f"{dst} already holds {kind}. Pass {flag} to replace it, or choose another output folder."
        )
    if not made_by_us(dst):
        names = sorted(p.relative_to(dst).as_posix() for p in dst.iterdir())
        raise FolderExistsError(
            f"{dst} holds files this tool did not make ({listing(names, 5)}); {flag} only "
            "replaces folders this tool wrote (with its manifest.json) or empty ones, so nothing "
            "of yours is deleted. Choose another output folder, or move those files away."
        )


def check_output_file(path: Path, overwrite: bool = True) -> None:
    """Before generating: the output file can be written (not a folder, writable place)."""
    path = Path(path)
    if path.is_dir():
        raise FolderExistsError(f"--output {path} is a folder; give a file name such as {path / 'predictions.jsonl'}.")
    check_writable_parent(path)
    if path.exists() and not overwrite:
        raise FolderExistsError(
            f"{path} already exists. Pass --overwrite to replace it, or choose another output file."
        )


def no_space_error(folder: Path, needed: int | None = None) -> LoraFinetuneError:
    free = shutil.disk_usage(Path(folder).parent if not Path(folder).exists() else folder).free
    need = f" It needs about {needed / 2**20:.0f} MiB;" if needed else ""
    return LoraFinetuneError(
        f"The disk is full: writing {folder} failed (no space left on device).{need} "
        f"{free / 2**20:.0f} MiB are free there. Free some space or choose an output on another disk."
    )


def is_no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e)


@contextmanager
def atomic_dir(dst: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `dst`; on success it replaces `dst` in one rename."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists() and not overwrite and (not dst.is_dir() or any(dst.iterdir())):
            raise FolderExistsError(f"{dst} already exists; pass --overwrite to replace it.")
        replace_dir(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder `src` to `dst`, replacing an existing `dst` (two renames; the old
    folder is deleted only after the new one is in place)."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(src, dst)
        except OSError as e:  # another process put a folder there since we looked
            raise FolderExistsError(
                f"{dst} appeared while this folder was being written ({e.strerror}); is another run writing there?"
            ) from None
