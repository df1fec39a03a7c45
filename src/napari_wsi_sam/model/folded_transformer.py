"""SAM's two-way transformer with its image-side projections folded into the few tokens.

A prompt has a handful of tokens (T ~ 8) and the image 4096. SAM's cross-attentions project
all 4096 image tokens (256 -> 128 channels) before attending to or from T tokens; since every
projection is linear, the same logits and outputs come from projecting the T tokens into the
image tokens' 256 channels instead (per head: ``(x Wq)(t Wk)^T = x (Wq^T Wk t^T)``). The image
side then costs one product with 8 heads x T columns rather than two with 128, about half the
multiply-adds of a pass, and no head transposes of image-sized tensors.

Same value as `segment_anything.modeling.TwoWayTransformer` up to float rounding (the sums
run in another order; logits agree within ~1e-4), so it serves the ONNX Runtime path
(`onnx_decoder`), never the path that promises SAM's masks bit for bit.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from torch import Tensor


def _head_weights(linear: torch.nn.Linear, attention: Attention) -> Tensor:
    """(internal, C) projection weight -> (heads, d, C), head h holding rows h*d..(h+1)*d."""
    heads = attention.num_heads
    return linear.weight.reshape(heads, attention.internal_dim // heads,
                                 attention.embedding_dim)


def tokens_to_image(attention: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attention(q, k, v)`` for T query tokens (N,T,C) over S image tokens (N,S,C).

    The key bias adds one constant to each softmax row and drops out; the value bias passes
    through the softmax unchanged (rows sum to 1).
    """
    heads, dim = attention.num_heads, attention.internal_dim // attention.num_heads
    channels = attention.embedding_dim
    n = q.shape[0]
    query = attention.q_proj(q).reshape(n, -1, heads, dim).transpose(1, 2)  # (N,H,T,d)
    folded = torch.matmul(query, _head_weights(attention.k_proj, attention))  # (N,H,T,C)
    folded = folded.reshape(n, -1, channels) * (1.0 / math.sqrt(dim))  # (N,H*T,C)
    weights = torch.softmax(torch.matmul(folded, k.transpose(1, 2)), dim=-1)  # (N,H*T,S)
    pooled = torch.matmul(weights, v).reshape(n, heads, -1, channels)  # (N,H,T,C)
    value_weight = _head_weights(attention.v_proj, attention).transpose(1, 2)  # (H,C,d)
    value_bias = attention.v_proj.bias.reshape(heads, 1, dim)
    out = torch.matmul(pooled, value_weight) + value_bias  # (N,H,T,d)
    return attention.out_proj(out.transpose(1, 2).reshape(n, -1, heads * dim))


def image_to_tokens(attention: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``attention(q, k, v)`` for S image query tokens (N,S,C) over T tokens (N,T,C)."""
    heads, dim = attention.num_heads, attention.internal_dim // attention.num_heads
    channels = attention.embedding_dim
    n = k.shape[0]
    key = attention.k_proj(k).reshape(n, -1, heads, dim).permute(0, 2, 3, 1)  # (N,H,d,T)
    query_weight = _head_weights(attention.q_proj, attention).transpose(1, 2)  # (H,C,d)
    scale = 1.0 / math.sqrt(dim)
    folded = torch.matmul(query_weight, key) * scale  # (N,H,C,T)
    folded = folded.permute(0, 2, 1, 3).reshape(n, channels, -1)  # (N,C,H*T)
    query_bias = attention.q_proj.bias.reshape(heads, 1, dim)
    offset = (torch.matmul(query_bias, key) * scale).reshape(n, 1, -1)  # (N,1,H*T)
    logits = torch.matmul(q, folded) + offset  # (N,S,H*T)
    s = q.shape[1]
    weights = torch.softmax(logits.reshape(n, s, heads, -1), dim=-1).reshape(n, s, -1)
    value = attention.v_proj(v).reshape(n, -1, heads, dim).transpose(1, 2)  # (N,H,T,d)
    out_weight = attention.out_proj.weight.reshape(channels, heads, dim).permute(1, 2, 0)
    # each head's weights sum to 1 over its T tokens, so the output bias, shared out over
    # the H heads' rows, comes out whole: no addition over the S image tokens
    mixed = torch.matmul(value, out_weight) + attention.out_proj.bias * (1.0 / heads)
    return torch.matmul(weights, mixed.reshape(n, -1, channels))


def block(layer: TwoWayAttentionBlock, queries: Tensor, keys: Tensor, query_pe: Tensor,
          key_pe: Tensor, keys_with_pe: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`TwoWayAttentionBlock.forward` with the folded cross-attentions; `keys_with_pe`:
    keys + key_pe when the caller has it already."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    q = queries + query_pe
    k = keys + key_pe if keys_with_pe is None else keys_with_pe
    queries = layer.norm2(queries + tokens_to_image(layer.cross_attn_token_to_image, q, k, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    keys = layer.norm4(keys + image_to_tokens(layer.cross_attn_image_to_token, k, q, queries))
    return queries, keys


def two_way(transformer: TwoWayTransformer, image_embedding: Tensor, image_pe: Tensor,
            point_embedding: Tensor) -> tuple[Tensor, Tensor]:
    """`TwoWayTransformer.forward`: (N,C,H,W) image, (1 or N,C,H,W) positions (or already
    (1,HW,C)), (N,T,C) tokens -> updated tokens (N,T,C) and image tokens (N,HW,C)."""
    keys = image_embedding.flatten(2).permute(0, 2, 1)
    key_pe = image_pe if image_pe.dim() == 3 else image_pe.flatten(2).permute(0, 2, 1)
    return two_way_tokens(transformer, keys, keys + key_pe, key_pe, point_embedding)


def two_way_tokens(transformer: TwoWayTransformer, keys: Tensor, keys_with_pe: Tensor,
                   key_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
    """`two_way` from the image already in token layout: keys (1 or N,HW,C), keys_with_pe =
    keys + key_pe (1,HW,C). Both depend on the crop alone when there is no mask prompt, so a
    caller computes them once per crop instead of transposing and adding 4 MB each pass."""
    queries = point_embedding
    for index, layer in enumerate(transformer.layers):
        queries, keys = block(layer, queries, keys, point_embedding, key_pe,
                              keys_with_pe if index == 0 else None)
    q = queries + point_embedding
    k = keys + key_pe
    queries = queries + tokens_to_image(transformer.final_attn_token_to_image, q, k, keys)
    return transformer.norm_final_attn(queries), keys
