"""Stage 1: the shared-latent VQ autoencoder (one encoder, two decoders; 1VQ and 2VQ).

Seismic [3, 1024, 64] (shots x time x receivers) -> one latent [32, 32, 32] -> two decoders:
the seismic data and the velocity map [1, 64, 64], so a sampled latent decodes into a *pair*.
VQGAN / LDM blocks; each resampling step has its own (time, receiver) stride
(:func:`resampling_strides`). Outputs are linear; :meth:`VQAutoencoder.decode_latent` clamps
to [-1, 1] so generated velocities map back into 1500-4500 m/s.
Details: docs/architecture.md, 'The Stage-1 autoencoder'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import self_attention
from .norm import GroupNorm32
from .quantizer import QuantizerInfo, VectorQuantizer

VARIANTS = ("1vq", "2vq")


def resampling_strides(
    large: tuple[int, int], small: tuple[int, int], levels: int
) -> tuple[tuple[int, int], ...]:
    """Per-step (stride_h, stride_w) of the ``levels - 1`` steps between ``large`` and ``small``.

    Each axis's factor large/small must be a power of two; the axis is halved at each of
    the first log2(factor) steps.  The number of steps must equal the larger number of
    halvings, so every step resamples at least one axis.
    """
    halvings = []
    for big, little, axis in zip(large, small, ("height", "width")):
        factor = big // little
        if little < 1 or big % little or factor & (factor - 1):
            raise ValueError(f"{axis}: {big} -> {little} is not a power-of-two reduction")
        halvings.append(int(math.log2(factor)))
    steps = levels - 1
    if steps != max(halvings):
        raise ValueError(
            f"{large} -> {small} needs {max(halvings)} resampling steps, i.e. {max(halvings) + 1} levels "
            f"in the channel multipliers; got {levels}"
        )
    return tuple((2 if i < halvings[0] else 1, 2 if i < halvings[1] else 1) for i in range(steps))


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything that fixes the Stage-1 architecture (sizes, widths, codebooks)."""

    variant: str = "1vq"  # "1vq": one shared codebook | "2vq": one codebook per modality
    seismic_channels: int = 3  # shots
    velocity_channels: int = 1
    time_samples: int = 1024
    receivers: int = 64
    velocity_size: int = 64
    latent_channels: int = 32  # the Stage-2 UNet's in/out channels
    latent_height: int = 32  # time axis of the latent
    latent_width: int = 32  # receiver axis of the latent
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 3, 3)  # encoder levels (seismic decoder mirrors them)
    velocity_channel_mult: tuple[int, ...] = (2, 3)  # velocity decoder levels, 64x64 -> 32x32 order
    num_res_blocks: int = 2  # per encoder level; the decoders use one more (as VQGAN)
    mid_attention: bool = True  # one self-attention block in each network's middle (at latent resolution)
    norm_groups: int = 32
    dropout: float = 0.0
    codebook_size: int = 8192
    codebook_dim: int = 32  # must equal latent_channels: the codes live in the latent space the UNet models
    beta: float = 0.25  # commitment weight (VQ-VAE)
    # training steps without use before a code is re-initialised: at the paper's batch of 16 x 32 x 32
    # latent vectors a code in uniform use is chosen ~2 times per step, so 100 idle steps means dead
    dead_code_steps: int = 100

    def __post_init__(self):
        # YAML/JSON configs give lists; keep tuples so the config stays hashable and comparable
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "velocity_channel_mult", tuple(self.velocity_channel_mult))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.codebook_dim != self.latent_channels:
            raise ValueError(
                f"codebook_dim ({self.codebook_dim}) must equal latent_channels ({self.latent_channels}): "
                "the codebooks quantise the latent itself, so codes and latents share one space"
            )
        widths = [self.base_channels * m for m in self.channel_mult + self.velocity_channel_mult]
        bad = [w for w in widths if w % self.norm_groups]
        if bad:
            raise ValueError(f"channel widths {bad} are not divisible by norm_groups={self.norm_groups}")
        # resolve the strides now so that a bad size combination fails at construction
        _ = (self.encoder_strides, self.velocity_strides)

    @property
    def seismic_shape(self) -> tuple[int, int, int]:
        return (self.seismic_channels, self.time_samples, self.receivers)

    @property
    def velocity_shape(self) -> tuple[int, int, int]:
        return (self.velocity_channels, self.velocity_size, self.velocity_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_height, self.latent_width)

    @property
    def encoder_strides(self) -> tuple[tuple[int, int], ...]:
        """(time, receiver) stride of each encoder downsampling step (seismic decoder: reversed)."""
        return resampling_strides(
            (self.time_samples, self.receivers), (self.latent_height, self.latent_width), len(self.channel_mult)
        )

    @property
    def velocity_strides(self) -> tuple[tuple[int, int], ...]:
        """(depth, offset) factor of each velocity-decoder upsampling step, listed large -> small."""
        return resampling_strides(
            (self.velocity_size, self.velocity_size),
            (self.latent_height, self.latent_width),
            len(self.velocity_channel_mult),
        )

    @classmethod
    def paper(cls, variant: str = "1vq") -> AutoencoderConfig:
        """The paper's sizes: seismic [3,1024,64] -> latent [32,32,32] -> velocity [1,64,64].

        The paper reports ~19M parameters but not its widths; these give 20.2M for 1vq
        (encoder 6.22M, codebook 0.26M, seismic decoder 8.88M, velocity decoder 4.85M)
        and 20.5M for 2vq (a second codebook); widths 64-64-128-128-192-192 down the
        encoder, 128-192 in the velocity decoder.
        """
        return cls(variant=variant)

    @classmethod
    def tiny(cls, variant: str = "1vq") -> AutoencoderConfig:
        """Same code path at toy sizes for CPU tests: seismic [3,64,16] -> latent [8,8,8] -> velocity [1,16,16]."""
        return cls(
            variant=variant,
            time_samples=64,
            receivers=16,
            velocity_size=16,
            latent_channels=8,
            latent_height=8,
            latent_width=8,
            base_channels=16,
            channel_mult=(1, 2, 2, 2),
            velocity_channel_mult=(1, 2),
            num_res_blocks=1,
            norm_groups=8,
            codebook_size=64,
            codebook_dim=8,
            dead_code_steps=20,
        )


