"""Smoke of the CLI verbs in one process, on tiny random models (part of bench_gpu.py).

Each step runs the real CLI in this process (`lora_finetune.cli.main(argv)`, stdout and stderr
captured) and records its exit code, seconds and the tail of what it printed; a failed step does
not stop the others (steps that need its output are skipped, naming it). One process on purpose:
on an H200 `train` on CUDA (with liger-kernel) followed by `merge` on the CPU in the same process
crashed, because liger's patches outlived the run. So the first two steps are exactly that order:
a train with `--use_liger true` where CUDA and liger-kernel exist, then `merge` with its default
device (cpu).

Steps: train (bf16 on a GPU, fp32 on a CPU), merge on the CPU, train fp16 (GPU only), 4-bit,
8-bit, a GLM in 4-bit, packing; an interrupted 4-bit run (a TrainerCallback raises once the first
checkpoint is saved, through `lora_finetune.training.train(cfg, callbacks=[...])`) then
`train ... --resume auto`; `chat` with piped stdin; `generate`; `eval --loss-only` and with
generation; `merge --device cuda` (GPU only); `export --format gguf` (needs the `gguf` package);
`estimate`. Models: Qwen3 and GLM with 2 layers and a small byte-level BPE tokenizer (GGUF export
accepts byte-level BPE only); 6 steps of max_length 128.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_models import TINY, TINY_GLM, build_model_folder, byte_level_tokenizer, log, make_rows

STEPS, SAVE_STEPS, MAX_LENGTH = 6, 3, 128
TAIL_CHARS = 3000


@dataclass
class Step:
    name: str
    action: Callable[[], int]
    cost_s: float = 5.0
    """Rough seconds on an H200, for the time budget."""
    needs: list[str] = field(default_factory=list)
    """Steps whose output this one uses: skipped unless they exited 0."""
    unless: str | None = None
    """Why this step cannot run here (None: it can)."""


@dataclass
class Smoke:
    """What the steps share: device, folders, the tiny models and data files."""

    work: Path
    cuda: bool
    liger: bool
    threads: int
    qwen: Path = Path()
    glm: Path = Path()
    data: Path = Path()
    few: Path = Path()

    def argv(self, line: str) -> list[str]:
        """`line` split on spaces, then each part formatted with the set-up's paths ({work},
        {qwen}, {glm}, {data}, {few}), so a path with spaces stays one argument."""
        paths = {"work": self.work, "qwen": self.qwen, "glm": self.glm, "data": self.data, "few": self.few}
        return [part.format(**{k: str(v) for k, v in paths.items()}) for part in line.split()]

    def cli(self, line: str) -> Callable[[], int]:
        # --threads: the CLI otherwise sets torch's thread count per call, for the whole process.
        argv = ["--threads", str(self.threads), *self.argv(line)]
        return lambda: cli_main(argv)

    def train_line(self, out: str, extra: str = "", model: str = "{qwen}", fresh: bool = True) -> str:
        """`train` of STEPS tiny steps, a checkpoint and an evaluation every SAVE_STEPS, into {work}/out."""
        return (
            f"train --model_name {model} --data_path {{data}} --output_dir {{work}}/{out} --steps {STEPS} "
            f"--save_steps {SAVE_STEPS} --eval_steps {SAVE_STEPS} --logging_steps 2 --max_length {MAX_LENGTH} "
            + ("--overwrite " if fresh else "")
            + extra
        )

    def train(self, out: str, extra: str = "", model: str = "{qwen}", fresh: bool = True) -> Callable[[], int]:
        return self.cli(self.train_line(out, extra, model, fresh))


def cli_main(argv: list[str]) -> int:
    from lora_finetune.cli import main

    return main(argv)


# --------------------------------------------------------------------------- set-up
def prepare(smoke: Smoke, device: str) -> None:
    """Tiny Qwen3 and GLM models sharing one byte-level BPE tokenizer, and the data files."""
    rows = make_rows(64, 300, 16, 28)  # words w2..w299: the BPE learns most as one token
    texts = [r["instruction"] + r["output"] for r in rows]
    tok = byte_level_tokenizer(texts)
    smoke.qwen = build_model_folder("smoke-qwen3", "qwen3", {**TINY, "vocab_size": len(tok)}, smoke.work, device, tok)
    smoke.glm = build_model_folder("smoke-glm", "glm", {**TINY_GLM, "vocab_size": len(tok)}, smoke.work, device, tok)
    smoke.data = smoke.work / "train.jsonl"
    smoke.data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    smoke.few = smoke.work / "few.jsonl"
    smoke.few.write_text("\n".join(json.dumps(r) for r in rows[:6]), encoding="utf-8")


class _StopAfterSave(Exception):
    pass


def interrupted_run(smoke: Smoke, out: str, extra: str) -> Callable[[], int]:
    """`train` (the smoke's `train_line` settings) through `lora_finetune.training.train` with a
    callback that raises right after the first checkpoint is saved, as a crash would; 0 when it
    died there and left a complete checkpoint for `--resume auto`."""

    def run() -> int:
        from transformers import TrainerCallback

        from lora_finetune.config import build_config, parse_overrides
        from lora_finetune.training import train

        class Die(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                raise _StopAfterSave

        values = parse_overrides(smoke.argv(smoke.train_line(out, extra))[1:])  # without the verb
        try:
            train(build_config(values), callbacks=[Die()])
        except _StopAfterSave:
            checkpoints = sorted((smoke.work / f".{out}.partial" / "checkpoints").glob("checkpoint-*/COMPLETE"))
            print(f"stopped after the first save; complete checkpoints: {[c.parent.name for c in checkpoints]}")
            return 0 if checkpoints else 1
        print("the run finished without saving a checkpoint")
        return 1

    return run


def steps(s: Smoke) -> list[Step]:
    """The smoke's steps, most important first (the budget may cut the tail)."""
    gpu_only = None if s.cuda else "needs a CUDA GPU"
    no_gguf = None if importlib.util.find_spec("gguf") else "the gguf package is not installed"
    main = ("train bf16 --use_liger true" if s.liger else "train bf16") if s.cuda else "train fp32 (CPU)"
    q4, interrupted = "--quantization 4bit --dropout 0.1", "train 4bit, interrupted after the first checkpoint"
    chat = s.cli("chat --adapter {work}/q4 --max_new_tokens 8")
    generate = "generate --adapter {work}/q4 --input {few} --output {work}/pred.jsonl --batch_size 4 --max_new_tokens 8"
    estimate = f"estimate --model {{qwen}} --quantization 4bit --batch_size 8 --max_length {MAX_LENGTH}"
    return [
        Step(main, s.train("main", "--use_liger true" if s.liger else ""), cost_s=8),
        Step(
            "merge (default device: cpu)", s.cli("merge --adapter {work}/main --output {work}/merged-cpu"), needs=[main]
        ),
        Step("train fp16", s.train("fp16", "--dtype fp16"), cost_s=8, unless=gpu_only),
        Step("train 4bit", s.train("q4", q4), cost_s=8),
        Step("train 8bit", s.train("q8", "--quantization 8bit"), cost_s=8),
        Step("train glm 4bit", s.train("glm4", "--quantization 4bit", model="{glm}"), cost_s=8),
        Step("train packing (batch 8)", s.train("pack", "--batch_size 8 --packing true"), cost_s=8),
        Step(interrupted, interrupted_run(s, "resumed", q4), cost_s=8),
        Step("train --resume auto", s.train("resumed", q4 + " --resume auto", fresh=False), needs=[interrupted]),
        Step("chat 4bit (piped stdin)", _with_stdin("w5 w6 w7\n/exit\n", chat), needs=["train 4bit"]),
        Step("generate 4bit", s.cli(generate), needs=["train 4bit"]),
        Step("eval --loss-only", s.cli("eval --adapter {work}/main --data {few} --loss-only"), needs=[main]),
        Step(
            "eval 4bit with generation",
            s.cli("eval --adapter {work}/q4 --data {few} --max_new_tokens 8"),
            needs=["train 4bit"],
        ),
        Step(
            "merge 4bit -> bf16 --device cuda",
            s.cli("merge --adapter {work}/q4 --output {work}/merged-cuda --dtype bf16 --device cuda"),
            needs=["train 4bit"],
            unless=gpu_only,
        ),
        Step(
            "export --format gguf",
            s.cli("export --adapter {work}/main --output {work}/gguf --format gguf"),
            needs=[main],
            unless=no_gguf,
        ),
        Step("estimate", s.cli(estimate), cost_s=2),
    ]


# --------------------------------------------------------------------------- running a step
def _with_stdin(text: str, action: Callable[[], int]) -> Callable[[], int]:
    def run() -> int:
        old, sys.stdin = sys.stdin, io.StringIO(text)
        try:
            return action()
        finally:
            sys.stdin = old

    return run


@contextlib.contextmanager
def _logging_kept():
    """The CLI points the `lora_finetune` logger at the sys.stderr of its call (here a buffer);
    put back what the rest of the benchmark logs through."""
    logger = logging.getLogger("lora_finetune")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _crash_log(text: str) -> str:
    """The traceback file the CLI names after an unexpected error, to keep with the step."""
    m = re.search(r"The full traceback is in (\S+?);", text)
    if not m or not Path(m.group(1)).is_file():
        return ""
    return "\n--- " + m.group(1) + " ---\n" + Path(m.group(1)).read_text(encoding="utf-8", errors="replace")


def run_step(step: Step) -> dict[str, Any]:
    buf = io.StringIO()
    t = time.perf_counter()
    with _logging_kept(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = step.action()
        except SystemExit as e:  # argparse errors
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # a smoke records everything and goes on
            buf.write(traceback.format_exc())
            rc = -1
    text = buf.getvalue()
    if rc == 1:
        text += _crash_log(text)
    return {"step": step.name, "rc": rc, "s": round(time.perf_counter() - t, 2), "tail": text[-TAIL_CHARS:]}


def skip_reason(step: Step, done: dict[str, dict[str, Any]], deadline: float) -> str | None:
    if step.unless:
        return step.unless
    for need in step.needs:
        prior = done.get(need, {})
        if prior.get("rc") != 0:
            why = prior.get("skipped") or f"exit code {prior.get('rc')}"
            return f"needs '{need}' ({why})"
    if time.perf_counter() + step.cost_s > deadline:
        return "budget"
    return None


def _free_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def run_smoke(
    work: Path, device: str, liger: bool, deadline: float, on_step: Callable[[list[dict[str, Any]]], None]
) -> list[dict[str, Any]]:
    """Run every step that fits before `deadline` (time.perf_counter()); `on_step(results)` after
    each one, so a cut-off run keeps what it did."""
    import torch

    smoke = Smoke(work=work, cuda=device == "cuda", liger=liger, threads=torch.get_num_threads())
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    prepare(smoke, device)
    done: dict[str, dict[str, Any]] = {}
    for step in steps(smoke):
        why = skip_reason(step, done, deadline)
        r = {"step": step.name, "skipped": why} if why else run_step(step)
        done[step.name] = r
        results.append(r)
        log(f"smoke: {step.name}: " + (f"skipped: {why}" if why else f"rc={r['rc']} in {r['s']:.1f} s"))
        on_step(results)
        _free_memory(smoke.cuda)
    return results
