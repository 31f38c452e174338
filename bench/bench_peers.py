"""The long-sample job with LLaMA-Factory 0.9.5, TRL 1.16 and ours, one after the other.

    .venv/bin/python bench/bench_peers.py                       # all three (~20 min on 2 cores)
    .venv/bin/python bench/bench_peers.py --peers ours,trl:bf16=false
    .venv/bin/python bench/bench_peers.py --peers "trl@avx2:max_steps=2"   # a CPU without bf16

Same job for each (bench/peer_data.py): the first 40 records of LLaMA-Factory's alpaca_zh_demo,
one epoch, batch 4, max length 1024, LoRA r8 / alpha 16 / dropout 0.05 on all linear layers,
lr 1e-4 linear, seed 42, the bundled SmolLM2-135M-Instruct in fp32 (the cached safetensors
folder, so all three read the same files), SmolLM2's ChatML with its default system prompt, the
loss on the answers only. Everything else is each tool's default, as a user would run it:
LLaMA-Factory turns gradient checkpointing on; TRL turns on bf16 mixed precision and gradient
checkpointing; ours plans memory (`memory_budget: auto`) and checkpoints only when needed.

Each peer runs in its own venv (bench/peer_envs.py creates them: CPU torch first) as a child
process, measured from outside:
- time: the process's wall time, and the Trainer's own `train_runtime` (training loop only);
- real tokens/s: the 40 samples' 13,849 ChatML tokens / train_runtime (all three train on the
  same text, so one count serves);
- peak RSS: the highest sum of VmRSS over the process and its children, sampled every 0.2 s;
- held-out answer loss: each adapter evaluated by `lora_finetune.evaluate` (records 40-59, the
  chat template, loss on answer tokens only) after all runs.

A variant is NAME[@avx2][:key=value;...]: `@avx2` runs it with oneDNN and ATen limited to AVX2
(ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2), i.e. as on a CPU without native bf16;
`key=value` overrides the peer's settings (TRL: SFTConfig fields; LLaMA-Factory: its YAML keys;
ours: config keys); `env.NAME=value` sets an environment variable for that run.
Results: bench/out/peers-<timestamp>.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_cpu import LONG_JOB  # noqa: E402
from peer_data import job_files  # noqa: E402

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


# --------------------------------------------------------------------------- measuring a process
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree_rss(pid: int) -> int:
    """Sum of VmRSS (bytes) of `pid` and all its descendants."""
    kids, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        except OSError:
            continue
        total += int(m.group(1)) * 1024 if m else 0
    return total


def run_measured(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss(proc.pid))
                done.wait(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            rc = f"timeout after {timeout:.0f} s"
        done.set()
        th.join()
    return {"rc": rc, "wall_s": time.perf_counter() - t0, "peak_rss_bytes": peak[0], "log": str(log)}


# --------------------------------------------------------------------------- the peers
def parse_variant(spec: str) -> tuple[str, bool, dict[str, str]]:
    head, _, kv = spec.partition(":")
    name, _, isa = head.partition("@")
    overrides = {}
    for part in filter(None, kv.split(";")):
        k, v = part.split("=", 1)
        overrides[k.strip()] = v.strip()
    return name, isa == "avx2", overrides


def _value(v: str):
    """YAML-ish scalar from a command-line override."""
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def prepare_ours(work: Path, model: str, train: Path, overrides: dict) -> tuple[list[str], Path]:
    cfg = {"model_name": model, "output_dir": str(work / "adapter"), "data_path": str(train), **LONG_JOB}
    cfg.update({k: _value(v) for k, v in overrides.items()})
    (work / "config.json").write_text(json.dumps(cfg, indent=1))
    cmd = [str(ROOT / ".venv" / "bin" / "lora-finetune"), "train", "--config", str(work / "config.json"), "--overwrite"]
    return cmd, work / "adapter"


def prepare_llamafactory(work: Path, model: str, train: Path, system: str, overrides: dict) -> tuple[list[str], Path]:
    import peer_envs

    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    rows = json.loads(train.read_text(encoding="utf-8"))
    for r in rows:
        r["system"] = system  # SmolLM2's default system prompt, which its own chat template adds
    (data_dir / "train.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {
        "alpaca_zh_40": {
            "file_name": "train.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
        }
    }
    (data_dir / "dataset_info.json").write_text(json.dumps(info, indent=1))
    cfg = {
        "model_name_or_path": model,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "lora_target": "all",
        "dataset": "alpaca_zh_40",
        "dataset_dir": str(data_dir),
        "template": "chatml",
        "cutoff_len": 1024,
        "overwrite_cache": True,
        "output_dir": str(work / "adapter"),
        "logging_steps": 1,
        "save_strategy": "no",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-4,
        "num_train_epochs": 1.0,
        "lr_scheduler_type": "linear",
        "report_to": "none",
        "seed": 42,
        "plot_loss": False,
    }
    cfg.update({k: _value(v) for k, v in overrides.items()})
    import yaml

    # YAML: llamafactory-cli 0.9.5 fails on a .json config (json.load of a Path)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    py = peer_envs.ensure("llamafactory")
    return [str(py.parent / "llamafactory-cli"), "train", str(work / "config.yaml")], work / "adapter"


def prepare_trl(work: Path, model: str, train: Path, system: str, overrides: dict) -> tuple[list[str], Path]:
    import peer_envs

    py = peer_envs.ensure("trl")
    args = {
        "model": model,
        "train": str(train),
        "system": system,
        "out": str(work),
        "overrides": {k: _value(v) for k, v in overrides.items()},
    }
    return [str(py), str(HERE / "peer_trl.py"), json.dumps(args)], work / "adapter"


def train_runtime(name: str, work: Path) -> float | None:
    try:
        if name == "ours":
            return json.loads((work / "adapter" / "metrics.json").read_text())["train_runtime_s"]
        if name == "llamafactory":
            return json.loads((work / "adapter" / "train_results.json").read_text())["train_runtime"]
        if name == "trl":
            return json.loads((work / "trl_result.json").read_text())["train_runtime"]
    except (OSError, KeyError, ValueError):
        return None
    return None


def losses(name: str, work: Path) -> list[float]:
    try:
        if name == "ours":
            hist = json.loads((work / "adapter" / "metrics.json").read_text()).get("log_history", [])
        elif name == "llamafactory":
            hist = json.loads((work / "adapter" / "trainer_state.json").read_text())["log_history"]
        else:
            hist = json.loads((work / "trl_result.json").read_text())["log_history"]
    except (OSError, KeyError, ValueError):
        return []
    return [round(h["loss"], 4) for h in hist if "loss" in h]


def ours_memory(work: Path) -> dict:
    """What our run planned and measured (metrics.json `memory`) and the layout it chose."""
    try:
        metrics = json.loads((work / "adapter" / "metrics.json").read_text())
        record = (work / "adapter" / "run_config.yaml").read_text()
    except OSError:
        return {}
    plan = re.search(r"memory plan: .*", record)
    return {**metrics.get("memory", {}), "plan": plan.group(0) if plan else "as asked"}


# --------------------------------------------------------------------------- driver
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", default="ours,llamafactory,trl", help="comma-separated variants (see above)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is stopped")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out loss")
    ap.add_argument("--eval-only", type=Path, help="only add the held-out losses to this earlier result JSON")
    a = ap.parse_args()
    if a.eval_only:
        return eval_only(a.eval_only)

    from common import matmul_gflops, run_info, write_json
    from transformers import AutoTokenizer

    from lora_finetune.models import resolve_model

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = a.out or HERE / "out" / f"peers-{stamp}.json"
    base = out.parent / out.stem
    train, held = job_files(base / "data")
    model = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(model)
    rendered = tok.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False)
    system = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", rendered, re.S).group(1)
    rows = json.loads(train.read_text(encoding="utf-8"))
    real_tokens = 0
    for r in rows:
        user = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        real_tokens += len(tok(tok.apply_chat_template(msgs, tokenize=False))["input_ids"])

    info = run_info()
    info["load_average_start"] = os.getloadavg()
    info["matmul_fp32_gflops"] = matmul_gflops()
    results = []
    for spec in filter(None, a.peers.split(",")):
        name, avx2, overrides = parse_variant(spec)
        env_overrides = {k[4:]: overrides.pop(k) for k in list(overrides) if k.startswith("env.")}
        work = base / re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec)
        work.mkdir(parents=True, exist_ok=True)
        if name == "ours":
            cmd, adapter = prepare_ours(work, model, train, overrides)
        elif name == "llamafactory":
            cmd, adapter = prepare_llamafactory(work, model, train, system, overrides)
        elif name == "trl":
            cmd, adapter = prepare_trl(work, model, train, system, overrides)
        else:
            raise SystemExit(f"unknown peer {name!r}: use ours, llamafactory or trl")
        env = {**os.environ, **(AVX2_ENV if avx2 else {}), **env_overrides}
        print(f"[peers] {spec} ...", file=sys.stderr, flush=True)
        r = {"variant": spec, **run_measured(cmd, env, work / "run.log", a.timeout)}
        r["train_runtime_s"] = train_runtime(name, work)
        r["real_tokens_per_s"] = real_tokens / r["train_runtime_s"] if r["train_runtime_s"] else None
        r["losses"] = losses(name, work)
        if name == "ours":
            r["memory"] = ours_memory(work)
        r["adapter"] = str(adapter)
        results.append(r)
        print(
            f"[peers] {spec}: rc {r['rc']}, {r['wall_s']:.0f} s wall, train {r['train_runtime_s']}, "
            f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB",
            file=sys.stderr,
            flush=True,
        )
        write_json(out, {"info": info, "real_tokens": real_tokens, "results": results})

    if not a.no_eval:
        heldout_losses(results, held, model)
    info["load_average_end"] = os.getloadavg()
    write_json(out, {"info": info, "real_tokens": real_tokens, "results": results})
    print_table(info, real_tokens, results, out)
    return 0


def heldout_losses(results: list[dict], held: Path, model: str) -> None:
    """Each adapter's loss on the held-out answers, all through the same code (ours)."""
    from lora_finetune import evaluate

    for r in results:
        if r["rc"] != 0 or not Path(r["adapter"], "adapter_config.json").is_file():
            continue
        ev = evaluate(r["adapter"], held, generation=False, write_report=False, template="chat", base_model=model)
        r["heldout_answer_loss"] = ev.report["metrics"]["adapter"]["loss"]


