"""Support of the export tests (fixtures in conftest.py): tiny Llama, Qwen2 and Qwen3 models with trained adapters, and
what the independent readers need (node + node-llama-cpp for llama.cpp).

The Qwen3 model has head_dim 128: transformers' GGUF reader ignores `qwen3.attention.key_length`
and builds Qwen3 with its default head_dim (128), so a Qwen3 GGUF with another head size cannot
be read back by transformers (llama.cpp reads it fine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import torch

from helpers import train_tokenizer

REPO = Path(__file__).resolve().parents[2]
NODE_PREFIX = Path(os.environ.get("LORA_FINETUNE_NODE_PREFIX", REPO / "build" / "node"))
"""Where `make test` installs node-llama-cpp (npm install --prefix)."""
LLAMA_CHECK = Path(__file__).with_name("llama_check.mjs")


def make_qwen(folder: Path, kind: str) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from helpers import CHATML

    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(folder, CHATML)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(1)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **ids,
    )
    if kind == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=128, tie_word_embeddings=True, **common))
    else:  # qwen2: q/k/v biases, untied output
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=False, **common))
        with torch.no_grad():  # biases start at zero; give the GGUF's bias tensors something to carry
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.05)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    return folder


def node_llama_cpp() -> tuple[str, Path] | None:
    node = shutil.which("node")
    if node is None or not (NODE_PREFIX / "node_modules" / "node-llama-cpp" / "package.json").is_file():
        return None
    return node, NODE_PREFIX


def run_llama_check(request_file: Path, timeout: int = 600) -> str:
    found = node_llama_cpp()
    assert found is not None
    node, _ = found
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [node, str(LLAMA_CHECK), str(request_file)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def llama_check(
    tmp_path: Path, model: Path, prompts: list[dict], max_new_tokens: int, lora: Path | None = None
) -> dict:
    """llama.cpp's view of our prompts (llama_check.mjs): its tokens for each prompt's text, its greedy
    continuation of our ids, and its rendering of the sample conversations with the file's template."""
    from lora_finetune.export.chat_format import sample_conversations

    _, prefix = node_llama_cpp()
    request = {
        "node_modules_parent": str(prefix),
        "model": str(model),
        "lora": str(lora) if lora else None,
        "prompts": [{"text": p["text"], "ids": p["ids"]} for p in prompts],
        "chats": sample_conversations(),
        "max_new_tokens": max_new_tokens,
    }
    req = tmp_path / "request.json"
    req.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    return json.loads(run_llama_check(req))
