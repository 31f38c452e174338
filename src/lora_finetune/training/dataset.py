"""The run's data: records -> template -> (input_ids, labels), split into train and eval.

The template is resolved here, once per run (`auto` -> the family's choice, `chat` or `qa`);
the name goes into the run record so later commands use the same one.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import LoRAFinetuneConfig
from ..data import dummy_rows, load_source, records_from_rows
from ..errors import ConfigError, DataError
from ..models.families import template_for, template_name_for
from ..templates import EncodeStats, encode_records

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


def prepare_data(
    cfg: LoRAFinetuneConfig, tokenizer: PreTrainedTokenizerBase, model_type: str | None = None
) -> PreparedData:
    if cfg.data_path is None:
        records = records_from_rows(dummy_rows(), source="build_dummy_dataset()")
        sha = None
    else:
        records, sha = load_source(cfg.data_path, cfg.data_format, cfg.dataset)
    template_name = template_name_for(cfg.template, tokenizer, model_type)
    template = template_for(template_name, tokenizer, model_type, cfg.system_prompt)
    train_recs, eval_recs = split_records(records, cfg.eval_fraction, cfg.seed)
    train_enc, stats = encode_records(train_recs, tokenizer, template, cfg.max_length)
    eval_enc, eval_stats = encode_records(eval_recs, tokenizer, template, cfg.max_length)
    for k in ("total", "kept", "too_long", "no_answer_tokens", "prompt_tokens", "answer_tokens"):
        setattr(stats, k, getattr(stats, k) + getattr(eval_stats, k))
    stats.longest = max(stats.longest, eval_stats.longest)
    where = (f"{cfg.dataset} in {cfg.data_path}" if cfg.dataset else cfg.data_path) or "the demo data"
    if not train_enc:
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
    log.info("data: %s (template %s)", stats.summary(cfg.max_length), template_name)
    as_rows = lambda encs: [{"input_ids": e.input_ids, "labels": e.labels} for e in encs]  # noqa
    return PreparedData(as_rows(train_enc), as_rows(eval_enc), template_name, stats, sha)


__all__ = ["PreparedData", "prepare_data", "split_records"]
