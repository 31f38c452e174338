"""OUT/gpu-results.md from bench_gpu.py's results: rows, variant pairs, profile, CLI smoke, versions.

Pure formatting: every number here is in OUT/gpu-results.json too.
"""

from __future__ import annotations

from typing import Any

from common import fmt, fmt_bytes

PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel", "datasets", "gguf")


def measured(r: dict[str, Any] | None) -> bool:
    return bool(r) and bool(r.get("real_tokens_per_s"))


def _status(r: dict[str, Any]) -> str | None:
    """'skipped: ...' / 'failed: ...' for a row that has no numbers, else None."""
    if "skipped" in r:
        return "skipped: " + r["skipped"]
    if "error" in r:
        return "failed: " + r["error"][:90]
    return None if measured(r) else "no measured steps"


def _pct(x: float | None, signed: bool = False) -> str:
    return "" if x is None else f"{100 * x:+.0f}%" if signed else f"{100 * x:.1f}%"


def mfu(r: dict[str, Any], ceiling_tflops: float | None) -> float | None:
    if not ceiling_tflops or not r.get("useful_flops_per_step") or not r.get("step_time_s"):
        return None
    return r["useful_flops_per_step"] / r["step_time_s"] / (ceiling_tflops * 1e12)


def peak(r: dict[str, Any]) -> float | None:
    return r.get("peak_gpu_mem_bytes", r.get("peak_rss_bytes"))


def _name(r: dict[str, Any]) -> str:
    """The run's name, and what the memory plan changed when it did (then the row is not quite
    what its name says)."""
    plan = (r.get("settings") or {}).get("memory_plan")
    return r["run"] + (f" (memory plan: {', '.join(f'{k} {v}' for k, v in plan.items())})" if plan else "")


def _shape(r: dict[str, Any]) -> str:
    s = r.get("max_batch_shape")
    return f"{s[0]} x {s[1]}" if s else ""


# --------------------------------------------------------------------------- sections
def header(info: dict[str, Any]) -> list[str]:
    dev = info["device"]
    ceiling = info.get("matmul", {}).get("tflops")
    versions = info.get("versions", {})
    pkgs = ", ".join(f"{p} {versions.get(p, 'not installed')}" for p in PACKAGES)
    lines = [
        f"# GPU benchmark {info['date']}",
        "",
        f"{dev.get('gpu', 'no GPU (CPU dry run)')}; {dev.get('cpu')} ({dev.get('cpu_count')} cores); "
        f"matmul ceiling measured: {fmt(ceiling)} TFLOP/s ({info.get('matmul', {}).get('dtype', '')})"
        + ("; smoke sizes (tiny models)" if info.get("smoke") else ""),
        "",
        f"versions: python {versions.get('python')}, {pkgs}, lora-finetune {versions.get('lora-finetune', '?')}",
    ]
    if info.get("degraded"):
        lines.append("degraded: " + "; ".join(info["degraded"]))
    if info.get("total_s") is not None:
        lines.append(f"total {info['total_s']:.0f} s of a {info.get('budget_s', 0):.0f} s budget")
    return lines


