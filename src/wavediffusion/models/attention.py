"""Multi-head self-attention over the positions of a feature map, computed on tokens
(positions first, channels last) so that `F.scaled_dot_product_attention` uses its fused
kernels without copies around it.

SDPA's fused kernels (flash and memory-efficient, on CUDA and on the CPU) need each
head's features to have stride 1. The projections are therefore applied to the feature
map read as tokens (B, N, C): the q, k, v projection then comes out as (B, N, 3C), whose
per-head views (B, heads, N, C/heads) have unit feature stride, and the fused kernel's
output is already laid out token-major, so the output projection reads it as it is. The
projections keep their 1x1-convolution weights (state dicts of every trained checkpoint
load unchanged). Both the UNet (8 heads) and the autoencoder (one head) attend through here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3C) token projections -> q, k, v, each (B, heads, N, C/heads), views with
    stride 1 in the last dimension. Channel s*C + h*(C/heads) + j is feature j of head h of
    q/k/v (s = 0/1/2), the split every checkpoint of this project was trained with."""
    b, n, three_c = qkv.shape
    head_dim = three_c // (3 * num_heads)
    q, k, v = qkv.reshape(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, N, d)
    return q, k, v


def self_attention(h: torch.Tensor, qkv: nn.Module, proj: nn.Module, num_heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v of every head, projected: (B, C, H, W) normalised features
    -> (B, C, H, W), the block's output before its residual. `qkv` and `proj` are the 1x1
    convolutions (C -> 3C, C -> C) that hold the projection weights."""
    b, c, height, width = h.shape
    tokens = h.reshape(b, c, height * width).transpose(1, 2)  # (B, N, C)
    projected = F.linear(tokens, qkv.weight.reshape(3 * c, c), qkv.bias)  # (B, N, 3C)
    out = F.scaled_dot_product_attention(*split_heads(projected, num_heads))  # (B, heads, N, d)
    out = out.transpose(1, 2).reshape(b, height * width, c)  # (B, N, C): the fused kernel's own layout
    out = F.linear(out, proj.weight.reshape(c, c), proj.bias)  # (B, N, C)
    return out.transpose(1, 2).reshape(b, c, height, width)
