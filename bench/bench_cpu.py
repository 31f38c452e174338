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
`ours:group_by_length=false` or `ours:packing=true`, or `ours:threads=1` (torch threads);
pass them with --variants (comma-separated).

Results go to bench/out/cpu-<timestamp>.json and a markdown table on stdout; copy the table into
bench/RESULTS.md with the date. Run when the machine is otherwise idle (`uptime` load < 0.5):
the load average at start and end is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
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
def worker(variant: str, steps: int, warmup: int, result: Path) -> None:
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
            name, _, spec = variant.partition(":")
            if name == "ours-chat":
                values["template"] = "auto"
            overrides = parse_overrides(spec)
            if "threads" in overrides:  # not a config key: torch's intra-op thread count
                torch.set_num_threads(int(overrides.pop("threads")))
            values.update(overrides)
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
                    )
                },
                "trainer_real_tokens_per_s": res.metrics.get("real_tokens_per_second"),
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
def table(results: list[dict]) -> str:
    from common import fmt, fmt_bytes

    seed = next((r for r in results if r["variant"] == "seed"), None)
    head = (
        "| pipeline | step time (s) | real tok/s | padded tok/s | padding | peak RSS | "
        "RSS growth in training | ours/seed (real tok/s) |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
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
            f"{'' if ratio is None else f'{ratio:.1f}x'} |"
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
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.steps, a.warmup, a.result)
        return 0
    if a.quick:
        a.seed_steps, a.ours_steps = 4, 20
    # Ablation specs use ';' between settings so ',' can separate variants.
    variants = [v.replace(";", ",") for v in a.variants.split(",") if v]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out or HERE / "out" / f"cpu-{stamp}.json"
    results = []
    load_start = os.getloadavg()
    for v in variants:
        steps = a.seed_steps if v == "seed" else a.ours_steps
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
            ],
            capture_output=True,
            text=True,
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
    write_json(out, {"info": info, "results": results})
    print(
        f"\nCPU benchmark, {info['date']}, {info['device']['cpu']} x{info['device']['cpu_count']}"
        f", torch threads {info['device']['torch_threads']}, load avg at start "
        f"{load_start[0]:.2f}, end {info['load_average_end'][0]:.2f}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(table(results))
    print(f"\n(json: {out})")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
