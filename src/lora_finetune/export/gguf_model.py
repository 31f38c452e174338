"""A Hugging Face causal LM (its state dict and config) as a GGUF file llama.cpp runs.

What llama.cpp's convert_hf_to_gguf.py does for the Llama, Qwen2, Qwen3 and ChatGLM (native
`GlmForCausalLM`) architectures, written with the `gguf` package's own tables: tensor names
through `TensorNameMap` (every tensor must map to one the architecture declares in
`MODEL_TENSORS`, or the export stops), hyper-parameters under `<arch>.*`, and the Q/K row
permutation of llama-architecture models (llama.cpp rotates adjacent pairs, transformers rotates
the two halves of each head).

GLM (converted ChatGLM2/3) is llama.cpp's `chatglm`: q/k/v stay separate tensors with their
biases (llama.cpp's graph takes them unfused), `mlp.gate_up_proj` is `ffn_up` with its [gate; up]
rows as llama.cpp's fused SwiGLU reads them, and only `partial_rotary_factor` (a half) of each
head is rotated, on adjacent pairs as in transformers' GLM, so nothing is permuted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..models.families import gguf_architectures

if TYPE_CHECKING:
    import gguf
    import torch
    from transformers import PretrainedConfig

    from .tokenizer_meta import TokenizerMeta

log = logging.getLogger(__name__)

OUTTYPES = ("f16", "bf16", "q8_0")
PERMUTE_QK = {"llama"}
"""llama.cpp architectures whose rotary embedding pairs adjacent dimensions (rope type NORM):
their Q and K rows are permuted from transformers' half-split layout. Qwen2/3 use NEOX rope,
the same layout as transformers, and are written as they are."""
SUPPORTED_ROPE = ("default", None)


@dataclass(frozen=True)
class Arch:
    name: str
    """llama.cpp's architecture name (general.architecture)."""
    model_type: str
    n_layers: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dims: int = 0
    """How many dimensions of each head are rotated (llama.cpp's `rope.dimension_count`): the
    whole head, or `partial_rotary_factor` of it (GLM/ChatGLM rotate the first half)."""

    @property
    def permute_qk(self) -> bool:
        return self.name in PERMUTE_QK

    def gguf_arch(self) -> gguf.MODEL_ARCH:
        import gguf

        return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == self.name)


def _partial_rotary_factor(config: PretrainedConfig) -> float:
    """The share of each head that is rotated, from a transformers 5 (`rope_parameters`) or 4
    (`partial_rotary_factor`) config; 1 when the config has none."""
    params = getattr(config, "rope_parameters", None) or {}
    factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    return float(factor if factor is not None else 1.0)


