"""Data: files -> raw rows (readers.py) -> one normalised record shape (formats.py); the demo
samples (demo.py); and the padding collator every batch of encoded samples goes through
(collate.py)."""

from __future__ import annotations

from .collate import PadCollator
from .demo import build_dummy_dataset, dummy_rows
from .formats import Record, detect_format, load_records, load_source, normalize_row, normalize_rows, records_from_rows
from .readers import SUFFIXES, read_rows

__all__ = [
    "PadCollator",
    "Record",
    "SUFFIXES",
    "build_dummy_dataset",
    "detect_format",
    "dummy_rows",
    "load_records",
    "load_source",
    "normalize_row",
    "normalize_rows",
    "read_rows",
    "records_from_rows",
]
