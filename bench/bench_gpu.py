"""GPU benchmark: the seed's pipeline against ours, our settings in pairs, a profile, a CLI smoke.

    python bench/bench_gpu.py --out "$OUT"                 # one H100/H200: <= 8 min (--budget-s 480)
    python bench/bench_gpu.py --smoke --out /tmp/gpu-smoke # CPU dry run, tiny models (~1 min on 2 cores)

One run, in this order (most important first); a part that would end after --budget-s (default
480 s) is skipped and recorded as "skipped: budget":

1. Rows (each a Trainer run of --warmup + --steps steps, measured by common.ThroughputProbe):
   Qwen3-0.6B seed vs ours (our defaults, batch 2); cuDNN attention on vs off (the config key
   `cudnn_attention`) at batch 2; liger-kernel on vs off (`use_liger`) at batch 2; the same two
   pairs at batch 16 (and batch 2 vs 16); a ChatGLM3-6B-sized GLM in 4-bit at batch 8 with
   gradient checkpointing on vs off. Every variant is a set of keys given to
   `lora_finetune.config.build_config`, nothing patched; "defaults" means our config's defaults
   (cudnn_attention false, use_liger auto, which is off unless the memory plan needs it,
   label_logits_only true, length-grouped batches), and is the "off" side of the cuDNN and liger
   pairs. liger rows need CUDA and liger-kernel; 4-bit rows need bitsandbytes (on the CPU >= 0.48).
2. A torch.profiler table of the default run (Qwen3-0.6B, batch 2): 3 more steps after its
   measured ones, through a TrainerCallback given to `train(cfg, callbacks=[...])`
   (gpu_profile.py). OUT/prof.txt holds the key_averages tables (by total CPU time, self CPU time,
   self CUDA time); the results hold wall ms per step, the process's CPU ms per step, CPU ms in
   ops, CUDA kernel ms per step and the GPU's busy share. On a CPU: CPU only.
3. A smoke of the CLI verbs (train, chat, generate, eval, merge, export, estimate) in this process
   on tiny models (gpu_smoke.py): exit code, seconds and output tail of each; train on the GPU
   (with liger where installed) then merge on the CPU first, the order that once crashed.
4. The rest of the rows: batch 16 packed, the GLM seed runs (4-bit, bf16), GLM bf16 ours at
   batch 8, Qwen3-0.6B in 4-bit (ours at batch 16, seed).
5. The serving rows of bench_serve.py (1/4/16 clients, with and without dynamic batching) on the
   Qwen3-0.6B folder, with what is left of the budget (--no-serve skips them; OUT/serve/).

Parts can be chosen: --only "b16,glm" (rows whose names contain one of the strings), --no-smoke,
--no-serve; --steps/--warmup set the measured and warm-up steps per row (10 and 3).

Nothing is downloaded (HF_HUB_OFFLINE=1). Models are built from their configs with random weights
(gpu_models.py) and saved once, so both pipelines load them like checkpoints (4-bit quantises on
load). Data: instruction-like samples of 64-512 tokens (a word-level tokenizer over the model's
vocabulary, so text length = token count), the same rows for every run of a model.

Each row measures: real (non-pad) tokens/s, padded tokens/s, step time, peak memory
(torch.cuda.max_memory_allocated over all steps, warm-up included; peak RSS on a CPU), the
largest batch of any training forward (rows x padded length; 1 x row length when packed) and
what `lora_finetune.tools.estimate` predicts for that batch (the peak is set by the longest
step, not the mean one; with the run's quantisation, checkpointing and liger as it used them),
with the estimate's error; and model-FLOPs utilisation: useful FLOPs per second divided by the
bf16 matmul throughput this GPU reaches in the same run (8192^3 products). Useful FLOPs per step:
4 x the decoder's linear parameters per real token (forward plus input gradients; the frozen
base gets no weight gradient; LoRA's own FLOPs are left out) plus attention over each sample's
real length, plus 4 x the output head per position whose next token is learned (every real
position for the seed, which learns the prompt too; the answers for ours). Padding,
recomputation (checkpointing) and 4-bit dequantisation are not useful FLOPs.

Missing optional packages degrade: no bitsandbytes -> 4-bit rows skipped; no liger-kernel -> liger
rows skipped; no datasets -> a stand-in (_datasets_shim.py); no gguf -> the export smoke step
skipped; no matplotlib -> no loss plot. Results (gpu_report.py): OUT/gpu-results.json and
OUT/gpu-results.md (rows, variant pairs, profile, smoke, versions, GPU, date), written after every
row and smoke step, so a cut-off call still returns what it measured.
"""

