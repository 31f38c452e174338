"""The web UI's one rule for files: everything it reads or writes is inside `--workdir`.

A path typed on the page (data file, model folder, adapter) is taken relative to the workdir and
refused when it leads outside it: `..`, an absolute path elsewhere, or a symlink (anywhere along
the way) pointing out. Names the page turns into folders (a run's name, an export's name) are plain
names, never paths. Uploads are copied into `data/` with a size limit.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from .i18n import bilingual, what_zh

MAX_UPLOAD_BYTES = 200 * 1024**2
"""Largest data file the page accepts (the browser upload is refused above this too)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


class PathError(ConfigError):
    """A path or name from the page that would leave the workdir."""


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def create(cls, folder: str | Path) -> Workdir:
        root = Path(folder).expanduser()
        if root.exists() and not root.is_dir():
            raise ConfigError(f"--workdir {root} is a file, not a folder. Choose a folder (it is created if missing).")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--workdir {root} cannot be created ({e.strerror}). Choose a writable folder.") from None
        wd = cls(root.resolve())
        for sub in ("data", "outputs", "exports", "models", ".webui"):
            (wd.root / sub).mkdir(exist_ok=True)
        return wd

    # ------------------------------------------------------------------ folders the UI owns
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def state(self) -> Path:
        """Configs and logs of the runs the page started (`.webui/`)."""
        return self.root / ".webui"

    # ------------------------------------------------------------------ checks
    def resolve(self, text: str | Path, what: str = "path", must_exist: bool = True) -> Path:
        """`text` (relative to the workdir, or absolute inside it) as a real path inside it."""
        raw = str(text).strip()
        if not raw:
            raise bilingual(
                PathError(f"The {what} is empty. Give a path inside the workdir {self.root}."),
                f"{what_zh(what)}为空。请给出工作目录 {self.root} 内的路径。",
            )
        if "\x00" in raw:
            raise bilingual(
                PathError(f"The {what} {raw!r} holds a NUL character."), f"{what_zh(what)} {raw!r} 含有 NUL 字符。"
            )
        p = Path(raw).expanduser()
        candidate = p if p.is_absolute() else self.root / p
        # realpath follows every symlink along the way, so a link inside the workdir that
        # points out of it is caught here as well as `..`.
        real = Path(os.path.realpath(candidate))
        if real != self.root and self.root not in real.parents:
            raise bilingual(
                PathError(
                    f"The {what} {raw!r} leads outside the workdir {self.root} (through `..`, an absolute "
                    "path or a symlink). The web UI only reads and writes inside its workdir: copy the "
                    "file there, or start `lora-finetune webui --workdir` on a folder that holds it."
                ),
                f"{what_zh(what)} {raw!r} 指向工作目录 {self.root} 之外（经由 `..`、绝对路径或符号链接）。"
                "网页界面只在工作目录内读写：请把文件复制进去，或用 `lora-finetune webui --workdir` "
                "指定包含它的文件夹。",
            )
        if must_exist and not real.exists():
            raise bilingual(
                PathError(f"The {what} {raw!r} does not exist in the workdir {self.root}."),
                f"工作目录 {self.root} 中没有{what_zh(what)} {raw!r}。",
            )
        return real

    def name(self, text: str, what: str = "name") -> str:
        """A plain folder name (a run, an export): letters, digits, `.`, `_`, `-`; no paths."""
        name = str(text).strip()
        if not _NAME.match(name) or name in (".", ".."):
            raise bilingual(
                PathError(
                    f"The {what} {name!r} is not a plain name. Use letters, digits, `.`, `_` or `-` "
                    "(up to 80, starting with a letter or digit), without `/` or `..`."
                ),
                f"{what_zh(what)} {name!r} 不是简单名称。请只用字母、数字、`.`、`_` 或 `-`"
                "（最多 80 个，以字母或数字开头），不要含 `/` 或 `..`。",
            )
        return name

    def output(self, name: str) -> Path:
        return self.resolve(self.outputs / self.name(name, "run name"), "run folder", must_exist=False)

    def export_dir(self, name: str) -> Path:
        return self.resolve(self.exports / self.name(name, "export name"), "export folder", must_exist=False)

    def relative(self, path: Path) -> str:
        try:
            return str(Path(path).resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------------ uploads
    def take_upload(self, uploaded: str | Path, original_name: str | None = None) -> Path:
        """Copy a browser upload (a temporary file) into `data/`, checking its size."""
        src = Path(uploaded)
        size = src.stat().st_size
        name = Path(original_name or src.name).name
        if size == 0:
            raise bilingual(
                DataError(f"The uploaded file {name} is empty. Upload a JSONL/JSON/CSV/Parquet file with samples."),
                f"上传的文件 {name} 是空的。请上传含样本的 JSONL/JSON/CSV/Parquet 文件。",
            )
        if size > MAX_UPLOAD_BYTES:
            raise bilingual(
                DataError(
                    f"The uploaded file {name} is {size / 1024**2:.0f} MiB; the web UI takes data files up to "
                    f"{MAX_UPLOAD_BYTES // 1024**2} MiB. For bigger data, put the file into {self.data} and give "
                    "its path."
                ),
                f"上传的文件 {name} 有 {size / 1024**2:.0f} MiB；网页界面只接受不超过 "
                f"{MAX_UPLOAD_BYTES // 1024**2} MiB 的数据文件。更大的数据请放进 {self.data} 并填写其路径。",
            )
        stem, suffix = os.path.splitext(name)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "upload"
        dst = self.resolve(self.data, "data folder") / f"{safe}{suffix.lower()}"
        if dst.is_symlink():  # never write through a link
            dst.unlink()
        shutil.copyfile(src, dst)
        return dst

    def listing(self, folder: Path, suffixes: tuple[str, ...] = ()) -> list[str]:
        """Files in `folder` (relative to the workdir), for dropdowns."""
        if not folder.is_dir():
            return []
        return sorted(
            self.relative(p) for p in folder.iterdir() if p.is_file() and (not suffixes or p.suffix in suffixes)
        )


__all__ = ["MAX_UPLOAD_BYTES", "PathError", "Workdir"]
