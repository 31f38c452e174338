"""`LoRAFinetuneConfig`: every setting of a run, typed and documented in one place.

A config comes from defaults, then one YAML or JSON file, then `--key value` overrides, and is
checked as a whole: every unknown key and every bad value is reported in one error, each with
how to fix it. Where transformers' `TrainingArguments` has a name for a setting we use that
name, so habits carry over. The resolved config is saved beside every adapter as
`run_config.yaml`, so later commands need only the adapter folder.

The first eight fields and their defaults are the teaching script's; the rest is what a real run
needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from .choices import (
    DPO_LOSSES,
    LR_SCHEDULERS,
    METHOD_METRICS,
    SCHEDULERS_NEEDING_SETTINGS,
    DataFormat,
    DType,
    LigerMode,
    LoraBackend,
    Method,
    Quantization,
    Resume,
    TemplateName,
    best_metric_name,
    canonical_template,
    parse_bool,
)
from .errors import ConfigError


def default_cache_dir() -> Path:
    """Where converted models are cached when `cache_dir` is not set: $LORA_FINETUNE_CACHE, else
    $XDG_CACHE_HOME/lora-finetune, else ~/.cache/lora-finetune."""
    env = os.environ.get("LORA_FINETUNE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lora-finetune"


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (or become) a folder: it, or a folder above it, is a file."""
    path = Path(path).expanduser()
    if path.exists():
        return None if path.is_dir() else f"{path} is a file, not a folder"
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is a file, so {path} cannot be created"
    return None