# No `from __future__ import annotations`: tests/tools/test_estimate.py runs this file without
# registering it in sys.modules, and dataclasses cannot resolve string annotations then.
import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))  # works from a bare checkout too (no pip install)

# Re-exported: shared/gpu/cuda_smoke.py and tests/tools/test_estimate.py read these from here.
from gpu_models import GLM_6B, QWEN3_06B, TINY, TINY_GLM, build_model_folder, log, make_rows  # noqa: E402

__all__ = ["GLM_6B", "QWEN3_06B", "TINY", "build_model_folder", "make_rows"]

QWEN, GLM = "qwen3-0.6b", "glm-6b"
PROFILE_STEPS = 3


@dataclass(frozen=True)
class Run:
    name: str
    model: str
    pipeline: str  # "seed" | "ours"
    precision: str  # "bf16" | "4bit"
    settings: dict[str, Any] = field(default_factory=dict)
    """Our config keys (lora_finetune.config.build_config) on top of the run's base values."""
    profile: bool = False


def ours(name: str, model: str = QWEN, precision: str = "bf16", profile: bool = False, **settings: Any) -> Run:
    return Run(name, model, "ours", precision, settings, profile)


def seed(name: str, model: str = QWEN, precision: str = "bf16") -> Run:
    return Run(name, model, "seed", precision)


DEFAULTS_B2 = "qwen3-0.6b bf16 b2 ours defaults"
DEFAULTS_B16 = "qwen3-0.6b bf16 b16 ours defaults"
# Before the smoke, in this order: what the GPU session is for.
FIRST = [
    seed("qwen3-0.6b bf16 b2 seed"),
    ours(DEFAULTS_B2, profile=True),
    ours("qwen3-0.6b bf16 b2 cudnn-attn on", cudnn_attention=True),
    ours("qwen3-0.6b bf16 b2 liger on", use_liger=True),
    ours(DEFAULTS_B16, batch_size=16),
    ours("qwen3-0.6b bf16 b16 cudnn-attn on", batch_size=16, cudnn_attention=True),
    ours("qwen3-0.6b bf16 b16 liger on", batch_size=16, use_liger=True),
    ours("glm-6b 4bit b8 checkpointing on", GLM, "4bit", batch_size=8, gradient_checkpointing=True),
    ours("glm-6b 4bit b8 checkpointing off", GLM, "4bit", batch_size=8, gradient_checkpointing=False),
]
# After the smoke, as the budget allows.
REST = [
    ours("qwen3-0.6b bf16 b16 packing", batch_size=16, packing=True),
    seed("glm-6b 4bit seed", GLM, "4bit"),
    ours("glm-6b bf16 b8 ours", GLM, batch_size=8),
    seed("glm-6b bf16 seed", GLM),
    ours("qwen3-0.6b 4bit b16 ours", precision="4bit", batch_size=16),
    seed("qwen3-0.6b 4bit seed", precision="4bit"),
]
# (comparison, A, B): the variants table; B / A is the change.
PAIRS = [
    ("seed -> ours (Qwen3-0.6B bf16, batch 2)", "qwen3-0.6b bf16 b2 seed", DEFAULTS_B2),
    ("cuDNN attention off -> on, batch 2", DEFAULTS_B2, "qwen3-0.6b bf16 b2 cudnn-attn on"),
    ("liger off -> on, batch 2", DEFAULTS_B2, "qwen3-0.6b bf16 b2 liger on"),
    ("cuDNN attention off -> on, batch 16", DEFAULTS_B16, "qwen3-0.6b bf16 b16 cudnn-attn on"),
    ("liger off -> on, batch 16", DEFAULTS_B16, "qwen3-0.6b bf16 b16 liger on"),
    ("batch 2 -> 16", DEFAULTS_B2, DEFAULTS_B16),
    ("GLM-6B 4-bit b8: checkpointing on -> off", "glm-6b 4bit b8 checkpointing on", "glm-6b 4bit b8 checkpointing off"),
    ("length-grouped -> packed, batch 16", DEFAULTS_B16, "qwen3-0.6b bf16 b16 packing"),
    ("seed -> ours (GLM-6B 4-bit)", "glm-6b 4bit seed", "glm-6b 4bit b8 checkpointing on"),
    ("seed -> ours (GLM-6B bf16)", "glm-6b bf16 seed", "glm-6b bf16 b8 ours"),
    ("seed -> ours (Qwen3-0.6B 4-bit)", "qwen3-0.6b 4bit seed", "qwen3-0.6b 4bit b16 ours"),
]


