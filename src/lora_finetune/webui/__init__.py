"""`lora-finetune webui`: the whole workflow (train, chat, evaluate, export) on a web page.

- `paths.py`: the workdir, the only place the page reads and writes (no `..`, no symlinks out);
- `jobs.py`: training runs as `lora-finetune train` processes, their logs read back as progress;
- `actions.py`: what each button does, through the same package functions as the CLI;
- `i18n.py`: every label in English and 中文;
- `app.py`: the Gradio page; `server.py`: serving it (127.0.0.1 unless told otherwise).

Like `serve/`, this never imports `training/`: a run is a separate process.
"""

from __future__ import annotations

from .paths import MAX_UPLOAD_BYTES, PathError, Workdir

__all__ = ["MAX_UPLOAD_BYTES", "PathError", "Workdir"]
