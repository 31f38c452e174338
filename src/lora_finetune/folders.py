"""Output folders that are either complete or absent.

Every folder we produce (adapter run, converted model, merged model) is written into a
temporary sibling and renamed into place, with a `manifest.json` (file names and sizes) written
last. `verify_manifest` checks a folder against it, so a truncated or half-copied folder is
reported by file name instead of loading as an empty adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LoraFinetuneError

MANIFEST = "manifest.json"


class FolderExistsError(LoraFinetuneError):
    """The destination folder exists (or appeared while we wrote) and may not be replaced."""


def write_manifest(folder: Path) -> None:
    folder = Path(folder)
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST and not rel.startswith("checkpoints/"):
            files[rel] = p.stat().st_size
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")


def is_complete(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def verify_manifest(folder: Path) -> None:
    """Raise a clear error naming the first missing or truncated file."""
    folder = Path(folder)
    man = folder / MANIFEST
    if not man.is_file():
        return  # folders made by other tools have no manifest; nothing to check against
    try:
        files = json.loads(man.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError) as e:
        raise LoraFinetuneError(
            f"{man} is damaged ({e}); the folder may be incomplete. Re-run the command that produced it."
        ) from None
    for rel, size in files.items():
        p = folder / rel
        if not p.is_file():
            raise LoraFinetuneError(
                f"{folder} is incomplete: {rel} is missing (the manifest "
                "lists it). Copy the whole folder again or re-run the "
                "command that produced it."
            )
        if p.stat().st_size != size:
            raise LoraFinetuneError(
                f"{folder} is damaged: {rel} has {p.stat().st_size} bytes, "
                f"the manifest says {size}. The file was truncated or "
                "changed; copy it again or re-run the command."
            )


@contextmanager
def atomic_dir(dst: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `dst`; on success it replaces `dst` in one rename."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if dst.exists() and not overwrite:
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
