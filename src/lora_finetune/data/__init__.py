"""Data: files -> raw rows (readers.py) -> one normalised record shape per kind (formats.py for
instructions, kinds.py for raw text, preference pairs and KTO answers; turns.py the conversation
parsing they share); the demo data (demo.py); and the padding collator every batch of encoded
samples goes through (collate.py)."""

from __future__ import annotations

from .collate import PadCollator
from .demo import build_dummy_dataset, demo_rows, dummy_rows
from .formats import Record, detect_format, load_records, load_source, normalize_row, normalize_rows, records_from_rows
from .kinds import KIND_NAMES, record_kind
from .readers import SUFFIXES, read_rows

__all__ = [
    "KIND_NAMES",
    "PadCollator",
    "Record",
    "SUFFIXES",
    "build_dummy_dataset",
    "demo_rows",
    "detect_format",
    "dummy_rows",
    "load_records",
    "load_source",
    "normalize_row",
    "normalize_rows",
    "read_rows",
    "record_kind",
    "records_from_rows",
]
