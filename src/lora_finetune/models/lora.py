"""LoRA from scratch: one layer, the functions that put it into a model, and PEFT-format files.

A pretrained linear layer computes ``y = W x + b`` with a big frozen matrix ``W`` (out x in).
LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) learns a low-rank *correction*
instead of a new ``W``::

    y = W x + b + (alpha / r) * B A dropout(x)

where ``A`` is (r x in), ``B`` is (out x r) and ``r`` is tiny (4..64). Only ``A`` and ``B``
train, so the optimizer state is a fraction of a percent of the model, and the update
``delta_W = (alpha / r) * B @ A`` can later be folded into ``W`` ("merged") so inference costs
nothing extra.

What this file fixes in the reference layer from the teaching notes
------------------------------------------------------------------
The notes show a ``LoRALinear`` that looks right but is wrong in four ways:

1. **Zero/zero initialisation never trains.** With ``A = 0`` and ``B = 0`` the gradients are
   ``dL/dB = g (A x)^T = 0`` and ``dL/dA = B^T g x^T = 0`` (``g`` is the gradient flowing into
   the layer output): both are zero at step 0, so every optimizer step leaves them at zero
   forever. The fix, used by the paper, ``nn.Linear`` and PEFT: ``A`` gets Kaiming-uniform noise
   (``a = sqrt(5)``, the ``nn.Linear`` default) and ``B`` starts at zero. The branch then
   outputs zero at step 0 (the model starts exactly as the pretrained one) while ``dL/dB`` is
   non-zero, so ``B`` moves on the first step and ``A`` follows on the second.
2. **Dropout in the wrong place.** The notes apply dropout to the LoRA *output*; the paper and
   PEFT apply it to the *input* ``x`` before ``A``. Only the input version gives the same
   numbers (and the same random masks) as PEFT, so adapters trained here behave like PEFT's.
3. **Transposed shapes.** ``F.linear(x, W)`` already computes ``x @ W.T``; passing ``A.T``
   transposes twice and fails for any ``r != in_features``.
4. **Not actually a pretrained, frozen layer.** It creates a fresh ``torch.empty`` weight (random
   garbage, no bias) with ``requires_grad=True``. Here we *wrap* the model's existing
   ``nn.Linear`` (weight and bias) and freeze it.

Names follow PEFT (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``, ``scaling``) so a
model's state dict maps key-for-key onto PEFT's ``adapter_model.safetensors``:
``<module>.lora_A.weight`` here is ``base_model.model.<module>.lora_A.weight`` there.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..errors import ModelError
from .targets import count_parameters, matches_target

log = logging.getLogger(__name__)

# PEFT wraps the user's model twice (PeftModel.base_model = LoraModel, LoraModel.model = the
# model), so every key in its adapter file starts with this prefix.
PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# ---------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------


def lora_dtype_for(base_dtype: torch.dtype) -> torch.dtype:
    """The dtype for the trainable A and B given the frozen base weight's dtype.

    Why: fp16/bf16 have too few mantissa bits for many tiny Adam updates to register, and
    quantized bases (int8/uint8 storage) are not a float type at all. Like PEFT's default
    ``autocast_adapter_dtype``, we keep the adapter in float32 unless the base is already a
    full-precision float.
    """
    return base_dtype if base_dtype in (torch.float32, torch.float64) else torch.float32


class LoRALinear(nn.Module):
    """``y = base_layer(x) + scaling * lora_B(lora_A(lora_dropout(x)))`` around a frozen nn.Linear."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        check_lora_hparams(r, alpha, dropout)
        self.base_layer = base_layer
        # The pretrained weight and bias are never trained: they are the "W x + b" part.
        base_layer.requires_grad_(False)

        weight = base_layer.weight
        dtype = lora_dtype_for(weight.dtype)
        # A projects down to r dims, B projects back up. nn.Linear(in, out) stores an (out x in)
        # matrix, so lora_A.weight is A (r x in) and lora_B.weight is B (out x r), the shapes
        # PEFT stores. No bias: the base layer already has one.
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=weight.device, dtype=dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=weight.device, dtype=dtype)
        # Identity when p == 0 so eval and p == 0 training do not pay for a no-op dropout call.
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # alpha / r keeps the update's size roughly independent of r, so you can change r
        # without re-tuning the learning rate.
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        # True while delta_W lives inside base_layer.weight (see merge()).
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform(a=sqrt(5)), B = 0: starts as the base model and can still learn.

        Why not zero/zero: see the module docstring; both gradients would be exactly zero.
        Why not random/random: the model would no longer start as the pretrained model.
        """
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # HF code sometimes reads `module.weight` (e.g. of lm_head); answer with the frozen base's.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def delta_weight(self) -> torch.Tensor:
        """delta_W = scaling * B @ A, shape (out x in): what LoRA adds to the base weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            # delta_W is already inside base_layer.weight; adding the branch would count it twice.
            return result
        # Dropout goes on the input, as in the paper and PEFT (the reference notes had it on the
        # output). The input is cast to the adapter's dtype (float32 over a bf16 base).
        lora_x = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        update = self.lora_B(self.lora_A(lora_x)) * self.scaling
        # Add first, then cast back: the same order of rounding as PEFT.
        return (result + update).to(result.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold delta_W into the base weight: afterwards forward() is a plain linear layer."""
        if self.merged:
            log.warning("merge(): this LoRA layer is already merged; nothing to do.")
            return
        weight = self.base_layer.weight
        check_mergeable(weight)
        weight += self.delta_weight().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take delta_W back out of the base weight (exact up to float rounding)."""
        if not self.merged:
            log.warning("unmerge(): this LoRA layer is not merged; nothing to do.")
            return
        weight = self.base_layer.weight
        weight -= self.delta_weight().to(weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}, merged={self.merged}"


def check_lora_hparams(r: int, alpha: float, dropout: float) -> None:
    """Reject hyper-parameters that would build a layer that cannot train or divides by zero."""
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ModelError(f"LoRA rank r must be a positive integer, got {r!r}. Typical values: 8, 16, 64.")
    if not alpha > 0:
        raise ModelError(f"LoRA alpha must be positive, got {alpha!r}. A common choice is alpha = 2 * r.")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"LoRA dropout must be in [0, 1), got {dropout!r}. Typical values: 0.0 to 0.1.")


