"""Using a trained adapter, from its folder alone: load and generate (`inference.py`), answer
whole files (`files.py`), chat (`chat.py`), score against references (`evaluation.py`), measure
which answer of a pair a model prefers (`preference.py`; a file of pairs: `pair_eval.py`) and
fold the adapter into its base (`merging.py`). Nothing here imports `training/`: what a run decided
is read from its record (`run_record.py`)."""

from __future__ import annotations

from .chat import ChatSession, GenerationSettings
from .evaluation import EvalResult, evaluate
from .files import GenerateFileResult, generate_file
from .inference import InferenceModel, answer, generate, load_for_inference, stream_reply
from .merging import MergeResult, merge
from .pair_eval import evaluate_pairs
from .preference import preference_accuracy, score_pairs

__all__ = [
    "ChatSession",
    "EvalResult",
    "GenerateFileResult",
    "GenerationSettings",
    "MergeResult",
    "InferenceModel",
    "answer",
    "evaluate",
    "evaluate_pairs",
    "generate",
    "generate_file",
    "load_for_inference",
    "merge",
    "preference_accuracy",
    "score_pairs",
    "stream_reply",
]
