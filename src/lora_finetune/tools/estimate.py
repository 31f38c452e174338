"""Predict the peak memory of a LoRA / QLoRA training step from a model's config alone.

    lora-finetune estimate --model Qwen/Qwen3-0.6B --quantization 4bit --batch_size 8 \\
        --max_length 512 --budget 24GB

Nothing here loads weights. The model's module tree comes from its `config.json` on the meta
device (`models.meta_model`), which gives every linear layer's shape; the rest is arithmetic,
kept in pure functions (`model_shape` -> `estimate_memory` -> `suggest`) so tests can check each
term.

What a step holds at its peak (the start of the backward pass) and how we count it:

- weights: every parameter at its storage size. bf16/fp16: 2 bytes; fp32: 4; 4-bit (NF4, double
  quantisation): 0.5 byte + ~0.016 byte of constants per quantised weight; 8-bit: 1 byte. With
  4/8-bit, `prepare_model_for_kbit_training` (which our loader calls) turns every weight that is
  not quantised -- embeddings, lm_head, norms -- into fp32, so those count 4 bytes.
- LoRA: r * (in + out) parameters per wrapped layer, kept in fp32 by peft: 4 bytes for the
  weight, 4 for its gradient, 8 for AdamW's two fp32 moments (16 bytes per parameter).
- activations: what autograd saves for the backward pass, per token and layer, written out term
  by term in `layer_activations` from how transformers' Llama/Qwen/GLM layers and peft's LoRA
  layers compute (checked against autograd's saved tensors in tests/test_estimate.py). A frozen
  linear layer saves nothing for its weight; the LoRA branch saves its input (after dropout) and
  the dropout mask. Tokens per step = batch_size * max_length, the worst case of per-batch
  padding. With gradient checkpointing only each layer's input is kept, plus one layer's
  activations while it is recomputed.
- logits: the (tokens x vocab) logits and the loss's fp32 copies: 12-14 bytes per token and
  vocabulary entry at the peak of the loss's backward pass; ~0 with liger-kernel's fused
  linear + cross-entropy.
- overhead (GPU): CUDA context and allocator slack, ~0.5 GiB + 5%; `torch.cuda.max_memory_
  allocated` does not include it, `nvidia-smi` does.

Calibration (bench/RESULTS.md): on CPU against the measured peak-RSS growth of training steps of
the bundled SmolLM2-135M and the tiny test models; on a GPU against nine peaks measured on an H200
(Qwen3-0.6B and a 6B GLM, bf16 and 4-bit), which tests/tools/test_estimate.py pins.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, ModelError
from ..models.families import family_for, layer_role
from ..models.targets import HEAD_NAMES, is_linear, layer_shape

GiB = 1024**3
QUANT_CONST_4BIT = 1 / 64 + 4 / (64 * 256)  # NF4 double quantisation: bytes per weight
if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw_8bit": 2, "sgd": 0}


# --------------------------------------------------------------------------- model shape
@dataclass(frozen=True)
class LinearShape:
    suffix: str
    in_features: int
    out_features: int
    count: int
    """How many layers of this name the model has (usually one per decoder layer)."""


@dataclass
class ModelShape:
    """What the estimate needs to know about a model (read from its meta-device module tree)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    linears: list[LinearShape]
    """Linear layers of the decoder (not the output head), grouped by name."""
    embed_params: int
    head_params: int
    """lm_head parameters (0 when tied to the embeddings)."""
    other_params: int
    """Everything else that is not quantised: norms, biases."""
    qk_norm: bool = False
    gated_mlp: bool = True
    rms_norm: bool = True

    @property
    def linear_params(self) -> int:
        return sum(lin.in_features * lin.out_features * lin.count for lin in self.linears)

    @property
    def total_params(self) -> int:
        return self.linear_params + self.embed_params + self.head_params + self.other_params

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def model_shape(model: nn.Module, config: PretrainedConfig) -> ModelShape:
    """Read a `ModelShape` from a (meta-device) model and its config."""
    from torch import nn

    linears: dict[tuple[str, int, int], int] = {}
    head_params = embed_params = other = 0
    names = set()
    linear_param_ids = set()
    qk_norm = rms_norm = False
    for name, mod in model.named_modules():
        suffix = name.rsplit(".", 1)[-1]
        names.add(suffix)
        if suffix in ("q_norm", "k_norm", "query_layernorm", "key_layernorm"):
            qk_norm = True
        if "RMSNorm" in type(mod).__name__:
            rms_norm = True
        if is_linear(mod):
            fout, fin = layer_shape(mod)
            linear_param_ids.add(id(mod.weight))
            if suffix in HEAD_NAMES:
                head_params += fin * fout
                continue
            key = (suffix, fin, fout)
            linears[key] = linears.get(key, 0) + 1
        elif isinstance(mod, nn.Embedding):
            embed_params += mod.weight.numel()
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) not in linear_param_ids and p.dim() >= 1:
            other += p.numel()
    other -= embed_params  # embeddings were counted above
    tied = bool(getattr(config, "tie_word_embeddings", False)) or head_params == 0
    if tied:
        head_params = 0
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "n_embd", 0))
    heads = int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "n_head", 1))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or getattr(cfg, "n_layer", 0))
    inter = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden)
    gated = bool(names & {"gate_proj", "gate_up_proj", "dense_h_to_4h", "w1"})
    return ModelShape(
        model_type=str(getattr(cfg, "model_type", "unknown")),
        vocab_size=int(cfg.vocab_size),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        linears=[LinearShape(s, i, o, c) for (s, i, o), c in sorted(linears.items())],
        embed_params=embed_params,
        head_params=head_params,
        other_params=max(other, 0),
        qk_norm=qk_norm,
        gated_mlp=gated,
        rms_norm=rms_norm,
    )


