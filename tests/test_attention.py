"""Self-attention of the UNet and the autoencoder: the same numbers as attention written
out by hand, computed through SDPA's fused kernels (not its math fallback), in either
memory format."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from wavediffusion.models import autoencoder, unet
from wavediffusion.models.attention import split_heads


def attention_by_hand(block, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The residual attention block in float64 with an explicit softmax: channel
    s*C + h*d + j of the 1x1 projection is feature j of head h of q, k or v (s = 0, 1, 2)."""
    b, c, hgt, wid = x.shape
    d = c // num_heads
    normed = block.norm(x).double().reshape(b, c, hgt * wid)  # (B, C, N)
    weight = block.qkv.weight.double().reshape(3 * c, c)
    qkv = torch.einsum("oc,bcn->bon", weight, normed) + block.qkv.bias.double()[None, :, None]  # (B, 3C, N)
    q, k, v = qkv.reshape(b, 3, num_heads, d, hgt * wid).unbind(1)  # 3 x (B, heads, d, N)
    weights = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / d**0.5, dim=-1)  # (B, heads, N, N)
    out = torch.einsum("bhnm,bhdm->bhdn", weights, v).reshape(b, c, hgt * wid)
    proj = torch.einsum("oc,bcn->bon", block.proj.weight.double().reshape(c, c), out)
    proj = proj + block.proj.bias.double()[None, :, None]
    return x.double() + proj.reshape(b, c, hgt, wid)


def randomised(block: torch.nn.Module) -> torch.nn.Module:
    """The block with every parameter drawn at random (the UNet zero-initialises its
    output projection, which would hide the attention altogether)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return block.eval()


@pytest.mark.parametrize("name,make,num_heads", [
    ("unet, 8 heads", lambda: unet.AttentionBlock(64, unet.UNetConfig(
        model_channels=64, channel_mult=(1,), attention_resolutions=(8,), num_heads=8, image_size=8,
        norm_groups=8)), 8),
    ("unet, 2 heads", lambda: unet.AttentionBlock(32, unet.UNetConfig.tiny()), 2),
    ("autoencoder, one head", lambda: autoencoder.AttentionBlock(32, groups=8), 1),
])
def test_attention_blocks_match_attention_by_hand_through_a_fused_kernel(name, make, num_heads):
    block = randomised(make())
    x = torch.randn(2, block.qkv.in_channels, 8, 6, generator=torch.Generator().manual_seed(1))
    expected = attention_by_hand(block, x, num_heads)
    # only the fused flash kernel allowed: a layout it cannot take raises "No available kernel"
    with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        got = block(x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_split_heads_gives_unit_feature_stride_and_the_trained_channel_split():
    b, c, n, heads = 2, 12, 5, 3
    qkv = torch.arange(b * n * 3 * c, dtype=torch.float32).reshape(b, n, 3 * c)  # tokens (B, N, 3C)
    q, k, v = split_heads(qkv, heads)
    assert q.shape == k.shape == v.shape == (b, heads, n, c // heads)
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    assert q.data_ptr() == qkv.data_ptr()  # views, no copy
    d = c // heads
    for s, part in enumerate((q, k, v)):
        for h in range(heads):
            torch.testing.assert_close(part[:, h], qkv[:, :, s * c + h * d: s * c + (h + 1) * d])


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_attention_takes_either_memory_format(memory_format):
    block = randomised(unet.AttentionBlock(32, unet.UNetConfig.tiny()))
    x = torch.randn(2, 32, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(block(x.contiguous(memory_format=memory_format)), block(x))
