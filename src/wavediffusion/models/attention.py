"""Multi-head self-attention over the positions of a feature map, in a layout that lets
`F.scaled_dot_product_attention` use its fused kernels.

SDPA's fused kernels (flash and memory-efficient, on CUDA and on the CPU) need the last
dimension of q, k and v -- each head's features -- to have stride 1. A 1x1-conv
projection gives (B, 3C, N) with the positions N in the last dimension; reshaping that
straight to (B, heads, N, C/heads) leaves the features with stride N, and SDPA then falls
back to its math kernel, which materialises every head's (N, N) attention matrix (for the
UNet's 32 x 32 maps at batch 256: 2 048 matrices of 1024 x 1024 per attention block).
Making the projection channels-last first costs one copy of q, k, v and keeps the fused
path. Both the UNet (8 heads) and the autoencoder (one head) attend through here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 3C, N) projections -> q, k, v, each (B, heads, N, C/heads) with stride 1 in the
    last dimension. Channel s*C + h*(C/heads) + j is feature j of head h of q/k/v (s = 0/1/2),
    the split every checkpoint of this project was trained with."""
    b, three_c, n = qkv.shape
    head_dim = three_c // (3 * num_heads)
    tokens = qkv.transpose(1, 2).contiguous()  # (B, N, 3C): the one copy, channels last
    q, k, v = tokens.reshape(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, N, d)
    return q, k, v


def self_attention(qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v of every head: (B, 3C, N) projections -> (B, C, N)."""
    b, three_c, n = qkv.shape
    out = F.scaled_dot_product_attention(*split_heads(qkv, num_heads))  # (B, heads, N, d)
    return out.permute(0, 1, 3, 2).reshape(b, three_c // 3, n)
