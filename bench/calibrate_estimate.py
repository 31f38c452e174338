"""Calibrate `lora-finetune estimate` on CPU: predicted vs measured memory of training steps.

    .venv/bin/python bench/calibrate_estimate.py            # ~5 min on 2 cores
    .venv/bin/python bench/calibrate_estimate.py --quick    # tiny models + 2 SmolLM2 configs

For each configuration a fresh process loads the model (fp32, as on CPU), wraps it with LoRA
through our own `attach_lora`, and runs two optimizer steps (forward with labels on every
position, backward, AdamW step) on random tokens. Measured:

- weights: RSS after loading minus RSS before (vs the estimate's `weights`);
- training growth: peak RSS during the two steps minus RSS before them (VmHWM reset through
  /proc/self/clear_refs) -- what the step adds on top of the loaded model: LoRA gradients and
  AdamW state (created in the first step), saved activations, logits and loss buffers. Compared
  with the estimate's lora + activations + logits + other (device=cpu: no CUDA overhead term).
  Workers run with MALLOC_MMAP_THRESHOLD_=131072 so that RSS follows live memory: with glibc's
  default adaptive threshold, freed activations stay cached in the heap and the peak RSS of the
  first step was 40% above the live peak in our runs (bench/RESULTS.md).

The GPU counterpart (torch.cuda.max_memory_allocated vs the estimate's peak allocated, for each
run's longest batch) runs in bench/bench_gpu.py; the H200 peaks it measured are pinned by
tests/tools/test_estimate.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (model, batch, length, gradient_checkpointing, dropout)
CONFIGS = [
    ("smollm2", 2, 768, False, 0.05),
    ("smollm2", 2, 128, False, 0.05),
    ("smollm2", 4, 256, False, 0.05),
    ("smollm2", 8, 64, False, 0.0),
    ("smollm2", 4, 256, True, 0.05),
    ("tiny-qwen3", 4, 512, False, 0.05),
    ("tiny-llama", 8, 256, False, 0.0),
    ("tiny-glm", 4, 512, True, 0.05),
]
QUICK = [CONFIGS[1], CONFIGS[4], CONFIGS[5], CONFIGS[6], CONFIGS[7]]


def tiny_folder(kind: str, root: Path) -> Path:
    """Tiny random models with a real vocabulary size (so logits matter) saved to a folder."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    folder = root / kind
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    common = dict(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        pad_token_id=0,
    )
    if kind == "tiny-qwen3":
        m = Qwen3ForCausalLM(Qwen3Config(**common, tie_word_embeddings=True))
    elif kind == "tiny-llama":
        m = LlamaForCausalLM(LlamaConfig(**common))
    else:
        m = GlmForCausalLM(GlmConfig(**common, partial_rotary_factor=0.5, attention_bias=True))
    m.save_pretrained(folder)
    return folder


def worker(spec: dict) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from common import peak_rss_bytes, reset_peak_rss, rss_bytes

    from lora_finetune.config import build_config
    from lora_finetune.models import attach_lora, load_model, resolve_model
    from lora_finetune.tools.estimate import Setup, estimate_memory, load_shape

    path = resolve_model("smollm2-135m-instruct") if spec["model"] == "smollm2" else spec["folder"]
    shape = load_shape(path)
    setup = Setup(
        dtype="fp32",
        device="cpu",
        batch_size=spec["batch"],
        max_length=spec["length"],
        gradient_checkpointing=spec["gc"],
        dropout=spec["dropout"],
    )
    est = estimate_memory(shape, setup)
    rss0 = rss_bytes()
    model = load_model(path, dtype="fp32").model
    with torch.no_grad():  # safetensors maps the file lazily: touch every page so it is resident
        for p in model.parameters():
            p.sum()
    rss_loaded = rss_bytes()
    cfg = build_config({"model_name": str(path), "dropout": spec["dropout"], "gradient_checkpointing": spec["gc"]})
    if spec["gc"]:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_lora(model, cfg, est.targets)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = shape.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (spec["batch"], spec["length"]), generator=g)
    import gc

    gc.collect()
    base = rss_bytes()
    reset_peak_rss()
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
    peak = peak_rss_bytes()
    predicted = est.lora + est.activations + est.logits + est.other
    return {
        **{k: spec[k] for k in ("model", "batch", "length", "gc", "dropout")},
        "weights_measured": rss_loaded - rss0,
        "weights_predicted": est.weights,
        "growth_measured": peak - base,
        "growth_predicted": predicted,
        "activations_predicted": est.activations,
        "logits_predicted": est.logits,
        "lora_predicted": est.lora,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "calibration-cpu.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="calib-") as tmp:
        for model, batch, length, gc, dropout in QUICK if a.quick else CONFIGS:
            spec = {"model": model, "batch": batch, "length": length, "gc": gc, "dropout": dropout}
            if model != "smollm2":
                spec["folder"] = str(tiny_folder(model, Path(tmp)))
            # A fixed mmap threshold makes glibc return every large freed block to the OS, so
            # RSS follows live memory (what the estimate models, and what a GPU's
            # max_memory_allocated reports); with glibc's default adaptive threshold freed
            # activations stay in the heap and the peak RSS includes that cache.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            p = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
            )
            if p.returncode != 0:
                print(p.stderr[-2000:], file=sys.stderr)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(
                f"[calib] {model} b{batch} x{length} gc={gc}: growth measured "
                f"{r['growth_measured'] / 2**20:.0f} MiB, predicted "
                f"{r['growth_predicted'] / 2**20:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    from common import run_info, write_json

    write_json(a.out, {"info": run_info(), "rows": rows})
    print(
        "| model | batch x length | grad. ckpt | dropout | weights: measured / predicted | "
        "training growth: measured / predicted | error |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        err = 100 * (r["growth_predicted"] - r["growth_measured"]) / r["growth_measured"]
        print(
            f"| {r['model']} | {r['batch']} x {r['length']} | {'yes' if r['gc'] else 'no'} | "
            f"{r['dropout']} | {r['weights_measured'] / 2**20:.0f} / "
            f"{r['weights_predicted'] / 2**20:.0f} MiB | {r['growth_measured'] / 2**20:.0f} / "
            f"{r['growth_predicted'] / 2**20:.0f} MiB | {err:+.0f}% |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
