"""The run's data: records -> template -> token ids, split into train and eval.

The data must be the kind the method trains on (choices.METHOD_KIND): instructions for `sft`,
raw text for `pt`, preference pairs for `dpo`/`orpo`/`simpo`, labelled answers for `kto`; any
other kind is refused with both names, never read as something it is not (a KTO file read as
SFT would train on its undesirable answers too). Each kind has its encoder (templates/): SFT's
(input_ids, labels), documents for pretraining, TRL's prompt/answer ids for the others.

The template is resolved here, once per run (`auto` -> the family's choice, `chat` or `qa`);
the name goes into the run record so later commands use the same one (a pretraining run records
it too: chat and serve format prompts with it).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..choices import DATA_KINDS, METHOD_KIND
from ..config import LoRAFinetuneConfig
from ..data import KIND_NAMES, demo_rows, load_source, record_kind, records_from_rows
from ..data.placeholders import placeholder_warning
from ..errors import ConfigError, DataError
from ..models.families import template_for, template_name_for
from ..templates import IGNORE_INDEX, EncodeStats, encode_kind

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: list[dict[str, list[int]]]
    eval: list[dict[str, list[int]]]
    template: str
    stats: EncodeStats
    data_sha256: str | None


BEST_MIN_SAMPLES = 20
BEST_MIN_ANSWER_TOKENS = 500
"""Below these, a held-out set cannot tell checkpoints apart. A token's loss varies by 1.5-2.5
nats, so the mean over N answer tokens moves by about 2/sqrt(N) by chance: 0.09 at 500 tokens,
more than neighbouring checkpoints usually differ below that; and tokens of one sample rise and
fall together, so a few long samples do not make up for many."""


def too_small_to_choose_by(rows: Any) -> str | None:
    """None when `rows` (encoded eval rows) can tell checkpoints apart; else how many there are,
    in words ("2 held-out sample(s) (37 answer tokens)")."""
    n = len(rows)
    labelled = [row["labels"] for row in rows if "labels" in row]
    tokens = sum(sum(1 for t in labels if t != IGNORE_INDEX) for labels in labelled) if labelled else None
    if n >= BEST_MIN_SAMPLES and (tokens is None or tokens >= BEST_MIN_ANSWER_TOKENS):
        return None
    return f"{n} held-out sample(s)" + (f" ({tokens} answer tokens)" if tokens is not None else "")


def small_eval_warning(cfg: LoRAFinetuneConfig, data: PreparedData) -> str | None:
    """What to say when load_best_model_at_end (or early stopping) would choose by an eval set too
    small to mean anything; None when it is large enough or nothing is chosen by it."""
    if not (cfg.load_best_model_at_end or cfg.early_stopping_patience is not None) or not data.eval:
        return None
    held = too_small_to_choose_by(data.eval)
    if held is None:
        return None
    return (
        f"load_best_model_at_end keeps the checkpoint with the best {cfg.metric_for_best_model} on {held}: "
        f"too few to tell checkpoints apart (below {BEST_MIN_SAMPLES} samples or {BEST_MIN_ANSWER_TOKENS} answer "
        "tokens, chance moves the eval loss more than training does), so which checkpoint is kept is luck. Hold "
        "out more (a larger eval_fraction, or more data), or set load_best_model_at_end: false to keep the last step."
    )


def split_records(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle with the run's seed, then hold out `eval_fraction` (at least one sample)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = 0
    if eval_fraction > 0 and len(records) >= 2:
        n_eval = max(1, round(len(records) * eval_fraction))
    if n_eval >= len(records):
        raise ConfigError(
            f"eval_fraction={eval_fraction} holds out all {len(records)} samples "
            "and leaves none for training. Lower eval_fraction or add data."
        )
    held = set(order[:n_eval])
    return ([records[i] for i in order if i not in held], [records[i] for i in order[:n_eval]])


def methods_for(kind: str) -> str:
    return " or ".join(m for m, k in METHOD_KIND.items() if k == kind)


def check_method_kind(records: list, method: str, where: str) -> None:
    """The data is the kind `method` trains on, or one message naming both."""
    found, wanted = record_kind(records[0]), METHOD_KIND[method]
    if found != wanted:
        raise DataError(
            f"{where} holds {KIND_NAMES[found]}, but method {method} trains on {KIND_NAMES[wanted]}. "
            f"Use method: {methods_for(found)} for this data, or give {method} a dataset of {KIND_NAMES[wanted]}."
        )


def load_method_records(cfg: LoRAFinetuneConfig) -> tuple[list, str | None, str]:
    """The run's records (the method's demo data without a data_path), their sha256 and a label."""
    kind = METHOD_KIND[cfg.method]
    if cfg.data_path is None:
        return records_from_rows(demo_rows(kind), source="the demo data", kinds=(kind,)), None, "the demo data"
    records, sha = load_source(cfg.data_path, cfg.data_format, cfg.dataset, kinds=DATA_KINDS)
    where = f"{cfg.dataset} in {cfg.data_path}" if cfg.dataset else str(cfg.data_path)
    check_method_kind(records, cfg.method, where)
    return records, sha, where


def prepare_data(
    cfg: LoRAFinetuneConfig, tokenizer: PreTrainedTokenizerBase, model_type: str | None = None
) -> PreparedData:
    records, sha, where = load_method_records(cfg)
    placeholders = placeholder_warning(records, where)
    if placeholders:
        log.warning(placeholders)
    kind = METHOD_KIND[cfg.method]
    template_name = template_name_for(cfg.template, tokenizer, model_type)
    template = template_for(template_name, tokenizer, model_type, cfg.system_prompt)
    train_recs, eval_recs = split_records(records, cfg.eval_fraction, cfg.seed)
    train_rows, stats = encode_kind(kind, train_recs, tokenizer, template, cfg.max_length)
    eval_rows, eval_stats = encode_kind(kind, eval_recs, tokenizer, template, cfg.max_length)
    for k in ("total", "kept", "too_long", "no_answer_tokens", "prompt_tokens", "answer_tokens"):
        setattr(stats, k, getattr(stats, k) + getattr(eval_stats, k))
    stats.longest = max(stats.longest, eval_stats.longest)
    if not train_rows:
        if stats.too_long:
            raise DataError(
                f"{where}: every training sample is longer than max_length="
                f"{cfg.max_length} tokens (the longest has {stats.longest}). Raise "
                f"max_length (e.g. --max_length {stats.longest}) or shorten the "
                "samples."
            )
        raise DataError(
            f"{where}: no usable training samples remain after encoding "
            f"({stats.summary(cfg.max_length)}). Check that answers are not empty."
        )
    log.info("data: %s (%s, template %s)", stats.summary(cfg.max_length), KIND_NAMES[kind], template_name)
    return PreparedData(train_rows, eval_rows, template_name, stats, sha)


__all__ = ["PreparedData", "prepare_data", "split_records"]
