"""DPO: ours (`method: dpo`) against TRL's own DPOTrainer, the same job one after the other (CPU).

    .venv/bin/python bench/bench_dpo.py [--job lf|demo] [--pairs N] [--steps N] [--out FILE]

Two jobs, each written once in TRL's conversational format (prompt / chosen / rejected
messages), which both read:

- `lf` (default; speed and memory): LLaMA-Factory's `dpo_zh_demo` (the real file,
  tests/fixtures/llama_factory/data), the pairs whose prompt and longer answer fit 512 tokens
  with the bundled SmolLM2-135M-Instruct's chat template (59 of 300): the first `--pairs` (40)
  train, the rest are held out. Real preference data: a 135M model learns little of it in one
  epoch, so its accuracy stays near chance for both.
- `demo` (does it learn, equally): our 30 Chinese demo pairs (a complete sentence chosen over
  the bare answer), 24 train, 6 held out; learnable in a few steps.

Both train the bundled model in fp32 with LoRA r 8, alpha 16, dropout 0 on q/k/v/o/gate/up/down,
batch 2, `--steps` steps (one epoch: 20), learning rate 1e-4, beta 0.1, sigmoid loss, the
reference being the model with the adapter off, no evaluation or checkpoints during training,
seed 42 -- each in its own process (so its peak RSS is its own), under the same allocator.

Measured per run: training wall time, real tokens/s (the non-padding tokens of the chosen and
rejected sequences the Trainer counted), the process's peak RSS, and, after training, on the
held-out pairs and by one function for both adapters: DPO's reward accuracy (the share of pairs
whose chosen answer gains more log-probability over the reference than the rejected one) and the
mean reward margin. Results: `--out` (JSON) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LF_DATA = ROOT / "tests" / "fixtures" / "llama_factory" / "data"
SETTINGS = dict(batch_size=2, learning_rate=1e-4, beta=0.1, r=8, alpha=16, seed=42, max_length=512)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------- the job's data
def job_files(folder: Path, job: str, n_pairs: int, model_dir: str) -> tuple[Path, Path]:
    """train.jsonl (the first `n_pairs` pairs that fit) and heldout.jsonl (the rest that fit),
    in TRL's conversational preference format."""
    from lora_finetune.data import demo_rows
    from lora_finetune.data.formats import load_source, records_from_rows
    from lora_finetune.models import load_tokenizer
    from lora_finetune.templates import encode_pairs, get_template

    if job == "demo":
        records = records_from_rows(demo_rows("preference"), kinds=("preference",))
    else:
        records, _ = load_source(LF_DATA, dataset="dpo_zh_demo", kinds=("preference",))
    tokenizer = load_tokenizer(model_dir)
    template = get_template("chat", tokenizer)
    rows = []
    for rec in records:
        (pair,), _ = encode_pairs([rec], tokenizer, template, 10**9)
        if len(pair["prompt_ids"]) + max(len(pair["chosen_ids"]), len(pair["rejected_ids"])) > SETTINGS["max_length"]:
            continue
        prompt = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": rec["chosen"]["content"]}],
                     "rejected": [{"role": "assistant", "content": rec["rejected"]["content"]}]})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    train, held = folder / "train.jsonl", folder / "heldout.jsonl"
    for path, part in ((train, rows[:n_pairs]), (held, rows[n_pairs:])):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    return train, held


# --------------------------------------------------------------------------- the workers
def run_ours(model_dir: str, train: Path, out: Path, steps: int) -> dict:
    from lora_finetune.config import build_config
    from lora_finetune.training import train as train_run

    cfg = build_config({
        "model_name": model_dir, "method": "dpo", "data_path": str(train), "output_dir": str(out), "overwrite": True,
        "steps": steps, "eval_fraction": 0.0, "save_steps": 10**6, "logging_steps": 1, "dropout": 0.0,
        "target_modules": TARGETS, "memory_budget": "none", "dtype": "fp32", **SETTINGS,
    })  # fmt: skip
    t0 = time.perf_counter()
    res = train_run(cfg)
    wall = time.perf_counter() - t0
    m = res.metrics
    return {"adapter": str(out), "train_runtime_s": m["train_runtime_s"], "wall_s": wall,
            "tokens": m["real_tokens_seen"], "log": m["log_history"]}  # fmt: skip


