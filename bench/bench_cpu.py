"""CPU benchmark: the seed's pipeline against ours, same model, same data, one run.

    .venv/bin/python bench/bench_cpu.py            # or: make bench-cpu   (~10 min on 2 cores)
    .venv/bin/python bench/bench_cpu.py --quick    # fewer steps (~4 min), for a sanity check

Model: the bundled SmolLM2-135M-Instruct (fp32). Data: the seed's 20 demo samples
(`data.dummy_rows`), 18 for training after the seed's 10% split. Each pipeline runs in its own
Python process (so peak RSS is its own) under transformers' Trainer, measured by
`common.ThroughputProbe`:

- seed: pad every sample to 768, batch 2, DataCollatorForLanguageModeling, LoRA r8/a32 on
  q/k/v/o (see seed_pipeline.py);
- ours: `lora_finetune.training.train(cfg)` end to end with our defaults (per-batch padding,
  length-grouped batches, prompt masked, LoRA on all projections, eval and checkpoints every 25
  steps), `template: seed` so both read the same text; `ours-chat` uses our default chat
  template instead (SmolLM2's ChatML adds a system prompt: more real tokens per sample).

Extra variants (ablations of our settings) are named `ours:key=value;key=value`, e.g.
`ours:group_by_length=false` or `ours:packing=true`; pass them with --variants (comma-separated).
Keys that are not config keys: `threads=N` (torch threads), `optim=NAME` (TrainingArguments'
optimizer, e.g. adamw_torch_fused), `attn=eager|sdpa` (attention implementation),
`compile=true` (torch.compile of the model, inductor), `cpu_dropout=torch` (torch's own dropout
instead of ours on CPU: the "before" of that change), `malloc=heap|jemalloc|tcmalloc` (the
worker's allocator: glibc with its mmap and trim thresholds raised to 1 GiB and 4 GiB so freed
activations stay in the heap, or Debian's libjemalloc2 / libtcmalloc-minimal4 by LD_PRELOAD).

`--job long` runs the long-sample job instead (bench/peer_data.py): the first 40 records of
LLaMA-Factory's alpaca_zh_demo (73-697 tokens with SmolLM2's ChatML), one epoch, batch 4,
max length 1024, LoRA r8/alpha 16/dropout 0.05 on all linear layers, lr 1e-4, no evaluation,
the chat template. Each run's MFU is its useful FLOP rate over the fp32 matrix-product rate
measured by the driver in the same run (2048^3, torch's threads; the median of the
measurements taken before and after every run): useful FLOPs = 4 x the base
model's parameters per real token (forward + input gradients; the frozen base has no weight
gradient), the formula of issue 16, which counts the embedding (tied to the output layer) too.

Results go to bench/out/cpu-<timestamp>.json and a markdown table on stdout; copy the table into
bench/RESULTS.md with the date. Run when the machine is otherwise idle (`uptime` load < 0.5):
the load average at start and end is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_VARIANTS = ["seed", "ours", "ours-chat"]


def parse_overrides(spec: str) -> dict[str, str]:
    out = {}
    for part in filter(None, spec.split(",")):
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# --------------------------------------------------------------------------- workers
LONG_JOB = {
    "template": "auto",
    "batch_size": 4,
    "max_length": 1024,
    "epochs": 1,
    "eval_fraction": 0,
    "r": 8,
    "alpha": 16,
    "dropout": 0.05,
    "learning_rate": 1e-4,
    "target_modules": "all-linear",
    "logging_steps": 1,
    "save_steps": 1000,
}


MALLOC = {
    "heap": {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32)},
    "jemalloc": {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
    "tcmalloc": {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"},
}


def malloc_env(variant: str) -> dict[str, str]:
    """The environment a variant's `malloc=...` asks for (read by the allocator at process start)."""
    name = parse_overrides(variant.partition(":")[2].replace(";", ",")).get("malloc")
    return MALLOC[name] if name else {}