def check_mergeable(weight: torch.Tensor) -> None:
    """Merging writes into the base weight, which only works for a plain float tensor."""
    if not weight.is_floating_point():
        raise ModelError(
            f"Cannot merge LoRA into a base weight of dtype {weight.dtype} (a quantized model?). "
            "Load the base model in float16/bfloat16/float32 and merge the saved adapter into that."
        )


# ---------------------------------------------------------------------------------------------
# Putting LoRA into a model
# ---------------------------------------------------------------------------------------------


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA layer in the model, by its full module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear modules LoRA may wrap: not the ones inside an existing LoRA layer."""
    inside_lora = tuple(name + "." for name in lora_layers(model))
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not name.startswith(inside_lora)
    }


def linear_suffixes(model: nn.Module) -> list[str]:
    """The last name component of each linear module: what users put in target_modules."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_modules(model)})


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path `name` for `new`."""
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new)


def inject_lora(model: nn.Module, target_modules: list[str], r: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Wrap every nn.Linear whose name matches a target in a LoRALinear; freeze everything else.

    Returns the full names of the wrapped modules. Raises ModelError, naming the linear modules
    the model does have, when no target matches.
    """
    check_lora_hparams(r, alpha, dropout)
    if isinstance(target_modules, str) or not target_modules:
        raise ModelError(
            f"target_modules must be a non-empty list of module names, got {target_modules!r}. "
            f"Linear modules in this model: {linear_suffixes(model)}."
        )
    chosen = [name for name in linear_modules(model) if any(matches_target(name, target) for target in target_modules)]
    if not chosen:
        raise ModelError(
            f"No linear module matches target_modules={list(target_modules)}. "
            f"Linear modules in this model (use these names): {linear_suffixes(model)}."
        )
    # Freeze first: the new A and B are created trainable, everything that existed before is not.
    model.requires_grad_(False)
    for name in chosen:
        replace_module(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout))
    trainable, total = count_parameters(model)
    log.info(
        "LoRA r=%d alpha=%g on %d modules; trainable %d / %d parameters (%.3f%%)",
        r,
        alpha,
        len(chosen),
        trainable,
        total,
        100 * trainable / max(total, 1),
    )
    return chosen


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer's delta_W into its base weight (for fast inference or export)."""
    layers = lora_layers(model)
    check_no_tied_lora_weights(model, layers)
    for layer in layers.values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo merge_lora, so the adapter can be trained further or saved separately."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def check_no_tied_lora_weights(model: nn.Module, layers: dict[str, LoRALinear]) -> None:
    """Refuse to merge into a weight another module shares (e.g. lm_head tied to embeddings).

    Why: merging edits the tensor in place, so the tied embedding would silently change too and
    the merged model would no longer equal base + adapter.
    """
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    for name, layer in layers.items():
        names = owners.get(id(layer.base_layer.weight), [])
        if len(names) > 1:
            raise ModelError(
                f"Cannot merge LoRA into {name}: its weight is shared with {sorted(names)} "
                "(tied embeddings), so merging would change those too. Leave that module out of "
                "target_modules, or save the adapter unmerged."
            )


# ---------------------------------------------------------------------------------------------
# PEFT-format files
# ---------------------------------------------------------------------------------------------


def peft_key(module_name: str, part: str) -> str:
    """The key PEFT uses in adapter_model.safetensors for one LoRA matrix ("lora_A"/"lora_B")."""
    return f"{PEFT_PREFIX}{module_name}.{part}.weight"


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A and B of every LoRA layer under PEFT's key names, detached copies on the CPU."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        for part in ("lora_A", "lora_B"):
            weight = getattr(layer, part).weight
            state[peft_key(name, part)] = weight.detach().to("cpu", copy=True).contiguous()
    return state