def run_trl(model_dir: str, train: Path, out: Path, steps: int) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(SETTINGS["seed"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(out / "trl-checkpoints"), max_steps=steps, per_device_train_batch_size=SETTINGS["batch_size"],
        learning_rate=SETTINGS["learning_rate"], beta=SETTINGS["beta"], max_length=SETTINGS["max_length"],
        seed=SETTINGS["seed"], logging_steps=1, save_strategy="no", report_to="none", bf16=False,
        gradient_checkpointing=False, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        include_num_input_tokens_seen="non_padding", disable_tqdm=True,
    )  # fmt: skip
    peft_config = LoraConfig(r=SETTINGS["r"], lora_alpha=SETTINGS["alpha"], lora_dropout=0.0,
                             target_modules=TARGETS, task_type="CAUSAL_LM")  # fmt: skip
    dataset = load_dataset("json", data_files=str(train), split="train")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)  # fmt: skip
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    trainer.save_model(str(out))
    return {"adapter": str(out), "train_runtime_s": result.metrics["train_runtime"], "wall_s": wall,
            "tokens": int(trainer.state.num_input_tokens_seen), "log": trainer.state.log_history}  # fmt: skip


def held_out_rewards(model_dir: str, adapter: str, held: Path) -> dict:
    """DPO's implicit reward on the held-out pairs, the same way for both adapters: beta x the
    answer's log-probability gain over the reference (adapter off), chosen vs rejected."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_finetune.data.formats import load_records
    from lora_finetune.templates import encode_answer, get_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = get_template("chat", tokenizer)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()

    def logp(rec, answer) -> float:
        enc = encode_answer(rec, answer, tokenizer, template)
        ids = torch.tensor([enc.prompt_ids + enc.answer_ids])
        logits = model(input_ids=ids).logits[0, -len(enc.answer_ids) - 1 : -1].float()
        return float(torch.log_softmax(logits, -1).gather(-1, ids[0, -len(enc.answer_ids) :, None]).sum())

    margins = []
    with torch.no_grad():
        for rec in load_records(held, kinds=("preference",)):
            gain = {}
            for side in ("chosen", "rejected"):
                policy = logp(rec, rec[side])
                with model.disable_adapter():
                    gain[side] = policy - logp(rec, rec[side])
            margins.append(SETTINGS["beta"] * (gain["chosen"] - gain["rejected"]))
    return {"reward_accuracy": sum(m > 0 for m in margins) / len(margins), "mean_margin": sum(margins) / len(margins)}


def worker(args: argparse.Namespace) -> None:
    from common import peak_rss_bytes

    run = {"ours": run_ours, "trl": run_trl}[args.worker]
    result = run(args.model_dir, Path(args.train), Path(args.adapter_out), args.steps)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result.update(held_out_rewards(args.model_dir, result["adapter"], Path(args.held)))
    Path(args.result).write_text(json.dumps(result, default=str), encoding="utf-8")


# --------------------------------------------------------------------------- the driver
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", choices=["lf", "demo"], default="lf")
    ap.add_argument("--pairs", type=int, default=None, help="training pairs (lf: 40, demo: 24)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None, help="default bench/out/dpo-JOB.json")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench-dpo")
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    for name in ("model_dir", "train", "held", "adapter_out", "result"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0

    from common import run_info

    from lora_finetune.models import ensure_bundled_model

    model_dir = str(ensure_bundled_model())
    args.pairs = args.pairs or {"lf": 40, "demo": 24}[args.job]
    args.out = args.out or HERE / "out" / f"dpo-{args.job}.json"
    args.work = args.work / args.job
    train, held = job_files(args.work, args.job, args.pairs, model_dir)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    results = {}
    for who in ("trl", "ours"):
        result_file = args.work / f"{who}.json"
        cmd = [sys.executable, __file__, "--worker", who, "--model_dir", model_dir, "--train", str(train),
               "--held", str(held), "--adapter_out", str(args.work / f"adapter-{who}"), "--result", str(result_file),
               "--steps", str(args.steps)]  # fmt: skip
        print(f"[bench-dpo] {who} ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, env=env)
        results[who] = json.loads(result_file.read_text(encoding="utf-8"))
    info = run_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"info": info, "settings": SETTINGS, "job": args.job, "pairs": args.pairs,
                                    "steps": args.steps, "results": results}, indent=1, default=str),
                        encoding="utf-8")  # fmt: skip
    print("| run | train time (s) | real tokens/s | peak RSS | held-out reward accuracy | mean margin |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for who, label in (("trl", "TRL DPOTrainer"), ("ours", "ours (`method: dpo`)")):
        r = results[who]
        speed = r["tokens"] / r["train_runtime_s"]
        rss = r["peak_rss_bytes"] / 2**30
        print(f"| {label} | {r['train_runtime_s']:.1f} | {speed:.1f} | {rss:.2f} GiB | {r['reward_accuracy']:.0%} | "
              f"{r['mean_margin']:.3f} |")  # fmt: skip
    print(f"\n(results: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