def print_table(info: dict, real_tokens: int, results: list[dict], out: Path) -> None:

    print(
        f"\nPeers, {info['date']}, {info['device']['cpu']} x{info['device']['cpu_count']}, load at start "
        f"{info['load_average_start'][0]:.2f}; fp32 matmul {info['matmul_fp32_gflops']:.0f} GFLOP/s; "
        f"{real_tokens} real tokens per epoch"
    )
    print(
        "| run | process wall (s) | train_runtime (s) | real tok/s | peak RSS | held-out answer loss "
        "| first / last train loss |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        tr, ls, tps = r["train_runtime_s"], r["losses"], r["real_tokens_per_s"]
        print(
            f"| {r['variant']} | {r['wall_s']:.0f} | {'' if tr is None else f'{tr:.1f}'} | "
            f"{'' if not tps else f'{tps:.1f}'} | "
            f"{r['peak_rss_bytes'] / 2**30:.2f} GiB | {r.get('heldout_answer_loss', '')} | "
            f"{f'{ls[0]} / {ls[-1]}' if ls else r['rc']} |"
        )
    print(f"\n(json: {out})")


def eval_only(path: Path) -> int:
    """Fill in the held-out losses of an earlier run's JSON (e.g. after its evaluation failed)."""
    from common import write_json

    from lora_finetune.models import resolve_model

    data = json.loads(path.read_text())
    held = path.parent / path.stem / "data" / "heldout.json"
    heldout_losses(data["results"], held, resolve_model("smollm2-135m-instruct"))
    write_json(path, data)
    print_table(data["info"], data["real_tokens"], data["results"], path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
