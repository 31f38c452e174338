"""Finding and loading the base model and its tokenizer.

- `resolve_model(name)`: a hub id, a local folder, or the bundled `smollm2-135m-instruct`
  (bundled.py). A folder whose family has a converter (ChatGLM2/3 -> native GLM) is converted
  once into the cache and the converted folder is what gets loaded.
- `load_tokenizer` / `load_model`: dtype `auto`, 4/8-bit through `BitsAndBytesConfig`, with a
  warned, recorded fallback to full precision where bitsandbytes or CUDA is missing.
  `load_model` returns a `LoadedModel` saying what was actually used.
- `meta_model`: the module tree without weights (instant), for checking LoRA targets before
  anything expensive happens.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import cache_folder
from ..errors import LoraFinetuneError, ModelError
from ..folders import verify_manifest
from .bundled import ensure_bundled_model, is_bundled_name
from .families import family_for
from .hub_kernels import NO_HUB_KERNELS

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def looks_like_path(name: str) -> bool:
    # A hub id is exactly `org/name`; anything else with a separator is meant as a path, and so
    # is `models/qwen3` when a local `models/` folder exists.
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
        or ("/" in name and Path(name.split("/")[0]).is_dir())
    )


def folder_model_type(path: Path) -> str | None:
    """`model_type` from a model folder's config.json (read as JSON: nothing is imported)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(
            f"{Path(path) / 'config.json'} cannot be read as JSON ({e}). Restore "
            "the file from the model's original download."
        ) from None
    return config.get("model_type") if isinstance(config, dict) else None


def convert_if_needed(path: Path, cache_dir: Path) -> Path:
    """The folder to load for `path`: converted once into the cache when its family has a
    converter (ChatGLM2/3 -> native GLM), else `path` itself."""
    converter = family_for(folder_model_type(path)).converter
    return converter(path, cache_dir) if converter is not None else path


def _verified(folder: Path) -> Path:
    """A folder this tool wrote (merged, converted, bundled) checked against its manifest: a
    damaged file is named here, not found as garbage output later. (~1 GB/s of sha256.)"""
    try:
        verify_manifest(folder)
    except LoraFinetuneError as e:
        raise ModelError(str(e)) from None
    return folder


def resolve_model(name: str, cache_dir: Path | None = None) -> str:
    """Turn `model_name` into what `from_pretrained` takes: a folder path or a hub id."""
    name = str(name).strip()
    if is_bundled_name(name):
        return str(_verified(ensure_bundled_model(cache_folder(cache_dir))))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model_name {name} is a file; point it at the model folder that holds config.json.")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"Model folder {path} has no config.json, so it is not a transformers "
                "model folder. Point model_name at the folder that holds config.json "
                "and the weights (or use smollm2-135m-instruct)."
            )
        return str(_verified(convert_if_needed(_verified(path), cache_folder(cache_dir))))
    if looks_like_path(name):
        raise ModelError(
            f"Model folder {name} does not exist. Check the path, or use the bundled "
            "model with --model_name smollm2-135m-instruct."
        )
    _check_hub(name)
    return name  # a hub id, in the local cache or reachable


