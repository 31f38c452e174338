"""Which ChatGLM generation a folder holds, and what its `rope_ratio` means.

ChatGLM2 and ChatGLM3 have identical config.json files, so the generation is read from the
tokenizer files, then the name the checkpoint was saved under, then the rotary formula in a
shipped modeling_chatglm.py (read as text, never imported).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...errors import ModelError

log = logging.getLogger(__name__)

ChatGLMVersion = Literal["chatglm", "chatglm2", "chatglm3", "glm4"]

# Fields only ChatGLM-6B (v1) configs have, and fields only the ChatGLM2/3/GLM-4 generation has.
_V1_FIELDS = ("position_encoding_2d", "inner_hidden_size")
_V2_FIELDS = ("multi_query_group_num", "padded_vocab_size", "ffn_hidden_size", "kv_channels", "seq_length")
_V1_NAME_RE = re.compile(r"chatglm-6b", re.IGNORECASE)  # not chatglm2-6b / chatglm3-6b


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path} does not exist. Point the model path at a folder that holds the "
            "checkpoint's config.json and weight files."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} could not be read as JSON ({exc}). Re-download or repair the file.") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a JSON {type(data).__name__}, not an object. Re-download the file.")
    return data


def _read_text(path: Path) -> str:
    """A file's text, or '' when it is absent or unreadable (only used as optional evidence)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def is_chatglm_folder(path: str | os.PathLike[str]) -> bool:
    """True when `path` is a folder whose config.json describes a remote-code ChatGLM checkpoint."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        return False
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        log.debug("%s is not readable JSON; not treating the folder as ChatGLM", config_path)
        return False
    return isinstance(config, dict) and _is_chatglm_config(config)


def _is_chatglm_config(config: Mapping[str, Any]) -> bool:
    if config.get("model_type") == "chatglm":
        return True
    architectures = config.get("architectures") or []
    auto_map = json.dumps(config.get("auto_map") or {})
    return any(str(a).startswith("ChatGLM") for a in architectures) or "modeling_chatglm" in auto_map


def _config_dict(path_or_config: Any) -> tuple[dict[str, Any], Path | None]:
    """(config as a dict, folder or None) from a folder path, a config dict or a config object."""
    if isinstance(path_or_config, (str, os.PathLike)):
        folder = Path(path_or_config)
        if folder.is_file():  # a config.json path: its folder still holds the tokenizer files
            return _read_json(folder), folder.parent
        return _read_json(folder / "config.json"), folder
    if isinstance(path_or_config, Mapping):
        return dict(path_or_config), None
    to_dict = getattr(path_or_config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict()), None
    raise ModelError(
        f"chatglm_version() got a {type(path_or_config).__name__}; pass a model folder, "
        "a config.json path, a config dict or a transformers config object."
    )


def chatglm_version(path_or_config: Any) -> ChatGLMVersion:
    """Which ChatGLM generation a folder or config is: "chatglm" (v1), "chatglm2", "chatglm3" or "glm4".

    v1 is told apart by its config fields. ChatGLM2 and ChatGLM3 have identical configs, so the
    decision rests on the tokenizer (ChatGLM3 adds <|user|>/<|assistant|>/... role tokens), then on
    the `_name_or_path` the checkpoint was saved with, then on the rotary formula in a shipped
    modeling_chatglm.py. GLM-4 checkpoints in the old remote-code format share the ChatGLM config.
    """
    config, folder = _config_dict(path_or_config)
    family = _config_family(config)
    if family == "chatglm":
        return "chatglm"
    for probe in (_version_from_tokenizer_files, _version_from_name, _version_from_modeling_file):
        found = probe(config, folder)
        if found is not None:
            version, evidence = found
            log.debug("ChatGLM version %s (%s)", version, evidence)  # the conversion line names it once
            return version
    where = f"the folder {folder}" if folder is not None else "the config alone"
    raise ModelError(
        f"Cannot tell ChatGLM2 from ChatGLM3 from {where}: their config.json files are identical and "
        "nothing else says which it is (no tokenization_chatglm.py or tokenizer_config.json naming the "
        "ChatGLM3 role tokens, no `_name_or_path` naming chatglm2/chatglm3, no modeling_chatglm.py). "
        "Copy those files from the original download next to the weights, or pass version='chatglm2' "
        "or version='chatglm3' explicitly."
    )


def _config_family(config: Mapping[str, Any]) -> Literal["chatglm", "chatglm2+"]:
    has_v1 = any(k in config for k in _V1_FIELDS)
    has_v2 = any(k in config for k in _V2_FIELDS)
    if has_v2:
        return "chatglm2+"
    if has_v1:
        return "chatglm"
    name = str(config.get("_name_or_path", ""))
    if _V1_NAME_RE.search(name):
        return "chatglm"
    raise ModelError(
        "This config.json has neither ChatGLM-6B (v1) fields (position_encoding_2d, inner_hidden_size) "
        "nor ChatGLM2/3 fields (multi_query_group_num, padded_vocab_size, ffn_hidden_size, kv_channels, "
        "seq_length), so it is not a ChatGLM config this package knows. Check that the folder holds the "
        "original config.json of the checkpoint."
    )


def _version_from_tokenizer_files(config: Mapping[str, Any], folder: Path | None) -> tuple[ChatGLMVersion, str] | None:
    if folder is None:
        return None
    code = _read_text(folder / "tokenization_chatglm.py")
    if "tiktoken" in code:
        return "glm4", "tokenization_chatglm.py uses tiktoken"
    if "<|observation|>" in code or "role_special_tokens" in code:
        return "chatglm3", "tokenization_chatglm.py defines the ChatGLM3 role tokens"
    for name in ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json"):
        if "<|observation|>" in _read_text(folder / name):
            return "chatglm3", f"{name} names the ChatGLM3 role tokens"
    if code and '"sop", "eop"]' in code.replace("'", '"'):
        return "chatglm2", "tokenization_chatglm.py defines only [MASK]/[gMASK]/[sMASK]/sop/eop"
    return None


def _version_from_name(config: Mapping[str, Any], folder: Path | None) -> tuple[ChatGLMVersion, str] | None:
    name = str(config.get("_name_or_path", "")).lower()
    for needle, version in (
        ("chatglm3", "chatglm3"),
        ("chatglm2", "chatglm2"),
        ("glm-4", "glm4"),
        ("glm4", "glm4"),
        ("codegeex2", "chatglm2"),
    ):
        if needle in name:
            return version, f"_name_or_path is {config.get('_name_or_path')!r}"  # type: ignore[return-value]
    return None


def _version_from_modeling_file(config: Mapping[str, Any], folder: Path | None) -> tuple[ChatGLMVersion, str] | None:
    formula = _rope_formula_in_code(folder)
    if formula == "scale_positions":
        return "chatglm2", "modeling_chatglm.py divides positions by rope_ratio (ChatGLM2 code)"
    if formula == "scale_base":
        return "chatglm3", "modeling_chatglm.py multiplies the rotary base by rope_ratio (ChatGLM3 code)"
    return None


_POSITION_DIVISION_RE = re.compile(r"seq_idx\s*=\s*torch\.arange\([^\n]*\)\s*/\s*self\.rope_ratio")
_BASE_MULTIPLY_RE = re.compile(r"base\s*=\s*base\s*\*\s*self\.rope_ratio")


def _rope_formula_in_code(folder: Path | None) -> Literal["scale_positions", "scale_base"] | None:
    """Which rope_ratio formula a shipped modeling_chatglm.py uses, read as text (never imported)."""
    if folder is None:
        return None
    code = _read_text(folder / "modeling_chatglm.py")
    divides = bool(_POSITION_DIVISION_RE.search(code))
    multiplies = bool(_BASE_MULTIPLY_RE.search(code))
    if divides == multiplies:  # neither, or a patched file that switches between both
        return None
    return "scale_positions" if divides else "scale_base"


# --------------------------------------------------------------------------------------------
# Config: ChatGLM -> GlmConfig
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopeReading:
    """How a checkpoint's `rope_ratio` enters the rotary embedding, and why we think so."""

    kind: Literal["none", "scale_positions", "scale_base"]
    rope_ratio: float
    evidence: str

    def rope_parameters(self, partial_rotary_factor: float = 0.5) -> dict[str, Any]:
        base = {"rope_theta": 10000.0, "partial_rotary_factor": partial_rotary_factor}
        if self.kind == "scale_base":
            # ChatGLM3-32k/128k and GLM-4 compute theta from base = 10000 * rope_ratio.
            return {"rope_type": "default", **base, "rope_theta": 10000.0 * self.rope_ratio}
        if self.kind == "scale_positions":
            # ChatGLM2-32k divides positions by rope_ratio; (p / r) * f == p * (f / r), which is
            # exactly what "linear" scaling does to the inverse frequencies.
            return {"rope_type": "linear", "factor": float(self.rope_ratio), **base}
        return {"rope_type": "default", **base}


def rope_reading(
    folder: str | os.PathLike[str] | None, config: Mapping[str, Any], version: ChatGLMVersion | None = None
) -> RopeReading:
    """Decide what `rope_ratio` means for this checkpoint (see RopeReading)."""
    ratio = float(config.get("rope_ratio") or 1.0)
    if ratio == 1.0:
        return RopeReading("none", 1.0, "rope_ratio is absent or 1")
    formula = _rope_formula_in_code(Path(folder) if folder is not None else None)
    if formula is not None:
        return RopeReading(formula, ratio, "the shipped modeling_chatglm.py")
    if version is None:
        version = chatglm_version(folder if folder is not None else config)
    if version == "chatglm2":
        return RopeReading("scale_positions", ratio, "ChatGLM2 code divides positions by rope_ratio")
    if version in ("chatglm3", "glm4"):
        return RopeReading("scale_base", ratio, f"{version} code multiplies the rotary base by rope_ratio")
    raise ModelError(
        f"rope_ratio={ratio} on a {version} checkpoint is not something ChatGLM-6B v1 has; "
        "check that config.json belongs to these weights."
    )
