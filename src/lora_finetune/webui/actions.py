"""What the page's buttons do, without Gradio: each one is a call to the package functions the
CLI uses (data readers and templates for the data check, `tools.estimate`, `use.ChatSession`,
`use.evaluate`, `use.merge`, `export.export_model`), with every path from the page confined to
the workdir first. Training goes through `jobs.py` (a `lora-finetune train` process).

Errors are the package's `LoraFinetuneError`s, unchanged (the web UI's own carry a Chinese text
too, i18n.bilingual); app.py shows them on the page. Texts for the page take `lang` (i18n.LANGS).

The memory estimate is for the device a run started now trains on (the training process sees the
same devices as this server): GPU memory on CUDA; on a CPU the resident memory (RSS) the run's
memory planning counts (training/planning.py), against the RAM available.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import LoRAFinetuneConfig
from ..errors import ConfigError, ModelError
from ..folders import is_complete
from .i18n import ANSWERS_ZH, DATA_KINDS_ZH, ZH, bilingual, estimate_row, t
from .jobs import Job, JobManager
from .paths import Workdir

if TYPE_CHECKING:
    from ..tools.estimate import Estimate

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
ESTIMATE_FIELDS = (
    "method",
    "batch_size",
    "max_length",
    "r",
    "quantization",
    "dtype",
    "gradient_checkpointing",
    "dropout",
)
"""The settings the memory estimate depends on (it follows them live)."""


@dataclass
class MemoryEstimate:
    """The memory panel's numbers: the peak of a run's training step on the device it will use."""

    device: str
    """`cuda` or `cpu` (`training_device`)."""
    estimate: Estimate
    sequences_per_sample: int = 1
    """A preference pair (or KTO's answer and its KL partner) puts two sequences through the model."""
    rss_factor: float = 1.0
    """CPU: the allocator's factor on activations and logits the run's planning applies (`run_rss_factor`)."""
    available: float | None = None
    """Bytes free now: the GPU's free memory, or the RAM available (MemAvailable); None: unknown."""
    device_name: str = ""

    @property
    def needed(self) -> float:
        """What the run's memory planning compares with the free memory (training/planning.py)."""
        e = self.estimate
        return e.total + (self.rss_factor - 1) * (e.activations + e.logits)


def training_device() -> str:
    """Where a run started from the page trains: `cuda` when torch sees a GPU, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_rss_factor(env: dict[str, str] | None = None) -> float:
    """The allocator factor a CPU run started from the page plans with (allocator.rss_factor in
    the training process): 1 under tcmalloc, which `lora-finetune train` preloads where installed
    (cli.preload_tcmalloc) or which LD_PRELOAD names; glibc's GLIBC_RSS_FACTOR otherwise."""
    from ..allocator import ALLOCATOR_ENV, find_tcmalloc, names_allocator, rss_factor

    env = dict(os.environ) if env is None else env
    if names_allocator(env.get("LD_PRELOAD", "")):
        return 1.0
    if env.get(ALLOCATOR_ENV, "auto").strip().lower() == "auto" and sys.platform == "linux" and find_tcmalloc():
        return 1.0
    return rss_factor(False)


def _auto_dtype(on_gpu: bool) -> str:
    """models.pick_dtype's `auto`: bf16 (fp16 without support) on a GPU, fp32 on a CPU."""
    if not on_gpu:
        return "fp32"
    import torch

    try:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    except Exception:  # noqa: BLE001 (no answer from the driver: bf16 and fp16 weigh the same)
        return "bf16"


def _available(on_gpu: bool) -> tuple[float | None, str]:
    """(free bytes now, the GPU's name): what `memory_budget: auto` would be (training/planning.py)."""
    from ..tools.estimate import free_memory

    try:
        free = free_memory(on_gpu)
    except Exception as e:  # noqa: BLE001 (the panel then shows no budget)
        log.debug("free memory unknown", exc_info=e)
        free = None
    name = ""
    if on_gpu:
        import torch

        try:
            name = torch.cuda.get_device_name()
        except Exception:  # noqa: BLE001
            name = "GPU"
    return free, name


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def format_memory(m: MemoryEstimate, lang: str = "English") -> str:
    """The memory panel: the headline (GPU memory, or CPU memory as RSS), then the estimate's rows."""
    from ..tools.estimate import GiB

    est, gpu = m.estimate, m.device == "cuda"
    s = est.setup
    setup = t("est_setup", lang, weights=s.quantization if s.quantization != "none" else s.dtype, r=s.r,
              batch=s.batch_size // m.sequences_per_sample, length=s.max_length)  # fmt: skip
    if m.sequences_per_sample > 1:
        setup += t("est_sequences", lang, n=m.sequences_per_sample)
    if s.gradient_checkpointing:
        setup += t("est_checkpointing", lang)
    free = ""
    if m.available is not None:
        free = t("est_gpu_free" if gpu else "est_cpu_free", lang, free=m.available / GiB, name=m.device_name)
    lines = [t("est_gpu" if gpu else "est_cpu", lang, need=m.needed / GiB, free=free, setup=setup)]

    def row(name: str, value: float, why: str = "") -> None:
        lines.append(f"  {_pad(name, 40)} {value / GiB:7.2f} GiB  {why}".rstrip())

    for name, value, why in est.rows():
        if gpu or value > 0 or name != "overhead":
            shown, why = estimate_row(name, why, lang)
            row(shown, value, why)
    row(t("est_peak_gpu" if gpu else "est_peak_cpu", lang), est.peak_allocated)
    if m.rss_factor > 1:
        row(t("est_malloc", lang, factor=m.rss_factor), m.needed - est.total)
    row(t("est_total", lang), m.needed)
    if not gpu:
        lines.append(t("est_cpu_note", lang))
    if m.available is not None and m.needed > m.available:
        lines.append(t("est_too_big", lang))
    return "\n".join(lines)


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
            raise bilingual(
                ConfigError("The base model is empty. Give smollm2-135m-instruct, a hub id, or a model folder."),
                "基础模型为空。请填写 smollm2-135m-instruct、Hub ID 或模型文件夹。",
            )
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
            raise bilingual(
                ConfigError(f"The data file {text!r} is a folder, not a file. Pick a .jsonl/.json/.csv/.parquet file."),
                f"数据文件 {text!r} 是文件夹，不是文件。请选择 .jsonl/.json/.csv/.parquet 文件。",
            )
        return path

    def adapter(self, text: str) -> Path:
        if not str(text or "").strip():
            raise bilingual(
                ConfigError("No adapter chosen. Train one first (Train tab), or press Refresh list."),
                "没有选择适配器。请先训练一个（训练页），或点击“刷新列表”。",
            )
        path = self.wd.resolve(text, "adapter folder")
        if not path.is_dir():
            raise bilingual(
                ConfigError(f"{text!r} is not an adapter folder. Choose a finished run from the list."),
                f"{text!r} 不是适配器文件夹。请从列表中选择一个已完成的运行。",
            )
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

    def model_choices(self, lang: str = "English") -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for a in self.adapters():
            name = Path(a).name
            out += [(name, ADAPTER_PREFIX + a), (t("base_model_of", lang, name=name), BASE_PREFIX + a)]
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
        lang: str = "English",
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
        kind_name = DATA_KINDS_ZH.get(kind, KIND_NAMES[kind]) if lang == ZH else KIND_NAMES[kind]
        where = self.wd.relative(data_path) if data_path else t("demo_data", lang, kind=kind_name)
        methods = " / ".join(m for m, k in METHOD_KIND.items() if k == kind)
        text = t("data_header", lang, where=where, n=len(records), kind=kind_name, methods=methods, template=name)
        if lang == ZH:
            text += "\n" + t("data_summary", lang, kept=stats.kept, total=stats.total, answer=stats.answer_tokens,
                             prompt=stats.prompt_tokens, longest=stats.longest)  # fmt: skip
            if stats.too_long:
                text += t("data_too_long", lang, n=stats.too_long, max_length=int(max_length))
        else:
            text += "\n" + stats.summary(int(max_length))
        pieces: list[tuple[str, str | None]] = []
        rendered, titles = render_samples(records[:n], tpl)
        learned = t("learned", lang)
        for title, segments in zip(titles, rendered):
            pieces.append((f"── {sample_title(title, lang)} ──\n", None))
            pieces += [(seg_text, learned if learn else None) for seg_text, learn in segments]
            pieces.append(("\n\n", None))
        return DataPreview(text, pieces)

    def memory_estimate(self, model: str, settings: dict[str, Any], trust_remote_code: bool = False) -> MemoryEstimate:
        """The peak the run's memory planning (training/planning.py) estimates for the settings on
        the page, on the device it will train on: its dtype `auto`, its method's sequences per
        sample, and on a CPU the allocator's factor. Samples are counted at max_length (planning
        takes the longest sample of the data: the same or less)."""
        from ..choices import METHOD_FUSED_LOGITS, METHOD_SEQUENCES
        from ..tools.estimate import Setup, estimate_memory, load_shape

        name = self.model_name(model)
        with self._build_lock:
            if name not in self._shapes:
                self._shapes[name] = load_shape(name, trust_remote_code=trust_remote_code)
        device = training_device()
        on_gpu = device == "cuda"
        dtype = str(settings.get("dtype") or "auto")
        method = str(settings.get("method") or "sft")
        sequences = METHOD_SEQUENCES.get(method, 1)
        dropout = settings.get("dropout")
        setup = Setup(
            quantization=settings.get("quantization") or "none",
            dtype=_auto_dtype(on_gpu) if dtype == "auto" else dtype,
            r=int(settings.get("r") or 8),
            batch_size=int(settings.get("batch_size") or 1) * sequences,
            max_length=int(settings.get("max_length") or 768),
            gradient_checkpointing=bool(settings.get("gradient_checkpointing")),
            dropout=0.05 if dropout is None or dropout == "" else float(dropout),
            device=device,
            fused_logits=method in METHOD_FUSED_LOGITS,
        )
        est = estimate_memory(self._shapes[name], setup)
        available, device_name = _available(on_gpu)
        factor = 1.0 if on_gpu else run_rss_factor()
        return MemoryEstimate(device, est, sequences, factor, available, device_name)

    def estimate(
        self, model: str, settings: dict[str, Any], trust_remote_code: bool = False, lang: str = "English"
    ) -> str:
        """The memory panel's text (`lora-finetune estimate`, for the device the run will use)."""
        return format_memory(self.memory_estimate(model, settings, trust_remote_code), lang)

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
            raise bilingual(
                ConfigError("The message is empty: type something to send."), "消息为空：请输入要发送的内容。"
            )
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
            raise bilingual(
                ConfigError("Choose the evaluation data: a file with reference answers in the workdir."),
                "请选择评估数据：工作目录中带参考答案的文件。",
            )
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
    def export(
        self, adapter: str, kind: str, name: str, outtype: str = "f16", overwrite: bool = False, lang: str = "English"
    ) -> str:
        """`lora-finetune merge` or `lora-finetune export --format KIND` into exports/NAME."""
        folder = self.adapter(adapter)
        out = self.wd.export_dir(name)
        if kind == "merge":
            from ..use import merge

            with self._build_lock:
                res = merge(folder, out, overwrite=overwrite)
            lines = [t("merged", lang, adapter=self.wd.relative(folder), base=res.base_model, out=out, dtype=res.dtype)]
            lines += [t("note", lang, note=n) for n in res.notes]
        else:
            from ..export import export_model

            with self._build_lock:
                exp = export_model(folder, out, format=kind, outtype=outtype, overwrite=overwrite)
            lines = [t("wrote", lang, format=exp.format, outtype=exp.outtype, arch=exp.architecture, out=out)]
            lines += [f"  {f}" for f in exp.files]
            lines += [t("note", lang, note=n) for n in exp.notes]
            if exp.ollama_command:
                lines.append(t("ollama_command", lang, command=exp.ollama_command))
        if not out.is_dir():
            raise bilingual(
                ModelError(f"The export finished but {out} is missing; see the server log."),
                f"导出已结束，但 {out} 不存在；请查看服务器日志。",
            )
        return "\n".join(lines)


SAMPLE_TITLE = re.compile(r"sample (\d+)(?: \((\w+)\))?")


def sample_title(title: str, lang: str) -> str:
    """tools.datacheck's `sample 2 (chosen)` in the page's language."""
    m = SAMPLE_TITLE.fullmatch(title)
    if lang != ZH or not m:
        return title
    return t("sample_title", lang, i=m[1]) + (f"（{ANSWERS_ZH.get(m[2], m[2])}）" if m[2] else "")


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


__all__ = [
    "DataPreview",
    "ESTIMATE_FIELDS",
    "MORE_FIELDS",
    "MemoryEstimate",
    "TRAIN_FIELDS",
    "WebUI",
    "default_settings",
    "format_memory",
    "run_rss_factor",
    "training_device",
]
