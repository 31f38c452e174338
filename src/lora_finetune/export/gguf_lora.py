"""The adapter alone as a llama.cpp LoRA GGUF (`llama-cli -m base.gguf --lora adapter.gguf`).

The layout llama.cpp's convert_lora_to_gguf.py writes: `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha`, and for each adapted weight `W` (GGUF name) two
tensors `W.lora_a` (peft's lora_A, shape [r, in]) and `W.lora_b` (lora_B, [out, r]) in ggml's
order, no transposition. llama.cpp adds `scale * alpha / r * B(A x)` with r read from the
tensor, so per-module ranks (peft's rank_pattern) work; rsLoRA's alpha/sqrt(r) is folded into
alpha. Llama-architecture Q/K rows are permuted in lora_b, as in the base weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..run_record import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from .gguf_model import Arch, NameMapper, add_tensor, file_type, to_gguf_layout

if TYPE_CHECKING:
    import torch

_PREFIX = "base_model.model."


@dataclass
class LoraPlan:
    """What will be written, checked before anything is (adapter config + tensor names)."""

    alpha: float
    pairs: dict[str, tuple[str, str]]
    """GGUF weight name -> (peft lora_A key, lora_B key)."""
    config: dict[str, Any]


def plan_lora(adapter_dir: Path, arch: Arch, tied: bool) -> LoraPlan:
    """Read adapter_config.json and the tensor names; refuse what llama.cpp's LoRA cannot hold."""
    from safetensors import safe_open

    cfg_path, weights = adapter_dir / ADAPTER_CONFIG, adapter_dir / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise ModelError(
            f"{adapter_dir} has no {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}: a LoRA GGUF is made from a peft "
            "adapter in safetensors (what `lora-finetune train` writes)."
        )
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    problems = []
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')} (only LORA)")
    if cfg.get("use_dora"):
        problems.append("DoRA (use_dora: true)")
    if cfg.get("alpha_pattern"):
        problems.append("per-module alpha (alpha_pattern): llama.cpp has one alpha per adapter")
    if cfg.get("modules_to_save"):
        problems.append(f"fully trained modules (modules_to_save: {cfg['modules_to_save']})")
    if cfg.get("lora_bias"):
        problems.append("LoRA biases (lora_bias: true)")
    r, alpha = int(cfg.get("r") or 8), float(cfg.get("lora_alpha") or 8)
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # rsLoRA scales by alpha/sqrt(r); llama.cpp divides by r
        if cfg.get("rank_pattern"):
            problems.append("rsLoRA with per-module ranks (rank_pattern)")
    mapper = NameMapper(arch)
    pairs: dict[str, tuple[str, str]] = {}
    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
    for key in keys:
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                problems.append(f"tensor {key} (only lora_A/lora_B tensors can go into a LoRA GGUF)")
            continue
        module = key.split(".lora_A.")[0]
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in keys:
            problems.append(f"{key} has no matching lora_B")
            continue
        hf = module[len(_PREFIX) :] if module.startswith(_PREFIX) else module
        if tied and hf == "lm_head":
            problems.append(
                "LoRA on lm_head of a model whose output shares the embedding (llama.cpp has no output tensor then)"
            )
            continue
        if hf.endswith("embed_tokens"):
            problems.append("LoRA on the embedding (export supports LoRA on linear layers)")
            continue
        pairs[mapper(hf + ".weight")] = (key, b_key)
    if problems:
        raise ModelError(
            "This adapter cannot be written as a llama.cpp LoRA GGUF: "
            + "; ".join(problems)
            + ". Export it merged instead (--format gguf)."
        )
    if not pairs:
        raise ModelError(f"{weights} holds no LoRA tensors; nothing to export.")
    return LoraPlan(alpha=alpha, pairs=pairs, config=cfg)


def write_lora_gguf(
    path: Path, adapter_dir: Path, plan: LoraPlan, arch: Arch, outtype: str, name: str
) -> dict[str, int]:
    import gguf
    from safetensors import safe_open

    writer = gguf.GGUFWriter(str(path), arch.name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, plan.alpha)
    writer.add_file_type(file_type(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    counts: dict[str, int] = {}
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as f:
        for gname, (a_key, b_key) in plan.pairs.items():
            a: torch.Tensor = f.get_tensor(a_key).float()
            b: torch.Tensor = f.get_tensor(b_key).float()
            base = gname[: -len(".weight")]
            b_np = to_gguf_layout(arch, gname, b.numpy())
            for suffix, w in ((".lora_a", a.numpy()), (".lora_b", b_np)):
                kind = add_tensor(writer, base + ".weight" + suffix, w, outtype)
                counts[kind] = counts.get(kind, 0) + 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return counts


__all__ = ["LoraPlan", "plan_lora", "write_lora_gguf"]