def cache_folder(cache_dir: Path | str | None = None) -> Path:
    """The cache folder to use (`cache_dir`, else default_cache_dir()); a ConfigError naming the
    setting or variable when it cannot be a folder."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    problem = folder_problem(folder)
    if problem:
        where = (
            "cache_dir"
            if cache_dir
            else "LORA_FINETUNE_CACHE"
            if os.environ.get("LORA_FINETUNE_CACHE")
            else "XDG_CACHE_HOME (the cache is $XDG_CACHE_HOME/lora-finetune)"
        )
        fix = "give a folder" if cache_dir else f"point {where.split(' ')[0]} at a folder, or unset it"
        raise ConfigError(f"{where}: {problem}; {fix}.")
    return folder


@dataclass
class LoRAFinetuneConfig:
    # --- the teaching script's fields (same names, same defaults) ---
    model_name: str = "Qwen/Qwen3-0.6B"
    """Base model: a hub id, a local folder, or `smollm2-135m-instruct` (bundled, offline)."""
    output_dir: Path = Path("./outputs/chatglm_lora")
    """Where the adapter, tokenizer, run_config.yaml, metrics.json and loss_curve.png go."""
    r: int = 8
    """LoRA rank: the bottleneck size of the update B A."""
    alpha: int = 32
    """LoRA alpha; the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input during training (0 <= dropout < 1)."""
    learning_rate: float = 1e-4
    """Peak learning rate of the optimizer."""
    batch_size: int = 2
    """Samples per device per step (TrainingArguments.per_device_train_batch_size)."""
    steps: int | None = 50
    """Optimizer steps to run (TrainingArguments.max_steps). None when `epochs` is given."""

    # --- data ---
    data_path: Path | None = None
    """Training data: a json/jsonl/csv/parquet file, a `datasets` save_to_disk folder, a hub
    dataset id, or (with `dataset`) LLaMA-Factory's data folder. None: the 20 demo samples."""
    dataset: str | None = None
    """A dataset named in LLaMA-Factory's dataset_info.json (data_path: the folder holding that
    file, their `dataset_dir`, or the file itself); its columns and tags are applied."""
    data_format: DataFormat = "auto"
    """`alpaca` (instruction/input/output), `messages` (role/content), `sharegpt` (from/value), or `auto`."""
    template: TemplateName = "auto"
    """Prompt format: `chat` (the tokenizer's chat template), `qa` (问/补充信息/答 plain text; `seed` is
    accepted as its old name), ChatGLM ones, or `auto`."""
    system_prompt: str | None = None
    """System prompt for samples that have none (None: the template's own default, if any)."""
    max_length: int = 768
    """Longest sample in tokens; longer samples are dropped and counted (never silently cut)."""
    eval_fraction: float = 0.1
    """Share of samples held out for evaluation (0 disables evaluation)."""

    # --- model and LoRA ---
    target_modules: list[str] | str = "auto"
    """Layers that get LoRA: `auto` (per model type), `all-linear`, or a list of module names."""
    lora_backend: LoraBackend = "peft"
    """`peft` (default) or `reference` (the lesson's own LoRALinear in lora_finetune/lora.py)."""
    quantization: Quantization = "none"
    """`4bit` (NF4, QLoRA) or `8bit` base weights through bitsandbytes (CUDA, or CPU with fp32 compute)."""
    dtype: DType = "auto"
    """Compute dtype: `auto` is bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    trust_remote_code: bool = False
    """Run Python code shipped in a model folder. Off: turn it on only for models you trust."""
    cache_dir: Path | None = None
    """Where converted models (bundled GGUF, ChatGLM) are cached; default ~/.cache/lora-finetune."""

    # --- training (TrainingArguments names) ---
    epochs: float | None = None
    """Passes over the training data instead of a number of steps (`num_train_epochs`); give
    `steps` or `epochs`, not both."""
    gradient_accumulation_steps: int = 1
    """Micro-batches summed before each optimizer step."""
    warmup_ratio: float = 0.0
    """Fraction of steps spent warming the learning rate up from 0."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule: linear, cosine, constant, constant_with_warmup, ..."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    logging_steps: int = 5
    """Log the training loss every N steps."""
    eval_steps: int = 25
    """Evaluate on the held-out split every N steps (and at the end)."""
    save_steps: int = 25
    """Write a resumable checkpoint every N steps."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints."""
    load_best_model_at_end: bool = False
    """Keep the checkpoint with the best `metric_for_best_model` (not the last) as the adapter.
    Needs evaluation (eval_fraction > 0) and save_steps a multiple of eval_steps."""
    metric_for_best_model: str = "eval_loss"
    """What "best" means for load_best_model_at_end and early stopping: `eval_loss` (lower is
    better); for dpo / orpo / simpo also `rewards/accuracies`, `rewards/margins` or
    `rewards/chosen` (higher is better; kto has no accuracies)."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement (needs load_best_model_at_end)."""
    seed: int = 42
    """Seed for data split, shuffling, LoRA initialisation and dropout."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% slower."""
    packing: bool | None = None
    """Put several samples in one row (positions restart per sample, no cross-attention). Unset:
    on for `method: pt`, off otherwise."""
    group_by_length: bool = True
    """Batch samples of similar length together so per-batch padding stays small (not with packing)."""
    use_liger: LigerMode = "auto"
    """liger-kernel fused ops (no full logits): `auto` (only when the memory plan needs it to fit on a CUDA
    GPU: measured slower otherwise), `true`, `false`."""
    cudnn_attention: bool = False
    """Let PyTorch's attention use its cuDNN kernel on a GPU. Off: with per-batch padding every new
    length builds a new cuDNN plan, which made steps host-bound (measured 1.4x slower on an H200)."""
    memory_budget: str = "auto"
    """Memory the run may use: `auto` (free RAM on a CPU, free memory on the GPU), a size such as
    `16GB`, or `none` (no planning). When the estimated peak does not fit, the run turns on
    gradient checkpointing, then splits the batch into micro-batches with more accumulation
    (same effective batch, same results), and says so; if nothing fits it stops before loading."""
    report_to: list[str] | str = "none"
    """Experiment trackers, as in TrainingArguments: `none`, `tensorboard`, `wandb`, `mlflow`, ...
    (a list for several). TensorBoard logs end up in the run's `runs/` folder."""
    label_logits_only: bool = True
    """Build output-layer logits only where the next token is learned (same loss, less work)."""

    # --- training stage (sft is the default; the others run on TRL's trainers) ---
    method: Method = "sft"
    """`sft` (instructions and answers), `pt` (continued pretraining on raw text: every token is
    learned), `dpo`, `orpo`, `simpo` (preference pairs: a chosen and a rejected answer per prompt),
    `kto` (answers labelled desirable or not)."""
    beta: float = 0.1
    """Preference methods: DPO's and KTO's beta (higher: stay closer to the reference model),
    ORPO's odds-ratio weight (lambda), SimPO's reward scale (its paper uses 2.0-2.5)."""
    loss_type: str = "sigmoid"
    """`method: dpo`: the loss, by TRL's name: sigmoid (the DPO paper's), ipo, hinge, robust, ..."""
    sft_weight: float = 0.0
    """`method: dpo`: weight of an added SFT loss on the chosen answers (0: none)."""
    simpo_gamma: float = 0.5
    """`method: simpo`: the target reward margin (gamma)."""
    desirable_weight: float = 1.0
    """`method: kto`: the weight of desirable answers' loss."""
    undesirable_weight: float = 1.0
    """`method: kto`: the weight of undesirable answers' loss (raise it when bad answers are rarer)."""
    init_adapter: Path | None = None
    """An adapter folder to start from (an SFT run before DPO, say): its weights are trained
    further, and for dpo/kto it is the reference the new adapter is measured against."""

    # --- run control ---
    overwrite: bool = False
    """Replace an existing output_dir. Off: a finished run is never overwritten by accident."""
    resume: Resume = "no"
    """`auto`: continue from the last checkpoint of an interrupted run in output_dir."""

    # ------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Return every problem with the values (empty when the config is usable)."""
        problems: list[str] = []

        def bad(name: str, why: str) -> None:
            value = getattr(self, name)
            problems.append(f"{name}={str(value) if isinstance(value, Path) else repr(value)}: {why}")

        if self.r <= 0:
            bad("r", "the LoRA rank must be a positive integer; use 8 or 16")
        if self.alpha <= 0:
            bad("alpha", "must be positive; a common choice is 2*r or 4*r")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1); use 0.05 or 0.1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            bad("learning_rate", "must be a positive, finite number; LoRA usually uses 1e-4 to 5e-4")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            bad("weight_decay", "must be a finite number >= 0; use 0 (the default) or 0.01")
        if not 0 <= self.seed <= 2**32 - 1:
            bad("seed", "must be between 0 and 4294967295 (2**32 - 1)")
        if self.steps is None and self.epochs is None:
            bad("steps", "give a number of steps, or `epochs`")
        if self.steps is not None and self.steps <= 0:
            bad("steps", "must be a positive integer")
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            bad("epochs", "must be a positive number of passes over the data, e.g. 3")
        for name in (
            "batch_size",
            "max_length",
            "gradient_accumulation_steps",
            "logging_steps",
            "eval_steps",
            "save_steps",
        ):
            if getattr(self, name) <= 0:
                bad(name, "must be a positive integer")
        if not 0.0 <= self.eval_fraction < 1.0:
            bad(
                "eval_fraction",
                "must be in [0, 1): it is the share held out for evaluation, "
                "and 1 or more leaves no training data; use 0.1, or 0 to skip evaluation",
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            bad("warmup_ratio", "must be in [0, 1); use 0.03 or 0")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            bad("max_grad_norm", "must be a finite number >= 0 (0 disables clipping); use 1.0")
        if self.lr_scheduler_type in SCHEDULERS_NEEDING_SETTINGS:
            bad(
                "lr_scheduler_type",
                f"needs {SCHEDULERS_NEEDING_SETTINGS[self.lr_scheduler_type]}, which this tool does not "
                f"expose; use one of {', '.join(LR_SCHEDULERS)}",
            )
        elif self.lr_scheduler_type not in LR_SCHEDULERS:
            close = difflib.get_close_matches(self.lr_scheduler_type, LR_SCHEDULERS, n=1)
            bad(
                "lr_scheduler_type",
                (f"did you mean `{close[0]}`? " if close else "") + f"use one of {', '.join(LR_SCHEDULERS)}",
            )
        if self.save_total_limit < 2:
            bad(
                "save_total_limit",
                "keep at least 2, so that a complete checkpoint always exists while the next one is being written",
            )
        if self.cache_dir is not None and folder_problem(Path(self.cache_dir)):
            bad("cache_dir", f"{folder_problem(Path(self.cache_dir))}; give a folder for converted models")
        if self.load_best_model_at_end or self.early_stopping_patience is not None:
            if self.eval_fraction <= 0:
                bad("load_best_model_at_end", "needs evaluation: set eval_fraction above 0, e.g. 0.1")
            if self.save_steps % self.eval_steps:
                bad(
                    "save_steps",
                    f"must be a multiple of eval_steps ({self.eval_steps}) with load_best_model_at_end, so "
                    "every evaluated step has a checkpoint to keep",
                )
            metric = best_metric_name(self.metric_for_best_model)
            offered = METHOD_METRICS.get(self.method, ("loss",))
            if metric not in offered:
                close = difflib.get_close_matches(metric, offered, n=1)
                bad(
                    "metric_for_best_model",
                    (f"did you mean `{close[0]}`? " if close else "")
                    + f"method {self.method} evaluates {', '.join(offered)} (with or without the eval_ prefix)",
                )
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                bad("early_stopping_patience", "must be at least 1 evaluation")
            if not self.load_best_model_at_end:
                bad("early_stopping_patience", "needs load_best_model_at_end: true (it keeps the best checkpoint)")
        if not re.fullmatch(r"\s*(auto|none|off|[0-9]*\.?[0-9]+\s*[kmgt]?(i?b)?)\s*", str(self.memory_budget), re.I):
            bad("memory_budget", "give auto, none, or a size such as 16GB or 500MB")
        if self.dataset and self.data_path is None:
            bad("dataset", "names a dataset in dataset_info.json: set data_path to the folder holding that file")
        if isinstance(self.target_modules, list) and not self.target_modules:
            bad("target_modules", "an empty list targets nothing; use `auto` or name layers")
        if not str(self.model_name).strip():
            bad("model_name", "is empty; give a hub id, a folder, or smollm2-135m-instruct")
        if self.beta <= 0 or not math.isfinite(self.beta):
            bad("beta", "must be a positive number; 0.1 is the usual value (SimPO: 2.0)")
        if self.loss_type not in DPO_LOSSES:
            close = difflib.get_close_matches(self.loss_type, DPO_LOSSES, n=1)
            bad(
                "loss_type",
                (f"did you mean `{close[0]}`? " if close else "")
                + f"use one of {', '.join(DPO_LOSSES)} (for ORPO or SimPO set method: orpo / simpo)",
            )
        for name in ("sft_weight", "simpo_gamma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                bad(name, "must be a finite number >= 0")
        for name in ("desirable_weight", "undesirable_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                bad(name, "must be a positive number; 1.0 weighs desirable and undesirable answers alike")
        if self.method == "kto" and self.batch_size < 2:
            bad(
                "batch_size",
                "method kto needs at least 2: its KL term pairs each answer with another one of the same "
                "batch (use gradient_accumulation_steps to keep the effective batch)",
            )
        if self.method != "sft" and self.lora_backend == "reference":
            bad(
                "lora_backend",
                f"the reference LoRALinear trains method: sft only; use lora_backend: peft for method: {self.method}",
            )
        if self.init_adapter is not None:
            if Path(self.init_adapter).expanduser().resolve() == Path(self.output_dir).expanduser().resolve():
                bad(
                    "init_adapter",
                    "is output_dir: the run would replace the adapter it starts from. Write the new run "
                    "elsewhere, e.g. --output_dir " + f"{self.output_dir}-{self.method}",
                )
            if self.lora_backend == "reference":
                bad("lora_backend", "the reference LoRALinear starts fresh; use lora_backend: peft with init_adapter")
        if self.lora_backend == "reference" and self.quantization != "none":
            bad(
                "lora_backend",
                "the reference LoRALinear wraps plain nn.Linear layers only; "
                "use lora_backend: peft with quantization, or quantization: none",
            )
        return problems

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, Path):
                out[k] = str(v)
        return out


FIELD_NAMES = [f.name for f in fields(LoRAFinetuneConfig)]
# Names users bring from transformers/peft/other tools, mapped to ours.
ALIASES = {
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "per_device_train_batch_size": "batch_size",
    "max_steps": "steps",
    "model_name_or_path": "model_name",
    "model": "model_name",
    "data": "data_path",
    "dataset_dir": "data_path",
    "train_file": "data_path",
    "lr": "learning_rate",
    "max_seq_length": "max_length",
    "cutoff_len": "max_length",
    "max_source_length": "max_length",
    "val_set_size": "eval_fraction",
    "test_size": "eval_fraction",
    "lora_target": "target_modules",
    "lora_rank": "r",
    "lora_target_modules": "target_modules",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "max_seq_len": "max_length",
    "model_max_length": "max_length",
    "learning_rate_scheduler": "lr_scheduler_type",
    "lr_scheduler": "lr_scheduler_type",
    "seed_value": "seed",
    "stage": "method",
    "pref_beta": "beta",
    "pref_loss": "loss_type",
    "pref_ftx": "sft_weight",
    "rpo_alpha": "sft_weight",
    "kto_chosen_weight": "desirable_weight",
    "kto_rejected_weight": "undesirable_weight",
    "adapter_name_or_path": "init_adapter",
    "adapter": "init_adapter",
}
"""Names from TrainingArguments, peft, LLaMA-Factory and common scripts, accepted for ours. The
config (and run_config.yaml) records our name; two spellings of one key must agree."""


def _field_doc(name: str) -> str:
    return FIELD_DOCS.get(name, "")


def _parse_field_docs() -> dict[str, str]:
    """Read the attribute docstrings above (used by `--help` and by error messages)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(LoRAFinetuneConfig))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(getattr(nxt, "value", None), ast.Constant)
        ):
            docs[node.target.id] = str(nxt.value.value)  # type: ignore[union-attr]
    return docs


FIELD_DOCS = _parse_field_docs()
_HINTS = get_type_hints(LoRAFinetuneConfig)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, [*FIELD_NAMES, *ALIASES], n=1, cutoff=0.6)
    if close and close[0] in ALIASES:
        return f"did you mean `{close[0]}` (our `{ALIASES[close[0]]}`)?"
    if close:
        return f"did you mean `{close[0]}`?"
    return "see `lora-finetune train --help` for the valid keys"


def _coerce(name: str, value: Any) -> Any:
    """Turn a YAML/JSON/CLI value into the field's type, or raise ValueError with the reason."""
    hint = _HINTS[name]
    origin = get_origin(hint)
    args = [a for a in get_args(hint) if a is not type(None)]
    optional = type(None) in get_args(hint)
    if isinstance(value, str) and optional and value.strip().lower() in ("none", "null", ""):
        return None
    if value is None:
        if optional:
            return None
        raise ValueError("may not be empty")
    if origin is Literal:
        choices = get_args(hint)
        # YAML reads `use_liger: true` as a bool; the choice is spelled "true".
        sval = str(value).lower() if isinstance(value, bool) else str(value)
        if name == "template":
            sval = canonical_template(sval)
        if sval not in choices:
            raise ValueError(f"must be one of {', '.join(map(str, choices))}")
        return sval
    if name == "target_modules":
        if isinstance(value, str):
            v = value.strip()
            if v.startswith("["):  # a JSON/YAML list given on the command line
                value = yaml.safe_load(v)
            elif v in ("auto", "all-linear"):
                return v
            else:  # one name or a comma-separated list
                value = [p.strip() for p in v.split(",") if p.strip()]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError("must be `auto`, `all-linear`, or a list of module names")
        return value
    base = args[0] if args else hint
    if base is Path:
        if not isinstance(value, (str, Path)):
            raise ValueError("must be a path")
        return Path(value)
    if base is bool:
        if not isinstance(value, (bool, str)):
            raise ValueError("must be true or false")
        try:
            return parse_bool(value)
        except ValueError:
            raise ValueError("must be true or false") from None
    if base is int:
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise ValueError("must be an integer") from None
    if base is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a number, e.g. 1e-4") from None
    if base is str:
        if isinstance(value, (dict, list)):
            raise ValueError("must be a string")
        return str(value)
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with errors that name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file {path} does not exist. Check the path, or run without --config to use the defaults."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {e.start}). Save it as UTF-8.") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text) if text.strip() else {}
        else:
            data = yaml.safe_load(text) or {}
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}, line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}). "
            "Fix the syntax (or write the config as YAML)."
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)}). "
            "Fix the syntax; a common cause is a tab or a missing space after ':'."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of key: value pairs, not a {type(data).__name__}.")
    # A saved run_config.yaml carries what the run resolved; it is information, not a setting.
    data.pop("resolved", None)
    return data


