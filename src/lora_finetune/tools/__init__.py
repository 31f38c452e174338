"""Tools that look at a model without training it: the memory estimate (`estimate.py`) and the
listing of the layers LoRA can wrap (`modules.py`)."""

from __future__ import annotations

from .estimate import Estimate, Setup, estimate_memory, load_shape, suggest
from .modules import ModuleGroup, ModulesReport, list_modules

__all__ = [
    "Estimate",
    "ModuleGroup",
    "ModulesReport",
    "Setup",
    "estimate_memory",
    "list_modules",
    "load_shape",
    "suggest",
]
