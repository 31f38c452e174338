"""ChatGLM2/3 checkpoints rewritten as native `GlmForCausalLM` folders.

ChatGLM2-6B and ChatGLM3-6B are, layer for layer, the architecture transformers ships natively as
`GlmForCausalLM` (the GLM-4 family): RMSNorm, grouped-query attention with a bias on q/k/v only,
rotary embeddings on the first half of each head applied to interleaved pairs, and a SwiGLU MLP
whose fused up-projection is laid out [gate; up]. Only the tensor names differ, so every tensor
is mapped explicitly here, checked against the shapes the config implies, and written as
safetensors with a GlmConfig, a generation config and the converted fast tokenizer.

`ensure_native` converts once into a cache folder keyed by a fingerprint of the source.
Nothing here imports or executes a checkpoint's Python files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ...errors import ModelError, listing
from ...folders import atomic_dir, check_output_folder, is_no_space, no_space_error, output_lock, write_manifest
from .sentencepiece import _read_sentencepiece
from .tokenizer import CHATGLM2_SPECIAL_TOKENS, CHATGLM3_SPECIAL_TOKENS, convert_chatglm_tokenizer
from .v1 import V1_TRANSFORMERS_RANGE_TEXT
from .version import ChatGLMVersion, RopeReading, _is_chatglm_config, _read_json, chatglm_version, rope_reading

if TYPE_CHECKING:
    from transformers import GenerationConfig, GlmConfig

log = logging.getLogger(__name__)

# Bump when the converted output changes, so `ensure_native` does not reuse stale cache entries.
CONVERTER_VERSION = "2"  # 2: ChatGLM3 chat template writes tools, tool calls and observations
CONVERSION_INFO = "lora_finetune_conversion.json"


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
        raise ModelError(
            f"{path}: field `{key}` is {value!r}, expected a positive integer. "
            "Restore the checkpoint's original config.json."
        )
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
        raise ModelError(
            f"{path}: num_attention_heads={dims.heads} is not a multiple of "
            f"multi_query_group_num={dims.groups}; restore the original config.json."
        )
    if dims.head_dim % 4:
        raise ModelError(
            f"{path}: kv_channels={dims.head_dim} is not a multiple of 4, so half of each head "
            "cannot be split into rotary pairs the way GLM does; this checkpoint cannot be "
            "converted (load it with its remote code instead)."
        )


# (config field, value the native GLM model needs, what the field changes)
_REQUIRED_FLAGS = (
    ("add_bias_linear", False, "bias on the output and MLP projections, which GlmForCausalLM has no place for"),
    (
        "apply_residual_connection_post_layernorm",
        False,
        "residuals taken after the layer norms, while GLM adds them before",
    ),
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
        raise ModelError(
            f"{path}: `pre_seq_len` is {config['pre_seq_len']}, i.e. a P-Tuning v2 prefix "
            "encoder is part of the model; convert the base checkpoint it was trained from and "
            "set pre_seq_len to null, or load it with its remote code."
        )
    if config.get("quantization_bit"):
        raise ModelError(
            f"{path}: `quantization_bit` is {config['quantization_bit']}; quantized ChatGLM "
            "weights (int4/int8 releases) cannot be converted. Use the full-precision release."
        )


def _stop_ids(version: ChatGLMVersion, config: Mapping[str, Any], src: Path) -> list[int]:
    eos = config.get("eos_token_id", 2)
    eos_ids = [int(i) for i in eos] if isinstance(eos, list) else [int(eos)]
    if version != "chatglm3":
        return eos_ids
    specials = _special_token_ids(src)
    if specials is None:
        log.warning(
            "%s has no tokenizer.model, so the ids of <|user|> and <|observation|> are unknown; "
            "generation_config.json will stop on eos only",
            src,
        )
        return eos_ids
    role_stops = [specials["<|user|>"], specials["<|observation|>"]]
    return eos_ids + [i for i in role_stops if i not in eos_ids]


def _special_token_ids(src: Path) -> dict[str, int] | None:
    model_file = src / "tokenizer.model"
    if not model_file.is_file():
        return None
    size = len(_read_sentencepiece(model_file).pieces)
    return {token: size + i for i, token in enumerate(CHATGLM3_SPECIAL_TOKENS)}


def glm_config_fields(
    src: Path, config: Mapping[str, Any], version: ChatGLMVersion, rope: RopeReading
) -> dict[str, Any]:
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


def estimate_config(config: Mapping[str, Any]) -> GlmConfig:
    """The `GlmConfig` a ChatGLM2/3 config.json becomes, from the config alone (no weights, no
    tokenizer): what the memory estimate measures before anything is converted."""
    from transformers import GlmConfig

    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    kv_channels = int(config.get("kv_channels") or hidden // heads)
    groups = int(config.get("multi_query_group_num") or heads) if config.get("multi_query_attention") else heads
    return GlmConfig(
        vocab_size=int(config.get("padded_vocab_size") or config["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(config["ffn_hidden_size"]),
        num_hidden_layers=int(config["num_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=kv_channels,
        attention_bias=bool(config.get("add_qkv_bias", True)),
        partial_rotary_factor=0.5,
        tie_word_embeddings=False,
        pad_token_id=int(config.get("pad_token_id") or 0),
    )


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
        raise ModelError(
            f"{path}: tensor {name} has shape {tuple(tensor.shape)}, but config.json implies "
            f"{expected}. The weights and config.json do not belong together; restore the "
            "matching config.json."
        )
    if name in _GLOBAL_NAMES:
        return [(_GLOBAL_NAMES[name], tensor.clone())]
    layer, key = name[len(_LAYER_PREFIX) :].split(".", 1)
    prefix = f"model.layers.{layer}."
    if key in _QKV:
        # Rows are [all query heads; key groups; value groups], each head kv_channels rows; the
        # rotary pairs are interleaved in both models, so no per-head permutation is needed.
        kind = key.rsplit(".", 1)[1]
        q, k, v = torch.split(tensor, [dims.q_rows, dims.kv_rows, dims.kv_rows], dim=0)
        return [
            (f"{prefix}self_attn.{proj}.{kind}", part.clone())
            for proj, part in (("q_proj", q), ("k_proj", k), ("v_proj", v))
        ]
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
    raise ModelError(
        f"{src} holds no weights: expected model.safetensors, model-*.safetensors with "
        "model.safetensors.index.json, pytorch_model.bin, or pytorch_model-*.bin shards. "
        "Download the weight files into that folder."
    )


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
        problems.append(f"unknown tensors {listing(unknown)}")
    if missing:
        problems.append(f"missing tensors {listing(missing)}")
    if duplicated:
        problems.append(f"tensors stored twice {listing(duplicated)}")
    if problems:
        raise ModelError(
            f"{src} cannot be converted to GlmForCausalLM: {'; '.join(problems)}. A ChatGLM2/3 checkpoint "
            f"with this config.json ({dims.layers} layers, qkv bias {dims.qkv_bias}) has exactly the "
            "transformer.embedding/encoder/output_layer tensors; check that the config matches the weights, "
            "that every shard is downloaded, and that no adapter or prefix-encoder weights were merged in."
        )


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
        log.info("converted %s -> %s (%d tensors)", path.name, out_name, len(converted))
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
        raise ModelError(
            f"{src / 'config.json'} has model_type {config.get('model_type')!r}, not 'chatglm'; "
            "only remote-code ChatGLM checkpoints need converting."
        )
    requested = version
    version = version or chatglm_version(src)
    if version == "chatglm":
        raise ModelError(
            f"{src} is a ChatGLM-6B (v1) checkpoint, whose 2D positions and GeLU MLP have no "
            "native transformers counterpart. Load it with trust_remote_code=True under "
            f"transformers {V1_TRANSFORMERS_RANGE_TEXT} (LoRA targets query_key_value, dense, "
            "dense_h_to_4h, dense_4h_to_h are chosen automatically)."
        )
    _check_representable(config, src / "config.json")
    dims = _dims(config, src / "config.json")
    rope = rope_reading(src, config, version)
    log.info("rope_ratio reading for %s: %s (ratio %g; from %s)", src, rope.kind, rope.rope_ratio, rope.evidence)
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
        raise ModelError(
            f"{model_file} needs {needed} token ids with the {version} special tokens, but "
            f"config.json's padded_vocab_size is {dims.vocab}; the tokenizer does not belong to "
            "these weights. Copy the tokenizer.model from the same download."
        )


def convert_chatglm(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    version: ChatGLMVersion | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a local ChatGLM2/3 folder into a native `GlmForCausalLM` folder at `dst`.

    The folder is written next to `dst` under a temporary name and renamed into place only when
    complete, so `dst` either does not exist or holds a whole conversion. When the source has a
    SentencePiece tokenizer.model, the converted fast tokenizer is written alongside.
    """
    src, dst = Path(src), Path(dst)
    check_output_folder(dst, overwrite)
    with output_lock(dst):
        return _convert(src, dst, version, overwrite)