@dataclass(frozen=True)
class Costs:
    """Rough seconds, to decide whether a part still fits the budget (the smoke's steps carry
    their own, gpu_smoke.Step.cost_s). `profile`: the profiler's steps and tables on top of the
    default row, whose run it shares."""

    row: dict[str, float]
    build: dict[str, float]
    profile: float


H200 = Costs(row={QWEN: 30, GLM: 75}, build={QWEN: 15, GLM: 60}, profile=10)
CPU_SMOKE = Costs(row={QWEN: 5, GLM: 5}, build={QWEN: 2, GLM: 2}, profile=2)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0 = time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def deadline(self) -> float:
        return self.t0 + self.seconds

    def skip(self, cost: float) -> str | None:
        """'budget (...)' when `cost` more seconds would end past the budget, else None."""
        if self.used() + cost <= self.seconds:
            return None
        return f"budget ({self.used():.0f} of {self.seconds:.0f} s used, ~{cost:.0f} s needed)"


@dataclass
class Job:
    """What every row shares."""

    device: str
    steps: int
    warmup: int
    scratch: Path
    out: Path
    smoke: bool

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(rows, shortest, longest sample in tokens)."""
        return (48, 16, 64) if self.smoke else (600, 64, 512)

    @property
    def max_len(self) -> int:
        return self.data_shape[2] + 16


# --------------------------------------------------------------------------- measuring
def matmul_ceiling(device: str) -> dict:
    """bf16 matrix-product throughput this device reaches now (TFLOP/s; fp32 512^3 on a CPU)."""
    import torch

    n, dtype, reps = (8192, torch.bfloat16, 30) if device == "cuda" else (512, torch.float32, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def timed(k: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(k):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    timed(3)  # warm-up: cuBLAS picks its kernel
    return {"n": n, "dtype": str(dtype), "tflops": 2 * n**3 * reps / timed(reps) / 1e12}


def useful_flops_per_step(shape, mean_len: float, real: float, learned: float) -> float:
    """Useful FLOPs of one LoRA training step (see the module docstring): every real token goes
    through the decoder; the output head is useful only where the next token is learned (all
    real positions for the seed, which learns the prompt too; the answer for ours)."""
    body = 4 * shape.linear_params + 12 * shape.q_dim * shape.num_layers * (mean_len + 1) / 2
    head = 4 * shape.vocab_size * shape.hidden_size
    return real * body + learned * head


def train_seed(run: Run, folder: Path, rows, job: Job, callbacks: list, out_dir: Path) -> dict[str, Any]:
    """The seed's pipeline (seed_pipeline.py) on the same model folder and rows."""
    from seed_pipeline import SeedSettings, build_seed_trainer
    from transformers import AutoTokenizer

    settings = SeedSettings(steps=job.warmup + job.steps, load_in_4bit=run.precision == "4bit")
    trainer = build_seed_trainer(
        str(folder), AutoTokenizer.from_pretrained(folder), rows, settings, out_dir, callbacks=callbacks
    )
    trainer.train()
    return {
        "batch_size": settings.batch_size,
        "pad_to": settings.max_length,
        "targets": "q,k,v,o",
        "precision": "bf16 weights, no autocast" if run.precision == "bf16" else "load_in_4bit (fp4, fp32 compute)",
    }


SHOWN = ("batch_size", "packing", "gradient_checkpointing", "cudnn_attention", "use_liger", "label_logits_only")


