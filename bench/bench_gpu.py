"""GPU benchmark: the seed's pipeline against ours, random-weight models built from configs.

    python bench/bench_gpu.py --out "$OUT"                 # one GPU, fits one 10-minute call
    python bench/bench_gpu.py --smoke --out /tmp/gpu-smoke # CPU dry run, tiny sizes (~3 min)

Nothing is downloaded. Models are built from their configs with random weights and saved once
to a scratch folder (so both pipelines load them the way they load real checkpoints, including
bitsandbytes 4-bit quantisation on load):

- qwen3-0.6b: Qwen3-0.6B's published config (28 layers, hidden 1024, vocab 151,936, tied);
- glm-6b:     a ChatGLM3-6B-sized native GLM (GlmConfig: hidden 4096, 28 layers, 32 heads, 2 KV
              heads, head_dim 128, intermediate 13,696, vocab 65,024, partial_rotary_factor 0.5,
              attention_bias True) -- what `lora-finetune` converts ChatGLM3 into.

Data: instruction-like samples of 64-512 tokens (a word-level tokenizer over the model's vocab
size, so text length = token count), the same rows for both pipelines.

Each run measures (common.ThroughputProbe): real (non-pad) tokens/s, padded tokens/s, step time,
torch.cuda.max_memory_allocated, and model-FLOPs utilisation: useful FLOPs per second divided by
the bf16 matmul throughput this GPU reaches in the same run (8192^3 products). Useful FLOPs per
step: 4 x the decoder's linear parameters per real token (forward plus input gradients; the
frozen base gets no weight gradient; LoRA's own FLOPs are left out) plus attention over each
sample's real length, plus 4 x the output head per position whose next token is learned (every
real position for the seed, which learns the prompt too; the answers for ours). Padding,
recomputation (gradient checkpointing) and 4-bit dequantisation are not useful FLOPs. Each run also records what
`lora_finetune.tools.estimate` predicts for its peak memory (GPU calibration).

Runs, most important first; when the time budget (--budget-s) would be exceeded the rest are
skipped and listed as such. Missing optional packages degrade: no bitsandbytes -> 4-bit runs
skipped; no liger-kernel -> ours runs without it (logged); no datasets -> a small stand-in
(bench/_datasets_shim.py). Results: OUT/gpu-results.json and OUT/gpu-results.md, written after
every run so a cut-off call still returns what it measured.

Last, if the budget allows, the serving rows of bench_serve.py (1/4/16 clients, with and without
dynamic batching) on the qwen3-0.6b folder (--no-serve skips them; results in OUT/serve/).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))  # works from a bare checkout too (no pip install)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QWEN3_06B = dict(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
)
GLM_6B = dict(
    vocab_size=65024,
    hidden_size=4096,
    intermediate_size=13696,
    num_hidden_layers=28,
    num_attention_heads=32,
    num_key_value_heads=2,
    head_dim=128,
    partial_rotary_factor=0.5,
    attention_bias=True,
    tie_word_embeddings=False,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
)
TINY = dict(
    vocab_size=2000,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)

# (run name, model, pipeline, precision, our settings)
RUNS = [
    ("qwen3-0.6b bf16 seed", "qwen3-0.6b", "seed", "bf16", {}),
    ("qwen3-0.6b bf16 ours (defaults, batch 2)", "qwen3-0.6b", "ours", "bf16", {}),
    ("qwen3-0.6b bf16 ours (batch 16, packing)", "qwen3-0.6b", "ours", "bf16", {"batch_size": 16, "packing": True}),
    (
        "glm-6b 4bit ours (batch 8, checkpointing)",
        "glm-6b",
        "ours",
        "4bit",
        {"batch_size": 8, "gradient_checkpointing": True},
    ),
    ("glm-6b 4bit seed", "glm-6b", "seed", "4bit", {}),
    ("glm-6b bf16 ours (batch 8)", "glm-6b", "ours", "bf16", {"batch_size": 8}),
    ("glm-6b bf16 seed", "glm-6b", "seed", "bf16", {}),
    ("qwen3-0.6b bf16 ours (batch 16, length-grouped)", "qwen3-0.6b", "ours", "bf16", {"batch_size": 16}),
    ("qwen3-0.6b 4bit ours (batch 16)", "qwen3-0.6b", "ours", "4bit", {"batch_size": 16}),
    ("qwen3-0.6b 4bit seed", "qwen3-0.6b", "seed", "4bit", {}),
]


def log(msg: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- building blocks
def make_tokenizer(vocab_size: int):
    """Word-level tokenizer: 'w<id>' is token <id>; [UNK]=0, </s>=1 (EOS, and the pad)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>", pad_token="</s>")


