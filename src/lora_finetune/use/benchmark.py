"""`lora-finetune benchmark`: did the fine-tune cost general ability? Standard benchmarks
(C-Eval, CMMLU, MMLU, ...) run by EleutherAI's lm-evaluation-harness on the adapter and, with
`compare_base`, on the same base with the adapter switched off.

The harness does the benchmarks: task definitions, prompts, few-shot sampling, log-likelihood
scoring, metrics and standard errors. What it does not know is what this tool knows about an
adapter folder, so that is what this module adds:
- the model comes from `load_for_inference` (base, dtype, 4/8-bit and template from the run
  record) and is handed to the harness as a model object, the adapter applied without merging;
  the base comparison runs on the same object under peft's `disable_adapter()`, so the base is
  loaded once;
- the prompt is the one the adapter learned: the harness's chat-template option is on, and its
  hook renders through the adapter's template (`TemplateLM`): the tokenizer's chat template for
  `chat` adapters (ChatGLM2/3 and Qwen included), qa or ChatGLM-6B's format otherwise;
- tasks are resolved and their data loaded before the model, so an unknown task or a dataset the
  machine cannot download fails in seconds with what to do, not after the model loaded;
- the comparison: adapter minus base per task and group, with the standard error of that
  difference computed from the paired per-item results (the same items are asked both times).

A demo task, `lora_demo_zh` (24 Chinese questions in C-Eval's format, bench_tasks/), ships with
the package so the verb runs offline; `include_path` adds folders of the user's own task YAMLs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..errors import ConfigError, DataError
from .evaluation import _adapter_off, _write_json, check_report_path

if TYPE_CHECKING:
    from .inference import InferenceModel

log = logging.getLogger(__name__)

HARNESS_FLOOR = "0.4.13"
"""The oldest lm-eval release this module is written against (`TaskManager.load`, the
`apply_chat_template` hook with `continue_final_message`)."""
INSTALL_HINT = "pip install 'lora-finetune[bench]'  (or: pip install 'lm-eval>=0.4.13')"
BUNDLED_TASKS = Path(__file__).with_name("bench_tasks")
REPORT_NAME = "bench_report.json"
SEEDS = {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}
"""The harness's own defaults (its CLI uses them), so numbers compare with published runs."""


# --------------------------------------------------------------------------- settings
@dataclass
class BenchmarkSettings:
    """What to run. Every field is checked by `check()` before anything loads."""

    tasks: list[str]
    """Task, group or tag names the harness knows (`ceval-valid`, `cmmlu`, `mmlu`, ...), names
    from `include_path` folders, or paths of task YAML files."""
    num_fewshot: int | None = None
    """Examples before each question (None: the task's own default, else 0)."""
    limit: float | None = None
    """At most this many items per task (a whole number), or this share of each task (0 < x < 1)."""
    batch_size: int = 8
    """Log-likelihood requests per forward pass."""
    include_path: list[Path] = field(default_factory=list)
    """Folders of the user's own task YAMLs (the harness's format)."""
    compare_base: bool = False
    """Also run the base with the adapter switched off."""
    plain: bool = False
    """Ask in the harness's plain text format (as model cards report) instead of the template
    the adapter was trained with."""

    def check(self) -> None:
        problems = []
        names = [t.strip() for t in self.tasks if isinstance(t, str) and t.strip()]
        if not names:
            problems.append("tasks: name at least one task, e.g. --tasks ceval-valid,cmmlu (or lora_demo_zh offline)")
        if self.num_fewshot is not None and (
            isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0
        ):
            problems.append(f"num_fewshot: {self.num_fewshot!r} is not a whole number >= 0")
        if self.limit is not None and not _valid_limit(self.limit):
            problems.append(
                f"limit: {self.limit!r} is neither a whole number of items >= 1 nor a share of each task "
                "between 0 and 1"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size: {self.batch_size!r} is not a whole number >= 1")
        for folder in self.include_path:
            if not Path(folder).is_dir():
                what = "is a file" if Path(folder).is_file() else "does not exist"
                problems.append(f"include_path: {folder} {what}; give a folder of task YAML files")
        if problems:
            raise ConfigError(f"{len(problems)} problem(s) with the benchmark settings:\n  " + "\n  ".join(problems))
        self.tasks = list(dict.fromkeys(names))


def _valid_limit(limit: Any) -> bool:
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not math.isfinite(limit) or limit <= 0:
        return False
    return limit < 1 or float(limit).is_integer()


def parse_limit(text: str) -> float | int:
    """`--limit`: a whole number of items per task, or a share of each task below 1."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not _valid_limit(value):
        raise ValueError(f"{text!r}: give a whole number of items >= 1, or a share of each task between 0 and 1")
    return int(value) if value >= 1 else value


# --------------------------------------------------------------------------- the harness
def require_harness() -> str:
    """lm-eval's version; a ConfigError saying what to install when it is missing or too old."""
    try:
        version = metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"benchmark runs EleutherAI's lm-evaluation-harness, which is not installed. Install it: {INSTALL_HINT}"
        ) from None
    from packaging.version import Version

    if Version(version) < Version(HARNESS_FLOOR):
        raise ConfigError(f"benchmark needs lm-eval >= {HARNESS_FLOOR}; this environment has {version}. {INSTALL_HINT}")
    return version


