"""ChatGLM without remote code, split by concern:

- `version.py`: which generation a folder holds (v1, 2, 3, GLM-4) and what its `rope_ratio` means;
- `convert.py`: ChatGLM2/3 weights -> a native `GlmForCausalLM` folder, cached (`ensure_native`);
- `sentencepiece.py` + `tokenizer.py`: a fast tokenizer with the original ids and chat templates;
- `v1.py`: ChatGLM-6B (v1), which still needs its own code: readable errors for the transformers
  versions that code breaks on.

The prompt formats themselves live with the other templates (`templates/chatglm.py`).
"""

from __future__ import annotations

from pathlib import Path

from .convert import (
    CONVERSION_INFO,
    convert_chatglm,
    ensure_native,
    estimate_config,
    glm_config_fields,
    source_fingerprint,
)
from .tokenizer import CHATGLM2_SPECIAL_TOKENS, CHATGLM3_ROLE_TOKENS, CHATGLM3_SPECIAL_TOKENS, convert_chatglm_tokenizer
from .v1 import check_v1_transformers_version, explain_v1_load_failure
from .version import ChatGLMVersion, RopeReading, chatglm_version, is_chatglm_folder, rope_reading


def to_native(path: Path, cache_dir: Path) -> Path:
    """The folder to load for a remote-code ChatGLM checkpoint: ChatGLM2/3 converted once to
    native GLM under `cache_dir/chatglm`; ChatGLM-6B v1 as it is (it has no native equivalent)."""
    if chatglm_version(path) == "chatglm":
        return path
    return ensure_native(path, Path(cache_dir) / "chatglm")


__all__ = [
    "CHATGLM2_SPECIAL_TOKENS",
    "CHATGLM3_ROLE_TOKENS",
    "CHATGLM3_SPECIAL_TOKENS",
    "CONVERSION_INFO",
    "ChatGLMVersion",
    "RopeReading",
    "chatglm_version",
    "check_v1_transformers_version",
    "convert_chatglm",
    "convert_chatglm_tokenizer",
    "ensure_native",
    "estimate_config",
    "explain_v1_load_failure",
    "glm_config_fields",
    "is_chatglm_folder",
    "rope_reading",
    "source_fingerprint",
    "to_native",
]