# --------------------------------------------------------------------------- the setup
@dataclass
class Setup:
    """The training settings the estimate is for (our config's names)."""

    quantization: str = "none"
    dtype: str = "bf16"
    r: int = 8
    target_modules: list[str] | str = "auto"
    batch_size: int = 2
    max_length: int = 768
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    dropout: float = 0.05
    device: str = "cuda"
    """`cuda` (autocast, fused dropout masks) or `cpu` (fp32 compute; RSS)."""
    liger: bool = False
    """Fused linear + cross-entropy: no full logits."""
    fused_logits: bool = False
    """Log-probabilities computed in chunks without full logits (TRL's fused LM head: DPO, KTO),
    counted as liger's fused cross-entropy is."""
    attention: str = "sdpa"
    """`sdpa` (flash / memory-efficient kernels: memory linear in length) or `eager`."""

    def describe(self) -> str:
        parts = [
            self.quantization if self.quantization != "none" else self.dtype,
            f"r={self.r}",
            f"batch {self.batch_size} x {self.max_length} tokens",
        ]
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing")
        if self.liger:
            parts.append("liger")
        return ", ".join(parts)


@dataclass
class Estimate:
    setup: Setup
    weights: float
    lora: float
    activations: float
    logits: float
    other: float
    overhead: float
    lora_params: int
    tokens: int
    targets: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def peak_allocated(self) -> float:
        """What `torch.cuda.max_memory_allocated` should report."""
        return self.weights + self.lora + self.activations + self.logits + self.other

    @property
    def total(self) -> float:
        """What the GPU must have free (allocated peak + CUDA context and allocator slack)."""
        return self.peak_allocated + self.overhead

    def rows(self) -> list[tuple[str, float, str]]:
        s = self.setup
        wdesc = {
            "none": f"{s.dtype} weights",
            "4bit": "NF4 linear weights + fp32 embeddings/norms",
            "8bit": "int8 linear weights + fp32 embeddings/norms",
        }[s.quantization]
        opt = {"adamw": "AdamW fp32 moments", "adamw_8bit": "8-bit AdamW", "sgd": "no optimizer state"}.get(
            s.optimizer, s.optimizer
        )
        return [
            ("weights", self.weights, wdesc),
            ("LoRA (params + grads + optimizer)", self.lora, f"{self.lora_params:,} fp32 parameters, {opt}"),
            (
                "activations",
                self.activations,
                f"{self.tokens:,} tokens/step" + (", checkpointed" if s.gradient_checkpointing else ""),
            ),
            ("logits and loss", self.logits, "fused (liger)" if s.liger else "tokens x vocab, fp32 loss copies"),
            ("other", self.other, "dequantisation buffer, misc" if s.quantization != "none" else "misc"),
            (
                "CUDA context + allocator slack" if s.device == "cuda" else "overhead",
                self.overhead,
                "not in max_memory_allocated" if s.device == "cuda" else "",
            ),
        ]