def ours_config(run: Run, folder: Path, rows, job: Job, out_dir: Path, total_steps: int):
    """The run's config: our defaults, the bench's data and step count, then the run's settings."""
    from lora_finetune.config import build_config

    data_file = job.scratch / f"rows-{folder.name}.jsonl"
    if not data_file.exists():
        data_file.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return build_config(
        {
            "model_name": str(folder),
            "output_dir": str(out_dir / "ours"),
            "data_path": str(data_file),
            "steps": total_steps,
            "eval_fraction": 0.0,
            "max_length": job.max_len,
            "save_steps": 10**6,
            "logging_steps": 10,
            "quantization": "4bit" if run.precision == "4bit" else "none",
            "dtype": "bf16" if job.cuda else "fp32",
            **run.settings,
        }
    )


def train_ours(cfg, probe, callbacks: list) -> dict[str, Any]:
    """Our `train()`; returns the settings as the run used them (quantisation after any
    fallback, liger, what the memory plan changed)."""
    from lora_finetune.training import train

    used: dict[str, Any] = {k: getattr(cfg, k) for k in SHOWN}
    try:
        res = train(cfg, callbacks=[probe, *callbacks])
    except Exception as e:
        if len(probe.steps) < cfg.steps:
            raise
        # Training itself finished and was measured; saving the run folder failed.
        used["error_after_training"] = f"{type(e).__name__}: {e}"[:300]
        return used
    notes = res.resolved.notes
    used.update(
        quantization=res.resolved.quantization,
        notes=notes,
        liger=any("liger-kernel:" in n for n in notes),
        memory_plan=res.resolved.extra.get("memory_plan", {}).get("used", {}),
    )
    return used


def memory_vs_estimate(folder: Path, cfg, used: dict[str, Any], summary: dict[str, Any], cuda: bool) -> dict:
    """The estimate for the run's largest batch, as the run used quantisation, checkpointing
    (the memory plan may have turned it on) and liger; its error against the measured peak."""
    from lora_finetune.tools.estimate import Setup, estimate_memory, load_shape

    batch = summary.get("max_batch_shape")
    if not batch:
        return {}
    plan = used.get("memory_plan") or {}
    setup = Setup(
        quantization=used.get("quantization", cfg.quantization),
        dtype=cfg.dtype,
        r=cfg.r,
        target_modules=cfg.target_modules,
        batch_size=batch[0],
        max_length=batch[1],
        gradient_checkpointing=bool(plan.get("gradient_checkpointing", cfg.gradient_checkpointing)),
        dropout=cfg.dropout,
        device="cuda" if cuda else "cpu",
        liger=bool(used.get("liger")),
    )
    predicted = estimate_memory(load_shape(str(folder)), setup).peak_allocated
    out: dict[str, Any] = {"estimate_peak_allocated_bytes": predicted, "estimate_setup": setup.describe()}
    if cuda and summary.get("peak_gpu_mem_bytes"):
        out["estimate_error"] = predicted / summary["peak_gpu_mem_bytes"] - 1
    else:
        out["estimate_error_note"] = "n/a (CPU: RSS)"  # process RSS is not what the estimate predicts
    return out


def run_one(run: Run, folder: Path, rows, job: Job, profiler=None) -> dict:
    """One Trainer run measured by ThroughputProbe (and, when given, profiled after its measured
    steps, so the profiler's overhead is not in the row)."""
    import torch
    from common import ThroughputProbe

    from lora_finetune.tools.estimate import load_shape

    if job.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    probe = ThroughputProbe(pad_token_id=1, cuda=job.cuda)
    measured_end = job.warmup + job.steps
    out_dir = Path(tempfile.mkdtemp(dir=job.scratch, prefix="run-"))
    t0 = time.perf_counter()
    cfg = None
    if run.pipeline == "seed":
        used = train_seed(run, folder, rows, job, [probe], out_dir)
    else:
        cfg = ours_config(run, folder, rows, job, out_dir, measured_end + (profiler.count if profiler else 0))
        used = train_ours(cfg, probe, [profiler] if profiler else [])
    gc.collect()
    summary = probe.summary(job.warmup, last=measured_end)
    summary.update(
        {
            "run": run.name,
            "model": run.model,
            "pipeline": run.pipeline,
            "precision": run.precision,
            "settings": used,
            "wall_s": time.perf_counter() - t0,
        }
    )
    if summary.get("measured_steps"):
        lengths = [len(r["instruction"].split()) + len(r["output"].split()) + 4 for r in rows]
        summary["useful_flops_per_step"] = useful_flops_per_step(
            load_shape(str(folder)),
            sum(lengths) / len(lengths),
            summary["real_tokens_per_step"],
            summary["learned_tokens_per_step"],
        )
        if cfg is not None:
            summary.update(memory_vs_estimate(folder, cfg, used, summary, job.cuda))
    return summary