def build_config(
    values: dict[str, Any], source: str = "config", base: LoRAFinetuneConfig | None = None
) -> LoRAFinetuneConfig:
    """Apply `values` on top of `base` (or the defaults), reporting every problem at once."""
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        key_n = str(key).replace("-", "_")
        key_n = ALIASES.get(key_n, key_n)
        if key_n not in FIELD_NAMES:
            problems.append(f"unknown key `{key}`: {_suggest(key_n)}")
            continue
        try:
            coerced = _coerce(key_n, value)
        except ValueError as e:
            problems.append(f"{key_n}={value!r}: {e}")
            continue
        if key_n in kwargs and kwargs[key_n] != coerced:
            problems.append(
                f"`{spelled[key_n]}` and `{key}` are the same setting ({key_n}) with different values "
                f"({kwargs[key_n]!r} and {coerced!r}); keep one"
            )
        kwargs[key_n], spelled[key_n] = coerced, str(key)
    if kwargs.get("epochs") is not None and "steps" not in kwargs:
        kwargs["steps"] = None  # epochs asked for: the number of steps follows from the data
    elif kwargs.get("epochs") is not None and kwargs.get("steps") is not None:
        problems.append(
            f"steps={kwargs['steps']} and epochs={kwargs['epochs']} are both given; training runs for "
            "a number of steps or of epochs: keep one"
        )
    _methods_by_loss(kwargs, problems)
    cfg = dataclasses.replace(base or LoRAFinetuneConfig(), **kwargs)
    if cfg.packing is None:  # decided once and recorded: pretraining packs documents, the rest pads
        cfg.packing = cfg.method == "pt"
    problems += cfg.validate()
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source} has {len(problems)} problem(s):\n{lines}")
    return cfg