def _rope(config: PretrainedConfig) -> tuple[str | None, float]:
    """(rope type, theta) from a transformers 4 (`rope_theta`, `rope_scaling`) or 5
    (`rope_parameters`) config."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return kind, float(theta if theta is not None else 10000.0)


def arch_for(config: PretrainedConfig) -> Arch:
    """The llama.cpp architecture of a model config; a ModelError naming what export supports
    for anything else (checked before any weights are loaded)."""
    archs = gguf_architectures()
    model_type = getattr(config, "model_type", None)
    if model_type not in archs:
        raise ModelError(
            f"GGUF export does not support model_type {model_type!r}. Supported: "
            + ", ".join(f"{t} (llama.cpp `{a}`)" for t, a in archs.items())
            + ". Use `lora-finetune merge` for a transformers folder of any architecture."
        )
    kind, _ = _rope(config)
    if kind not in SUPPORTED_ROPE:
        raise ModelError(
            f"GGUF export does not support rope scaling {kind!r} yet (this model's config.json); "
            "supported: none (default rope). Use `lora-finetune merge` for a transformers folder."
        )
    n_head = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    rope_dims = int(head_dim * _partial_rotary_factor(config))
    if rope_dims <= 0 or rope_dims > head_dim or rope_dims % 2:
        raise ModelError(
            f"GGUF export: this config rotates {rope_dims} of {head_dim} head dimensions "
            "(partial_rotary_factor); llama.cpp needs an even number between 2 and the head size."
        )
    return Arch(
        name=archs[model_type],
        model_type=model_type,
        n_layers=int(config.num_hidden_layers),
        n_head=n_head,
        n_head_kv=int(getattr(config, "num_key_value_heads", None) or n_head),
        head_dim=head_dim,
        rope_dims=rope_dims,
    )


def check_outtype(outtype: str) -> str:
    key = str(outtype).lower()
    if key not in OUTTYPES:
        raise ConfigError(f"--outtype {outtype}: GGUF export writes {', '.join(OUTTYPES)}.")
    return key


# --------------------------------------------------------------------------- tensors
class NameMapper:
    """Hugging Face tensor names -> GGUF names for one architecture (gguf's TensorNameMap),
    refusing any name the architecture does not declare."""

    def __init__(self, arch: Arch) -> None:
        import gguf

        self.arch = arch
        self.map = gguf.get_tensor_name_map(arch.gguf_arch(), arch.n_layers)
        self.valid = set()
        for t in gguf.MODEL_TENSORS[arch.gguf_arch()]:
            pattern = gguf.TENSOR_NAMES[t]
            self.valid.update(
                {pattern.format(bid=i) for i in range(arch.n_layers)} if "{bid}" in pattern else {pattern}
            )

    def __call__(self, hf_name: str) -> str:
        name = self.map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None or name.rsplit(".", 1)[0] not in self.valid:
            raise ModelError(
                f"GGUF export: tensor {hf_name} has no place in llama.cpp's `{self.arch.name}` architecture "
                "(the model has layers this architecture does not know). Use `lora-finetune merge` instead."
            )
        return name


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' half-split rotary layout -> llama.cpp's interleaved one, per head (what
    convert_hf_to_gguf's LlamaModel.permute does; works for weights, biases and LoRA B)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf_layout(arch: Arch, gguf_name: str, w: np.ndarray) -> np.ndarray:
    if arch.permute_qk and ".attn_q." in gguf_name:
        return permute_rows(w, arch.n_head)
    if arch.permute_qk and ".attn_k." in gguf_name:
        return permute_rows(w, arch.n_head_kv)
    return w


def encode(w: np.ndarray, outtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """A float32 tensor in the file's type: 1-D tensors (norms, biases) stay f32 as llama.cpp
    expects; q8_0 needs rows of a multiple of 32 and falls back to f16 otherwise (as
    convert_hf_to_gguf does)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import QuantError, quantize

    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim <= 1:
        return w, Q.F32
    qtype = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[outtype]
    try:
        return quantize(w, qtype), qtype
    except QuantError:
        return quantize(w, Q.F16), Q.F16


def file_type(outtype: str) -> int:
    from gguf import LlamaFileType as F

    return {"f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[outtype]


def add_tensor(writer: gguf.GGUFWriter, name: str, w: np.ndarray, outtype: str) -> str:
    data, qtype = encode(w, outtype)
    writer.add_tensor(name, data, raw_dtype=qtype)  # byte-shaped data: gguf derives the shape
    return qtype.name


def model_tensors(
    arch: Arch, state_dict: Mapping[str, torch.Tensor], tied: bool
) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    """(GGUF name, loader of the float32 array in GGUF layout) for every tensor of the model."""
    mapper = NameMapper(arch)
    seen: dict[str, str] = {}
    for hf_name, t in state_dict.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp uses token_embd for the output when there is no output.weight
        name = mapper(hf_name)
        if name in seen:
            raise ModelError(f"GGUF export: {hf_name} and {seen[name]} both map to {name}.")
        seen[name] = hf_name
        yield name, lambda t=t, name=name: to_gguf_layout(arch, name, t.detach().float().cpu().numpy())


# --------------------------------------------------------------------------- the file
def add_hparams(writer: gguf.GGUFWriter, arch: Arch, config: PretrainedConfig, vocab_size: int) -> None:
    _, theta = _rope(config)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(arch.n_layers)
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(arch.n_head)
    writer.add_head_count_kv(arch.n_head_kv)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(theta)
    writer.add_rope_dimension_count(arch.rope_dims or arch.head_dim)
    writer.add_key_length(arch.head_dim)
    writer.add_value_length(arch.head_dim)
    writer.add_vocab_size(vocab_size)


def write_model_gguf(
    path: Path,
    *,
    arch: Arch,
    config: PretrainedConfig,
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: TokenizerMeta,
    outtype: str,
    name: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Write the model to `path`; returns how many tensors went out in each GGML type."""
    import gguf

    tied = bool(getattr(config, "tie_word_embeddings", False))
    writer = gguf.GGUFWriter(str(path), arch.name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(file_type(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_hparams(writer, arch, config, len(tokenizer.tokens))
    tokenizer.write(writer)
    for key, value in (extra or {}).items():
        writer.add_string(key, str(value))
    counts: dict[str, int] = {}
    for gname, load in model_tensors(arch, state_dict, tied):
        kind = add_tensor(writer, gname, load(), outtype)
        counts[kind] = counts.get(kind, 0) + 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    log.debug("wrote %s: %s", path, counts)
    return counts


__all__ = [
    "OUTTYPES",
    "Arch",
    "NameMapper",
    "add_hparams",
    "add_tensor",
    "arch_for",
    "check_outtype",
    "encode",
    "file_type",
    "permute_rows",
    "to_gguf_layout",
    "write_model_gguf",
]