# --------------------------------------------------------------------------- the session
class Bench:
    """One benchmark session: the budget, the built model folders and the results document,
    saved (JSON + markdown) after every row and smoke step."""

    def __init__(self, job: Job, budget: Budget, costs: Costs, info: dict[str, Any]) -> None:
        from lora_finetune.models.loading import quantization_available
        from lora_finetune.training.kernels import liger_usable

        self.job, self.budget, self.costs = job, budget, costs
        self.folders: dict[str, Path] = {}
        self.doc: dict[str, Any] = {"info": info, "results": [], "pairs": PAIRS, "profile": None, "smoke": None}
        ok, why = quantization_available()
        self.no_4bit = None if ok else why
        self.no_liger = liger_usable("qwen3", job.cuda)
        self.dims = {QWEN: ("qwen3", TINY if job.smoke else QWEN3_06B), GLM: ("glm", TINY_GLM if job.smoke else GLM_6B)}

    def save(self) -> None:
        from common import write_json
        from gpu_report import markdown

        write_json(self.job.out / "gpu-results.json", self.doc)
        (self.job.out / "gpu-results.md").write_text(markdown(self.doc), encoding="utf-8")

    def skip_reason(self, run: Run) -> str | None:
        if run.precision == "4bit" and self.no_4bit:
            return f"needs bitsandbytes: {self.no_4bit}"
        if run.settings.get("use_liger") is True and self.no_liger:
            return f"liger-kernel not installed/no CUDA: {self.no_liger}"
        build = 0 if run.model in self.folders else self.costs.build[run.model]
        return self.budget.skip(self.costs.row[run.model] + build + (self.costs.profile if run.profile else 0))

    def folder(self, model: str) -> Path:
        if model not in self.folders:
            kind, dims = self.dims[model]
            self.folders[model] = build_model_folder(model, kind, dims, self.job.scratch, self.job.device)
        return self.folders[model]

    def row(self, run: Run) -> None:
        from gpu_profile import ProfileSteps

        why = self.skip_reason(run)
        profiler = ProfileSteps(self.job.warmup + self.job.steps, PROFILE_STEPS, self.job.cuda) if run.profile else None
        if why:
            r: dict[str, Any] = {**self._ids(run), "skipped": why}
        else:
            r = self._measure(run, profiler)
        self.doc["results"].append(r)
        if run.profile:
            self.doc["profile"] = self._profile_record(run, r, profiler, why)
        self.save()

    @staticmethod
    def _ids(run: Run) -> dict[str, Any]:
        return {"run": run.name, "model": run.model, "pipeline": run.pipeline, "precision": run.precision}

    def _measure(self, run: Run, profiler) -> dict[str, Any]:
        import torch

        n, lo, hi = self.job.data_shape
        try:
            folder = self.folder(run.model)
            log(f"{run.name} ...")
            r = run_one(run, folder, make_rows(n, self.dims[run.model][1]["vocab_size"], lo, hi), self.job, profiler)
            log(f"{run.name}: {r.get('real_tokens_per_s') or 0:.0f} real tok/s, step {r.get('step_time_s') or 0:.3f} s")
        except Exception as e:  # one failed run must not lose the others
            r = {
                **self._ids(run),
                "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
                "traceback": traceback.format_exc()[-3000:],
            }
            log(f"{run.name} failed: {r['error']}")
        finally:
            gc.collect()
            if self.job.cuda:
                torch.cuda.empty_cache()
        return r

    def _profile_record(self, run: Run, row: dict[str, Any], profiler, skipped: str | None) -> dict[str, Any]:
        """OUT/prof.txt and the profile's totals for the results."""
        rec: dict[str, Any] = {"run": run.name}
        if skipped or "error" in row:
            return {**rec, "skipped": skipped or "the run failed"}
        if profiler.text:
            (self.job.out / "prof.txt").write_text(f"{run.name}: {profiler.text}", encoding="utf-8")
        if profiler.summary:
            rec["summary"] = row["profile"] = profiler.summary
            rec["unprofiled_step_ms"] = 1000 * row["step_time_s"] if row.get("step_time_s") else None
        return {**rec, "error": profiler.error} if profiler.error else rec

    def smoke(self) -> None:
        from gpu_smoke import run_smoke

        def on_step(results: list[dict[str, Any]]) -> None:
            self.doc["smoke"] = results
            self.save()

        log("CLI smoke ...")
        try:
            run_smoke(self.job.scratch / "smoke", self.job.device, self.no_liger is None, self.budget.deadline, on_step)
        except Exception as e:  # set-up failed (building the tiny models): no step ran
            self.doc["smoke"] = {"error": f"{type(e).__name__}: {e}"[:300], "traceback": traceback.format_exc()[-3000:]}
            self.save()