def _check_hub(name: str) -> None:
    """A hub id that is not in the local cache: fail in a second when it cannot be downloaded,
    instead of after half a minute of retries inside from_pretrained."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - a transformers dependency
        return
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: loads offline
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise ModelError(
            f"`{name}` is a hub id that is not in the local Hugging Face cache, and HF_HUB_OFFLINE is set, "
            "so it cannot be downloaded. Use the bundled model (--model_name smollm2-135m-instruct), pass "
            "--model_name PATH to a local model folder, or unset HF_HUB_OFFLINE where you have network access."
        )
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(name, timeout=10)
    except Exception as e:  # no network, DNS, proxy, 404, gated: all worth one clear message
        if type(e).__name__ in ("RepositoryNotFoundError", "GatedRepoError"):
            raise ModelError(
                f"`{name}` is not a model on the Hugging Face hub you can access ({type(e).__name__}). Check the "
                "id (it is `org/name`, e.g. Qwen/Qwen3-0.6B), log in for gated models, or pass a local folder."
            ) from None
        raise _hub_error(name, e) from None


def _hub_error(name: str, exc: Exception) -> ModelError:
    return ModelError(
        f"Could not load `{name}`: it is not a local folder, not in the Hugging Face cache, and the "
        f"hub could not be reached ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}). "
        "(Offline on purpose? Set HF_HUB_OFFLINE=1 to fail at once.) Use "
        "the bundled model (--model_name smollm2-135m-instruct), or download the model where you "
        "have network access and pass --model_name PATH to its folder."
    )


@contextmanager
def _own_code_errors(path: str) -> Iterator[None]:
    """ChatGLM-6B v1's own code breaks on current transformers in many places (config,
    tokenizer, model): explain that, naming the versions it works with."""
    try:
        yield
    except (AttributeError, TypeError, ImportError, NameError) as e:
        if _own_code_loader(path):
            from .chatglm import explain_v1_load_failure

            raise explain_v1_load_failure(e) from None
        raise


def read_model_config(name: str, trust_remote_code: bool = False) -> PretrainedConfig:
    from transformers import AutoConfig

    try:
        with _own_code_errors(name):
            return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"`{name}` ships its own Python code (its architecture is not built into "
                "transformers). Running it means executing code from the model folder on your "
                "machine: pass --trust_remote_code true only if you trust its source."
            ) from None
        raise ModelError(f"Cannot read the config of `{name}`: {e}") from None
    except OSError as e:
        raise _hub_error(name, e) from None


# --------------------------------------------------------------------------- dtype and device
def cpu_native_half(dtype: str) -> bool:
    """Whether this CPU computes `bf16` / `fp16` matrix products natively (AVX512-BF16 or AMX
    for bf16, AMX-FP16 for fp16). Without it they are emulated: 5x slower than fp32 here."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported") if dtype == "bf16" else ("_is_amx_fp16_supported",)
    for name in checks:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # a torch build without the probe: treat as not native
            continue
    return False


def _warn_slow_cpu_half(requested: str) -> None:
    # Measured (bench/RESULTS.md): a 1840x576x1536 product ran at 29 GFLOP/s in bf16 with oneDNN
    # limited to AVX2, against 149 in fp32; TRL's default `bf16=True` hits exactly this on CPUs.
    if not torch.cuda.is_available() and not cpu_native_half(requested):
        log.warning(
            "dtype: %s on a CPU without native %s matrix products (no %s): they are emulated, about "
            "5x slower than fp32. Use dtype: auto (fp32 on a CPU) unless you need the memory.",
            requested,
            requested,
            "AVX512-BF16 or AMX" if requested == "bf16" else "AMX-FP16",
        )


def pick_dtype(requested: str) -> torch.dtype:
    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ModelError(
                f"dtype: bf16, but this GPU ({torch.cuda.get_device_name()}) has no "
                "bf16 support. Use dtype: fp16 or auto."
            )
        return torch.bfloat16
    if requested == "fp16":
        return torch.float16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


BNB_CPU_MIN = (0, 48)
"""bitsandbytes runs NF4 and int8 on CPU (fp32 compute) from about this version on (tested 0.50)."""


def quantization_available() -> tuple[bool, str]:
    """Whether bitsandbytes can quantise here: on a CUDA GPU, or on the CPU with a recent
    bitsandbytes; else the reason, for the recorded fallback to full precision."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False, "bitsandbytes is not installed (pip install 'lora-finetune[quant]')"
    if torch.cuda.is_available():
        return True, ""
    try:
        from importlib.metadata import version

        parts = tuple(int(p) for p in version("bitsandbytes").split(".")[:2])
    except (ValueError, ImportError):
        parts = (0, 0)
    if parts < BNB_CPU_MIN:
        return False, (
            f"no CUDA GPU is available and bitsandbytes {'.'.join(map(str, parts))} has no CPU support "
            f"(pip install 'bitsandbytes>={'.'.join(map(str, BNB_CPU_MIN))}')"
        )
    return True, ""


def _quiet_bitsandbytes() -> None:
    # bitsandbytes logs per call on CPU ("MatMul8bitLt: inputs will be cast ...", a missing
    # optional `kernels` package): internal details, not about the user's run.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@dataclass
class LoadedModel:
    """What `load_model` loaded, and what it actually used."""

    model: PreTrainedModel
    dtype: torch.dtype
    quantization: str
    """What was actually used: none / 4bit / 8bit (a fallback to none is recorded in notes)."""
    notes: list[str] = field(default_factory=list)
    """Decisions worth recording in the run's metadata (fallbacks and why)."""


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "right") -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        with _own_code_errors(path):
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _hub_error(path, e) from None
    if tok.pad_token is None:
        # Safe because labels are masked by position, not by token id (data/collate.py).
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = padding_side
    return tok