# --- building blocks ----------------------------------------------------------------------


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # GroupNorm32: bf16 activations stay bf16 (autocast would upcast every full-resolution map)
    return GroupNorm32(groups, channels, eps=1e-6)


class InputConv2d(nn.Conv2d):
    """The convolution that reads the data, run with its input channels zero-padded to a
    multiple of 8: the same sums (zero channels meet zero weights; the parameter keeps its
    shape and gets the gradient of its own channels), but a fast cuDNN kernel. 3 -> 64 at
    1024 x 64, batch 16, bf16, forward + weight gradient took 7.4 ms on an H100, 8 -> 64
    0.26 ms (docs/results.md, "Stage 1's convolution bound")."""

    @property
    def padded_in_channels(self) -> int:
        return self.in_channels + -self.in_channels % 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = self.padded_in_channels - self.in_channels
        if not missing:
            return super().forward(x)
        pad = (0, 0, 0, 0, 0, missing)  # width and height as they are, zero channels appended
        return self._conv_forward(F.pad(x, pad), F.pad(self.weight, pad), self.bias)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice, plus a (1x1-projected where widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all positions (VQGAN's mid-block attention)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return x + self_attention(self.norm(x), self.qkv, self.proj, num_heads=1)


class MidBlock(nn.Module):
    """ResNet block, optional self-attention, ResNet block, at the latent resolution."""

    def __init__(self, channels: int, groups: int, dropout: float, attention: bool):
        super().__init__()
        self.block1 = ResnetBlock(channels, channels, groups, dropout)
        self.attention = AttentionBlock(channels, groups) if attention else nn.Identity()
        self.block2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attention(self.block1(x)))


class Downsample(nn.Module):
    """3x3 conv with a per-axis stride of 1 or 2 (halves only the axes that need it)."""

    def __init__(self, channels: int, stride: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H/sh, W/sw)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by a per-axis factor, then a 3x3 conv (no checkerboard)."""

    def __init__(self, channels: int, factor: tuple[int, int]):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H*fh, W*fw)
        return self.conv(F.interpolate(x, scale_factor=self.factor, mode="nearest"))


# --- networks -----------------------------------------------------------------------------


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> continuous latent (B, latent_channels, h, w); shared by both encoders.

    Level i has width base * channel_mult[i] and ``num_res_blocks`` ResNet blocks;
    strides[i] is the (height, width) factor between level i and level i + 1, listed from
    the input (large) side, as for the decoders.
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        base_channels: int,
        channel_mult: tuple[int, ...],
        strides: tuple[tuple[int, int], ...],
        num_res_blocks: int,
        groups: int,
        dropout: float,
        mid_attention: bool,
    ):
        super().__init__()
        channels = base_channels * channel_mult[0]
        self.conv_in = InputConv2d(in_channels, channels, 3, padding=1)
        self.levels = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(channels, base_channels * mult, groups, dropout))
                channels = base_channels * mult
            if level < len(strides):
                blocks.append(Downsample(channels, strides[level]))
            self.levels.append(nn.Sequential(*blocks))
        self.mid = MidBlock(channels, groups, dropout, mid_attention)
        self.norm_out = _norm(channels, groups)
        self.conv_out = nn.Conv2d(channels, latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C, h, w)
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _encoder_fields(config: AutoencoderConfig) -> dict:
    """The Encoder arguments both encoders take from the config alike."""
    return {"latent_channels": config.latent_channels, "base_channels": config.base_channels,
            "num_res_blocks": config.num_res_blocks, "groups": config.norm_groups, "dropout": config.dropout,
            "mid_attention": config.mid_attention}


class SeismicEncoder(Encoder):
    """Seismic (B, S, T, R) -> latent (B, C, h, w) through ``channel_mult`` levels (the joint model's encoder)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__(in_channels=config.seismic_channels, channel_mult=config.channel_mult,
                         strides=config.encoder_strides, **_encoder_fields(config))


class VelocityEncoder(Encoder):
    """Velocity (B, 1, V, V) -> latent (B, C, h, w); mirrors the velocity decoder's levels and
    strides, so a velocity-only autoencoder has the joint model's latent shape (Table 8)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__(in_channels=config.velocity_channels, channel_mult=config.velocity_channel_mult,
                         strides=config.velocity_strides, **_encoder_fields(config))


class Decoder(nn.Module):
    """Latent (B, latent_channels, h, w) -> (B, out_channels, H, W); shared by both decoders.

    ``channel_mult`` and ``strides`` are listed from the output (large) side, as for the
    encoder: level i has width base * channel_mult[i]; strides[i] is the factor between
    level i and level i + 1.  Each level has ``num_res_blocks`` ResNet blocks (VQGAN's
    decoder has one more than its encoder).
    """

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        base_channels: int,
        channel_mult: tuple[int, ...],
        strides: tuple[tuple[int, int], ...],
        num_res_blocks: int,
        groups: int,
        dropout: float,
        mid_attention: bool,
    ):
        super().__init__()
        channels = base_channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(latent_channels, channels, 3, padding=1)
        self.mid = MidBlock(channels, groups, dropout, mid_attention)
        self.levels = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(channels, base_channels * channel_mult[level], groups, dropout))
                channels = base_channels * channel_mult[level]
            if level > 0:
                blocks.append(Upsample(channels, strides[level - 1]))
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = _norm(channels, groups)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the output conv: where VQGAN's adaptive adversarial weight is measured."""
        return self.conv_out.weight

    def features(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, channels, H, W)
        """Everything before the output conv (what VQAutoencoder.compile compiles)."""
        h = self.mid(self.conv_in(z))
        for level in self.levels:
            h = level(h)
        return F.silu(self.norm_out(h))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, out, H, W)
        return self.conv_out(self.features(z))