def serve_rows(a: argparse.Namespace, folder: Path | None, device: str, budget: Budget) -> dict:
    """bench_serve.py's rows (1/4/16 clients, with and without dynamic batching) on the qwen3-0.6b
    folder, in its own process, within what is left of the time budget. Results also land in
    OUT/serve/serve-results.{json,md}."""
    import subprocess

    left = budget.seconds - budget.used()
    if folder is None or left < 120:
        return {"skipped": "no qwen3-0.6b folder" if folder is None else f"budget ({left:.0f} s left)"}
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


# --------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "gpu")
    ap.add_argument("--smoke", action="store_true", help="CPU dry run: tiny models, 3 steps per row")
    ap.add_argument("--budget-s", type=float, default=480, help="skip parts that would end after this (default 480)")
    ap.add_argument("--steps", type=int, default=10, help="measured steps per row")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated substrings of row names")
    ap.add_argument("--scratch", type=Path, default=None, help="where models and runs are saved")
    ap.add_argument(
        "--no-datasets", action="store_true", help="use the datasets stand-in even if datasets is installed (testing)"
    )
    ap.add_argument("--no-smoke", action="store_true", help="skip the CLI smoke")
    ap.add_argument("--no-serve", action="store_true", help="skip the serving rows (bench_serve.py) at the end")
    return ap.parse_args()


def degrade(a: argparse.Namespace) -> list[str]:
    """Stand-ins for missing optional packages, before transformers is imported; what was done."""
    import _datasets_shim

    notes = []
    if _datasets_shim.install(force=a.no_datasets):
        notes.append("datasets missing: bench/_datasets_shim.py stands in")
    if importlib.util.find_spec("matplotlib") is None:
        import lora_finetune.training.run as lt

        lt.plot_losses = lambda *a, **k: None  # the loss plot is the only use of matplotlib
        notes.append("matplotlib missing: no loss plots")
    return notes


def main() -> int:
    a = parse_args()
    budget = Budget(a.budget_s)
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"  # nothing reaches the network
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    degraded = degrade(a)
    import torch
    from common import run_info

    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    if device == "cpu" and not a.smoke:
        log("no CUDA GPU: running the smoke configuration instead (use --smoke to silence this)")
        a.smoke = True
    if a.smoke:
        a.steps, a.warmup = min(a.steps, 2), min(a.warmup, 1)
    a.out.mkdir(parents=True, exist_ok=True)
    scratch = a.scratch or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    job = Job(device=device, steps=a.steps, warmup=a.warmup, scratch=scratch, out=a.out, smoke=a.smoke)
    info = {**run_info(), "smoke": a.smoke, "budget_s": a.budget_s, "degraded": degraded, "scratch": str(scratch)}
    bench = Bench(job, budget, CPU_SMOKE if a.smoke else H200, info)
    info["matmul"] = matmul_ceiling(device)
    log(f"matmul ceiling: {info['matmul']['tflops']:.1f} TFLOP/s ({info['matmul']['dtype']})")
    bench.save()

    def selected(runs: list[Run]) -> list[Run]:
        return [r for r in runs if not a.only or any(s.strip() in r.name for s in a.only.split(","))]

    for run in selected(FIRST):
        bench.row(run)
    if not a.no_smoke:
        bench.smoke()
    for run in selected(REST):
        bench.row(run)
    if not a.no_serve:
        bench.doc["serve"] = serve_rows(a, bench.folders.get(QWEN), device, budget)
    info["total_s"] = budget.used()
    bench.save()
    print((a.out / "gpu-results.md").read_text())
    print(f"(results: {a.out}/gpu-results.json, .md; profile: {a.out}/prof.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