def load_model(
    path: str,
    *,
    dtype: str = "auto",
    quantization: str = "none",
    trust_remote_code: bool = False,
    for_training: bool = True,
    device_map: Any = None,
) -> LoadedModel:
    """Load the base model with the dtype and quantisation asked for (or the recorded fallback)."""
    from transformers import AutoModelForCausalLM

    torch_dtype = pick_dtype(dtype)
    if dtype in ("bf16", "fp16"):
        _warn_slow_cpu_half(dtype)
    notes: list[str] = []
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code, **NO_HUB_KERNELS}
    used = quantization
    if quantization != "none":
        ok, why = quantization_available()
        if not ok:
            msg = (
                f"quantization={quantization} requested but {why}; loading full-precision "
                f"{str(torch_dtype).replace('torch.', '')} weights instead (the lesson document's FAQ "
                "advice for CPU machines)"
            )
            log.warning(msg)
            notes.append(msg)
            used = "none"
        else:
            from transformers import BitsAndBytesConfig

            on_gpu = torch.cuda.is_available()
            # On a GPU fp32 compute is wasted; on a CPU fp32 is the fast path (bf16 matmuls are
            # ~6x slower on CPUs without AMX), so QLoRA on CPU computes in fp32.
            compute = (
                torch_dtype
                if torch_dtype != torch.float32 or not on_gpu
                else (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
            )
            _quiet_bitsandbytes()
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=compute,
                )
                if quantization == "4bit"
                else BitsAndBytesConfig(load_in_8bit=True)
            )
            # Under DDP each process holds its own quantised copy on its own GPU.
            if on_gpu:
                local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
                kwargs["device_map"] = device_map or {"": local_rank}
            else:
                kwargs["device_map"] = device_map or {"": "cpu"}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    own_code = _own_code_loader(path)
    try:
        with MODEL_BUILD_LOCK, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*generation flags.*")
            if own_code:
                # ChatGLM-6B v1 registers no causal-LM class: its own code, through AutoModel.
                from transformers import AutoModel

                model = AutoModel.from_pretrained(path, **kwargs)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (AttributeError, TypeError, ImportError, NameError) as e:
        if own_code:
            from .chatglm import explain_v1_load_failure

            raise explain_v1_load_failure(e) from None
        raise
    except OSError as e:
        raise _hub_error(path, e) from None
    except pickle.UnpicklingError as e:
        # transformers reads .bin files with torch.load(weights_only=True): a pickle that would
        # run code (or build anything but tensors) is refused before it can.
        detail = next((ln for ln in str(e).splitlines() if "GLOBAL" in ln), str(e)[:200])
        raise ModelError(
            f"Refused to load the pickled .bin weights in {path}: they contain more than plain "
            f"tensors ({detail.strip()}), which could run code on your machine. Use a "
            "safetensors copy of the model from a source you trust."
        ) from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"`{path}` needs its own Python code to load. That means running code from the "
                "model folder: pass --trust_remote_code true only if you trust it."
            ) from None
        raise
    if used == "4bit" and not torch.cuda.is_available():
        from .bnb_cpu import keep_generic_cpu_path

        notes += keep_generic_cpu_path(model)
    if used != "none" and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return LoadedModel(model, torch_dtype, used, notes)


MODEL_BUILD_LOCK = threading.RLock()
"""accelerate's `init_empty_weights` (weightless models for checks and estimates) patches
`torch.nn.Module` for the whole process while it runs: a model built meanwhile in another
thread (the web UI, the server) would get meta tensors, and two overlapping uses can leave the
patch in place. Every weightless and every real model build takes this lock."""


def meta_model(path: str, trust_remote_code: bool = False) -> nn.Module:
    """The model's module tree with no weights (instant, no memory): for checking targets."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = read_model_config(path, trust_remote_code)
    with MODEL_BUILD_LOCK, _own_code_errors(path), init_empty_weights(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if family_for(getattr(config, "model_type", None)).loader == "auto_model":
            from transformers import AutoModel

            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # so a tied lm_head is counted once, as in the loaded model
    return model


def _own_code_loader(path: str) -> bool:
    """A folder whose family loads through `AutoModel` and its own code (ChatGLM-6B v1: v2/v3
    are converted by resolve_model, so a `chatglm` folder that reaches loading is v1)."""
    if not (Path(path) / "config.json").is_file():
        return False
    try:
        model_type = folder_model_type(Path(path))
    except ModelError:
        return False
    return family_for(model_type).loader == "auto_model"


__all__ = [
    "LoadedModel",
    "convert_if_needed",
    "load_model",
    "load_tokenizer",
    "meta_model",
    "pick_dtype",
    "quantization_available",
    "read_model_config",
    "resolve_model",
]