def rows_table(results: list[dict[str, Any]], ceiling: float | None) -> list[str]:
    lines = [
        "## Runs",
        "",
        "Peak memory: torch.cuda.max_memory_allocated over all steps (peak RSS of the process on a CPU). "
        "Estimate: lora_finetune.tools.estimate for the longest batch of the run (rows x padded length).",
        "",
        "| run | step (s) | real tok/s | padded tok/s | padding | longest batch | peak mem | estimate | est. error "
        "| MFU | ours/seed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    seeds = {(r["model"], r["precision"]): r for r in results if r.get("pipeline") == "seed" and measured(r)}
    for r in results:
        why = _status(r)
        if why:
            lines.append(f"| {r['run']} | {why} |" + " |" * 9)
            continue
        seed = seeds.get((r["model"], r["precision"]))
        ratio = f"{r['real_tokens_per_s'] / seed['real_tokens_per_s']:.1f}x" if seed and r is not seed else ""
        lines.append(
            f"| {_name(r)} | {r['step_time_s']:.3f} | {fmt(r['real_tokens_per_s'], 0)} | "
            f"{fmt(r['padded_tokens_per_s'], 0)} | {100 * (r['padding_fraction'] or 0):.0f}% | {_shape(r)} | "
            f"{fmt_bytes(peak(r))} | {fmt_bytes(r.get('estimate_peak_allocated_bytes'))} | "
            f"{_pct(r.get('estimate_error'), signed=True) or r.get('estimate_error_note', '')} | "
            f"{_pct(mfu(r, ceiling))} | {ratio} |"
        )
    return lines


def _ab(a: dict[str, Any], b: dict[str, Any], show) -> str:
    return f"{show(a)} / {show(b)}"


def pairs_table(results: list[dict[str, Any]], pairs: list[tuple[str, str, str]]) -> list[str]:
    by_name = {r["run"]: r for r in results}
    lines = [
        "## Variants, in pairs",
        "",
        'Both rows of a pair come from this run, on the same data. "defaults": our config\'s defaults '
        "(cudnn_attention false, use_liger auto = off unless the memory plan needs it, label_logits_only true, "
        'length-grouped batches), the "off" side of the cuDNN and liger pairs.',
        "",
        "| comparison | A | B | real tok/s A / B | B / A | step (s) A / B | peak mem A / B |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, a_name, b_name in pairs:
        a, b = by_name.get(a_name), by_name.get(b_name)
        if not (measured(a) and measured(b)):
            missing = [f"{'AB'[i]}: {_status(r) if r else 'not run'}" for i, r in enumerate((a, b)) if not measured(r)]
            lines.append(f"| {label} | {a_name} | {b_name} | {'; '.join(missing)} | | | |")
            continue
        lines.append(
            f"| {label} | {a_name} | {b_name} | {_ab(a, b, lambda r: fmt(r['real_tokens_per_s'], 0))} | "
            f"{b['real_tokens_per_s'] / a['real_tokens_per_s']:.2f}x | "
            f"{_ab(a, b, lambda r: fmt(r['step_time_s'], 3))} | {_ab(a, b, lambda r: fmt_bytes(peak(r)))} |"
        )
    return lines


def profile_section(profile: dict[str, Any] | None) -> list[str]:
    lines = ["## Profile (torch.profiler, OUT/prof.txt)", ""]
    if not profile:
        return lines + ["not run"]
    if "summary" not in profile:
        return lines + [f"{profile.get('run', '')}: {profile.get('skipped') or profile.get('error') or 'no profile'}"]
    s = profile["summary"]
    totals = ", ".join(f"{k.replace('_ms', '').replace('_', ' ')} {v:,.1f} ms" for k, v in s["totals"].items())
    lines += [
        f"{profile['run']}: {s['profiled_steps']} steps after the measured ones, under the profiler (its "
        f"overhead included; the same run's unprofiled step: {fmt(profile.get('unprofiled_step_ms'))} ms). "
        f"Totals: {totals}.",
        "",
        "| wall ms/step | process CPU ms/step | CPU ms/step in ops | CUDA kernel ms/step | GPU busy |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {fmt(s['wall_ms_per_step'])} | {fmt(s['process_cpu_ms_per_step'])} | {fmt(s['op_cpu_ms_per_step'])} | "
        f"{fmt(s.get('cuda_kernel_ms_per_step'))} | {_pct(s.get('gpu_busy_fraction')) or 'n/a (CPU)'} |",
        "",
    ]
    for key, title in (("top_self_cpu", "most self CPU time"), ("top_cuda_kernels", "most CUDA kernel time")):
        if s.get(key):
            lines.append(f"{title}: " + "; ".join(f"{t['name'][:60]} {t['ms']:.1f} ms" for t in s[key][:5]))
    return lines


def smoke_table(smoke: list[dict[str, Any]] | dict[str, Any] | None) -> list[str]:
    lines = ["## CLI smoke (one process, tiny models)", ""]
    if not isinstance(smoke, list):
        return lines + [(smoke or {}).get("skipped") or (smoke or {}).get("error") or "not run"]
    lines += ["| step | exit code | s | last line of output |", "| --- | ---: | ---: | --- |"]
    for r in smoke:
        if "skipped" in r:
            lines.append(f"| {r['step']} | skipped: {r['skipped']} | | |")
            continue
        last = (r["tail"].strip().splitlines() or [""])[-1][:160].replace("|", "/")
        lines.append(f"| {r['step']} | {r['rc']} | {r['s']:.1f} | {last} |")
    return lines


def serve_line(serve: dict[str, Any] | None) -> list[str]:
    if serve is None:
        return []
    if "rows" in serve:
        return ["## Serving", "", f"{len(serve['rows'])} rows: OUT/serve/serve-results.md"]
    return ["## Serving", "", serve.get("skipped") or serve.get("error") or "no rows"]


def markdown(doc: dict[str, Any]) -> str:
    info = doc["info"]
    ceiling = info.get("matmul", {}).get("tflops")
    sections = [
        header(info),
        rows_table(doc["results"], ceiling),
        pairs_table(doc["results"], doc["pairs"]),
        profile_section(doc.get("profile")),
        smoke_table(doc.get("smoke")),
        serve_line(doc.get("serve")),
    ]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"