class SeismicDecoder(Decoder):
    """Latent (B, C, h, w) -> seismic (B, S, T, R); mirrors the encoder's levels and strides."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__(
            latent_channels=config.latent_channels,
            out_channels=config.seismic_channels,
            base_channels=config.base_channels,
            channel_mult=config.channel_mult,
            strides=config.encoder_strides,
            num_res_blocks=config.num_res_blocks + 1,
            groups=config.norm_groups,
            dropout=config.dropout,
            mid_attention=config.mid_attention,
        )


class VelocityDecoder(Decoder):
    """Latent (B, C, h, w) -> velocity (B, 1, V, V), through ``velocity_channel_mult`` levels."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__(
            latent_channels=config.latent_channels,
            out_channels=config.velocity_channels,
            base_channels=config.base_channels,
            channel_mult=config.velocity_channel_mult,
            strides=config.velocity_strides,
            num_res_blocks=config.num_res_blocks + 1,
            groups=config.norm_groups,
            dropout=config.dropout,
            mid_attention=config.mid_attention,
        )


# --- the model ----------------------------------------------------------------------------


@dataclass
class QuantizedLatents:
    """What each decoder reads, the VQ loss and per-codebook usage info.

    1vq: ``z_seismic`` and ``z_velocity`` are the same tensor (one shared codebook) and
    ``info`` has one entry, "shared"; 2vq: one quantisation per codebook, ``info`` has
    "seismic" and "velocity".
    """

    z_seismic: torch.Tensor  # (B, C, h, w)
    z_velocity: torch.Tensor  # (B, C, h, w)
    loss: torch.Tensor  # () sum of the codebooks' VQ losses
    info: dict[str, QuantizerInfo]


