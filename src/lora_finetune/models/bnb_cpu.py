"""bitsandbytes' 4-bit layers on the CPU, for every layer shape.

In eval mode, on CPUs with AVX512-BF16, bitsandbytes 0.49+ repacks a 4-bit weight for a faster
kernel the first time the layer runs without gradients. The repacking needs in_features
divisible by the quantisation block (64) and out_features by 32; on other layers it fails
inside bitsandbytes (`AssertionError: N must be divisible by block_n`, or `RuntimeError: shape
'[64, 2]' is invalid ...`) -- at the evaluation after training, or at the first generated
token. Those layers are told to keep bitsandbytes' generic CPU path (dequantise, then matmul),
which works for every shape; the others keep the fast kernel. Each layer is set on its own
instance: nothing global changes.
"""

from __future__ import annotations

from typing import Any

PACK_OUT_BLOCK = 32
"""out_features must be a multiple of this (the `block_n` of bitsandbytes' CPU repacking)."""
FLAG = "support_avx512bf16_for_cpu"
"""The Linear4bit attribute bitsandbytes reads to choose its repacked CPU kernel."""


def unpackable_layers(model: Any) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of the 4-bit layers the repacking cannot take."""
    out = []
    for name, module in model.named_modules():
        if not hasattr(module, FLAG):
            continue
        block = getattr(getattr(module.weight, "quant_state", None), "blocksize", None) or 64
        if module.in_features % block or module.out_features % PACK_OUT_BLOCK:
            out.append((name, module.in_features, module.out_features))
    return out


def keep_generic_cpu_path(model: Any) -> list[str]:
    """Send the layers the repacking cannot take down bitsandbytes' generic path; a note saying
    which, for the run record (empty when every layer fits)."""
    bad = unpackable_layers(model)
    for name, _, _ in bad:
        setattr(model.get_submodule(name), FLAG, False)
    if not bad:
        return []
    name, fan_in, fan_out = bad[0]
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return [
        f"4-bit on the CPU: {name} ({fan_in} -> {fan_out}){more} cannot use bitsandbytes' repacked CPU kernel "
        f"(it needs inputs in multiples of 64 and outputs in multiples of {PACK_OUT_BLOCK}); those layers run its "
        "generic CPU path, a little slower, with the same results"
    ]


__all__ = ["keep_generic_cpu_path", "unpackable_layers"]
