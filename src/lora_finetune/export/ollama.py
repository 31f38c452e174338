"""Ollama's Modelfile: FROM the GGUF (and ADAPTER a LoRA GGUF), TEMPLATE in Go template
syntax (chat_format.go_template), a stop PARAMETER per stop token, and the system prompt the
adapter was trained with."""

from __future__ import annotations

import json
import re

MODELFILE = "Modelfile"


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def modelfile(
    gguf_file: str,
    *,
    adapter_file: str | None = None,
    template: str | None = None,
    stops: list[str] = (),  # type: ignore[assignment]
    system: str | None = None,
    note: str | None = None,
) -> str:
    """The Modelfile text; paths are relative to the Modelfile's folder (Ollama resolves them
    there)."""
    lines = ["# Written by lora-finetune export. Create the model with:", "#   ollama create NAME -f Modelfile"]
    if note:
        lines += [f"# {line}" for line in note.splitlines()]
    lines.append(f"FROM ./{gguf_file}")
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    if template is not None:
        if '"""' in template:
            raise ValueError("template contains triple quotes")  # never: literals are Go strings in actions
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""' if '"""' not in system else f"SYSTEM {_quoted(system)}")
    for stop in stops:
        lines.append(f"PARAMETER stop {_quoted(stop)}")
    return "\n".join(lines) + "\n"


def model_name(text: str) -> str:
    """A name `ollama create` accepts, from a folder name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "lora-finetune-model"


__all__ = ["MODELFILE", "model_name", "modelfile"]