def _lora_linears(shape: ModelShape, targets: list[str]) -> list[LinearShape]:
    return [lin for lin in shape.linears if lin.suffix in targets]


def resolve_targets(shape: ModelShape, spec: list[str] | str) -> list[str]:
    """Target names as the trainer resolves them (`auto` per model type)."""
    present = {lin.suffix for lin in shape.linears}
    wanted = family_for(shape.model_type).lora_targets
    if spec == "auto" and wanted:
        got = [t for t in wanted if t in present]
        if got:
            return got
    if spec in ("auto", "all-linear"):
        return sorted(present)
    missing = [t for t in spec if t not in present]
    if missing:
        raise ConfigError(
            f"target_modules {missing} match no layer of this model; its linear "
            f"layers are: {', '.join(sorted(present))}."
        )
    return list(spec)


def fp32_stream(setup: Setup) -> bool:
    """4/8-bit on a GPU with half-precision compute: `prepare_model_for_kbit_training` makes the
    embeddings and norms fp32, so the residual stream is fp32, and bitsandbytes' layers return
    their input's dtype: everything computed from the stream without autocast (norm outputs,
    the MLP's gate and up and their product) stays fp32. Measured on an H200: a 6B GLM in 4-bit
    at batch 8 x 512 peaked at 44 GiB where bf16 activations predicted 34."""
    return setup.device == "cuda" and setup.quantization != "none" and DTYPE_BYTES[setup.dtype] == 2


def cpu_attention_is_math() -> bool:
    """Whether this torch runs CPU attention (grouped KV heads, bf16 or fp32) through its math
    kernel, which keeps the (heads x length^2) probabilities, instead of its flash kernel. Measured
    with saved-tensor hooks: torch 2.6 does, 2.13 does not; the releases between are counted as
    doing it (the estimate errs high, never low)."""
    import torch

    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) < (2, 13)


