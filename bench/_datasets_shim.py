"""A stand-in for the `datasets` package, used by the GPU benchmark only when it is missing.

GPU machines are sometimes set up with torch/transformers/peft but without `datasets`. Both
pipelines need just `Dataset.from_list`, `.map(batched=True)`, `.train_test_split`,
`column_names` and indexing; this list-backed version provides exactly that, so the benchmark
still runs (and says so in its output). transformers sees no `datasets` installed and treats it
as a plain torch Dataset.
"""

from __future__ import annotations

import random
import sys
import types
from collections.abc import Callable
from typing import Any

import torch


class Dataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    @classmethod
    def from_list(cls, rows: list[dict[str, Any]]) -> Dataset:
        return cls([dict(r) for r in rows])

    @classmethod
    def from_dict(cls, cols: dict[str, list[Any]]) -> Dataset:
        keys = list(cols)
        n = len(cols[keys[0]]) if keys else 0
        return cls([{k: cols[k][i] for k in keys} for i in range(n)])

    @property
    def column_names(self) -> list[str]:
        return list(self.rows[0]) if self.rows else []

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            return [r[key] for r in self.rows]
        return self.rows[key]

    def __iter__(self):
        return iter(self.rows)

    def remove_columns(self, columns: list[str] | str) -> Dataset:
        drop = {columns} if isinstance(columns, str) else set(columns)
        return Dataset([{k: v for k, v in r.items() if k not in drop} for r in self.rows])

    def map(self, fn: Callable, batched: bool = False, remove_columns: list[str] | None = None, **_: Any) -> Dataset:
        drop = set(remove_columns or [])
        out = []
        if batched:
            cols = {k: [r[k] for r in self.rows] for k in self.column_names}
            new = dict(fn(cols))
            n = len(next(iter(new.values()))) if new else 0
            for i in range(n):
                row = {k: v for k, v in self.rows[i].items() if k not in drop}
                row.update({k: v[i] for k, v in new.items()})
                out.append(row)
        else:
            for r in self.rows:
                row = {k: v for k, v in r.items() if k not in drop}
                row.update(fn(r))
                out.append(row)
        return Dataset(out)

    def train_test_split(self, test_size: float = 0.1, seed: int | None = None, **_: Any):
        order = list(range(len(self.rows)))
        random.Random(seed).shuffle(order)
        n_test = max(1, round(len(order) * test_size)) if test_size else 0
        test = [self.rows[i] for i in order[:n_test]]
        train = [self.rows[i] for i in order[n_test:]]
        return DatasetDict({"train": Dataset(train), "test": Dataset(test)})


class DatasetDict(dict):
    def map(self, fn: Callable, **kw: Any) -> DatasetDict:
        return DatasetDict({k: v.map(fn, **kw) for k, v in self.items()})


def install(force: bool = False) -> bool:
    """Put the shim in sys.modules if `datasets` cannot be imported (or `force`); True if
    installed. Call it before importing transformers."""
    if not force:
        try:
            import datasets  # noqa: F401

            return False
        except Exception:
            pass
    import importlib.machinery

    mod = types.ModuleType("datasets")
    mod.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    mod.Dataset = Dataset  # type: ignore[attr-defined]
    mod.DatasetDict = DatasetDict  # type: ignore[attr-defined]
    mod.__version__ = "2.0.0"  # what transformers checks before calling remove_columns
    mod.__lora_finetune_shim__ = True  # type: ignore[attr-defined]
    sys.modules["datasets"] = mod
    return True