def task_manager(include_path: list[Path] | None = None) -> Any:
    """The harness's task index: its own tasks, the bundled demo task and the user's folders."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(BUNDLED_TASKS), *(str(p) for p in include_path or [])])


def check_task_names(manager: Any, names: list[str]) -> None:
    """Every name must be a task, group or tag the harness knows, or a task YAML file."""
    import difflib

    known = manager.all_tasks
    unknown = []
    for name in names:
        if name in known:
            continue
        path = Path(name)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        if path.suffix in (".yaml", ".yml"):
            hint = " (no such file)"
        unknown.append(f"{name}{hint}")
    if unknown:
        raise ConfigError(
            f"lm-evaluation-harness does not know task(s): {'; '.join(unknown)}. "
            "List the names with `lora-finetune benchmark --list-tasks [PATTERN]`; a task of your own goes in a "
            "YAML file (pass its path, or its folder with --include_path)."
        )


def list_tasks(manager: Any, pattern: str | None = None) -> list[tuple[str, str]]:
    """(name, kind) of the tasks, groups and tags whose name contains `pattern`."""
    kinds = {n: "group" for n in manager.all_groups} | {n: "tag" for n in manager.all_tags}
    names = [n for n in manager.all_tasks if not pattern or pattern.lower() in n.lower()]
    return [(n, kinds.get(n, "task")) for n in names]


def hub_endpoint() -> str:
    import os

    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the Hugging Face Hub? (A few seconds at most,
    where the hub libraries would retry for half a minute before giving up.)"""
    url = urlparse(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _datasets_offline(offline: bool) -> Iterator[None]:
    """Within the block, `datasets` and `huggingface_hub` read only their caches (as with
    HF_DATASETS_OFFLINE=1) when `offline`; the previous values come back after it."""
    if not offline:
        yield
        return
    import datasets.config as ds_config
    import huggingface_hub.constants as hub_constants

    saved = ds_config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    ds_config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        ds_config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _offline_env() -> bool:
    import os

    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def cache_folders() -> tuple[str, str]:
    """Where the hub libraries keep downloaded dataset files and the prepared datasets."""
    import datasets.config as ds_config
    import huggingface_hub.constants as hub_constants

    return str(hub_constants.HF_HUB_CACHE), str(ds_config.HF_DATASETS_CACHE)


def load_tasks(manager: Any, names: list[str], *, offline: bool | None = None) -> dict[str, Any]:
    """Build the tasks and load their data (the harness downloads it from the hub), before any
    model loads. Unreachable hub: cached data is used, anything else fails at once with what to
    download and where to put it."""
    if offline is None:
        offline = _offline_env() or not hub_reachable()
    built: dict[str, Any] = {}
    with _datasets_offline(offline):
        for name in names:
            try:
                loaded = manager.load([name])
            except (ConnectionError, OSError) as e:
                raise DataError(_download_message(name, e, offline)) from None
            except Exception as e:  # the harness's own errors in a task's YAML or data
                if _is_download_error(e):
                    raise DataError(_download_message(name, e, offline)) from None
                raise DataError(
                    f"task {name}: lm-evaluation-harness could not build it ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300] if str(e) else 'no message'}). For a task of your own, check "
                    "its YAML against the harness's task guide (docs/new_task_guide.md in lm-evaluation-harness)."
                ) from None
            unsafe = [t for t, task in loaded["tasks"].items() if task.get_config("unsafe_code")]
            if unsafe:
                raise ConfigError(
                    f"task {name} runs code the model writes ({', '.join(unsafe[:3])} set unsafe_code), which this "
                    "tool does not do. Run such tasks with lm-eval's own CLI and --confirm_run_unsafe_code, in a "
                    "sandbox."
                )
            # The harness changes a task's few-shot setting in place when it runs; what the
            # task itself says (0 = always zero-shot) is kept for every later pass.
            loaded["fewshot_defaults"] = {t: task.get_config("num_fewshot") for t, task in loaded["tasks"].items()}
            built[name] = loaded
    return built


def _is_download_error(e: BaseException) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError"})


def _download_message(name: str, e: BaseException, offline: bool) -> str:
    hub_cache, ds_cache = cache_folders()
    why = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    where = (
        "this machine cannot reach the Hugging Face Hub" if offline else "the Hugging Face Hub did not give its data"
    )
    return (
        f"task {name} reads its data from the Hugging Face Hub, and {where} ({why}). "
        f"On a machine with network, run `lora-finetune benchmark --tasks {name} --download-only`: it downloads "
        f"the data into the hub caches ({hub_cache} and {ds_cache}; HF_HOME moves both). Copy those two folders to "
        "the same place here and run again; with HF_DATASETS_OFFLINE=1 set, nothing tries the network. "
        "Tasks that need no download: lora_demo_zh, or your own task YAML with local data (--include_path)."
    )


def task_versions(loaded: dict[str, Any]) -> dict[str, Any]:
    """Every task's and group's version, as the harness records it in its own results."""
    out: dict[str, Any] = {}
    for part in loaded.values():
        for name, group in part["groups"].items():
            out[name] = (getattr(group, "metadata", None) or {}).get("version")
        for name, task in part["tasks"].items():
            out[name] = getattr(task, "VERSION", None)
    return out


# --------------------------------------------------------------------------- the model
def harness_model(im: InferenceModel, *, batch_size: int, plain: bool) -> tuple[Any, str]:
    """The harness's HF model wrapper around our loaded model, and how prompts are formatted:
    `plain` (the harness's default text, as model cards report) or `template NAME`: the template
    the adapter was trained with, through the harness's chat-template option (`TemplateLM`)."""
    from lm_eval.models.huggingface import HFLM

    template = im.template
    kw: dict[str, Any] = dict(
        pretrained=im.model, tokenizer=im.tokenizer, batch_size=batch_size, max_batch_size=batch_size
    )
    if plain:
        return _quiet_info(HFLM)(**kw), "plain"
    # Templates that write their own special tokens (chat templates, ChatGLM's [gMASK]sop) were
    # trained without the tokenizer's prefix; plain-text ones (qa) with it. The harness then
    # tokenizes the prompt exactly as training did.
    kw["add_bos_token"] = False if template.renders_special_tokens else None
    return _template_lm(HFLM)(template=template, **kw), f"template {template.name}"


def _quiet_info(base: type) -> type:
    """The wrapper without its hub lookups: `get_model_info` asks the hub for the model's commit
    (a network call per run); ours says what was loaded instead."""

    class Wrapped(base):  # type: ignore[misc, valid-type]
        def get_model_info(self) -> dict:
            return {"model_num_parameters": sum(p.numel() for p in self._model.parameters())}

    Wrapped.__name__ = base.__name__
    return Wrapped


def _template_lm(base: type) -> type:
    """The harness's HF wrapper, asking in the adapter's template: with its chat-template
    option on, the harness hands its chat history (system, few-shot turns, the question) to
    `apply_chat_template`, and this renders it as training did. For `chat` that is the
    tokenizer's chat template, as the harness's own hook would render it, except where training
    differs: the EOS taught after answers whose template writes none (ChatGLM3's few-shot turns),
    Qwen3's empty think block, the run's system prompt."""

    class TemplateLM(_quiet_info(base)):  # type: ignore[misc, valid-type]
        def __init__(self, *, template: Any, **kw: Any) -> None:
            super().__init__(**kw)
            self.template = template

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return render_prompt(self.template, chat_history, add_generation_prompt)

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            return f"lora-finetune template {self.template.name}"

    return TemplateLM


def render_prompt(template: Any, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """A harness chat history as text in `template`. Without a generation prompt the last turn is
    an answer begun (the harness's `continue_final_message`): the prompt up to it, then its text."""
    system = "\n".join(m["content"] for m in chat_history if m["role"] == "system") or None
    turns = [{"role": m["role"], "content": m["content"]} for m in chat_history if m["role"] != "system"]
    begun = None
    if not add_generation_prompt and turns and turns[-1]["role"] == "assistant":
        begun = turns.pop()["content"]
    record = {"system": system, "messages": turns}
    text = "".join(piece for piece, _ in template.segments(record, add_generation_prompt=True))
    return text + (begun or "")


# --------------------------------------------------------------------------- running
@dataclass
class BenchmarkResult:
    report: dict[str, Any]
    report_path: Path | None
    rows: list[dict[str, Any]]
    report_error: str | None = None
    """Why the report could not be written (a full disk, say): the numbers are still here."""


def run_harness(lm: Any, loaded: dict[str, Any], settings: BenchmarkSettings, apply_chat: bool) -> dict[str, Any]:
    """One pass of the harness over the loaded tasks (its `evaluate`, with the seeds and few-shot
    settings its `simple_evaluate` applies; that function also asks git and the hub about the
    environment, which an offline tool must not)."""
    import numpy as np
    import torch
    from lm_eval.evaluator import evaluate

    random.seed(SEEDS["random"])
    np.random.seed(SEEDS["numpy"])
    torch.manual_seed(SEEDS["torch"])
    merged: dict[str, dict[str, Any]] = {"tasks": {}, "groups": {}, "group_map": {}}
    defaults: dict[str, Any] = {}
    for part in loaded.values():
        for key in merged:
            merged[key].update(part[key])
        defaults.update(part.get("fewshot_defaults", {}))
    for name, task in merged["tasks"].items():
        default = defaults.get(name, task.get_config("num_fewshot"))
        shots = settings.num_fewshot if settings.num_fewshot is not None and default != 0 else default
        task.set_config(key="num_fewshot", value=shots or 0)
        task.set_fewshot_seed(seed=SEEDS["fewshot"])
    return evaluate(
        lm=lm,
        task_dict=merged,
        limit=settings.limit,
        log_samples=True,
        apply_chat_template=apply_chat,
        fewshot_as_multiturn=apply_chat,
    )


def benchmark(
    adapter_dir: str | Path | None,
    settings: BenchmarkSettings,
    *,
    im: InferenceModel,
    loaded: dict[str, Any],
    report_path: str | Path | None = None,
    write_report: bool = True,
    on_pass: Callable[[str], Any] | None = None,
) -> BenchmarkResult:
    """Run the tasks on `im` (adapter, and the base with the adapter off when
    `settings.compare_base`); the report goes to `report_path` (default
    adapter_dir/bench_report.json)."""
    lm, prompt = harness_model(im, batch_size=settings.batch_size, plain=settings.plain)
    apply_chat = prompt != "plain"
    label = "adapter" if im.has_adapter else "base"
    runs: dict[str, dict[str, Any]] = {}
    if on_pass:
        on_pass(label)
    runs[label] = run_harness(lm, loaded, settings, apply_chat)
    if settings.compare_base and im.has_adapter:
        if on_pass:
            on_pass("base")
        with _adapter_off(im):
            runs["base"] = run_harness(lm, loaded, settings, apply_chat)
    rows = compare(runs, loaded)
    report = {
        "adapter": str(adapter_dir) if adapter_dir is not None else None,
        "base_model": im.base_model,
        "quantization": im.quantization,
        "prompt_format": prompt,
        "template": getattr(im.template, "name", None),
        "tasks": settings.tasks,
        "num_fewshot": settings.num_fewshot,
        "limit": settings.limit,
        "lm_eval_version": metadata.version("lm_eval"),
        "task_versions": task_versions(loaded),
        "n_shot": next(iter(runs.values())).get("n-shot", {}),
        "n_samples": next(iter(runs.values())).get("n-samples", {}),
        "seeds": SEEDS,
        "rows": rows,
        "results": {name: run.get("results", {}) for name, run in runs.items()},
        "difference_info": "adapter - base; se is the standard error of that difference from the paired "
        "per-item results (the same items in both runs), combined over a group's tasks with the group's "
        "weights; `beyond_2se` marks |difference| > 2 se",
    }
    path, error = None, None
    if write_report:
        path = Path(report_path) if report_path else default_report_path(adapter_dir, im)
        try:
            _write_json(report, path)
        except OSError as e:  # the run took minutes to hours: its numbers are returned anyway
            log.warning("could not write the benchmark report %s: %s", path, e)
            path, error = None, f"{path}: {e.strerror or e}"
    return BenchmarkResult(report, path, rows, error)


def default_report_path(adapter_dir: str | Path | None, im: InferenceModel) -> Path:
    """adapter_dir/bench_report.json (bench_report_base.json for the base alone), else the
    working directory."""
    import os

    name = REPORT_NAME if im.has_adapter else REPORT_NAME.replace(".json", "_base.json")
    if adapter_dir is not None and os.access(adapter_dir, os.W_OK):
        return Path(adapter_dir) / name
    return Path.cwd() / name


# --------------------------------------------------------------------------- comparison
def primary_metric(result: dict[str, Any]) -> str | None:
    """The metric a row shows: `acc,none` where the task has it, else its first metric."""
    keys = [k for k in result if "," in k and "_stderr," not in k]
    for preferred in ("acc,none", "exact_match,strict-match", "exact_match,none"):
        if preferred in keys:
            return preferred
    return keys[0] if keys else None


def _per_item(run: dict[str, Any], task: str, metric: str) -> dict[str, float]:
    name, _, filt = metric.partition(",")
    out = {}
    for s in run.get("samples", {}).get(task, []):
        if s.get("filter", "none") == filt and isinstance(s.get(name), int | float):
            out[str(s["doc_id"])] = float(s[name])
    return out


def _paired_variance(runs: dict[str, Any], task: str, metric: str) -> tuple[float, int] | None:
    """Variance of the mean adapter-minus-base difference over the items both runs scored."""
    a, b = (_per_item(runs[k], task, metric) for k in ("adapter", "base"))
    common = sorted(set(a) & set(b))
    n = len(common)
    if n < 2:
        return None
    d = [a[i] - b[i] for i in common]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return var / n, n


def _group_variance(runs: dict[str, Any], groups: dict[str, Any], name: str, metric: str) -> tuple[float, int] | None:
    """A group's score is a (size-weighted or plain) mean of its children's scores, so the variance
    of its difference is the weighted sum of the children's (their items are disjoint)."""
    group = groups[name]
    weight_by_size = True
    for agg in getattr(group, "aggregate_metric_list", None) or []:
        if agg.metric == metric.partition(",")[0]:
            weight_by_size = agg.weight_by_size
    parts = []
    for child in group.child_names:
        part = (
            _group_variance(runs, groups, child, metric) if child in groups else _paired_variance(runs, child, metric)
        )
        if part is None:
            return None
        parts.append(part)
    if not parts:
        return None
    total = sum(n for _, n in parts)
    weights = [n / total for _, n in parts] if weight_by_size else [1 / len(parts)] * len(parts)
    return sum(w * w * v for w, (v, _) in zip(weights, parts)), total


def compare(runs: dict[str, dict[str, Any]], loaded: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per group and task, in the order asked (a group's tasks under it): the primary
    metric of each run with its standard error, and adapter - base with the paired se."""
    groups: dict[str, Any] = {}
    for part in loaded.values():
        groups.update(part["groups"])
    first = next(iter(runs.values()))
    results = first.get("results", {})
    rows: list[dict[str, Any]] = []

    def add(name: str, depth: int) -> None:
        res = results.get(name)
        metric = primary_metric(res) if res else None
        row: dict[str, Any] = {
            "task": name,
            "depth": depth,
            "group": name in groups,
            "metric": metric.partition(",")[0] if metric else None,
            "filter": metric.partition(",")[2] if metric else None,
            "n": _samples(first, name, groups),
        }
        for label, run in runs.items():
            r = run.get("results", {}).get(name, {})
            value = r.get(metric) if metric else None
            se = r.get(metric.replace(",", "_stderr,", 1)) if metric else None
            row[label] = _num(value)
            row[f"{label}_se"] = _num(se)
        if "adapter" in runs and "base" in runs and row.get("adapter") is not None and row.get("base") is not None:
            row["difference"] = row["adapter"] - row["base"]
            part = (
                _group_variance(runs, groups, name, metric) if name in groups else _paired_variance(runs, name, metric)
            )
            row["difference_se"] = math.sqrt(part[0]) if part else None
            se = row["difference_se"]
            row["beyond_2se"] = bool(se is not None and abs(row["difference"]) > 2 * se and row["difference"] != 0)
        rows.append(row)
        if name in groups:
            for child in groups[name].child_names:
                add(child, depth + 1)

    for part in loaded.values():
        tops = set(part["tasks"]) | set(part["groups"])
        children = {c for g in part["groups"].values() for c in g.child_names}
        for name in [*part["groups"], *part["tasks"]]:
            if name in tops - children and not any(r["task"] == name for r in rows):
                add(name, 0)
    return rows


def table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The comparison as text cells, header first (the CLI and the web UI show this): a task's
    name indented under its group, value ± standard error per run, and `adapter - base` with `*`
    where the difference is more than two of its standard errors."""
    labels = [k for k in ("adapter", "base") if any(k in r for r in rows)]
    diff = "adapter" in labels and "base" in labels
    out = [["task", "metric", "n", *labels, *(["adapter - base"] if diff else [])]]
    for r in rows:
        line = ["  " * r["depth"] + r["task"], r["metric"] or "-", "-" if r["n"] is None else str(r["n"])]
        line += [cell(r.get(lab), r.get(f"{lab}_se")) for lab in labels]
        if diff:
            d = r.get("difference")
            line.append(
                "-" if d is None else cell(d, r.get("difference_se"), signed=True) + (" *" if r["beyond_2se"] else "  ")
            )
        out.append(line)
    return out


def cell(value: float | None, se: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return f"{text} ± {se:.4f}" if se is not None else text


def _samples(run: dict[str, Any], name: str, groups: dict[str, Any]) -> int | None:
    counts = run.get("n-samples", {})
    if name in counts:
        return counts[name].get("effective")
    if name in groups:
        parts = [_samples(run, c, groups) for c in groups[name].child_names]
        return sum(p for p in parts if p) or None
    return None


def _num(v: Any) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


__all__ = [
    "BUNDLED_TASKS",
    "BenchmarkResult",
    "BenchmarkSettings",
    "benchmark",
    "check_report_path",
    "check_task_names",
    "compare",
    "harness_model",
    "hub_reachable",
    "list_tasks",
    "load_tasks",
    "parse_limit",
    "render_prompt",
    "require_harness",
    "table",
    "task_manager",
]
