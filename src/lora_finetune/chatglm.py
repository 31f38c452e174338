"""ChatGLM without remote code.

ChatGLM2-6B and ChatGLM3-6B are, layer for layer, the architecture transformers ships natively as
`GlmForCausalLM` (the GLM-4 family): RMSNorm, grouped-query attention with a bias on q/k/v only,
rotary embeddings on the first half of each head applied to interleaved pairs, and a SwiGLU MLP
whose fused up-projection is laid out [gate; up]. Only the tensor names differ, so this module

* tells the ChatGLM generations apart from what a folder says (`chatglm_version`),
* rewrites a ChatGLM2/3 checkpoint as a native GLM folder (`convert_chatglm`, `ensure_native`),
* builds a fast tokenizer from ChatGLM2/3's SentencePiece model with the original ids, special
  tokens and chat layouts (`convert_chatglm_tokenizer`, `stop_token_ids`),
* and, for ChatGLM-6B v1 (which still needs its remote code), gives the prompt format, LoRA targets
  and readable errors for the transformers versions that code breaks on.

Nothing here imports or executes a checkpoint's Python files; `modeling_chatglm.py` is at most read
as text to see which rotary formula a 32k variant uses.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lora_finetune.errors import ModelError

logger = logging.getLogger(__name__)

ChatGLMVersion = Literal["chatglm", "chatglm2", "chatglm3", "glm4"]

# Bump when the converted output changes, so `ensure_native` does not reuse stale cache entries.
CONVERTER_VERSION = "1"
CONVERSION_INFO = "lora_finetune_conversion.json"

# Fields only ChatGLM-6B (v1) configs have, and fields only the ChatGLM2/3/GLM-4 generation has.
_V1_FIELDS = ("position_encoding_2d", "inner_hidden_size")
_V2_FIELDS = ("multi_query_group_num", "padded_vocab_size", "ffn_hidden_size", "kv_channels", "seq_length")
_V1_NAME_RE = re.compile(r"chatglm-6b", re.IGNORECASE)  # not chatglm2-6b / chatglm3-6b

# The special tokens ChatGLM's SPTokenizer appends after the SentencePiece vocabulary, in its order:
# the ids are n, n+1, ... where n is the SentencePiece vocabulary size.
CHATGLM2_SPECIAL_TOKENS = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]
CHATGLM3_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
CHATGLM3_SPECIAL_TOKENS = CHATGLM2_SPECIAL_TOKENS + CHATGLM3_ROLE_TOKENS

STOP_TOKENS: dict[str, list[str]] = {
    "chatglm": ["<eop>"],
    "chatglm2": ["</s>"],
    "chatglm3": ["</s>", "<|user|>", "<|observation|>"],
    "glm4": ["<|endoftext|>", "<|user|>", "<|observation|>"],
}


# --------------------------------------------------------------------------------------------
# Reading a folder
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist. Point the model path at a folder that holds the "
                         "checkpoint's config.json and weight files.") from None
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
        logger.debug("%s is not readable JSON; not treating the folder as ChatGLM", config_path)
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
    raise ModelError(f"chatglm_version() got a {type(path_or_config).__name__}; pass a model folder, "
                     "a config.json path, a config dict or a transformers config object.")


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
            logger.info("ChatGLM version %s (%s)", version, evidence)
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


def _version_from_tokenizer_files(
    config: Mapping[str, Any], folder: Path | None
) -> tuple[ChatGLMVersion, str] | None:
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
    for needle, version in (("chatglm3", "chatglm3"), ("chatglm2", "chatglm2"), ("glm-4", "glm4"),
                            ("glm4", "glm4"), ("codegeex2", "chatglm2")):
        if needle in name:
            return version, f"_name_or_path is {config.get('_name_or_path')!r}"  # type: ignore[return-value]
    return None


def _version_from_modeling_file(
    config: Mapping[str, Any], folder: Path | None
) -> tuple[ChatGLMVersion, str] | None:
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


def rope_reading(folder: str | os.PathLike[str] | None, config: Mapping[str, Any],
                 version: ChatGLMVersion | None = None) -> RopeReading:
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
    raise ModelError(f"rope_ratio={ratio} on a {version} checkpoint is not something ChatGLM-6B v1 has; "
                     "check that config.json belongs to these weights.")


@dataclass(frozen=True)
class _Dims:
    layers: int
    hidden: int
    heads: int
    groups: int
    head_dim: int
    ffn: int
    vocab: int
    qkv_bias: bool

    @property
    def q_rows(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.groups * self.head_dim


def _require_int(config: Mapping[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"{path}: field `{key}` is {value!r}, expected a positive integer. "
                         "Restore the checkpoint's original config.json.")
    return value


def _dims(config: Mapping[str, Any], path: Path) -> _Dims:
    heads = _require_int(config, "num_attention_heads", path)
    hidden = _require_int(config, "hidden_size", path)
    head_dim = config.get("kv_channels") or hidden // heads
    groups = config.get("multi_query_group_num") if config.get("multi_query_attention") else heads
    dims = _Dims(
        layers=_require_int(config, "num_layers", path),
        hidden=hidden,
        heads=heads,
        groups=int(groups or 0),
        head_dim=int(head_dim),
        ffn=_require_int(config, "ffn_hidden_size", path),
        vocab=_require_int(config, "padded_vocab_size", path),
        qkv_bias=bool(config.get("add_qkv_bias", False) or config.get("add_bias_linear", False)),
    )
    _check_dims(dims, path)
    return dims


def _check_dims(dims: _Dims, path: Path) -> None:
    if dims.groups <= 0 or dims.heads % dims.groups:
        raise ModelError(f"{path}: num_attention_heads={dims.heads} is not a multiple of "
                         f"multi_query_group_num={dims.groups}; restore the original config.json.")
    if dims.head_dim % 4:
        raise ModelError(f"{path}: kv_channels={dims.head_dim} is not a multiple of 4, so half of each head "
                         "cannot be split into rotary pairs the way GLM does; this checkpoint cannot be "
                         "converted (load it with its remote code instead).")


# (config field, value the native GLM model needs, what the field changes)
_REQUIRED_FLAGS = (
    ("add_bias_linear", False, "bias on the output and MLP projections, which GlmForCausalLM has no place for"),
    ("apply_residual_connection_post_layernorm", False,
     "residuals taken after the layer norms, while GLM adds them before"),
    ("post_layer_norm", True, "no final layer norm, while GLM always applies one"),
    ("rmsnorm", True, "LayerNorm instead of RMSNorm"),
)


def _check_representable(config: Mapping[str, Any], path: Path) -> None:
    for key, needed, meaning in _REQUIRED_FLAGS:
        value = config.get(key, needed)
        if bool(value) != needed:
            raise ModelError(
                f"{path}: `{key}` is {value!r}, which means {meaning}. The native GlmForCausalLM cannot "
                f"represent that, so this checkpoint cannot be converted; load it with "
                "trust_remote_code=True instead."
            )
    if config.get("pre_seq_len"):
        raise ModelError(f"{path}: `pre_seq_len` is {config['pre_seq_len']}, i.e. a P-Tuning v2 prefix "
                         "encoder is part of the model; convert the base checkpoint it was trained from and "
                         "set pre_seq_len to null, or load it with its remote code.")
    if config.get("quantization_bit"):
        raise ModelError(f"{path}: `quantization_bit` is {config['quantization_bit']}; quantized ChatGLM "
                         "weights (int4/int8 releases) cannot be converted. Use the full-precision release.")


def _stop_ids(version: ChatGLMVersion, config: Mapping[str, Any], src: Path) -> list[int]:
    eos = config.get("eos_token_id", 2)
    eos_ids = [int(i) for i in eos] if isinstance(eos, list) else [int(eos)]
    if version != "chatglm3":
        return eos_ids
    specials = _special_token_ids(src)
    if specials is None:
        logger.warning("%s has no tokenizer.model, so the ids of <|user|> and <|observation|> are unknown; "
                       "generation_config.json will stop on eos only", src)
        return eos_ids
    role_stops = [specials["<|user|>"], specials["<|observation|>"]]
    return eos_ids + [i for i in role_stops if i not in eos_ids]


def _special_token_ids(src: Path) -> dict[str, int] | None:
    model_file = src / "tokenizer.model"
    if not model_file.is_file():
        return None
    size = len(_read_sentencepiece(model_file).pieces)
    return {token: size + i for i, token in enumerate(CHATGLM3_SPECIAL_TOKENS)}


def glm_config_fields(src: Path, config: Mapping[str, Any], version: ChatGLMVersion,
                      rope: RopeReading) -> dict[str, Any]:
    """The keyword arguments for `GlmConfig` that reproduce this ChatGLM2/3 config."""
    dims = _dims(config, src / "config.json")
    stop = _stop_ids(version, config, src)
    return {
        "vocab_size": dims.vocab,  # the padded size: embeddings and lm_head keep every row
        "hidden_size": dims.hidden,
        "intermediate_size": dims.ffn,
        "num_hidden_layers": dims.layers,
        "num_attention_heads": dims.heads,
        "num_key_value_heads": dims.groups,
        "head_dim": dims.head_dim,
        "hidden_act": "silu",
        "attention_bias": dims.qkv_bias,
        "attention_dropout": float(config.get("attention_dropout", 0.0) or 0.0),
        "rms_norm_eps": float(config.get("layernorm_epsilon", 1e-5)),
        "max_position_embeddings": int(config.get("seq_length", 8192)),
        "rope_parameters": rope.rope_parameters(),
        "tie_word_embeddings": False,
        "pad_token_id": int(config.get("pad_token_id", 0) or 0),
        "eos_token_id": stop if len(stop) > 1 else stop[0],
        "bos_token_id": None,
        "use_cache": True,
        "dtype": str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", ""),
        "architectures": ["GlmForCausalLM"],
    }


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------

_GLOBAL_NAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    # ChatGLM's swiglu does chunk(2) and silu(first) * second; GlmMLP chunks gate_up_proj the same
    # way and applies the activation to the first half, so the fused matrix is copied unchanged.
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_QKV = ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias")
# Derived from the config (and stale in 32k checkpoints, whose code recomputes it): never needed.
_SKIPPED_NAMES = {"transformer.rotary_pos_emb.inv_freq"}
_LAYER_PREFIX = "transformer.encoder.layers."


def _expected_names(dims: _Dims) -> set[str]:
    names = set(_GLOBAL_NAMES)
    layer_keys = list(_LAYER_NAMES) + [_QKV[0]] + ([_QKV[1]] if dims.qkv_bias else [])
    for i in range(dims.layers):
        names.update(f"{_LAYER_PREFIX}{i}.{key}" for key in layer_keys)
    return names


def _expected_shape(name: str, dims: _Dims) -> tuple[int, ...]:
    qkv_rows = dims.q_rows + 2 * dims.kv_rows
    shapes = {
        "transformer.embedding.word_embeddings.weight": (dims.vocab, dims.hidden),
        "transformer.encoder.final_layernorm.weight": (dims.hidden,),
        "transformer.output_layer.weight": (dims.vocab, dims.hidden),
        "input_layernorm.weight": (dims.hidden,),
        "post_attention_layernorm.weight": (dims.hidden,),
        "self_attention.query_key_value.weight": (qkv_rows, dims.hidden),
        "self_attention.query_key_value.bias": (qkv_rows,),
        "self_attention.dense.weight": (dims.hidden, dims.q_rows),
        "mlp.dense_h_to_4h.weight": (2 * dims.ffn, dims.hidden),
        "mlp.dense_4h_to_h.weight": (dims.hidden, dims.ffn),
    }
    return shapes[name if name in shapes else name.split(".", 4)[-1]]


def _map_tensor(name: str, tensor: torch.Tensor, dims: _Dims, path: Path) -> list[tuple[str, torch.Tensor]]:
    """The native (name, tensor) pairs one ChatGLM tensor becomes."""
    expected = _expected_shape(name, dims)
    if tuple(tensor.shape) != expected:
        raise ModelError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, but config.json implies "
                         f"{expected}. The weights and config.json do not belong together; restore the "
                         "matching config.json.")
    if name in _GLOBAL_NAMES:
        return [(_GLOBAL_NAMES[name], tensor.clone())]
    layer, key = name[len(_LAYER_PREFIX):].split(".", 1)
    prefix = f"model.layers.{layer}."
    if key in _QKV:
        # Rows are [all query heads; key groups; value groups], each head kv_channels rows; the
        # rotary pairs are interleaved in both models, so no per-head permutation is needed.
        kind = key.rsplit(".", 1)[1]
        q, k, v = torch.split(tensor, [dims.q_rows, dims.kv_rows, dims.kv_rows], dim=0)
        return [(f"{prefix}self_attn.{proj}.{kind}", part.clone()) for proj, part in
                (("q_proj", q), ("k_proj", k), ("v_proj", v))]
    return [(prefix + _LAYER_NAMES[key], tensor.clone())]


@dataclass(frozen=True)
class _Shards:
    """The weight files of a checkpoint and which tensors each holds."""

    fmt: Literal["safetensors", "bin"]
    names: dict[Path, list[str]]


def _weight_files(src: Path) -> tuple[Literal["safetensors", "bin"], list[Path]]:
    for fmt, index, single, pattern in (
        ("safetensors", "model.safetensors.index.json", "model.safetensors", "*.safetensors"),
        ("bin", "pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model*.bin"),
    ):
        if (src / index).is_file():
            weight_map = _read_json(src / index).get("weight_map") or {}
            return fmt, [src / name for name in sorted(set(weight_map.values()))]  # type: ignore[return-value]
        if (src / single).is_file():
            return fmt, [src / single]  # type: ignore[return-value]
        found = sorted(src.glob(pattern))
        if found:
            return fmt, found  # type: ignore[return-value]
    raise ModelError(f"{src} holds no weights: expected model.safetensors, model-*.safetensors with "
                     "model.safetensors.index.json, pytorch_model.bin, or pytorch_model-*.bin shards. "
                     "Download the weight files into that folder.")


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A .bin state dict, read with weights_only so no pickled code can run."""
    if not path.is_file():
        raise ModelError(f"{path} is listed in the checkpoint's index but does not exist; download it.")
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # unpickling errors have several types across torch versions
        raise ModelError(
            f"{path} could not be read with torch.load(weights_only=True): {exc}. Either the download is "
            "damaged (re-download it) or the file pickles objects other than tensors, which this package "
            "refuses to execute; convert it to safetensors in an environment you trust."
        ) from exc
    if not isinstance(data, Mapping):
        raise ModelError(f"{path} holds a {type(data).__name__}, not a state dict of tensors; re-download it.")
    return dict(data)