METHODS_AS_LOSS = ("orpo", "simpo")
"""LLaMA-Factory writes ORPO and SimPO as `stage: dpo` + `pref_loss: orpo|simpo`; here they are methods."""


def _methods_by_loss(kwargs: dict[str, Any], problems: list[str]) -> None:
    """`pref_loss: orpo` / `loss_type: simpo` (LLaMA-Factory's spelling) -> `method: orpo` / `simpo`."""
    loss = kwargs.get("loss_type")
    if loss in METHODS_AS_LOSS:
        if kwargs.get("method", "dpo") not in ("dpo", loss):
            problems.append(
                f"loss_type={loss!r} is a preference method of its own; it does not go with method={kwargs['method']!r}"
            )
            return
        kwargs["method"], kwargs["loss_type"] = loss, "sigmoid"
    elif loss == "kto_pair":
        problems.append("loss_type='kto_pair' is no longer in TRL; use method: kto with answers labelled true/false")
        kwargs.pop("loss_type")  # said once


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> LoRAFinetuneConfig:
    """Defaults, then the file (YAML or JSON), then overrides; all problems reported together."""
    values: dict[str, Any] = {}
    source = "the command line"
    if path is not None:
        values.update(read_config_file(Path(path)))
        source = f"config {path} (with command-line overrides)" if overrides else f"config {path}"
    values.update(overrides or {})
    return build_config(values, source=source)


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """Turn `--key value` / `--key=value` / `--flag` pairs into a dict (values stay strings)."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ConfigError(
                f"Unexpected argument `{tok}`: settings are given as --key value (for example --steps 100)."
            )
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            out[key] = val
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[key] = argv[i + 1]
            i += 2
        else:
            out[key] = "true"  # a bare flag such as --overwrite
            i += 1
    return out


def describe_fields() -> str:
    """One line per field: name, default and doc (for --help)."""
    lines = []
    for f in fields(LoRAFinetuneConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  --{f.name} (default {default}): {_field_doc(f.name)}")
    return "\n".join(lines)


__all__ = [
    "LoRAFinetuneConfig",
    "load_config",
    "build_config",
    "read_config_file",
    "parse_overrides",
    "describe_fields",
    "cache_folder",
    "default_cache_dir",
    "FIELD_NAMES",
]