def apply_knobs(overrides: dict[str, str]) -> dict[str, str]:
    """Apply the variant keys that are not config keys (see the module docstring); return the rest."""
    import torch

    from lora_finetune.training import run
    from lora_finetune.training.stages import sft

    overrides.pop("malloc", None)  # applied by the driver (malloc_env)
    if "threads" in overrides:  # torch's intra-op thread count
        torch.set_num_threads(int(overrides.pop("threads")))
    optim = overrides.pop("optim", None)
    compile_ = overrides.pop("compile", "false").lower() == "true"
    if optim or compile_:
        build = sft.build_training_args

        def patched(*a, **kw):
            args = build(*a, **kw)
            if optim:
                args.optim = optim
            if compile_:
                args.torch_compile = True
                args.torch_compile_backend = "inductor"
            return args

        sft.build_training_args = patched
    attn = overrides.pop("attn", None)
    if attn:
        attach = run.attach_lora

        def with_attn(model, *a, **kw):
            model.set_attn_implementation(attn)
            return attach(model, *a, **kw)

        run.attach_lora = with_attn
    if overrides.pop("cpu_dropout", None) == "torch":
        from lora_finetune.models import adapters

        adapters.use_cheap_cpu_dropout = lambda model: 0
    return overrides


def worker(variant: str, steps: int, warmup: int, result: Path, job: str = "demo") -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from common import ThroughputProbe, rss_bytes, run_info, write_json

    from lora_finetune.data import dummy_rows
    from lora_finetune.models import resolve_model

    rss0 = rss_bytes()
    model_path = resolve_model("smollm2-135m-instruct")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if variant == "seed":
            from seed_pipeline import SeedSettings, build_seed_trainer
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_path)
            probe = ThroughputProbe(pad_token_id=tok.eos_token_id)
            trainer = build_seed_trainer(
                model_path, tok, dummy_rows(), SeedSettings(steps=steps), Path(tmp) / "seed", callbacks=[probe]
            )
            trainer.train()
            settings = {
                "pipeline": "seed",
                "pad_to": 768,
                "batch_size": 2,
                "targets": "q,k,v,o",
                "template": "seed (问/补充信息/答, no EOS)",
            }
        else:
            from lora_finetune.config import build_config
            from lora_finetune.training import train

            values = {
                "model_name": "smollm2-135m-instruct",
                "output_dir": str(Path(tmp) / "ours"),
                "steps": steps,
                "template": "seed",
            }
            if job == "long":
                from peer_data import job_files

                train_file, _ = job_files(Path(tmp) / "data")
                values = {"model_name": "smollm2-135m-instruct", "output_dir": str(Path(tmp) / "ours")}
                values.update(LONG_JOB, data_path=str(train_file))
            name, _, spec = variant.partition(":")
            if name == "ours-chat":
                values["template"] = "auto"
            values.update(apply_knobs(parse_overrides(spec)))
            cfg = build_config(values)
            probe = ThroughputProbe(pad_token_id=2)  # SmolLM2: pad = eos = <|im_end|> (id 2)
            res = train(cfg, callbacks=[probe])
            settings = {
                "pipeline": variant,
                **{
                    k: str(v)
                    for k, v in cfg.to_dict().items()
                    if k
                    in (
                        "batch_size",
                        "template",
                        "packing",
                        "group_by_length",
                        "target_modules",
                        "gradient_checkpointing",
                        "eval_steps",
                        "save_steps",
                        "dropout",
                        "memory_budget",
                    )
                },
                "trainer_real_tokens_per_s": res.metrics.get("real_tokens_per_second"),
                "train_loss": res.metrics.get("train_loss"),
                "memory_plan": res.resolved.extra.get("memory_plan"),
                "memory": res.metrics.get("memory"),
            }
    summary = probe.summary(warmup)
    summary.update(
        {
            "variant": variant,
            "settings": settings,
            "steps": steps,
            "rss_at_start_bytes": rss0,
            "total_s": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
            "info": run_info(),
        }
    )
    write_json(result, summary)


# --------------------------------------------------------------------------- driver
def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.0f}%"


def last_loss(r: dict) -> str:
    return f"{r['losses'][-1][1]:.4f}" if r.get("losses") else ""