def layer_activations(shape: ModelShape, setup: Setup, targets: list[str], tokens_per_row: int) -> dict[str, float]:
    """Bytes saved for backward per token by one decoder layer, term by term."""
    b = DTYPE_BYTES[setup.dtype]  # activations are in the compute dtype (4-bit too)
    autocast = setup.device == "cuda" and b == 2
    stream = 4 if fp32_stream(setup) else b  # the residual stream and what is computed from it
    h, q, kv, inter = shape.hidden_size, shape.q_dim, shape.kv_dim, shape.intermediate_size
    out: dict[str, float] = {}
    # Norms: RMSNorm computes in fp32 and keeps its fp32 input and 1/rms; LayerNorm its input.
    # (liger's RMSNorm and SwiGLU keep a little less in theory; the H200 peaks with and without
    # liger showed no difference, so none is counted.)
    out["norms"] = 2 * ((4 * h + 4) if shape.rms_norm else (b * h + 8))
    # Attention: q, k, v after RoPE, the output, and an fp32 logsumexp per head (sdpa); eager
    # keeps the (heads x length) probabilities instead of the logsumexp. With a mask (padding, or
    # packed samples) sdpa turns it into an additive bias per call and keeps it: rows x length^2
    # per layer, here per token.
    if setup.device == "cpu" and setup.attention == "sdpa" and cpu_attention_is_math():
        # torch's math kernel: fp32 copies of q, k (repeated to every head) and v, and the
        # fp32 probabilities.
        attn = 4 * 3 * q + 4 * shape.num_heads * tokens_per_row + b * q
    else:
        attn = b * (2 * q + 3 * kv)
        attn += (b * shape.num_heads * tokens_per_row) if setup.attention == "eager" else 4 * shape.num_heads
    out["attention"] = attn
    out["attention_mask"] = b * tokens_per_row
    if shape.qk_norm:
        out["qk_norm"] = 4 * (q + kv) + 4 * (shape.num_heads + shape.num_kv_heads)
    # MLP: gated: silu keeps the gate, the product keeps silu(gate) and up; plain: the act input.
    out["mlp"] = stream * (3 * inter if shape.gated_mlp else inter)
    # LoRA branches: per wrapped layer its (dropped-out) input and the dropout mask, or, without
    # dropout, the input itself (shared by the layers reading it when no cast copies are made);
    # plus the rank-r output of lora_A.
    per_layer = {lin.suffix: lin for lin in shape.linears if lin.suffix in targets and lin.count >= shape.num_layers}
    groups: dict[str, list[LinearShape]] = {}
    for lin in per_layer.values():
        groups.setdefault(layer_role(lin.suffix, shape.model_type), []).append(lin)
    lora = 0.0
    for lins in groups.values():
        d = lins[0].in_features
        n = len(lins)
        if setup.dropout > 0:
            mask = 1  # a bool mask: CUDA's fused dropout, and models/dropout.py on the CPU
            saved_input = b if autocast else 4  # peft casts x to the fp32 LoRA dtype
            lora += n * (mask + saved_input) * d
        elif b == 4:
            lora += 4 * d  # the shared input itself
        else:
            lora += n * (2 if autocast else 4) * d  # one cast copy per layer
        lora += n * setup.r * (b if autocast else 4)
    out["lora_inputs"] = lora
    return out


