"""Every closed set of choices a user can name, defined once.

The config (`config.py`), the CLI flags (`cli/`) and `--help` all read these, so a new template,
dtype or data format is added here and nowhere else. Each set is a `Literal` type (what the
config's fields are annotated with) plus the tuple of its values (what argparse's `choices=`
and error messages use).
"""

from __future__ import annotations

from typing import Literal, get_args

Quantization = Literal["none", "4bit", "8bit"]
"""Base-weight storage: full precision, NF4 (QLoRA) or int8 through bitsandbytes."""
DType = Literal["auto", "fp32", "bf16", "fp16"]
"""Compute dtype; `auto` picks bf16 / fp16 on a GPU and fp32 on a CPU."""
TemplateName = Literal["auto", "chat", "qa", "chatglm3", "chatglm2", "chatglm"]
"""Prompt formats (see templates/): `qa` is the plain 问/补充信息/答 text format."""
DataFormat = Literal["auto", "alpaca", "messages", "sharegpt"]
LoraBackend = Literal["peft", "reference"]
Resume = Literal["no", "auto"]
LigerMode = Literal["auto", "true", "false"]
Method = Literal["sft", "pt", "dpo", "orpo", "simpo", "kto"]
"""Training stages: supervised fine-tuning, continued pretraining, and the preference methods."""
DataKind = Literal["instruction", "text", "preference", "kto"]
"""What a dataset's records are: instructions with answers, raw text, chosen/rejected pairs, or
answers labelled desirable/undesirable (KTO)."""

QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
DTYPES: tuple[str, ...] = get_args(DType)
TEMPLATES: tuple[str, ...] = get_args(TemplateName)
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
LORA_BACKENDS: tuple[str, ...] = get_args(LoraBackend)
LIGER_MODES: tuple[str, ...] = get_args(LigerMode)
METHODS: tuple[str, ...] = get_args(Method)
DATA_KINDS: tuple[str, ...] = get_args(DataKind)

METHOD_KIND: dict[str, str] = {
    "sft": "instruction",
    "pt": "text",
    "dpo": "preference",
    "orpo": "preference",
    "simpo": "preference",
    "kto": "kto",
}
"""The data kind each training method trains on."""

METHOD_SEQUENCES: dict[str, int] = {"sft": 1, "pt": 1, "dpo": 2, "orpo": 2, "simpo": 2, "kto": 2}
"""Sequences one sample puts through the model per step (a pair: the chosen and the rejected;
KTO: the completion and a mismatched one for its KL term). Memory planning multiplies by it."""

METHOD_FUSED_LOGITS: frozenset[str] = frozenset({"dpo", "kto"})
"""Methods whose TRL trainer computes log-probabilities without full logits (its fused LM head),
so memory planning counts no tokens x vocabulary logits for them."""

BEST_METRICS: dict[str, bool] = {
    "loss": False,
    "rewards/accuracies": True,
    "rewards/margins": True,
    "rewards/chosen": True,
}
"""Held-out metrics `metric_for_best_model` may name, and whether higher is better. The reward
metrics are TRL's; rewards/rejected, logps and kl are left out: their "better" is no direction."""

METHOD_METRICS: dict[str, tuple[str, ...]] = {
    "sft": ("loss",),
    "pt": ("loss",),
    "dpo": ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen"),
    "orpo": ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen"),
    "simpo": ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen"),
    "kto": ("loss", "rewards/margins", "rewards/chosen"),  # TRL's KTO has no pairs to count accuracy on
}
"""The metrics each method's evaluation reports, of BEST_METRICS."""


def best_metric_name(name: str) -> str:
    """`eval_rewards/accuracies` and `rewards/accuracies` are one metric (the Trainer adds `eval_`)."""
    name = str(name).strip()
    return name[len("eval_") :] if name.startswith("eval_") else name


DPO_LOSSES: tuple[str, ...] = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)
"""`loss_type` values for `method: dpo`: TRL's DPOTrainer losses (sigmoid is the DPO paper's)."""

LR_SCHEDULERS: tuple[str, ...] = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
"""transformers schedules that work from our settings alone (steps, warmup_ratio)."""
SCHEDULERS_NEEDING_SETTINGS: dict[str, str] = {
    "reduce_lr_on_plateau": "an evaluation metric every step and its patience settings",
    "cosine_with_min_lr": "min_lr or min_lr_rate in lr_scheduler_kwargs",
    "cosine_warmup_with_min_lr": "min_lr or min_lr_rate in lr_scheduler_kwargs",
    "warmup_stable_decay": "num_decay_steps and the stable phase in lr_scheduler_kwargs",
    "greedy": "an evaluation metric every step (the greedy schedule's settings)",
}
"""transformers schedules Trainer rejects (or misbehaves with) without settings we don't expose."""

MERGE_DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp32")
"""Weight dtypes a merged model can be written in (no `auto`: the file needs one)."""

ExportFormat = Literal["gguf", "gguf-lora", "ollama"]
"""`export --format`: a merged GGUF, the adapter as a llama.cpp LoRA GGUF, or a GGUF + Modelfile."""
ExportOuttype = Literal["f16", "bf16", "q8_0"]
"""GGUF weight types `export` writes (1-D tensors such as norms stay f32, as llama.cpp's do)."""
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
EXPORT_OUTTYPES: tuple[str, ...] = get_args(ExportOuttype)

TEMPLATE_ALIASES: dict[str, str] = {"seed": "qa"}
"""Old names still accepted. `seed` was the first name of the 问/答 format (it came from the
teaching script this project grew out of); configs and run records that say `seed` keep
working and are read as `qa`."""


def canonical_template(name: str) -> str:
    """`name` with old aliases replaced by the current name (`seed` -> `qa`)."""
    return TEMPLATE_ALIASES.get(name, name)


_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def parse_bool(value: object) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case) or a real bool; ValueError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


__all__ = [
    "BEST_METRICS",
    "DATA_FORMATS",
    "DATA_KINDS",
    "DPO_LOSSES",
    "METHODS",
    "METHOD_KIND",
    "METHOD_METRICS",
    "best_metric_name",
    "DataKind",
    "Method",
    "DTYPES",
    "EXPORT_FORMATS",
    "EXPORT_OUTTYPES",
    "LIGER_MODES",
    "LORA_BACKENDS",
    "LR_SCHEDULERS",
    "MERGE_DTYPES",
    "QUANTIZATIONS",
    "SCHEDULERS_NEEDING_SETTINGS",
    "TEMPLATES",
    "TEMPLATE_ALIASES",
    "DataFormat",
    "DType",
    "LigerMode",
    "LoraBackend",
    "Quantization",
    "Resume",
    "TemplateName",
    "canonical_template",
    "parse_bool",
]