@contextmanager
def _open_shard(path: Path, fmt: str) -> Iterator[Mapping[str, torch.Tensor] | Any]:
    """A name -> tensor view of one weight file; safetensors are read lazily, tensor by tensor."""
    if fmt == "bin":
        yield _load_bin(path)
        return
    from safetensors import safe_open

    if not path.is_file():
        raise ModelError(f"{path} is listed in the checkpoint's index but does not exist; download it.")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:
        raise ModelError(f"{path} is not a readable safetensors file ({exc}); re-download it.") from exc
    with handle as opened:
        yield _LazySafetensors(opened)


class _LazySafetensors(Mapping[str, torch.Tensor]):
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._keys = list(handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _scan_shards(src: Path) -> _Shards:
    fmt, files = _weight_files(src)
    names: dict[Path, list[str]] = {}
    for path in files:
        with _open_shard(path, fmt) as shard:
            names[path] = list(shard)
    return _Shards(fmt, names)


def _check_names(shards: _Shards, dims: _Dims, src: Path) -> None:
    counts = Counter(n for names in shards.names.values() for n in names)
    present = set(counts)
    duplicated = sorted(n for n, c in counts.items() if c > 1)
    expected = _expected_names(dims)
    unknown = sorted(present - expected - _SKIPPED_NAMES)
    missing = sorted(expected - present)
    problems = []
    if unknown:
        problems.append(f"unknown tensors {_listing(unknown)}")
    if missing:
        problems.append(f"missing tensors {_listing(missing)}")
    if duplicated:
        problems.append(f"tensors stored twice {_listing(duplicated)}")
    if problems:
        raise ModelError(
            f"{src} cannot be converted to GlmForCausalLM: {'; '.join(problems)}. A ChatGLM2/3 checkpoint "
            f"with this config.json ({dims.layers} layers, qkv bias {dims.qkv_bias}) has exactly the "
            "transformer.embedding/encoder/output_layer tensors; check that the config matches the weights, "
            "that every shard is downloaded, and that no adapter or prefix-encoder weights were merged in."
        )


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _write_weights(src: Path, shards: _Shards, dims: _Dims, dst: Path) -> None:
    from safetensors.torch import save_file

    files = list(shards.names)
    weight_map: dict[str, str] = {}
    total = 0
    for number, path in enumerate(files, start=1):
        out_name = "model.safetensors" if len(files) == 1 else f"model-{number:05d}-of-{len(files):05d}.safetensors"
        converted: dict[str, torch.Tensor] = {}
        with _open_shard(path, shards.fmt) as shard:
            for name in shards.names[path]:
                if name in _SKIPPED_NAMES:
                    continue
                converted.update(_map_tensor(name, shard[name], dims, path))
        save_file(converted, str(dst / out_name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in converted.values())
        weight_map.update({name: out_name for name in converted})
        logger.info("converted %s -> %s (%d tensors)", path.name, out_name, len(converted))
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# convert_chatglm / ensure_native
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    src: Path
    config: dict[str, Any]
    version: ChatGLMVersion
    rope: RopeReading
    dims: _Dims
    shards: _Shards
    requested_version: ChatGLMVersion | None  # as given by the caller: part of the cache key


def _plan(src: Path, version: ChatGLMVersion | None) -> _Plan:
    """Everything that can be checked before a single byte is written."""
    if not src.is_dir():
        raise ModelError(f"{src} is not a folder. Point the ChatGLM path at the downloaded checkpoint folder.")
    config = _read_json(src / "config.json")
    if not _is_chatglm_config(config):
        raise ModelError(f"{src / 'config.json'} has model_type {config.get('model_type')!r}, not 'chatglm'; "
                         "only remote-code ChatGLM checkpoints need converting.")
    requested = version
    version = version or chatglm_version(src)
    if version == "chatglm":
        raise ModelError(f"{src} is a ChatGLM-6B (v1) checkpoint, whose 2D positions and GeLU MLP have no "
                         "native transformers counterpart. Load it with trust_remote_code=True under "
                         f"transformers {V1_TRANSFORMERS_RANGE_TEXT} and LoRA targets {CHATGLM_V1_TARGETS}.")
    _check_representable(config, src / "config.json")
    dims = _dims(config, src / "config.json")
    rope = rope_reading(src, config, version)
    logger.info("rope_ratio reading for %s: %s (ratio %g; from %s)", src, rope.kind, rope.rope_ratio, rope.evidence)
    _check_tokenizer_fits(src, version, dims)
    shards = _scan_shards(src)
    _check_names(shards, dims, src)
    return _Plan(src, config, version, rope, dims, shards, requested)


def _check_tokenizer_fits(src: Path, version: ChatGLMVersion, dims: _Dims) -> None:
    model_file = src / "tokenizer.model"
    if version not in ("chatglm2", "chatglm3") or not model_file.is_file():
        return
    specials = CHATGLM3_SPECIAL_TOKENS if version == "chatglm3" else CHATGLM2_SPECIAL_TOKENS
    needed = len(_read_sentencepiece(model_file).pieces) + len(specials)
    if needed > dims.vocab:
        raise ModelError(f"{model_file} needs {needed} token ids with the {version} special tokens, but "
                         f"config.json's padded_vocab_size is {dims.vocab}; the tokenizer does not belong to "
                         "these weights. Copy the tokenizer.model from the same download.")


def convert_chatglm(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                    version: ChatGLMVersion | None = None, overwrite: bool = False) -> Path:
    """Convert a local ChatGLM2/3 folder into a native `GlmForCausalLM` folder at `dst`.

    The folder is written next to `dst` under a temporary name and renamed into place only when
    complete, so `dst` either does not exist or holds a whole conversion. When the source has a
    SentencePiece tokenizer.model, the converted fast tokenizer is written alongside.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise ModelError(f"{dst} already exists. Delete it, pick another destination, or pass overwrite=True.")
    plan = _plan(src, version)
    tmp = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir(parents=True)
        _write_folder(plan, tmp)
        _move_into_place(tmp, dst, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote native GLM checkpoint %s (from %s, %s)", dst, src, plan.version)
    return dst


def _write_folder(plan: _Plan, out: Path) -> None:
    from transformers import GlmConfig

    _write_weights(plan.src, plan.shards, plan.dims, out)
    fields = glm_config_fields(plan.src, plan.config, plan.version, plan.rope)
    GlmConfig(**fields).save_pretrained(out)
    _generation_config(plan.src, fields).save_pretrained(out)
    if (plan.src / "tokenizer.model").is_file() and plan.version in ("chatglm2", "chatglm3"):
        convert_chatglm_tokenizer(plan.src, out, version=plan.version)
    info = {"converter_version": CONVERTER_VERSION, "source": str(plan.src), "version": plan.version,
            "rope_reading": plan.rope.kind, "rope_ratio": plan.rope.rope_ratio,
            "rope_evidence": plan.rope.evidence, "fingerprint": source_fingerprint(plan.src, plan.requested_version)}
    (out / CONVERSION_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    from .io import write_manifest

    write_manifest(out)  # written last: loading checks the folder against it


def _generation_config(src: Path, fields: Mapping[str, Any]) -> Any:
    """The source's generation settings (if any) with ChatGLM's stop and pad ids.

    transformers refuses to save settings that contradict each other (temperature without
    sampling, ...), so each source setting is kept only if the result still validates.
    """
    from transformers import GenerationConfig

    kept = {"eos_token_id": fields["eos_token_id"], "pad_token_id": fields["pad_token_id"]}
    source = src / "generation_config.json"
    settings = _read_json(source) if source.is_file() else {}
    dropped = []
    for key, value in settings.items():
        if key in kept or key == "transformers_version":
            continue
        if _valid_generation_config({**kept, key: value}):
            kept[key] = value
        else:
            dropped.append(key)
    if dropped:
        logger.warning("not carrying %s from %s into the converted generation_config.json: transformers "
                       "rejects them together with the other settings", ", ".join(dropped), source)
    return GenerationConfig(**kept)


def _valid_generation_config(settings: Mapping[str, Any]) -> bool:
    from transformers import GenerationConfig

    try:
        GenerationConfig(**settings).validate(strict=True)
    except (ValueError, TypeError):
        return False
    return True


def _move_into_place(tmp: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists() and overwrite:
        trash = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:12]}"
        dst.rename(trash)
        tmp.rename(dst)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        tmp.rename(dst)
    except OSError as exc:  # another process finished the same conversion first
        raise FileExistsError(str(dst)) from exc


_FINGERPRINT_FILES = ("tokenizer.model", "tokenizer_config.json", "tokenization_chatglm.py",
                      "modeling_chatglm.py", "generation_config.json")


def source_fingerprint(src: str | os.PathLike[str], version: str | None = None) -> str:
    """A hash of what a conversion depends on: config.json's bytes, weight and tokenizer file names
    and sizes (hashing multi-gigabyte weights would cost more than converting), and the converter."""
    src = Path(src)
    digest = hashlib.sha256(f"converter={CONVERTER_VERSION};version={version}".encode())
    digest.update((src / "config.json").read_bytes())
    _, weights = _weight_files(src)
    extra = [src / name for name in _FINGERPRINT_FILES if (src / name).is_file()]
    indexes = [p for p in src.glob("*.index.json") if p.is_file()]
    for path in sorted({*weights, *extra, *indexes}):
        digest.update(f"\n{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def _is_complete(folder: Path, fingerprint: str) -> bool:
    info_path = folder / CONVERSION_INFO
    if not (info_path.is_file() and (folder / "config.json").is_file()):
        return False
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    weights = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    return weights and info.get("fingerprint") == fingerprint


def ensure_native(src: str | os.PathLike[str], cache_root: str | os.PathLike[str], *,
                  version: ChatGLMVersion | None = None) -> Path:
    """A native GLM folder for the ChatGLM2/3 checkpoint `src`, converted once into `cache_root`."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise ModelError(f"{src} has no config.json; point the ChatGLM path at the checkpoint folder.")
    fingerprint = source_fingerprint(src, version)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", src.resolve().name) or "chatglm"
    dst = Path(cache_root) / f"{slug}-glm-{fingerprint[:16]}"
    if _is_complete(dst, fingerprint):
        logger.info("reusing converted checkpoint %s for %s", dst, src)
        return dst
    if dst.exists():
        logger.warning("%s is an incomplete or outdated conversion; converting again", dst)
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        return convert_chatglm(src, dst, version=version)
    except (FileExistsError, ModelError) as exc:
        # Another process may have finished the same conversion while this one ran.
        if _is_complete(dst, fingerprint):
            logger.info("another process converted %s into %s first; using it", src, dst)
            return dst
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{dst} appeared while converting {src} but is not a complete conversion; "
                         "delete it and try again.") from None


# --------------------------------------------------------------------------------------------
# SentencePiece model (read with a minimal protobuf reader, so protobuf is not a dependency)
# --------------------------------------------------------------------------------------------

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2


@dataclass(frozen=True)
class _SentencePiece:
    pieces: list[tuple[str, float, int]]  # (piece, score, type)
    model_type: int
    byte_fallback: bool
    unk_id: int
    eos_id: int
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool
    treat_whitespace_as_suffix: bool
    precompiled_charsmap: bytes


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _proto_fields(buf: bytes) -> dict[int, list[Any]]:
    """Field number -> raw values of one protobuf message (varints as int, the rest as bytes)."""
    fields: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _field(fields: dict[int, list[Any]], number: int, default: Any) -> Any:
    values = fields.get(number)
    return values[-1] if values else default


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _read_sentencepiece(path: Path) -> _SentencePiece:
    try:
        model = _proto_fields(path.read_bytes())
        pieces = [_piece(raw) for raw in model.get(1, [])]
        trainer = _proto_fields(_field(model, 2, b""))
        normalizer = _proto_fields(_field(model, 3, b""))
    except (OSError, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not a SentencePiece model ({exc}). ChatGLM2/3 ship a SentencePiece "
                         "tokenizer.model; re-download it from the original checkpoint.") from exc
    if not pieces:
        raise ModelError(f"{path} holds no SentencePiece vocabulary; re-download the original tokenizer.model.")
    return _SentencePiece(
        pieces=pieces,
        model_type=_field(trainer, 3, _UNIGRAM),
        byte_fallback=bool(_field(trainer, 35, 0)),
        unk_id=_int32(_field(trainer, 40, 0)),
        eos_id=_int32(_field(trainer, 42, 2)),
        add_dummy_prefix=bool(_field(normalizer, 3, 1)),
        remove_extra_whitespaces=bool(_field(normalizer, 4, 1)),
        escape_whitespaces=bool(_field(normalizer, 5, 1)),
        treat_whitespace_as_suffix=bool(_field(trainer, 24, 0)),
        precompiled_charsmap=_field(normalizer, 2, b""),
    )


def _piece(raw: bytes) -> tuple[str, float, int]:
    fields = _proto_fields(raw)
    score = struct.unpack("<f", _field(fields, 2, b"\0\0\0\0"))[0]
    return _field(fields, 1, b"").decode("utf-8"), score, _field(fields, 3, _NORMAL)


# --------------------------------------------------------------------------------------------
# Fast tokenizer
# --------------------------------------------------------------------------------------------

# Both templates are prefix-stable: rendering the first k messages (with the generation prompt
# when the next message is an answer) gives a prefix of rendering them all, which is what lets
# templates.py cut a conversation into prompt and answer segments. Neither writes the eos after an
# answer; the training code appends the tokenizer's eos (</s>) to each learned answer, as the
# official fine-tuning scripts do.
#
# ChatGLM3: build_single_message() encodes "<|role|>", then f"{metadata}\n", then the content, each
# with its own SentencePiece dummy prefix. The fast tokenizer gives every text run between special
# tokens a dummy prefix too, so rendering "\n " before the content reproduces the separate encodes
# (the chatglm3-6b repository published the same "\n " template).
CHATGLM3_CHAT_TEMPLATE = (
    "{{- '[gMASK]sop' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'observation'] -%}"
    "{{- raise_exception('ChatGLM3 knows the roles system, user, assistant and observation, not '"
    " ~ message['role']) -}}"
    "{%- endif -%}"
    "{%- set content = message['content'] -%}"
    "{%- if message['role'] == 'system' and message['tools'] is defined and message['tools'] -%}"
    "{%- set content = content ~ '\\n' ~ (message['tools'] | tojson(indent=4)) -%}"
    "{%- endif -%}"
    "{%- set metadata = message['metadata'] if message['metadata'] is defined and message['metadata'] else '' -%}"
    "{{- '<|' ~ message['role'] ~ '|>' ~ metadata ~ '\\n' -}}"
    "{%- if content -%}{{- ' ' ~ content -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)

# ChatGLM2: exactly tokenizer.build_prompt()'s rounds, numbered from 1, after the [gMASK]sop
# prefix; the generation prompt is the round's trailing "答：" itself. The "\n\n" between an
# answer and the next round is written with the next round, so a finished conversation ends with
# the answer (the official ptuning script follows it with eos only).
CHATGLM2_CHAT_TEMPLATE = (
    "{{- '[gMASK]sop' -}}"
    "{%- set ns = namespace(round=0) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if ns.round > 0 -%}{{- '\\n\\n' -}}{%- endif -%}"
    "{%- set ns.round = ns.round + 1 -%}"
    "{{- '[Round ' ~ ns.round ~ ']\\n\\n问：' ~ message['content'] ~ '\\n\\n答：' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{{- raise_exception('ChatGLM2 has only user and assistant turns, not ' ~ message['role']"
    " ~ '; put a system prompt into the first user message') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def chat_template(version: str) -> str:
    """The jinja chat template for "chatglm2" or "chatglm3"."""
    templates = {"chatglm2": CHATGLM2_CHAT_TEMPLATE, "chatglm3": CHATGLM3_CHAT_TEMPLATE}
    if version not in templates:
        raise ModelError(f"There is no chat template for {version!r}; ChatGLM2 and ChatGLM3 have one, ChatGLM-6B "
                         "v1 uses chatglm_v1_prompt(), GLM-4 ships its own template in its -hf repository.")
    return templates[version]


def convert_chatglm_tokenizer(src_folder: str | os.PathLike[str], dst_folder: str | os.PathLike[str], *,
                              version: ChatGLMVersion | None = None) -> Path:
    """Write a fast tokenizer for ChatGLM2/3 built from `src_folder/tokenizer.model` into `dst_folder`.

    Ordinary text gets the SentencePiece model's ids; the ChatGLM special tokens follow the
    SentencePiece vocabulary in the original order; eos is </s>, pad is <unk> (id 0, as the original
    pads with unk_id), padding is on the left, and `tokenizer(text)` prepends [gMASK] sop like the
    original `build_inputs_with_special_tokens`.
    """
    src, dst = Path(src_folder), Path(dst_folder)
    version = version or chatglm_version(src)
    if version not in ("chatglm2", "chatglm3"):
        raise ModelError(f"{src} is {version}: only ChatGLM2/3's SentencePiece tokenizer is converted here. "
                         "ChatGLM-6B v1 needs its remote tokenizer; GLM-4 uses tiktoken, so use the "
                         "THUDM/glm-4-*-hf repository, whose tokenizer transformers loads natively.")
    model_file = src / "tokenizer.model"
    if not model_file.is_file():
        raise ModelError(f"{model_file} does not exist; copy ChatGLM's SentencePiece tokenizer.model there.")
    sp = _read_sentencepiece(model_file)
    specials = CHATGLM3_SPECIAL_TOKENS if version == "chatglm3" else CHATGLM2_SPECIAL_TOKENS
    fast = _fast_tokenizer(sp, specials, model_file)
    wrapper = _wrap(fast, sp, version, src)
    dst.mkdir(parents=True, exist_ok=True)
    wrapper.save_pretrained(dst)
    logger.info("wrote %s fast tokenizer to %s (%d SentencePiece pieces + %d special tokens)",
                version, dst, len(sp.pieces), len(specials))
    return dst


def _check_tokenizer_support(sp: _SentencePiece, path: Path) -> None:
    if sp.model_type not in (_BPE, _UNIGRAM):
        raise ModelError(f"{path} is a SentencePiece model of type {sp.model_type} (word/char); only BPE and "
                         "unigram models can be converted. Use the checkpoint's original tokenizer.model.")
    if sp.treat_whitespace_as_suffix:
        raise ModelError(f"{path} treats whitespace as a suffix, which ChatGLM's tokenizer never does; "
                         "use the checkpoint's original tokenizer.model.")
    if not 0 <= sp.unk_id < len(sp.pieces) or not 0 <= sp.eos_id < len(sp.pieces):
        raise ModelError(f"{path} has no <unk> or </s> piece (unk_id {sp.unk_id}, eos_id {sp.eos_id}); "
                         "ChatGLM's tokenizer.model has both. Use the original file.")


def _fast_tokenizer(sp: _SentencePiece, specials: list[str], path: Path) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, processors

    _check_tokenizer_support(sp, path)
    user_defined = [p for p, _, t in sp.pieces if t == _USER_DEFINED]
    if user_defined:
        # SentencePiece matches these whole before segmenting; here they are ordinary pieces.
        logger.warning("%s has %d user-defined pieces (%s); text containing them may be split differently "
                       "from SentencePiece", path, len(user_defined), _listing(user_defined, 5))
    tokenizer = Tokenizer(_tokenizer_model(sp))
    tokenizer.normalizer = _normalizer(sp)
    tokenizer.decoder = decoders.Sequence(_decoder_steps(sp, decoders))
    controls = [p for p, _, t in sp.pieces if t in (_CONTROL, _UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in controls])
    # "sop"/"eop" are plain letters: matched only as whole words, so "sophisticated" stays text.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False, single_word=t in ("sop", "eop"))
                                  for t in specials])
    _check_special_ids(tokenizer, len(sp.pieces), specials, path)
    eos = sp.pieces[sp.eos_id][0]
    ids = {t: tokenizer.token_to_id(t) for t in ("[gMASK]", "sop", eos)}
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[gMASK] sop $A", pair=f"[gMASK] sop $A $B {eos}", special_tokens=list(ids.items()))
    return tokenizer


def _tokenizer_model(sp: _SentencePiece) -> Any:
    from tokenizers import models

    unk = sp.pieces[sp.unk_id][0]
    if sp.model_type == _UNIGRAM:
        return models.Unigram([(p, s) for p, s, _ in sp.pieces], unk_id=sp.unk_id, byte_fallback=sp.byte_fallback)
    vocab = {piece: i for i, (piece, _, _) in enumerate(sp.pieces)}
    return models.BPE(vocab, _bpe_merges(sp), unk_token=unk, fuse_unk=True, byte_fallback=sp.byte_fallback)


def _bpe_merges(sp: _SentencePiece) -> list[tuple[str, str]]:
    """Merges that replay SentencePiece BPE: it always joins the adjacent pair whose result has the
    highest score, so every split of a piece into two pieces is a merge ranked by that score."""
    mergeable = {p: (i, s) for i, (p, s, t) in enumerate(sp.pieces) if t in (_NORMAL, _USER_DEFINED)}
    ranked = []
    for piece, (pid, score) in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-score, pid, mergeable[left][0], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _normalizer(sp: _SentencePiece) -> Any:
    from tokenizers import Regex, normalizers

    steps: list[Any] = []
    if sp.precompiled_charsmap:
        steps.append(normalizers.Precompiled(sp.precompiled_charsmap))
    if sp.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    space = "▁" if sp.escape_whitespaces else " "
    if sp.add_dummy_prefix:
        # SentencePiece prefixes every encode() call; the fast tokenizer does so for every run of
        # text between special tokens, which is how the original's separate encodes line up.
        steps.append(normalizers.Prepend(space))
    if sp.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    return normalizers.Sequence(steps)


def _decoder_steps(sp: _SentencePiece, decoders: Any) -> list[Any]:
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if sp.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    return steps


def _check_special_ids(tokenizer: Any, n: int, specials: list[str], path: Path) -> None:
    got = {t: tokenizer.token_to_id(t) for t in specials}
    want = {t: n + i for i, t in enumerate(specials)}
    if got != want:
        raise ModelError(f"{path}: the ChatGLM special tokens would get ids {got} instead of {want}, because "
                         "some of them already exist as SentencePiece pieces. This is not ChatGLM's tokenizer.model; "
                         "use the original file.")


def _wrap(fast: Any, sp: _SentencePiece, version: str, src: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    config_path = src / "config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    unk = sp.pieces[sp.unk_id][0]
    extra: dict[str, Any] = {}
    if isinstance(config.get("seq_length"), int):
        extra["model_max_length"] = config["seq_length"]
    return PreTrainedTokenizerFast(
        tokenizer_object=fast,
        unk_token=unk,
        pad_token=unk,  # the original pads with unk_id (0)
        eos_token=sp.pieces[sp.eos_id][0],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=chat_template(version),
        **extra,
    )


def stop_token_ids(tokenizer: Any, version: str) -> list[int]:
    """The ids generation should stop on for `version` (see STOP_TOKENS), looked up in `tokenizer`."""
    if version not in STOP_TOKENS:
        raise ModelError(f"Unknown ChatGLM version {version!r}; expected one of {sorted(STOP_TOKENS)}.")
    ids = []
    for token in STOP_TOKENS[version]:
        token_id = tokenizer.convert_tokens_to_ids(token)
        unk_id = getattr(tokenizer, "unk_token_id", None)
        if token_id is None or (token_id == unk_id and token != getattr(tokenizer, "unk_token", None)):
            raise ModelError(f"The tokenizer has no {token!r} token, which {version} stops generation on. "
                             "Load the tokenizer that belongs to this checkpoint (or convert it with "
                             "convert_chatglm_tokenizer).")
        ids.append(int(token_id))
    return ids


# --------------------------------------------------------------------------------------------
# ChatGLM-6B (v1): still remote code; helpers only
# --------------------------------------------------------------------------------------------

CHATGLM_V1_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
# ChatGLM-6B's README recommends 4.27.1 and says 4.23.1 or newer; 4.34 reordered tokenizer
# initialisation, which breaks its tokenizer (`no attribute 'sp_tokenizer'`).
V1_TRANSFORMERS_MIN = "4.23.1"
V1_TRANSFORMERS_BELOW = "4.34"
V1_TRANSFORMERS_RANGE_TEXT = "4.23.1 to 4.33.x (4.27.1 recommended)"


def chatglm_v1_prompt(history: list[tuple[str, str]], query: str) -> str:
    """ChatGLM-6B v1's chat prompt, as its `chat()` builds it.

    With no history the prompt is the bare query; otherwise rounds are numbered from 0 with single
    newlines: "[Round 0]\\n问：q\\n答：a\\n...[Round N]\\n问：query\\n答：".
    """
    if not history:
        return query
    rounds = "".join(f"[Round {i}]\n问：{q}\n答：{a}\n" for i, (q, a) in enumerate(history))
    return f"{rounds}[Round {len(history)}]\n问：{query}\n答："


@dataclass
class ChatGLMV1Template:
    """ChatGLM-6B v1 as a template for templates.py: (text, learn) segments of a record.

    v1's fine-tuning script trains one answer per sample: earlier rounds are prompt text in
    `chatglm_v1_prompt` form, and the tokens are prompt + [gMASK] <sop> + answer + <eop> (v1
    puts its [gMASK] <sop> after the prompt, not in front). So only the last answer is learned,
    together with the <sop> that opens it and the eos that closes it. v1 has no system role: a
    system prompt is put in front of the first question.
    """

    eos_token: str = "<eop>"
    name: str = "chatglm"
    gmask_token: str = "[gMASK]"
    sop_token: str = "<sop>"

    def segments(self, record: dict[str, Any], add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
        pairs, query, answer = self._rounds(record, add_generation_prompt)
        prompt = chatglm_v1_prompt(pairs, query) + self.gmask_token
        if answer is None:
            return [(prompt + self.sop_token, False)]
        return [(prompt, False), (self.sop_token + answer + self.eos_token, True)]

    def _rounds(self, record: dict[str, Any], add_generation_prompt: bool
                ) -> tuple[list[tuple[str, str]], str, str | None]:
        from lora_finetune.templates import user_text

        messages = list(record["messages"])
        answer = None
        if messages and messages[-1]["role"] == "assistant" and not add_generation_prompt:
            answer = messages.pop()["content"]
        if not messages or messages[-1]["role"] != "user":
            raise ModelError("A ChatGLM-6B prompt must end with a user turn (the question to answer), but this "
                             "record ends with an assistant turn. Drop the trailing answer to build a prompt.")
        questions = [user_text(m) for m in messages if m["role"] == "user"]
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        if record.get("system"):
            questions[0] = f"{record['system']}\n{questions[0]}"
        return list(zip(questions[:-1], replies)), questions[-1], answer


def _v1_advice() -> str:
    return (f"ChatGLM-6B (v1) runs only through its own remote code, which is known to work with transformers "
            f"{V1_TRANSFORMERS_RANGE_TEXT}. Install one of those (e.g. pip install 'transformers==4.27.1') "
            "in a separate environment for v1, or move to ChatGLM2/ChatGLM3, which this package converts "
            "to native transformers.")


def check_v1_transformers_version(installed: str | None = None) -> None:
    """Raise a ModelError unless the installed transformers is one ChatGLM-6B v1's remote code works with."""
    from packaging.version import InvalidVersion, Version

    if installed is None:
        import transformers

        installed = transformers.__version__
    try:
        version = Version(installed)
    except InvalidVersion:
        logger.warning("cannot parse transformers version %r; not checking ChatGLM-6B compatibility", installed)
        return
    if not Version(V1_TRANSFORMERS_MIN) <= version < Version(V1_TRANSFORMERS_BELOW):
        raise ModelError(f"transformers {installed} is installed. {_v1_advice()}")


# (substring of the error, what it means)
_V1_FAILURES = (
    ("sp_tokenizer", "its tokenizer sets attributes after transformers >= 4.34 already needs them"),
    ("has no attribute 'tokenizer'", "its tokenizer sets attributes after transformers >= 4.34 already needs them"),
    ("does not recognize this architecture", "transformers has no built-in 'chatglm' model type"),
    ("trust_remote_code", "the checkpoint needs trust_remote_code=True"),
    ("_extract_past_from_model_output", "its generation code calls a method removed from newer transformers"),
    ("cannot import name", "its code imports something newer transformers removed"),
    ("no attribute 'generate'", "newer transformers no longer gives remote models generate()"),
    ("GenerationMixin", "newer transformers no longer gives remote models generate()"),
)


def explain_v1_load_failure(exc: BaseException) -> ModelError:
    """A ModelError explaining why loading ChatGLM-6B v1 failed, for `raise ... from exc`."""
    text = f"{type(exc).__name__}: {exc}"
    from importlib.metadata import PackageNotFoundError, version as package_version

    try:
        installed = package_version("transformers")
    except PackageNotFoundError:
        installed = "not installed"
    for needle, meaning in _V1_FAILURES:
        if needle in text:
            return ModelError(f"Loading ChatGLM-6B failed ({text.splitlines()[0][:300]}): {meaning}. "
                              f"transformers {installed} is installed. {_v1_advice()}")
    return ModelError(f"Loading ChatGLM-6B failed ({text.splitlines()[0][:300] if text else type(exc).__name__}) "
                      f"with transformers {installed}. If the traceback points into the checkpoint's own "
                      f"modeling_chatglm.py or tokenization_chatglm.py, the cause is the transformers version: "
                      f"{_v1_advice()}")


__all__ = [
    "CHATGLM2_CHAT_TEMPLATE",
    "CHATGLM2_SPECIAL_TOKENS",
    "CHATGLM3_CHAT_TEMPLATE",
    "CHATGLM3_ROLE_TOKENS",
    "CHATGLM3_SPECIAL_TOKENS",
    "CHATGLM_V1_TARGETS",
    "ChatGLMV1Template",
    "ChatGLMVersion",
    "RopeReading",
    "STOP_TOKENS",
    "chat_template",
    "chatglm_v1_prompt",
    "chatglm_version",
    "check_v1_transformers_version",
    "convert_chatglm",
    "convert_chatglm_tokenizer",
    "ensure_native",
    "explain_v1_load_failure",
    "glm_config_fields",
    "is_chatglm_folder",
    "rope_reading",
    "source_fingerprint",
    "stop_token_ids",
]
