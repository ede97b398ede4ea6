"""Stage 2: the ε-prediction UNet of the latent diffusion model (ADM / LDM design).

The paper's LDM "openaimodel" UNet written out from its description: 32 latent channels in
and out, model_channels 128, channel_mult (1, 2, 2, 4, 4), 2 res blocks per level, attention
at feature-map sizes 32/16/8/4 (spatial sizes, ADM's convention), 8 heads, scale-shift norm,
res-block resampling; zero-initialised so the untrained network predicts ε = 0.
`UNetConfig.paper()` has 131,214,112 parameters (118,858,144 with `resblock_updown=False`).
Details: docs/architecture.md, 'The Stage-2 UNet'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import self_attention
from .norm import GroupNorm32


@dataclass(frozen=True)
class UNetConfig:
    """Everything that fixes the UNet architecture; the defaults are the paper's."""

    in_channels: int = 32  # latent channels
    out_channels: int = 32  # ε has the latent's shape
    model_channels: int = 128  # width of the first level; level i has model_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    num_res_blocks: int = 2  # per level in the encoder (the decoder has one more per level)
    attention_resolutions: tuple[int, ...] = (32, 16, 8, 4)  # feature-map sizes with self-attention
    num_heads: int = 8
    dropout: float = 0.0
    use_scale_shift_norm: bool = True  # the timestep embedding scales and shifts the normalised features
    resblock_updown: bool = True  # resample inside res blocks (else a plain avg-pool / nearest+conv)
    image_size: int = 32  # latent height (and width) the network is built for
    norm_groups: int = 32

    def __post_init__(self):
        # YAML/JSON give lists; keep tuples so the config stays hashable and comparable
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        widths = [self.model_channels * m for m in self.channel_mult]
        bad = [w for w in widths if w % self.norm_groups or w % self.num_heads]
        if bad:
            raise ValueError(f"channel widths {bad} must divide by norm_groups={self.norm_groups} "
                             f"and num_heads={self.num_heads}")
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {self.image_size} cannot be halved {levels - 1} times")

    @classmethod
    def paper(cls) -> UNetConfig:
        """The paper's UNet (its appendix): the defaults, spelled out."""
        return cls(in_channels=32, out_channels=32, model_channels=128, channel_mult=(1, 2, 2, 4, 4),
                   num_res_blocks=2, attention_resolutions=(32, 16, 8, 4), num_heads=8, dropout=0.0,
                   use_scale_shift_norm=True, resblock_updown=True, image_size=32, norm_groups=32)

    @classmethod
    def tiny(cls) -> UNetConfig:
        """A 0.8M-parameter UNet over 4x8x8 latents, fast enough for CPU tests."""
        return cls(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(4,), num_heads=2, image_size=8, norm_groups=8)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer.

    t: (B,) -> (B, dim) = [cos(t * f_k), sin(t * f_k)] with frequencies
    f_k = max_period ** (-k / (dim / 2)), k = 0 .. dim/2 - 1 (zero-padded if dim is odd).
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias in place, so its block starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def resample(x: torch.Tensor, direction: str | None) -> torch.Tensor:
    """Halve (2x2 average pooling) or double (nearest neighbour) the spatial size, or not."""
    if direction == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    if direction == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, timestep conditioning, GroupNorm-SiLU-dropout-conv, plus a skip.

    Scale-shift norm: the embedding gives (scale, shift) and the second norm's output is
    h * (1 + scale) + shift (else the embedding is added before the second norm).
    Down/up-sampling blocks resample both the main path (after the first norm+SiLU) and
    the skip path, so a level change costs no extra conv (ADM's resblock_updown).
    """

    def __init__(self, channels: int, out_channels: int, emb_dim: int, config: UNetConfig,
                 resample: str | None = None):
        super().__init__()
        groups = config.norm_groups
        self.resample = resample
        self.use_scale_shift_norm = config.use_scale_shift_norm
        self.norm_in = GroupNorm32(groups, channels)
        self.conv_in = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels if config.use_scale_shift_norm else out_channels)
        self.norm_out = GroupNorm32(groups, out_channels)
        self.dropout = nn.Dropout(config.dropout)
        self.conv_out = zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W), emb: (B, E) -> (B, C_out, H', W')
        h = F.silu(self.norm_in(x))
        h = self.conv_in(resample(h, self.resample))
        x = resample(x, self.resample)
        e = self.emb(F.silu(emb)).type(h.dtype)[:, :, None, None]  # (B, C_out or 2 C_out, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm_out(h) * (1 + scale) + shift
        else:
            h = self.norm_out(h + e)
        h = self.conv_out(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, residual."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.norm = GroupNorm32(config.norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, C, H, W) -> (B, C, H, W)
        return x + self_attention(self.norm(x), self.qkv, self.proj, self.num_heads)


class Step(nn.Sequential):
    """A sequence of res/attention blocks that all receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x) if isinstance(layer, nn.Conv2d) else layer(x, emb)
        return x


class UNet(nn.Module):
    """ε_θ(z_t, t): latent (B, C, H, W) and timesteps (B,) -> predicted noise (B, C, H, W)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        mc, emb_dim = config.model_channels, config.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def block(cin: int, cout: int, size: int) -> Step:
            layers = [ResBlock(cin, cout, emb_dim, config)]
            if size in config.attention_resolutions:
                layers.append(AttentionBlock(cout, config))
            return Step(*layers)

        def resampler(ch: int, direction: str) -> nn.Module:
            if config.resblock_updown:
                return ResBlock(ch, ch, emb_dim, config, resample=direction)
            return PlainResample(ch, direction)

        # --- encoder: remember each output's width for the decoder's skip connections
        self.down = nn.ModuleList([Step(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_widths, ch, size = [mc], mc, config.image_size
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(block(ch, mc * mult, size))
                ch = mc * mult
                skip_widths.append(ch)
            if level < len(config.channel_mult) - 1:
                self.down.append(Step(resampler(ch, "down")))
                size //= 2
                skip_widths.append(ch)

        # --- middle
        self.middle = Step(ResBlock(ch, ch, emb_dim, config), AttentionBlock(ch, config),
                           ResBlock(ch, ch, emb_dim, config))

        # --- decoder: each block eats one skip connection (last in, first out)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [*block(ch + skip_widths.pop(), mc * mult, size)]
                ch = mc * mult
                if level > 0 and i == config.num_res_blocks:
                    layers.append(resampler(ch, "up"))
                    size *= 2
                self.up.append(Step(*layers))

        self.head = nn.Sequential(GroupNorm32(config.norm_groups, ch), nn.SiLU(),
                                  zero_(nn.Conv2d(ch, config.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W), t: (B,) integer or float timesteps -> (B, C_out, H, W)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))  # (B, 4 mc)
        skips = []
        h = x
        for step in self.down:
            h = step(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for step in self.up:
            h = step(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)


class PlainResample(nn.Module):
    """Resampling without a res block (resblock_updown=False), as ADM's Downsample/Upsample
    with conv_resample: a stride-2 3x3 conv down, nearest-neighbour then a 3x3 conv up."""

    def __init__(self, channels: int, direction: str):
        super().__init__()
        self.direction = direction
        stride = 2 if direction == "down" else 1
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.direction == "up":
            x = resample(x, "up")
        return self.conv(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
