"""`export-adapter --format chatglm`: a LoRA adapter trained on a converted ChatGLM2/3 (native
GLM module names) rewritten for the original ChatGLM checkpoint, so the ChatGLM tools (and
their users, with `trust_remote_code`) can apply it.

The conversion (models/chatglm/convert.py) split ChatGLM's fused `query_key_value` rows into
`q_proj`, `k_proj`, `v_proj` without any other permutation, and renamed the rest one to one. So
the adapter maps back exactly:

    query_key_value:  delta = [B_q A_q ; B_k A_k ; B_v A_v]
                            = blockdiag(B_q, B_k, B_v) @ [A_q ; A_k ; A_v]
                      -> lora_A = stacked A (rank 3r), lora_B = block-diagonal B,
                         alpha 3x so that alpha / rank (the scale) is unchanged;
    o_proj -> self_attention.dense, gate_up_proj -> mlp.dense_h_to_4h (same [gate; up] rows),
    down_proj -> mlp.dense_4h_to_h.

tests/models/test_chatglm.py checks it through the independent ChatGLM forward pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from ..folders import atomic_dir, check_output_folder, output_lock, write_manifest
from ..run_record import ADAPTER_CONFIG, ADAPTER_WEIGHTS, open_adapter

_LAYER = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_RENAMED = {"o_proj": "self_attention.dense", "gate_up_proj": "mlp.dense_h_to_4h", "down_proj": "mlp.dense_4h_to_h"}
_QKV = ("q_proj", "k_proj", "v_proj")
_TARGETS = {
    "q_proj": "query_key_value",
    "k_proj": "query_key_value",
    "v_proj": "query_key_value",
    "o_proj": "dense",
    "gate_up_proj": "dense_h_to_4h",
    "down_proj": "dense_4h_to_h",
}


@dataclass
class ChatGLMAdapter:
    output_dir: Path
    base_model: str
    target_modules: list[str]
    qkv_rank: int | None


def _chatglm_name(layer: str, module: str, ab: str) -> str:
    return f"base_model.model.transformer.encoder.layers.{layer}.{module}.lora_{ab}.weight"


def to_chatglm_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Native-GLM LoRA tensors -> ChatGLM-named ones (q/k/v fused as the module docstring says)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    modules: set[str] = set()
    for name, t in tensors.items():
        m = _LAYER.match(name)
        if m is None:
            raise ModelError(
                f"adapter tensor {name} is not a LoRA weight of a GLM layer; only adapters trained on a "
                "converted ChatGLM2/3 (target_modules auto, or q/k/v/o/gate_up/down projections) export to ChatGLM."
            )
        layer, _, proj, ab = m.groups()
        if proj in _QKV:
            qkv.setdefault(layer, {}).setdefault(proj, {})[ab] = t
        elif proj in _RENAMED:
            out[_chatglm_name(layer, _RENAMED[proj], ab)] = t.clone()
        else:
            raise ModelError(f"adapter module {proj} has no ChatGLM counterpart.")
        modules.add(_TARGETS[proj])
    for layer, parts in qkv.items():
        present = [p for p in _QKV if p in parts]
        a = torch.cat([parts[p]["A"] for p in present], dim=0)
        rows = {"q_proj": None, "k_proj": None, "v_proj": None}
        for p in present:
            rows[p] = parts[p]["B"].shape[0]
        if len(present) < 3:
            raise ModelError(
                f"layer {layer} has LoRA on {', '.join(present)} only; ChatGLM fuses q, k and v into one "
                "query_key_value layer, so the exported adapter needs all three (train with target_modules "
                "auto), or merge the adapter instead."
            )
        out[_chatglm_name(layer, "self_attention.query_key_value", "A")] = a
        out[_chatglm_name(layer, "self_attention.query_key_value", "B")] = torch.block_diag(
            *[parts[p]["B"] for p in present]
        )
    return out, modules


def export_chatglm_adapter(
    adapter_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False
) -> ChatGLMAdapter:
    """Write the adapter in `adapter_dir` (trained on a converted ChatGLM2/3) for the original
    ChatGLM checkpoint, into `output_dir` (an atomic folder with a manifest)."""
    from safetensors.torch import load_file, save_file

    folder = open_adapter(adapter_dir)
    record = folder.record
    if record is None or record.resolved.model_type != "glm":
        raise ModelError(
            f"{folder.path} was not trained on a converted ChatGLM2/3 (model_type "
            f"{record.resolved.model_type if record else 'unknown'}); --format chatglm is only for those."
        )
    config = json.loads((folder.path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("use_dora") or config.get("modules_to_save"):
        raise ModelError("DoRA adapters and modules_to_save cannot be written for ChatGLM's code; merge instead.")
    output_dir = Path(output_dir)
    check_output_folder(output_dir, overwrite)
    tensors, modules = to_chatglm_tensors(load_file(str(folder.path / ADAPTER_WEIGHTS)))
    r, alpha = int(config["r"]), config["lora_alpha"]
    qkv_rank = 3 * r if "query_key_value" in modules else None
    new_config = {
        **{k: v for k, v in config.items() if k not in ("target_modules", "rank_pattern", "alpha_pattern")},
        "base_model_name_or_path": str(record.config.model_name),
        "target_modules": sorted(modules),
        "rank_pattern": {"query_key_value": qkv_rank} if qkv_rank else {},
        "alpha_pattern": {"query_key_value": 3 * alpha} if qkv_rank else {},
    }
    with output_lock(output_dir), atomic_dir(output_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(
            f"LoRA adapter for the original ChatGLM checkpoint {record.config.model_name}, exported by "
            f"lora-finetune from {folder.path} (trained on its native-GLM conversion). Load it with peft on the "
            "ChatGLM model (trust_remote_code=True).\n",
            encoding="utf-8",
        )
        write_manifest(tmp)
    return ChatGLMAdapter(output_dir, str(record.config.model_name), sorted(modules), qkv_rank)


__all__ = ["ChatGLMAdapter", "export_chatglm_adapter", "to_chatglm_tensors"]
