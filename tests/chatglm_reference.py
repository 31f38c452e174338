"""An independent ChatGLM2/3 forward pass, written from the published architecture.

It works directly on ChatGLM-named tensors (`transformer.encoder.layers.N.self_attention.
query_key_value.weight`, ...) and shares no code with `lora_finetune.chatglm`, so comparing it with
the converted `GlmForCausalLM` checks the conversion rather than restating it. Layout and numerics
follow ChatGLM2's modeling code:

* embedding -> N x [RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU MLP -> residual]
  -> final RMSNorm -> output_layer;
* fused query_key_value rows are [heads * kv_channels | groups * kv_channels | groups * kv_channels];
  query head h reads key/value group h // (heads / groups);
* rotary embedding on the first kv_channels // 2 dims of every head, rotating the interleaved pairs
  (x[2i], x[2i+1]) by angle position * 10000 ** (-2i / (kv_channels // 2));
  rope_ratio r either divides the positions (ChatGLM2-32k) or multiplies the base (ChatGLM3-32k);
* dense_h_to_4h output is chunked in two: silu(first) * second.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
RopeMode = Literal["scale_positions", "scale_base"]


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rotary_angles(positions: Tensor, rot_dim: int, rope_ratio: float, mode: RopeMode) -> Tensor:
    """[batch, seq, rot_dim // 2] angles for the pairs of the rotary part of a head."""
    base = 10000.0 * rope_ratio if mode == "scale_base" else 10000.0
    theta = 1.0 / (base ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    pos = positions.to(torch.float32)
    if mode == "scale_positions":
        pos = pos / rope_ratio
    return pos[..., None] * theta


def apply_rotary(x: Tensor, angles: Tensor) -> Tensor:
    """x: [batch, seq, heads, head_dim]; rotate pairs (0,1), (2,3), ... of the first 2 * n_pairs dims."""
    n_pairs = angles.shape[-1]
    rot, rest = x[..., : 2 * n_pairs], x[..., 2 * n_pairs :]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    cos = angles.cos()[:, :, None, :]
    sin = angles.sin()[:, :, None, :]
    new_even = even * cos - odd * sin
    new_odd = odd * cos + even * sin
    rotated = torch.stack([new_even, new_odd], dim=-1).flatten(-2)
    return torch.cat([rotated, rest], dim=-1)


def attention_mask_matrix(attention_mask: Tensor) -> Tensor:
    """[batch, 1, seq, seq] True where a query may attend a key: causal and key not padding.

    Padding queries may attend everything (as in ChatGLM's get_masks) so their rows stay finite;
    their outputs are meaningless and never compared.
    """
    seq = attention_mask.shape[1]
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    allowed = allowed | ~attention_mask.bool()[:, :, None]
    return allowed[:, None]


def chatglm_forward(
    sd: dict[str, Tensor],
    cfg: dict,
    input_ids: Tensor,
    attention_mask: Tensor,
    rope_mode: RopeMode = "scale_base",
) -> Tensor:
    """Logits [batch, seq, padded_vocab] of a ChatGLM2/3 model given as a ChatGLM state dict."""
    heads, groups = cfg["num_attention_heads"], cfg["multi_query_group_num"]
    head_dim, eps = cfg["kv_channels"], cfg["layernorm_epsilon"]
    rope_ratio = float(cfg.get("rope_ratio", 1.0))
    batch, seq = input_ids.shape
    # The ChatGLM tokenizer left-pads position_ids with zeros: real tokens start at position 0.
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    angles = rotary_angles(positions, head_dim // 2, rope_ratio, rope_mode)
    allowed = attention_mask_matrix(attention_mask)

    x = sd["transformer.embedding.word_embeddings.weight"][input_ids]
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        h = rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        qkv = h @ sd[p + "self_attention.query_key_value.weight"].T
        if p + "self_attention.query_key_value.bias" in sd:
            qkv = qkv + sd[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
        q = apply_rotary(q.view(batch, seq, heads, head_dim), angles)
        k = apply_rotary(k.view(batch, seq, groups, head_dim), angles)
        v = v.view(batch, seq, groups, head_dim)
        group_of_head = torch.arange(heads) // (heads // groups)
        k, v = k[:, :, group_of_head], v[:, :, group_of_head]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / head_dim**0.5
        scores = scores.masked_fill(~allowed, float("-inf"))
        context = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, seq, heads * head_dim)
        x = x + context @ sd[p + "self_attention.dense.weight"].T
        h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        up = h @ sd[p + "mlp.dense_h_to_4h.weight"].T
        first, second = up.chunk(2, dim=-1)
        x = x + (F.silu(first) * second) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    x = rms_norm(x, sd["transformer.encoder.final_layernorm.weight"], eps)
    return x @ sd["transformer.output_layer.weight"].T
