"""ChatGLM-6B (v1): still remote code; readable errors for the transformers versions its code
breaks on."""

from __future__ import annotations

import logging

from ...errors import ModelError

log = logging.getLogger(__name__)

# ChatGLM-6B's README recommends 4.27.1 and says 4.23.1 or newer; 4.34 reordered tokenizer
# initialisation, which breaks its tokenizer (`no attribute 'sp_tokenizer'`).
V1_TRANSFORMERS_MIN = "4.23.1"
V1_TRANSFORMERS_BELOW = "4.34"
V1_TRANSFORMERS_RANGE_TEXT = "4.23.1 to 4.33.x (4.27.1 recommended)"


def _v1_advice() -> str:
    return (
        f"ChatGLM-6B (v1) runs only through its own remote code, which is known to work with transformers "
        f"{V1_TRANSFORMERS_RANGE_TEXT}. Install one of those (e.g. pip install 'transformers==4.27.1') "
        "in a separate environment for v1, or move to ChatGLM2/ChatGLM3, which this package converts "
        "to native transformers."
    )


def check_v1_transformers_version(installed: str | None = None) -> None:
    """Raise a ModelError unless the installed transformers is one ChatGLM-6B v1's remote code works with."""
    from packaging.version import InvalidVersion, Version

    if installed is None:
        import transformers

        installed = transformers.__version__
    try:
        version = Version(installed)
    except InvalidVersion:
        log.warning("cannot parse transformers version %r; not checking ChatGLM-6B compatibility", installed)
        return
    if not Version(V1_TRANSFORMERS_MIN) <= version < Version(V1_TRANSFORMERS_BELOW):
        raise ModelError(f"transformers {installed} is installed. {_v1_advice()}")


# (substring of the error, what it means)
_V1_FAILURES = (
    ("sp_tokenizer", "its tokenizer sets attributes after transformers >= 4.34 already needs them"),
    ("has no attribute 'tokenizer'", "its tokenizer sets attributes after transformers >= 4.34 already needs them"),
    ("does not recognize this architecture", "transformers has no built-in 'chatglm' model type"),
    ("trust_remote_code", "the checkpoint needs trust_remote_code=True"),
    ("_extract_past_from_model_output", "its generation code calls a method removed from newer transformers"),
    ("cannot import name", "its code imports something newer transformers removed"),
    ("no attribute 'generate'", "newer transformers no longer gives remote models generate()"),
    ("GenerationMixin", "newer transformers no longer gives remote models generate()"),
)


def explain_v1_load_failure(exc: BaseException) -> ModelError:
    """A ModelError explaining why loading ChatGLM-6B v1 failed, for `raise ... from exc`."""
    text = f"{type(exc).__name__}: {exc}"
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        installed = package_version("transformers")
    except PackageNotFoundError:
        installed = "not installed"
    for needle, meaning in _V1_FAILURES:
        if needle in text:
            return ModelError(
                f"Loading ChatGLM-6B failed ({text.splitlines()[0][:300]}): {meaning}. "
                f"transformers {installed} is installed. {_v1_advice()}"
            )
    return ModelError(
        f"Loading ChatGLM-6B failed ({text.splitlines()[0][:300] if text else type(exc).__name__}) "
        f"with transformers {installed}. If the traceback points into the checkpoint's own "
        f"modeling_chatglm.py or tokenization_chatglm.py, the cause is the transformers version: "
        f"{_v1_advice()}"
    )