def _convert(src: Path, dst: Path, version: ChatGLMVersion | None, overwrite: bool) -> Path:
    plan = _plan(src, version)
    try:
        with atomic_dir(dst, overwrite=overwrite) as tmp:
            _write_folder(plan, tmp)
    except OSError as e:
        if not is_no_space(e):
            raise
        raise no_space_error(dst) from None
    log.info("wrote native GLM checkpoint %s (from %s, %s)", dst, src, plan.version)
    return dst


def _write_folder(plan: _Plan, out: Path) -> None:
    from transformers import GlmConfig

    _write_weights(plan.src, plan.shards, plan.dims, out)
    fields = glm_config_fields(plan.src, plan.config, plan.version, plan.rope)
    GlmConfig(**fields).save_pretrained(out)
    _generation_config(plan.src, fields).save_pretrained(out)
    if (plan.src / "tokenizer.model").is_file() and plan.version in ("chatglm2", "chatglm3"):
        convert_chatglm_tokenizer(plan.src, out, version=plan.version)
    info = {
        "converter_version": CONVERTER_VERSION,
        "source": str(plan.src),
        "version": plan.version,
        "rope_reading": plan.rope.kind,
        "rope_ratio": plan.rope.rope_ratio,
        "rope_evidence": plan.rope.evidence,
        "fingerprint": source_fingerprint(plan.src, plan.requested_version),
    }
    (out / CONVERSION_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    write_manifest(out)  # written last: loading checks the folder against it


def _generation_config(src: Path, fields: Mapping[str, Any]) -> GenerationConfig:
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
        log.warning(
            "not carrying %s from %s into the converted generation_config.json: transformers "
            "rejects them together with the other settings",
            ", ".join(dropped),
            source,
        )
    return GenerationConfig(**kept)


def _valid_generation_config(settings: Mapping[str, Any]) -> bool:
    from transformers import GenerationConfig

    try:
        GenerationConfig(**settings).validate(strict=True)
    except (ValueError, TypeError):
        return False
    return True


_FINGERPRINT_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "tokenization_chatglm.py",
    "modeling_chatglm.py",
    "generation_config.json",
)


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


def ensure_native(
    src: str | os.PathLike[str], cache_root: str | os.PathLike[str], *, version: ChatGLMVersion | None = None
) -> Path:
    """A native GLM folder for the ChatGLM2/3 checkpoint `src`, converted once into `cache_root`."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise ModelError(f"{src} has no config.json; point the ChatGLM path at the checkpoint folder.")
    fingerprint = source_fingerprint(src, version)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", src.resolve().name) or "chatglm"
    dst = Path(cache_root) / f"{slug}-glm-{fingerprint[:16]}"
    if _is_complete(dst, fingerprint):
        log.info("reusing converted checkpoint %s for %s", dst, src)
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    # One converter per cache folder: a second process waits, then finds the conversion done.
    with output_lock(dst, wait=True):
        if _is_complete(dst, fingerprint):
            log.info("another process converted %s into %s first; using it", src, dst)
            return dst
        if dst.exists():
            log.warning("%s is an incomplete or outdated conversion; converting again", dst)
            shutil.rmtree(dst)
        return _convert(src, dst, version, overwrite=False)