def estimate_memory(shape: ModelShape, setup: Setup) -> Estimate:
    """Peak memory of one training step (see the module docstring for every term)."""
    if setup.quantization not in ("none", "4bit", "8bit"):
        raise ConfigError(f"quantization={setup.quantization!r}: use none, 4bit or 8bit")
    if setup.dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype={setup.dtype!r}: use bf16, fp16 or fp32")
    if setup.optimizer not in OPTIMIZER_STATE_BYTES:
        raise ConfigError(f"optimizer={setup.optimizer!r}: use one of {', '.join(OPTIMIZER_STATE_BYTES)}")
    b = DTYPE_BYTES[setup.dtype]
    notes: list[str] = []
    targets = resolve_targets(shape, setup.target_modules)
    # Weights.
    nonlinear = shape.embed_params + shape.head_params + shape.other_params
    if setup.quantization == "none":
        weights = shape.total_params * b
    else:
        per = 0.5 + QUANT_CONST_4BIT if setup.quantization == "4bit" else 1.0 + 4 / 4096
        weights = shape.linear_params * per + nonlinear * 4
        notes.append("4/8-bit: embeddings, lm_head and norms are fp32 after prepare_model_for_kbit_training")
    # LoRA parameters, gradients, optimizer state.
    lora_params = sum(
        setup.r * (lin.in_features + lin.out_features) * lin.count for lin in _lora_linears(shape, targets)
    )
    lora = lora_params * (4 + 4 + OPTIMIZER_STATE_BYTES[setup.optimizer])
    # Activations.
    tokens = setup.batch_size * setup.max_length
    per_layer = sum(layer_activations(shape, setup, targets, setup.max_length).values())
    hidden_b = 4 if fp32_stream(setup) else b  # a checkpointed layer keeps its input: the stream
    final_norm = tokens * (4 * shape.hidden_size + 4)
    # Logits and loss: the backward of the loss holds the saved fp32 log-softmax, the incoming
    # gradient and the result (12 bytes per entry); the forward holds less (half-precision logits,
    # their fp32 copy and the log-softmax: 10).
    logits = tokens * shape.vocab_size * 12
    if not setup.liger:
        notes.append(
            "logits count every position; training builds them only where the next "
            "token is learned (label_logits_only), so they shrink by the prompt's share"
        )
    if setup.liger or setup.fused_logits:
        # Fused linear + cross-entropy: logits exist one chunk at a time (chunk rows * vocab ~
        # tokens * hidden) next to the gradient of the hidden states.
        logits = min(logits, tokens * shape.hidden_size * (2 * b + 8))
    if setup.gradient_checkpointing:
        # Every layer's input is kept; one layer's activations exist again only while its backward
        # recomputes them, after the loss's memory is gone: the peak is the larger of the two
        # (H200, a 6B GLM in 4-bit: 10.1 GiB measured, 10.5 predicted when they were added).
        kept = tokens * shape.num_layers * hidden_b * shape.hidden_size + final_norm
        recompute = tokens * per_layer
        activations = kept + max(0.0, recompute - logits)
    else:
        activations = tokens * shape.num_layers * per_layer + final_norm
    # Other: 4-bit dequantises one weight at a time to the compute dtype.
    other = 0.0
    if setup.quantization == "4bit":
        other = max((lin.in_features * lin.out_features for lin in shape.linears), default=0) * 2
    overhead = (0.5 * GiB + 0.05 * (weights + lora + activations + logits + other)) if setup.device == "cuda" else 0.0
    if setup.device == "cuda" and setup.dtype == "fp32":
        notes.append("fp32 on GPU: bf16 halves weights and activations")
    if setup.device == "cpu":
        notes.append(
            "CPU: this is live memory (the peak RSS under tcmalloc); glibc's malloc keeps ~1.7x the "
            "activations and logits resident, which training's memory planning adds"
        )
    return Estimate(
        setup=setup,
        weights=weights,
        lora=lora,
        activations=activations,
        logits=logits,
        other=other,
        overhead=overhead,
        lora_params=lora_params,
        tokens=tokens,
        targets=targets,
        notes=notes,
    )


# --------------------------------------------------------------------------- budget
def parse_size(text: str | float | int) -> float:
    """'24GB', '24G', '24GiB', '500MB', '24' (GiB) -> bytes. GB means GiB here: GPU memory is
    sold in GiB ("24GB" cards have 24 GiB)."""
    if isinstance(text, (int, float)):
        return float(text) * GiB
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text), re.I)
    if not m:
        raise ConfigError(f"budget {text!r}: give a size such as 24GB, 16GiB or 500MB")
    value, unit = float(m.group(1)), (m.group(2) or "G").upper()
    return value * {"K": 1024, "M": 1024**2, "G": GiB, "T": 1024**4}[unit]


def _candidates(setup: Setup) -> Iterable[tuple[str, Setup]]:
    yield "as asked", setup
    if setup.device == "cuda" and not setup.liger:
        yield "fused logits (use_liger: true, needs liger-kernel)", replace(setup, liger=True)
    if not setup.gradient_checkpointing:
        yield "gradient_checkpointing: true", replace(setup, gradient_checkpointing=True)
    for q in ("8bit", "4bit"):
        if setup.quantization == "none" or (setup.quantization == "8bit" and q == "4bit"):
            yield f"quantization: {q}", replace(setup, quantization=q)
            yield (
                f"quantization: {q} + gradient_checkpointing: true",
                replace(setup, quantization=q, gradient_checkpointing=True),
            )
    base = replace(
        setup, gradient_checkpointing=True, quantization="4bit" if setup.device == "cuda" else setup.quantization
    )
    bs = setup.batch_size
    while bs > 1:
        bs //= 2
        acc = math.ceil(setup.batch_size / bs)
        yield (
            f"batch_size: {bs} + gradient_accumulation_steps: {acc} (same effective batch)"
            + (", 4bit" if base.quantization == "4bit" and setup.quantization != "4bit" else "")
            + ", gradient checkpointing",
            replace(base, batch_size=bs),
        )
    length = setup.max_length
    while length > 256:
        length //= 2
        yield (
            f"max_length: {length} (longer samples are dropped), batch 1, gradient checkpointing",
            replace(base, batch_size=1, max_length=length),
        )