def table(results: list[dict]) -> str:
    from common import fmt, fmt_bytes

    seed = next((r for r in results if r["variant"] == "seed"), None)
    head = (
        "| pipeline | step time (s) | real tok/s | padded tok/s | padding | peak RSS | "
        "RSS growth in training | ours/seed (real tok/s) | MFU | final loss |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        ratio = (
            r["real_tokens_per_s"] / seed["real_tokens_per_s"]
            if seed and "real_tokens_per_s" in seed and r is not seed
            else None
        )
        lines.append(
            f"| {r['variant']} | {r['step_time_s']:.3f} | {fmt(r['real_tokens_per_s'])} | "
            f"{fmt(r['padded_tokens_per_s'])} | {100 * r['padding_fraction']:.0f}% | "
            f"{fmt_bytes(r.get('peak_rss_bytes'))} | "
            f"{fmt_bytes(r.get('rss_growth_in_training_bytes'))} | "
            f"{'' if ratio is None else f'{ratio:.1f}x'} | "
            f"{pct(r.get('mfu'))} | {last_loss(r)} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="comma-separated; ours ablations as 'ours:key=value;key=value'",
    )
    ap.add_argument("--seed-steps", type=int, default=8)
    ap.add_argument("--ours-steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4 seed steps, 20 of ours")
    ap.add_argument("--job", choices=["demo", "long"], default="demo", help="demo samples, or the long-sample job")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.steps, a.warmup, a.result, a.job)
        return 0
    if a.quick:
        a.seed_steps, a.ours_steps = 4, 20
    # Ablation specs use ';' between settings so ',' can separate variants.
    variants = [v.replace(";", ",") for v in a.variants.split(",") if v]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out or HERE / "out" / f"cpu-{stamp}.json"
    results = []
    load_start = os.getloadavg()
    from common import matmul_gflops

    ceiling = [matmul_gflops()]
    print(f"[bench] fp32 2048^3 matmul: {ceiling[0]:.1f} GFLOP/s", file=sys.stderr, flush=True)
    for v in variants:
        steps = a.seed_steps if v == "seed" else a.ours_steps
        env = {**os.environ, **malloc_env(v)}
        res_file = out.parent / f".{out.stem}-{len(results)}.json"
        print(f"[bench] {v}: {steps} steps ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                v,
                "--steps",
                str(steps),
                "--warmup",
                str(a.warmup),
                "--result",
                str(res_file),
                "--job",
                a.job,
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0 or not res_file.exists():
            results.append(
                {
                    "variant": v,
                    "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                }
            )
            print(proc.stderr[-3000:], file=sys.stderr)
            continue
        r = json.loads(res_file.read_text())
        res_file.unlink()
        ceiling.append(matmul_gflops())  # after each run too: the machine's state can drift
        results.append(r)
        print(
            f"[bench] {v}: {r['real_tokens_per_s']:.1f} real tok/s, step "
            f"{r['step_time_s']:.3f} s ({time.perf_counter() - t:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    from common import run_info, write_json

    info = run_info()
    info["load_average_start"] = load_start
    info["load_average_end"] = os.getloadavg()
    info["matmul_fp32_gflops"] = ceiling
    # The ceiling moves by +-10% between measurements on this shared machine: MFU is against
    # the median of all of them (each itself a median of 10 products).
    peak = statistics.median(ceiling)
    for r in results:
        if "real_tokens_per_s" in r and r.get("base_params"):
            r["useful_gflops"] = 4 * r["base_params"] * r["real_tokens_per_s"] / 1e9
            r["mfu"] = r["useful_gflops"] / peak
    write_json(out, {"info": info, "results": results})
    print(
        f"\nCPU benchmark, {info['date']}, {info['device']['cpu']} x{info['device']['cpu_count']}"
        f", torch threads {info['device']['torch_threads']}, load avg at start "
        f"{load_start[0]:.2f}, end {info['load_average_end'][0]:.2f}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(
        f"fp32 matmul ceiling (2048^3, median of 10, measured before and after each run): "
        f"{', '.join(f'{c:.0f}' for c in ceiling)} GFLOP/s; MFU uses their median"
    )
    print(table(results))
    print(f"\n(json: {out})")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
