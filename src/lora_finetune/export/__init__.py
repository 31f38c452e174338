"""Export for llama.cpp, Ollama and LM Studio: the merged model or the adapter alone as GGUF
(written with the `gguf` package, no external converter), and an Ollama Modelfile.

- `gguf_model.py`: a transformers model -> GGUF (tensor names, Q/K layout, hyper-parameters);
- `tokenizer_meta.py`: the byte-level BPE tokenizer as `tokenizer.ggml.*` metadata;
- `gguf_lora.py`: a peft adapter -> llama.cpp LoRA GGUF;
- `chat_format.py`: the adapter's prompt format measured from our template -> Jinja / Go;
- `ollama.py`: the Modelfile;
- `runner.py`: `export_model`, the checks (before any weights load) and the output folder.

Like `use/`, this needs only the adapter folder and never imports `training/`.
"""

from __future__ import annotations

from .gguf_model import OUTTYPES
from .runner import EXPORT_INFO, ExportResult, export_model

__all__ = ["EXPORT_INFO", "OUTTYPES", "ExportResult", "export_model"]