def suggest(shape: ModelShape, setup: Setup, budget: float, limit: int = 4) -> list[tuple[str, Estimate]]:
    """Settings that fit `budget` bytes, cheapest change first (the setup itself if it fits)."""
    out: list[tuple[str, Estimate]] = []
    for why, cand in _candidates(setup):
        est = estimate_memory(shape, cand)
        if est.total <= budget:
            out.append((why, est))
            if why == "as asked" or len(out) >= limit:
                break
    return out


# --------------------------------------------------------------------------- reading configs
def load_shape(model: str, trust_remote_code: bool = False) -> ModelShape:
    """A `ModelShape` from a model name, folder, or config.json path (no weights are read)."""
    import warnings

    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models import BUNDLED_ALIASES, meta_model, read_model_config, resolve_model

    path = Path(str(model)).expanduser()
    config_dict = None
    if path.is_file():
        try:
            config_dict = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"{path} cannot be read as a JSON config ({e}).") from None
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json; point --model at a model folder or its config.json.")
        config_dict = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if config_dict is not None:
        model_type = config_dict.get("model_type")
        as_config = family_for(model_type).estimate_config
        if as_config is not None:
            config = as_config(config_dict)
        else:
            if not model_type:
                raise ModelError(f"{path}: the config has no model_type, so its architecture is unknown.")
            try:
                config = AutoConfig.for_model(**config_dict)
            except (ValueError, KeyError) as e:
                raise ModelError(f"{path}: model_type {model_type!r} is not built into transformers ({e}).") from None
        from ..models.loading import MODEL_BUILD_LOCK

        with MODEL_BUILD_LOCK, init_empty_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = AutoModelForCausalLM.from_config(config)
        return model_shape(meta, config)
    name = str(model)
    from ..models.loading import looks_like_path

    if looks_like_path(name):
        raise ModelError(
            f"{name} does not exist. Give --model a model folder, its config.json, "
            "a hub id in the local cache, or smollm2-135m-instruct."
        )
    if name.lower() in BUNDLED_ALIASES:
        name = resolve_model(name)
    config = read_model_config(name, trust_remote_code)
    return model_shape(meta_model(name, trust_remote_code), config)


def format_estimate(est: Estimate) -> str:
    rows = [r for r in est.rows() if est.setup.device == "cuda" or r[1] > 0 or r[0] != "overhead"]
    lines = [f"{'':2}{name:<36} {value / GiB:7.2f} GiB  {why}" for name, value, why in rows]
    peak = "peak allocated (max_memory_allocated)" if est.setup.device == "cuda" else "peak (live memory)"
    lines.append(f"{'':2}{peak:<36} {est.peak_allocated / GiB:7.2f} GiB")
    lines.append(f"{'':2}{'total needed':<36} {est.total / GiB:7.2f} GiB")
    return "\n".join(lines)


def free_memory(on_gpu: bool) -> float | None:
    """Free memory now: the GPU's (torch) or the CPU's (MemAvailable), in bytes."""
    if on_gpu:
        import torch

        free, _ = torch.cuda.mem_get_info()
        return float(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


__all__ = [
    "ModelShape",
    "LinearShape",
    "Setup",
    "Estimate",
    "model_shape",
    "estimate_memory",
    "free_memory",
    "cpu_attention_is_math",
    "fp32_stream",
    "layer_activations",
    "resolve_targets",
    "suggest",
    "parse_size",
    "load_shape",
    "format_estimate",
]
