"""What the page's buttons do, without Gradio: each one is a call to the package functions the
CLI uses (data readers and templates for the data check, `tools.estimate`, `use.ChatSession`,
`use.evaluate`, `use.merge`, `export.export_model`), with every path from the page confined to
the workdir first. Training goes through `jobs.py` (a `lora-finetune train` process).

Errors are the package's `LoraFinetuneError`s, unchanged; app.py shows them on the page.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import LoRAFinetuneConfig
from ..errors import ConfigError, ModelError
from ..folders import is_complete
from .jobs import Job, JobManager
from .paths import Workdir

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
BASE_PREFIX = "base:"
ADAPTER_PREFIX = "adapter:"

TRAIN_FIELDS = (
    "method",
    "steps",
    "learning_rate",
    "batch_size",
    "r",
    "alpha",
    "max_length",
    "eval_fraction",
    "template",
    "quantization",
    "dtype",
    "gradient_checkpointing",
)
"""The settings shown up front; MORE_FIELDS sit in a closed accordion."""
MORE_FIELDS = (
    "beta",
    "dropout",
    "data_format",
    "system_prompt",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "warmup_ratio",
    "lr_scheduler_type",
    "gradient_accumulation_steps",
    "seed",
)
ESTIMATE_FIELDS = ("batch_size", "max_length", "r", "quantization", "dtype", "gradient_checkpointing")


@dataclass
class DataPreview:
    stats: str
    samples: list[tuple[str, str | None]]
    """The first records rendered by the template: (text, "learned" | None) pieces."""


class WebUI:
    """The state of one `lora-finetune webui` server: its workdir, its training runs and the
    models loaded for chat (at most `max_models`, the least recently used is dropped)."""

    def __init__(self, workdir: Workdir, max_models: int = 2) -> None:
        self.wd = workdir
        self.jobs = JobManager(workdir.state)
        self.max_models = max_models
        self._models: OrderedDict[tuple[str, bool], tuple[Any, threading.Lock]] = OrderedDict()
        self._models_lock = threading.Lock()
        self._shapes: dict[str, Any] = {}
        # accelerate's init_empty_weights (the estimate's weightless model) patches torch.nn.Module
        # for every thread while it runs, and two overlapping uses can leave it patched: a model
        # built meanwhile gets meta tensors. So weightless and real model builds take turns.
        self._build_lock = threading.RLock()

    # ------------------------------------------------------------------ names from the page
    def model_name(self, text: str) -> str:
        """A bundled name or hub id as given; anything path-like must be a folder in the workdir."""
        from ..models import BUNDLED_ALIASES
        from ..models.loading import looks_like_path

        name = str(text or "").strip()
        if not name:
            raise ConfigError("The base model is empty. Give smollm2-135m-instruct, a hub id, or a model folder.")
        if name.lower() in BUNDLED_ALIASES:
            return name
        if looks_like_path(name) or (self.wd.root / name).exists() or Path(name).is_absolute():
            return str(self.wd.resolve(name, "model folder"))
        return name  # a hub id (org/name): read from the Hugging Face cache or hub, as in the CLI

    def data_path(self, text: str | None) -> Path | None:
        if not str(text or "").strip():
            return None
        path = self.wd.resolve(str(text), "data file")
        if not path.is_file():
            raise ConfigError(
                f"The data file {text!r} is a folder, not a file. Pick a .jsonl/.json/.csv/.parquet file."
            )
        return path

    def adapter(self, text: str) -> Path:
        if not str(text or "").strip():
            raise ConfigError("No adapter chosen. Train one first (Train tab), or press Refresh list.")
        path = self.wd.resolve(text, "adapter folder")
        if not path.is_dir():
            raise ConfigError(f"{text!r} is not an adapter folder. Choose a finished run from the list.")
        return path

    # ------------------------------------------------------------------ lists for dropdowns
    def adapters(self) -> list[str]:
        """Finished runs under outputs/ (a run still training is not a folder yet)."""
        if not self.wd.outputs.is_dir():
            return []
        found = [p for p in self.wd.outputs.iterdir() if p.is_dir() and not p.name.startswith(".") and is_complete(p)]
        return sorted(self.wd.relative(p) for p in found)

    def data_files(self) -> list[str]:
        return self.wd.listing(self.wd.data, DATA_SUFFIXES)

    def model_choices(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for a in self.adapters():
            name = Path(a).name
            out += [(name, ADAPTER_PREFIX + a), (f"{name}: base model", BASE_PREFIX + a)]
        return out

    # ------------------------------------------------------------------ train
    def train_values(
        self,
        name: str,
        model: str,
        data: str | None,
        settings: dict[str, Any],
        trust_remote_code: bool = False,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        values = {k: v for k, v in settings.items() if v is not None and v != ""}
        values.update(
            model_name=self.model_name(model),
            output_dir=str(self.wd.output(name)),
            trust_remote_code=bool(trust_remote_code),
            overwrite=bool(overwrite),
        )
        data_path = self.data_path(data)
        if data_path is not None:
            values["data_path"] = str(data_path)
        for key in ("steps", "batch_size", "r", "alpha", "max_length", "logging_steps", "eval_steps", "save_steps"):
            if isinstance(values.get(key), float) and values[key].is_integer():
                values[key] = int(values[key])
        for key in ("seed", "gradient_accumulation_steps"):
            if isinstance(values.get(key), float) and values[key].is_integer():
                values[key] = int(values[key])
        return values

    def start(self, name: str, model: str, data: str | None, settings: dict[str, Any], **kw: Any) -> Job:
        name = self.wd.name(name, "run name")
        return self.jobs.start(name, self.train_values(name, model, data, settings, **kw), resume=False)

    def resume(self, name: str, model: str, data: str | None, settings: dict[str, Any], **kw: Any) -> Job:
        name = self.wd.name(name, "run name")
        kw["overwrite"] = False
        return self.jobs.start(name, self.train_values(name, model, data, settings, **kw), resume=True)

    def stop(self, name: str) -> Job:
        return self.jobs.stop(self.wd.name(name, "run name"))

    def data_preview(
        self,
        model: str,
        data: str | None,
        template: str = "auto",
        system_prompt: str | None = None,
        max_length: int = 768,
        data_format: str = "auto",
        trust_remote_code: bool = False,
        n: int = 3,
        method: str = "sft",
    ) -> DataPreview:
        """What training will see: the records read as training reads them, encoded by the
        template training would use, with the tokens it learns marked (a preference pair shows
        its chosen and its rejected answer)."""
        from ..choices import DATA_KINDS, METHOD_KIND
        from ..data import KIND_NAMES, demo_rows, load_records, record_kind, records_from_rows
        from ..models import load_tokenizer, read_model_config, resolve_model, template_for, template_name_for
        from ..templates import encode_kind
        from ..tools.datacheck import render_samples

        data_path = self.data_path(data)
        kind = METHOD_KIND.get(method or "sft", "instruction")
        records = (
            records_from_rows(demo_rows(kind), source="the demo data", kinds=(kind,))
            if data_path is None
            else load_records(data_path, data_format, kinds=DATA_KINDS)
        )
        kind = record_kind(records[0])
        path = resolve_model(self.model_name(model))
        model_type = getattr(read_model_config(path, trust_remote_code), "model_type", None)
        tokenizer = load_tokenizer(path, trust_remote_code)
        name = template_name_for(template or "auto", tokenizer, model_type)
        tpl = template_for(name, tokenizer, model_type, system_prompt or None)
        _, stats = encode_kind(kind, records, tokenizer, tpl, int(max_length))
        where = self.wd.relative(data_path) if data_path else f"the demo data ({KIND_NAMES[kind]})"
        methods = " / ".join(m for m, k in METHOD_KIND.items() if k == kind)
        text = (
            f"{where}: {len(records)} records of {KIND_NAMES[kind]} (method {methods}), template `{name}`\n"
            f"{stats.summary(int(max_length))}"
        )
        pieces: list[tuple[str, str | None]] = []
        rendered, titles = render_samples(records[:n], tpl)
        for title, segments in zip(titles, rendered):
            pieces.append((f"── {title} ──\n", None))
            pieces += [(seg_text, "learned" if learn else None) for seg_text, learn in segments]
            pieces.append(("\n\n", None))
        return DataPreview(text, pieces)

    def estimate(self, model: str, settings: dict[str, Any], trust_remote_code: bool = False) -> str:
        """`lora-finetune estimate` for the settings on the page (GPU memory)."""
        from ..tools.estimate import GiB, Setup, estimate_memory, format_estimate, load_shape

        name = self.model_name(model)
        with self._build_lock:
            if name not in self._shapes:
                self._shapes[name] = load_shape(name, trust_remote_code=trust_remote_code)
        dtype = settings.get("dtype") or "auto"
        setup = Setup(
            quantization=settings.get("quantization") or "none",
            dtype="bf16" if dtype == "auto" else str(dtype),
            r=int(settings.get("r") or 8),
            batch_size=int(settings.get("batch_size") or 1),
            max_length=int(settings.get("max_length") or 768),
            gradient_checkpointing=bool(settings.get("gradient_checkpointing")),
        )
        est = estimate_memory(self._shapes[name], setup)
        return f"≈ {est.total / GiB:.2f} GiB GPU memory ({setup.describe()})\n" + format_estimate(est)

    # ------------------------------------------------------------------ chat
    def load(self, choice: str) -> tuple[Any, threading.Lock]:
        """A loaded model for a dropdown value (`adapter:outputs/x` or `base:outputs/x`)."""
        from ..use import load_for_inference

        base_only = choice.startswith(BASE_PREFIX)
        rel = choice.split(":", 1)[1] if ":" in choice else choice
        folder = self.adapter(rel)
        key = (str(folder), base_only)
        with self._models_lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            while len(self._models) >= self.max_models:
                self._models.popitem(last=False)
            with self._build_lock:
                im = load_for_inference(folder, base_only=base_only)
            self._models[key] = (im, threading.Lock())
            return self._models[key]

    def chat(
        self, choice: str, history: list[dict[str, Any]], message: str, settings: Any, system: str | None = None
    ) -> Iterator[str]:
        """Stream the answer to `message` after `history` (Gradio's messages), as text so far."""
        from ..use.chat import ChatSession

        if not str(message or "").strip():
            raise ConfigError("The message is empty: type something to send.")
        settings.check()
        im, lock = self.load(choice)
        past = [{"role": m["role"], "content": _text(m.get("content")), "input": ""} for m in history]
        session = ChatSession(im, settings, system=system or None, history=past)
        pieces: queue.Queue[str | None] = queue.Queue()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                with lock:
                    result["reply"] = session.send(message, on_text=pieces.put)
            except BaseException as e:  # handed to the page's thread below
                result["error"] = e
            finally:
                pieces.put(None)

        threading.Thread(target=work, daemon=True).start()
        text = ""
        while (piece := pieces.get()) is not None:
            text += piece
            yield text
        if "error" in result:
            raise result["error"]
        yield result["reply"].text

    # ------------------------------------------------------------------ evaluate
    def evaluate(
        self,
        adapter: str,
        data: str,
        max_samples: int | None = None,
        compare_base: bool = False,
        loss_only: bool = False,
        max_new_tokens: int = 128,
        worst: int = 5,
    ) -> tuple[list[list[Any]], list[list[Any]], Path]:
        """`lora-finetune eval`: (metrics rows, the worst samples with a header row, report path).
        A file of preference pairs is scored instead (use/pair_eval.py); its worst are the pairs
        whose chosen answer the model prefers least."""
        from ..data import record_kind
        from ..use import evaluate, evaluate_pairs
        from ..use.files import read_prompt_records

        folder = self.adapter(adapter)
        data_path = self.data_path(data)
        if data_path is None:
            raise ConfigError("Choose the evaluation data: a file with reference answers in the workdir.")
        _, records = read_prompt_records(data_path, kinds=("instruction", "preference"))
        pairs = bool(records) and record_kind(records[0]) == "preference"
        report = self.wd.state / "eval" / f"{folder.name}-{data_path.stem}.json"
        im, lock = self.load(ADAPTER_PREFIX + self.wd.relative(folder))
        with lock:
            if pairs:
                res = evaluate_pairs(folder, data_path, records, im=im, max_samples=max_samples or None,
                                     compare_base=compare_base, report_path=report)  # fmt: skip
            else:
                res = evaluate(
                    folder,
                    data_path,
                    im=im,
                    max_samples=max_samples or None,
                    compare_base=compare_base,
                    generation=not loss_only,
                    max_new_tokens=int(max_new_tokens),
                    report_path=report,
                )
        metrics = res.report["metrics"]
        cols = list(metrics)
        keys = sorted({k for m in metrics.values() for k in m})
        rows = [[k, *[metrics[c].get(k) for c in cols]] for k in keys]
        return [["metric", *cols], *rows], _worst(res.report, pairs, worst), res.report_path

    def benchmark(
        self,
        adapter: str,
        tasks: str,
        limit: float | None = None,
        num_fewshot: int | None = None,
        compare_base: bool = False,
    ) -> tuple[list[list[str]], str]:
        """`lora-finetune benchmark`: (the comparison table with a header row, where the report
        is, relative to the workdir, or why it could not be written). Settings, tasks and their
        data are checked before the model is taken."""
        from ..use import benchmark as bench

        bench.require_harness()
        folder = self.adapter(adapter)
        settings = bench.BenchmarkSettings(
            tasks=[t for t in str(tasks or "").split(",")],
            limit=limit or None,
            num_fewshot=num_fewshot,
            compare_base=compare_base,
        )
        settings.check()
        manager = bench.task_manager()
        bench.check_task_names(manager, settings.tasks)
        loaded = bench.load_tasks(manager, settings.tasks)
        report = self.wd.state / "bench" / f"{folder.name}.json"
        im, lock = self.load(ADAPTER_PREFIX + self.wd.relative(folder))
        with lock:
            res = bench.benchmark(folder, settings, im=im, loaded=loaded, report_path=report)
        where = self.wd.relative(res.report_path) if res.report_path else f"not written: {res.report_error}"
        return bench.table(res.rows), where

    # ------------------------------------------------------------------ export
    def export(self, adapter: str, kind: str, name: str, outtype: str = "f16", overwrite: bool = False) -> str:
        """`lora-finetune merge` or `lora-finetune export --format KIND` into exports/NAME."""
        folder = self.adapter(adapter)
        out = self.wd.export_dir(name)
        if kind == "merge":
            from ..use import merge

            with self._build_lock:
                res = merge(folder, out, overwrite=overwrite)
            lines = [f"Merged {self.wd.relative(folder)} into {res.base_model} -> {out} ({res.dtype})"]
            lines += [f"Note: {n}" for n in res.notes]
        else:
            from ..export import export_model

            with self._build_lock:
                exp = export_model(folder, out, format=kind, outtype=outtype, overwrite=overwrite)
            lines = [f"Wrote {exp.format} ({exp.outtype}, {exp.architecture}) to {out}:"]
            lines += [f"  {f}" for f in exp.files]
            lines += [f"Note: {n}" for n in exp.notes]
            if exp.ollama_command:
                lines.append(f"Ollama: {exp.ollama_command}")
        if not out.is_dir():
            raise ModelError(f"The export finished but {out} is missing; see the server log.")
        return "\n".join(lines)


def _worst(report: dict[str, Any], pairs: bool, n: int) -> list[list[Any]]:
    """A header row, then the `n` samples the model did worst on: lowest ROUGE-L, or for pairs
    the smallest (most negative) margin of the chosen answer over the rejected one."""
    if pairs:
        rows = [
            [p["prompt"], p["chosen"], p["rejected"], round(p["chosen_logprob"] - p["rejected_logprob"], 4)]
            for p in report["pairs"]
        ]
        rows.sort(key=lambda r: r[3])
        return [["prompt", "chosen", "rejected", "margin"], *rows[:n]]
    preds = [p for p in report["predictions"] if "scores" in p]
    preds.sort(key=lambda p: p["scores"].get("rouge-l", 0.0))
    rows = [[p["question"], p["reference"], p["prediction"], p["scores"].get("rouge-l")] for p in preds[:n]]
    return [["question", "reference", "prediction", "rouge-l"], *rows]


def _text(content: Any) -> str:
    """Gradio message content: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content or "")


def default_settings() -> dict[str, Any]:
    cfg = LoRAFinetuneConfig()
    return {k: getattr(cfg, k) for k in (*TRAIN_FIELDS, *MORE_FIELDS)}


__all__ = ["DataPreview", "MORE_FIELDS", "TRAIN_FIELDS", "WebUI", "default_settings"]