def make_rows(n: int, vocab_size: int, lo: int, hi: int, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca rows whose prompt + answer is lo..hi tokens (30-70% of it the answer)."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " " + " ".join(f"w{rng.randrange(2, vocab_size)}" for _ in range(k)) + " "

    rows = []
    for _ in range(n):
        total = rng.randint(lo, hi)
        ans = max(1, int(total * rng.uniform(0.3, 0.7)))
        rows.append({"instruction": words(total - ans - 4), "input": "", "output": words(ans)})
    return rows


def build_model_folder(name: str, kind: str, dims: dict, root: Path, device: str) -> Path:
    """Random-weight model from its config, saved in bf16 with the word-level tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, GlmConfig, Qwen3Config

    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    cfg_cls = Qwen3Config if kind == "qwen3" else GlmConfig
    config = cfg_cls(**dims, pad_token_id=1, eos_token_id=1, bos_token_id=None)
    t = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = 1
    model.save_pretrained(folder)
    make_tokenizer(config.vocab_size).save_pretrained(folder)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    log(f"built {name} ({kind}) in {time.perf_counter() - t:.0f} s -> {folder}")
    return folder


def matmul_ceiling(device: str, smoke: bool) -> dict:
    """bf16 matrix-product throughput this device reaches now (TFLOP/s)."""
    import torch

    if device != "cuda":
        n, dtype, reps = 512, torch.float32, 5
    else:
        n, dtype, reps = 8192, torch.bfloat16, 30
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"n": n, "dtype": str(dtype), "tflops": 2 * n**3 * reps / dt / 1e12}


def useful_flops_per_step(shape, mean_len: float, real: float, learned: float) -> float:
    """Useful FLOPs of one LoRA training step (see the module docstring): every real token goes
    through the decoder; the output head is useful only where the next token is learned (all
    real positions for the seed, which learns the prompt too; the answer for ours)."""
    body = 4 * shape.linear_params + 12 * shape.q_dim * shape.num_layers * (mean_len + 1) / 2
    head = 4 * shape.vocab_size * shape.hidden_size
    return real * body + learned * head


# --------------------------------------------------------------------------- one run
def run_one(spec, folder: Path, rows, steps: int, warmup: int, device: str, scratch: Path, max_len: int) -> dict:
    import torch
    from common import ThroughputProbe

    from lora_finetune.tools.estimate import Setup, estimate_memory, load_shape

    name, model_name, pipeline, precision, settings = spec
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    probe = ThroughputProbe(pad_token_id=1, cuda=cuda)
    out_dir = Path(tempfile.mkdtemp(dir=scratch, prefix="run-"))
    total_steps = steps + warmup
    t0 = time.perf_counter()
    if pipeline == "seed":
        from seed_pipeline import SeedSettings, build_seed_trainer
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
        trainer = build_seed_trainer(
            str(folder),
            tok,
            rows,
            SeedSettings(steps=total_steps, load_in_4bit=precision == "4bit"),
            out_dir,
            callbacks=[probe],
        )
        trainer.train()
        used = {
            "batch_size": 2,
            "pad_to": 768,
            "targets": "q,k,v,o",
            "precision": "bf16 weights, no autocast" if precision == "bf16" else "load_in_4bit (fp4, fp32 compute)",
        }
        setup = None
        del trainer
    else:
        from lora_finetune.config import build_config
        from lora_finetune.training import train

        data_file = scratch / f"rows-{len(rows)}.jsonl"
        if not data_file.exists():
            data_file.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        values = {
            "model_name": str(folder),
            "output_dir": str(out_dir / "ours"),
            "data_path": str(data_file),
            "steps": total_steps,
            "eval_fraction": 0.0,
            "max_length": max_len,
            "save_steps": 10**6,
            "logging_steps": 10,
            "quantization": precision if precision == "4bit" else "none",
            "dtype": "bf16" if cuda else "fp32",
            **settings,
        }
        cfg = build_config(values)
        used = {k: values.get(k) for k in ("batch_size", "packing", "gradient_checkpointing")}
        try:
            res = train(cfg, callbacks=[probe])
            used.update({"quantization": res.resolved.quantization, "notes": res.resolved.notes})
        except Exception as e:
            if len(probe.steps) < total_steps:
                raise
            # Training itself finished and was measured; saving the run folder failed.
            used["error_after_training"] = f"{type(e).__name__}: {e}"[:300]
            res = None
        setup = Setup(
            quantization=cfg.quantization,
            dtype="bf16" if cuda else "fp32",
            r=cfg.r,
            batch_size=cfg.batch_size,
            dropout=cfg.dropout,
            gradient_checkpointing=cfg.gradient_checkpointing,
            device="cuda" if cuda else "cpu",
            liger=res is not None and any("liger-kernel:" in n for n in res.resolved.notes),
        )
    gc.collect()
    summary = probe.summary(warmup)
    summary.update(
        {
            "run": name,
            "model": model_name,
            "pipeline": pipeline,
            "precision": precision,
            "settings": used,
            "wall_s": time.perf_counter() - t0,
        }
    )
    shape = load_shape(str(folder))
    lengths = [len(r["instruction"].split()) + len(r["output"].split()) + 4 for r in rows]
    mean_len = sum(lengths) / len(lengths)
    if summary.get("measured_steps"):
        summary["useful_flops_per_step"] = useful_flops_per_step(
            shape, mean_len, summary["real_tokens_per_step"], summary["learned_tokens_per_step"]
        )
    if setup is not None and summary.get("measured_steps"):
        longest_row = summary["padded_tokens_per_step"] / max(1, setup.batch_size)
        setup.max_length = max(1, int(math.ceil(longest_row)))
        if settings.get("packing"):
            setup.batch_size, setup.max_length = 1, int(summary["padded_tokens_per_step"])
        est = estimate_memory(shape, setup)
        summary["estimate_peak_allocated_bytes"] = est.peak_allocated
        summary["estimate_setup"] = setup.describe()
    return summary


# --------------------------------------------------------------------------- report
def markdown(results: list[dict], info: dict) -> str:
    from common import fmt, fmt_bytes

    ceiling = info.get("matmul", {}).get("tflops")
    lines = [
        f"GPU benchmark {info['date']}: {info['device'].get('gpu', 'no GPU')} "
        f"(bf16 matmul ceiling measured: {fmt(ceiling)} TFLOP/s)",
        "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "",
        "| run | step (s) | real tok/s | padded tok/s | padding | peak mem (max allocated) "
        "| estimate | MFU | ours/seed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    seeds = {
        (r["model"], r["precision"]): r for r in results if r.get("pipeline") == "seed" and "real_tokens_per_s" in r
    }
    for r in results:
        if "error" in r or "skipped" in r:
            why = "skipped: " + r["skipped"] if "skipped" in r else "failed: " + r["error"][:90]
            lines.append(f"| {r['run']} | {why} | | | | | | | |")
            continue
        seed = seeds.get((r["model"], r["precision"]))
        ratio = (
            f"{r['real_tokens_per_s'] / seed['real_tokens_per_s']:.1f}x"
            if seed and r is not seed and r.get("real_tokens_per_s")
            else ""
        )
        mem = r.get("peak_gpu_mem_bytes", r.get("peak_rss_bytes"))
        mfu = (
            r["useful_flops_per_step"] / r["step_time_s"] / (ceiling * 1e12)
            if ceiling and r.get("useful_flops_per_step")
            else None
        )
        lines.append(
            f"| {r['run']} | {r['step_time_s']:.3f} | {fmt(r['real_tokens_per_s'], 0)} | "
            f"{fmt(r['padded_tokens_per_s'], 0)} | {100 * (r['padding_fraction'] or 0):.0f}% | "
            f"{fmt_bytes(mem)} | {fmt_bytes(r.get('estimate_peak_allocated_bytes'))} | "
            f"{'' if mfu is None else f'{100 * mfu:.1f}%'} | {ratio} |"
        )
    return "\n".join(lines)


def serve_rows(a: argparse.Namespace, folders: dict[str, Path], device: str, t_start: float) -> dict:
    """bench_serve.py's rows (1/4/16 clients, with and without dynamic batching) on the qwen3-0.6b
    folder, in its own process, within what is left of the time budget. Results also land in
    OUT/serve/serve-results.{json,md}."""
    import subprocess

    left = a.budget_s - (time.perf_counter() - t_start)
    folder = folders.get("qwen3-0.6b")
    if folder is None or left < 120:
        return {"skipped": "no qwen3-0.6b folder" if folder is None else f"time budget ({left:.0f} s left)"}
    out = a.out / "serve"
    cmd = [sys.executable, str(HERE / "bench_serve.py"), "--model", str(folder), "--device", device]
    cmd += ["--out", str(out), "--max-tokens", "16" if a.smoke else "64"]
    if a.smoke:
        cmd += ["--levels", "1,4", "--requests", "4"]
    log("serve rows ...")
    try:
        subprocess.run(cmd, check=True, timeout=left, stdout=subprocess.DEVNULL)
        return json.loads((out / "serve-results.json").read_text())
    except Exception as e:  # partial rows are still in OUT/serve
        return {"error": f"{type(e).__name__}: {e}"[:300]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "gpu")
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU, 3 steps each")
    ap.add_argument(
        "--budget-s", type=float, default=540, help="stop starting new runs after this many seconds (default 540)"
    )
    ap.add_argument("--steps", type=int, default=10, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated substrings of run names")
    ap.add_argument("--scratch", type=Path, default=None, help="where models are saved")
    ap.add_argument(
        "--no-datasets", action="store_true", help="use the datasets stand-in even if datasets is installed (testing)"
    )
    ap.add_argument("--no-serve", action="store_true", help="skip the serving rows (bench_serve.py) at the end")
    a = ap.parse_args()
    t_start = time.perf_counter()

    import _datasets_shim

    shimmed = _datasets_shim.install(force=a.no_datasets)
    import importlib.util

    import torch
    from common import run_info, write_json

    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if device == "cpu" and not a.smoke:
        log("no CUDA GPU: running the smoke configuration instead (use --smoke to silence this)")
        a.smoke = True
    if a.smoke:
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
    has_bnb = device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
    info = run_info()
    info["smoke"] = a.smoke
    if importlib.util.find_spec("matplotlib") is None:
        import lora_finetune.training.run as lt

        lt.plot_losses = lambda *a, **k: None  # the loss plot is the only use of matplotlib
    info["optional"] = {
        "bitsandbytes": has_bnb,
        "matplotlib": importlib.util.find_spec("matplotlib") is not None,
        "liger_kernel": importlib.util.find_spec("liger_kernel") is not None,
        "datasets": not shimmed,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []

    def save() -> None:
        write_json(a.out / "gpu-results.json", {"info": info, "results": results})
        (a.out / "gpu-results.md").write_text(markdown(results, info) + "\n", encoding="utf-8")

    info["matmul"] = matmul_ceiling(device, a.smoke)
    log(f"matmul ceiling: {info['matmul']['tflops']:.1f} TFLOP/s ({info['matmul']['dtype']})")
    save()
    scratch = a.scratch or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    dims = {"qwen3-0.6b": ("qwen3", QWEN3_06B), "glm-6b": ("glm", GLM_6B)}
    if a.smoke:
        dims = {
            "qwen3-0.6b": ("qwen3", TINY),
            "glm-6b": ("glm", {**TINY, "partial_rotary_factor": 0.5, "attention_bias": True}),
        }
    n_rows, lo, hi = (48, 16, 64) if a.smoke else (600, 64, 512)
    max_len = hi + 16
    folders: dict[str, Path] = {}
    # Rough cost of a run in seconds, to decide whether it still fits the budget.
    cost = {"qwen3-0.6b": 45, "glm-6b": 90}
    for spec in RUNS:
        name, model_name, pipeline, precision, _ = spec
        if a.only and not any(s.strip() in name for s in a.only.split(",")):
            continue
        if precision == "4bit" and not has_bnb:
            results.append({"run": name, "skipped": "needs CUDA + bitsandbytes"})
            save()
            continue
        elapsed = time.perf_counter() - t_start
        need = (3 if a.smoke else cost[model_name]) + (0 if model_name in folders else (2 if a.smoke else 60))
        if elapsed + need > a.budget_s:
            results.append({"run": name, "skipped": f"time budget ({elapsed:.0f} s used)"})
            save()
            continue
        try:
            if model_name not in folders:
                kind, d = dims[model_name]
                folders[model_name] = build_model_folder(model_name, kind, d, scratch, device)
            vocab = dims[model_name][1]["vocab_size"]
            rows = make_rows(n_rows, vocab, lo, hi)
            log(f"{name} ...")
            r = run_one(spec, folders[model_name], rows, a.steps, a.warmup, device, scratch, max_len)
            log(f"{name}: {r.get('real_tokens_per_s') or 0:.0f} real tok/s, step {r.get('step_time_s') or 0:.3f} s")
        except Exception as e:  # one failed run must not lose the others
            r = {
                "run": name,
                "model": model_name,
                "pipeline": pipeline,
                "precision": precision,
                "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
                "traceback": traceback.format_exc()[-3000:],
            }
            log(f"{name} failed: {r['error']}")
        finally:
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        results.append(r)
        save()
    if not a.no_serve:
        info["serve"] = serve_rows(a, folders, device, t_start)
    info["total_s"] = time.perf_counter() - t_start
    save()
    print(markdown(results, info))
    print(f"\n(results: {a.out}/gpu-results.json, .md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