@dataclass
class AutoencoderOutput:
    seismic: torch.Tensor  # (B, S, T, R) reconstruction, unclamped
    velocity: torch.Tensor  # (B, 1, V, V) prediction, unclamped
    vq_loss: torch.Tensor  # ()
    info: dict[str, QuantizerInfo]
    latent: torch.Tensor  # (B, C, h, w) continuous encoder output


class VQAutoencoder(nn.Module):
    """Encoder -> vector quantiser(s) -> seismic decoder and velocity decoder."""

    input_modality = "seismic"  # what its encoder reads (encode_latents)

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = SeismicEncoder(config)

        def codebook() -> VectorQuantizer:
            return VectorQuantizer(config.codebook_size, config.codebook_dim, config.beta, config.dead_code_steps)

        if config.variant == "1vq":
            self.quantizer = codebook()
        else:
            self.seismic_quantizer = codebook()
            self.velocity_quantizer = codebook()
        self.seismic_decoder = SeismicDecoder(config)
        self.velocity_decoder = VelocityDecoder(config)

    def compile(self, *args, **kwargs) -> None:
        """torch.compile the encoder, and each decoder up to its output conv (nn.Module.compile's
        arguments). Eager stay the quantiser (data-dependent dead-code bookkeeping, a collective
        under DDP) and the output convs: Stage 1's adaptive GAN weight differentiates with
        respect to them, and inside a compiled graph each such gradient reruns the whole
        decoder's backward (measured on an H100: compiled G + D slower than eager)."""
        self.encoder.compile(*args, **kwargs)
        for decoder in (self.seismic_decoder, self.velocity_decoder):
            decoder.features = torch.compile(decoder.features, *args, **kwargs)

    @property
    def variant(self) -> str:
        """What the latents store and the tables call it: "1vq" or "2vq"."""
        return self.config.variant

    def quantizers(self) -> dict[str, VectorQuantizer]:
        """The codebooks by name: {"shared"} for 1vq, {"seismic", "velocity"} for 2vq."""
        if self.config.variant == "1vq":
            return {"shared": self.quantizer}
        return {"seismic": self.seismic_quantizer, "velocity": self.velocity_quantizer}

    def encode(self, seismic: torch.Tensor) -> torch.Tensor:
        """(B, S, T, R) -> continuous latent (B, C, h, w)."""
        return self.encoder(seismic)

    def quantize(self, z: torch.Tensor) -> QuantizedLatents:
        """Quantise a continuous latent (B, C, h, w) for each decoder (training-aware)."""
        if self.config.variant == "1vq":
            z_q, loss, info = self.quantizer(z)
            return QuantizedLatents(z_seismic=z_q, z_velocity=z_q, loss=loss, info={"shared": info})
        z_s, loss_s, info_s = self.seismic_quantizer(z)
        z_v, loss_v, info_v = self.velocity_quantizer(z)
        return QuantizedLatents(z_seismic=z_s, z_velocity=z_v, loss=loss_s + loss_v, info={"seismic": info_s, "velocity": info_v})

    def decode_seismic(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised latent (B, C, h, w) -> seismic (B, S, T, R), unclamped."""
        return self.seismic_decoder(z)

    def decode_velocity(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised latent (B, C, h, w) -> velocity (B, 1, V, V), unclamped."""
        return self.velocity_decoder(z)

    def forward(self, seismic: torch.Tensor) -> AutoencoderOutput:
        """Training/evaluation pass: (B, S, T, R) -> reconstructions, VQ loss, codebook info."""
        z = self.encode(seismic)
        q = self.quantize(z)
        return AutoencoderOutput(
            seismic=self.decode_seismic(q.z_seismic),
            velocity=self.decode_velocity(q.z_velocity),
            vq_loss=q.loss,
            info=q.info,
            latent=z,
        )

    def latent_for_diffusion(self, seismic: torch.Tensor) -> torch.Tensor:
        """(B, S, T, R) -> the latent (B, C, h, w) Stage 2 learns to generate: the encoder's
        continuous output, before any codebook, for both variants. LDM does the same with its
        VQ autoencoders (its first stage encodes without quantising; decoding quantises), and
        decode_latent snaps to the codes each decoder reads, so a training latent decodes to
        its reconstruction. No side effects on the codebooks."""
        return self.encode(seismic)

    def decode_latent(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A (generated) latent (B, C, h, w) -> (seismic (B, S, T, R), velocity (B, 1, V, V)) in [-1, 1].

        Quantises per variant (1vq: snaps to the shared codebook; 2vq: each decoder its
        own codebook's nearest codes), decodes, and clamps to the data range.  No side
        effects on the codebooks.  This is the entry point for diffusion samples.
        """
        z_s = self._codes_for(z, "seismic")
        z_v = z_s if self.config.variant == "1vq" else self._codes_for(z, "velocity")  # 1vq: one lookup
        return self.decode_seismic(z_s).clamp(-1.0, 1.0), self.decode_velocity(z_v).clamp(-1.0, 1.0)

    def decode_latent_seismic(self, z: torch.Tensor) -> torch.Tensor:
        """decode_latent's seismic alone, (B, C, h, w) -> (B, S, T, R) in [-1, 1] (scoring
        candidates needs only the seismic, by far the larger decoder)."""
        return self.decode_seismic(self._codes_for(z, "seismic")).clamp(-1.0, 1.0)

    def decode_latent_velocity(self, z: torch.Tensor) -> torch.Tensor:
        """decode_latent's velocity alone, (B, C, h, w) -> (B, 1, V, V) in [-1, 1]."""
        return self.decode_velocity(self._codes_for(z, "velocity")).clamp(-1.0, 1.0)

    def _codes_for(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """z snapped to the codes the `modality` decoder reads (1vq: the shared codebook's)."""
        quantizer = self.quantizer if self.config.variant == "1vq" else self.quantizers()[modality]
        return quantizer.lookup(quantizer.nearest(z))

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, for the report (the codebooks included)."""
        counts = {"encoder": parameter_count(self.encoder)}
        for name, quantizer in self.quantizers().items():
            counts[f"codebook_{name}"] = parameter_count(quantizer)
        counts["seismic_decoder"] = parameter_count(self.seismic_decoder)
        counts["velocity_decoder"] = parameter_count(self.velocity_decoder)
        counts["total"] = parameter_count(self)
        return counts


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in module.parameters())