def check_adapter_matches(layers: dict[str, LoRALinear], target_modules: list[str], r: int, alpha: float) -> None:
    """The config written must describe the layers written, or PEFT loads something else.

    Why: PEFT rebuilds the layers from the config and only copies A and B from the file. A wrong
    alpha silently rescales the update; a module no target matches silently loses its weights.
    """
    for name, layer in layers.items():
        if not any(matches_target(name, target) for target in target_modules):
            raise ModelError(
                f"LoRA module {name} matches none of target_modules={list(target_modules)}; "
                "PEFT would not load its weights. Save with the target_modules you injected."
            )
        if layer.r != r or not math.isclose(layer.scaling, alpha / r):
            raise ModelError(
                f"LoRA module {name} has r={layer.r}, alpha={layer.alpha} but the adapter is being "
                f"saved with r={r}, alpha={alpha}. Save with the values you injected."
            )


def save_peft_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    base_model_name_or_path: str | None,
    target_modules: list[str],
    r: int,
    alpha: float,
    dropout: float,
    task_type: str | None = "CAUSAL_LM",
) -> Path:
    """Write adapter_model.safetensors + adapter_config.json that peft.PeftModel.from_pretrained reads.

    Works whether or not the model is merged: A and B are stored either way.
    """
    # Imported here: peft is only needed to write its own config format, not to train.
    from peft import LoraConfig

    layers = lora_layers(model)
    if not layers:
        raise ModelError("save_peft_adapter: the model has no LoRA layers; call inject_lora first.")
    check_adapter_matches(layers, target_modules, r, alpha)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # "format": "pt" is the metadata transformers/peft write and check for.
    save_file(lora_state_dict(model), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    # Let peft serialise its own config so every field has the name and default it expects.
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type=task_type,
        base_model_name_or_path=base_model_name_or_path,
        inference_mode=True,
    )
    config.save_pretrained(str(out))
    log.info("Saved LoRA adapter for %d modules to %s", len(layers), out)
    return out


def read_adapter_config(adapter_dir: Path) -> dict:
    """adapter_config.json, checked for the LoRA variants this small layer does not implement."""
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        raise ModelError(f"No {ADAPTER_CONFIG} in {adapter_dir}; is this a PEFT adapter directory?")
    config = json.loads(path.read_text(encoding="utf-8"))
    unsupported = {
        "peft_type": (config.get("peft_type"), "LORA"),
        "use_dora": (config.get("use_dora", False), False),
        "use_rslora": (config.get("use_rslora", False), False),
        "fan_in_fan_out": (config.get("fan_in_fan_out", False), False),
        "lora_bias": (config.get("lora_bias", False), False),
        "bias": (config.get("bias", "none"), "none"),
        "rank_pattern": (config.get("rank_pattern") or {}, {}),
        "alpha_pattern": (config.get("alpha_pattern") or {}, {}),
        "modules_to_save": (config.get("modules_to_save") or None, None),
    }
    for field, (value, wanted) in unsupported.items():
        if value != wanted:
            raise ModelError(
                f"{path}: {field}={value!r} is not supported by lora_finetune.lora (needs {wanted!r}); "
                "load this adapter with peft.PeftModel.from_pretrained instead."
            )
    return config


def load_peft_adapter_into(model: nn.Module, adapter_dir: str | Path) -> list[str]:
    """Inject LoRA into a plain model and fill A and B from a PEFT adapter directory.

    The modules to wrap are read from the weight file's keys (not from target_modules, which may
    be a regex), so exactly the modules that have weights get a LoRA layer. Returns their names.
    """
    adapter_dir = Path(adapter_dir)
    if lora_layers(model):
        raise ModelError("load_peft_adapter_into: the model already has LoRA layers; load into a fresh base model.")
    config = read_adapter_config(adapter_dir)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise ModelError(f"No {ADAPTER_WEIGHTS} in {adapter_dir}.")
    state = load_file(str(weights_path))

    names = sorted({key[len(PEFT_PREFIX) :].rsplit(".", 2)[0] for key in state if key.startswith(PEFT_PREFIX)})
    expected = {peft_key(name, part) for name in names for part in ("lora_A", "lora_B")}
    if not names or set(state) != expected:
        odd = sorted(set(state) ^ expected)[:5]
        raise ModelError(f"{weights_path}: unexpected or missing LoRA keys, e.g. {odd}.")

    available = linear_modules(model)
    missing = [name for name in names if name not in available]
    if missing:
        raise ModelError(
            f"{weights_path} has LoRA weights for {missing[:5]}, which are not linear modules of this "
            "model. Was the adapter trained on a different base model?"
        )
    inject_lora(model, names, int(config["r"]), float(config["lora_alpha"]), float(config.get("lora_dropout", 0.0)))

    layers = lora_layers(model)
    with torch.no_grad():
        for name in names:
            for part in ("lora_A", "lora_B"):
                target = getattr(layers[name], part).weight
                source = state[peft_key(name, part)]
                if source.shape != target.shape:
                    raise ModelError(
                        f"{weights_path}: {peft_key(name, part)} has shape {tuple(source.shape)}, the "
                        f"model needs {tuple(target.shape)} (different base model or r?)."
                    )
                target.copy_(source)
    return names
