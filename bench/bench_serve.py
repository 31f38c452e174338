"""Serving benchmark: `lora-finetune serve` under 1, 4 and 16 concurrent clients, with and
without dynamic batching.

    python bench/bench_serve.py                               # bundled SmolLM2-135M, CPU (~6 min on 2 cores)
    python bench/bench_serve.py --model PATH --device cuda    # what bench_gpu.py runs on a GPU

The server runs as its own process (`python -m lora_finetune serve`), serving one adapter under
two names (`a`, `b`) and the base, so every batch mixes adapters and the base. Without an
--adapter, a 2-step adapter is trained on --model first (kept in OUT/adapter). Each client sends
its requests one after another, streamed (`stream_options.include_usage`), greedy, rotating over
a, b and the base and over the 20 demo questions. "no batching" is `--max-batch-size 1`;
"dynamic batching" is `--max-batch-size 16 --batch-window-ms 10`.

Measured per row: requests/s and completion tokens/s over the wall time of the row, p50/p95
latency (request sent -> last byte), p50/p95 time to first token (request sent -> first content
chunk). Results: OUT/serve-results.json and OUT/serve-results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MODES = {"no batching": ["--max-batch-size", "1"], "dynamic batching": ["--max-batch-size", "16"]}


def log(msg: str) -> None:
    print(f"[bench-serve] {msg}", file=sys.stderr, flush=True)


def make_adapter(model: str, out: Path, device: str) -> Path:
    from lora_finetune import train
    from lora_finetune.config import build_config
    from lora_finetune.folders import is_complete

    folder = out / "adapter"
    if not is_complete(folder):
        log(f"training a 2-step adapter on {model} -> {folder}")
        cfg = build_config(
            {"model_name": model, "output_dir": str(folder), "steps": 2, "batch_size": 2, "save_steps": 100}
        )
        train(cfg)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(adapter: Path, device: str, extra: list[str], max_tokens: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "lora_finetune", "serve", "--adapter", f"a={adapter}", "--adapter", f"b={adapter}"]
    cmd += ["--port", str(port), "--device", device, "--max-tokens", str(max_tokens), "--max-queue", "256", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # type: ignore[union-attr]
        if "OpenAI API at" in line:
            break
    else:
        raise RuntimeError(f"the server did not start (exit {proc.wait()})")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    return proc, f"http://127.0.0.1:{port}"


def one_request(client, url: str, model: str, question: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return {"latency": end - t0, "ttft": (first or end) - t0, "tokens": tokens}


def run_level(url: str, models: list[str], questions: list[str], clients: int, per_client: int, max_tokens: int):
    import httpx

    results: list[dict] = []
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        with httpx.Client(timeout=600) as client:
            for j in range(per_client):
                i = k * per_client + j
                res = one_request(client, url, models[i % len(models)], questions[i % len(questions)], max_tokens)
                with lock:
                    results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "mean_tokens": round(statistics.mean(r["tokens"] for r in results), 1),
        "latency_p50_s": round(pct(lat, 0.5), 2),
        "latency_p95_s": round(pct(lat, 0.95), 2),
        "ttft_p50_s": round(pct(ttft, 0.5), 3),
        "ttft_p95_s": round(pct(ttft, 0.95), 3),
    }


def markdown(rows: list[dict], info: dict) -> str:
    head = (
        f"model {info['model']}, device {info['device']}, max_tokens {info['max_tokens']}, "
        f"torch threads {info['threads']}, greedy, streamed, models a/b/base in rotation\n\n"
    )
    out = [
        "| mode | clients | requests | req/s | tokens/s | latency p50 / p95 (s) | TTFT p50 / p95 (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['requests_per_s']} | {r['tokens_per_s']} | "
            f"{r['latency_p50_s']} / {r['latency_p95_s']} | {r['ttft_p50_s']} / {r['ttft_p95_s']} |"
        )
    return head + "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model (bundled name, folder or hub id)")
    ap.add_argument("--adapter", type=Path, help="adapter folder to serve (default: train a 2-step one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--levels", default="1,4,16", help="concurrent clients per row")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=0, help="requests per row (default: max(4, 2 x clients))")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    ap.add_argument("--out", type=Path, default=HERE / "out" / "serve")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    from lora_finetune.data.demo import dummy_rows

    adapter = a.adapter or make_adapter(a.model, a.out, a.device)
    questions = [r["instruction"] for r in dummy_rows()]
    models = ["a", "b", "base"]
    info = {
        "model": a.model,
        "device": a.device,
        "max_tokens": a.max_tokens,
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    rows: list[dict] = []
    for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
        proc, url = start_server(adapter, a.device, MODES[mode], a.max_tokens)
        try:
            import httpx

            names = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
            models = ["a", "b", names[-1]]
            one_request(httpx.Client(timeout=600), url, "a", questions[0], a.max_tokens)  # warm-up
            for clients in [int(x) for x in a.levels.split(",")]:
                per_client = max(1, (a.requests or max(4, 2 * clients)) // clients)
                log(f"{mode}: {clients} clients x {per_client} requests")
                row = {"mode": mode, **run_level(url, models, questions, clients, per_client, a.max_tokens)}
                log(json.dumps(row))
                rows.append(row)
                (a.out / "serve-results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2))
                (a.out / "serve-results.md").write_text(markdown(rows, info))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(markdown(rows, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
