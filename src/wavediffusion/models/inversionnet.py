"""InversionNet (Wu & Lin 2019, as released in lanl/OpenFWI `network.py`): the data-driven
FWI baseline the paper trains on generated and real pairs (Tables 2-4).

Seismic (B, S, T, R) -> velocity (B, 1, V, V) in [-1, 1], OpenFWI's network block for block
(submodule names included, so OpenFWI's state dicts load). Natively (5, 1000, 70) -> 70 x 70,
24.4M parameters; in model space (3, 1024, 64) -> 64 x 64 only what the shapes force
changes (the code conv's kernel (8, 8), the final crop 8 per side), 23.4M parameters.
Details: docs/architecture.md, 'InversionNet'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# OpenFWI's dim1 ... dim5
OPENFWI_CHANNELS = (32, 64, 128, 256, 512)
TIME_STRIDED_BLOCKS = 4  # blocks that halve the time axis only
BOTH_STRIDED_BLOCKS = 3  # blocks that halve both axes
DECODER_DOUBLINGS = 4  # transposed convs that double the side after the first one


def halved(size: int, times: int) -> int:
    """A side after `times` stride-2 convs, each mapping n to ceil(n / 2) (OpenFWI's paddings)."""
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


@dataclass(frozen=True)
class InversionNetConfig:
    """Everything that fixes the network: the data's shapes and the channel widths."""

    seismic_shape: tuple[int, int, int] = (5, 1000, 70)  # (S, T, R): shots, time samples, receivers
    velocity_size: int = 70  # V: the output map is V x V
    channels: tuple[int, int, int, int, int] = OPENFWI_CHANNELS  # widths dim1 ... dim5; dim5 = the code
    decoder_start: int = 5  # side after the first transposed conv; the decoder ends at 16 x this, then crops to V
    negative_slope: float = 0.2  # LeakyReLU slope

    def __post_init__(self):
        # YAML/JSON configs give lists; keep tuples so the config stays hashable and comparable
        object.__setattr__(self, "seismic_shape", tuple(int(s) for s in self.seismic_shape))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.seismic_shape) != 3 or min(self.seismic_shape) < 1:
            raise ValueError(f"seismic_shape must be (shots, time samples, receivers) >= 1, got {self.seismic_shape}")
        if len(self.channels) != 5 or min(self.channels) < 1:
            raise ValueError(f"channels must be 5 positive widths (OpenFWI's dim1..dim5), got {self.channels}")
        if self.velocity_size < 1 or self.decoder_start < 1:
            raise ValueError(f"velocity_size and decoder_start must be >= 1, got {self.velocity_size}, {self.decoder_start}")
        if self.decoder_size < self.velocity_size:
            raise ValueError(
                f"the decoder ends at {self.decoder_size} x {self.decoder_size} (16 x decoder_start={self.decoder_start}), "
                f"smaller than the {self.velocity_size} x {self.velocity_size} velocity map; raise decoder_start to "
                f"at least {math.ceil(self.velocity_size / 2**DECODER_DOUBLINGS)}")

    @classmethod
    def openfwi(cls) -> InversionNetConfig:
        """OpenFWI's InversionNet: (5, 1000, 70) -> (1, 70, 70), 24.4M parameters."""
        return cls()

    @classmethod
    def model_space(cls, seismic_shape: tuple[int, int, int] = (3, 1024, 64), velocity_size: int = 64) -> InversionNetConfig:
        """OpenFWI's layers on the project's representation (paper: (3, 1024, 64) -> (1, 64, 64)):
        the code conv's kernel and the final crop follow from the shapes (module docstring)."""
        return cls(seismic_shape=seismic_shape, velocity_size=velocity_size)

    @classmethod
    def tiny(cls, seismic_shape: tuple[int, int, int] = (3, 64, 16), velocity_size: int = 16) -> InversionNetConfig:
        """Same layers at toy widths for CPU tests (default: the tiny dataset's (3, 64, 16) -> 16 x 16);
        the decoder starts at the smallest side whose 16-fold covers V, so it crops little or nothing."""
        return cls(seismic_shape=seismic_shape, velocity_size=velocity_size, channels=(4, 8, 8, 16, 16),
                   decoder_start=math.ceil(velocity_size / 2**DECODER_DOUBLINGS))

    @property
    def code_kernel(self) -> tuple[int, int]:
        """Kernel of the last encoder conv: the whole (time, receiver) map left after the strided blocks."""
        _, time_samples, receivers = self.seismic_shape
        return (halved(time_samples, TIME_STRIDED_BLOCKS + BOTH_STRIDED_BLOCKS), halved(receivers, BOTH_STRIDED_BLOCKS))

    @property
    def decoder_size(self) -> int:
        """Side of the decoder's output before the crop (OpenFWI: 80)."""
        return self.decoder_start * 2**DECODER_DOUBLINGS


class _ConvNormActivation(nn.Module):
    """A convolution -> BatchNorm -> an activation: the one pattern of OpenFWI's blocks."""

    def __init__(self, conv: nn.Module, out_channels: int, activation: nn.Module):
        super().__init__()
        self.layers = nn.Sequential(conv, nn.BatchNorm2d(out_channels), activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvBlock(_ConvNormActivation):
    """Conv2d -> BatchNorm -> LeakyReLU (OpenFWI's ConvBlock with norm='bn')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1,
                 negative_slope: float = 0.2):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
                         out_channels, nn.LeakyReLU(negative_slope))


class DeconvBlock(_ConvNormActivation):
    """ConvTranspose2d -> BatchNorm -> LeakyReLU(0.2) (OpenFWI's DeconvBlock)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 2, padding: int = 0,
                 negative_slope: float = 0.2):
        super().__init__(nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding),
                         out_channels, nn.LeakyReLU(negative_slope))


class ConvTanhBlock(_ConvNormActivation):
    """Conv2d -> BatchNorm -> Tanh: the output layer, bounded to the velocity's [-1, 1]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1), out_channels, nn.Tanh())


class InversionNet(nn.Module):
    """Seismic (B, S, T, R) -> velocity (B, 1, V, V) in [-1, 1]; shapes below are the native
    configuration's (5, 1000, 70) -> (1, 70, 70)."""

    def __init__(self, config: InversionNetConfig):
        super().__init__()
        self.config = config
        d1, d2, d3, d4, d5 = config.channels
        slope = config.negative_slope
        shots = config.seismic_shape[0]

        def block(i, o, **kw):
            return ConvBlock(i, o, negative_slope=slope, **kw)

        def time_block(i, o, kernel=3, stride=1):  # convolves and strides the time axis only
            return ConvBlock(i, o, kernel_size=(kernel, 1), stride=(stride, 1), padding=(kernel // 2, 0),
                             negative_slope=slope)

        self.convblock1 = time_block(shots, d1, kernel=7, stride=2)
        self.convblock2_1 = time_block(d1, d2, stride=2)
        self.convblock2_2 = time_block(d2, d2)
        self.convblock3_1 = time_block(d2, d2, stride=2)
        self.convblock3_2 = time_block(d2, d2)
        self.convblock4_1 = time_block(d2, d3, stride=2)
        self.convblock4_2 = time_block(d3, d3)
        self.convblock5_1 = block(d3, d3, stride=2)
        self.convblock5_2 = block(d3, d3)
        self.convblock6_1 = block(d3, d4, stride=2)
        self.convblock6_2 = block(d4, d4)
        self.convblock7_1 = block(d4, d4, stride=2)
        self.convblock7_2 = block(d4, d4)
        self.convblock8 = block(d4, d5, kernel_size=config.code_kernel, padding=0)

        self.deconv1_1 = DeconvBlock(d5, d5, kernel_size=config.decoder_start, stride=1, negative_slope=slope)
        self.deconv1_2 = block(d5, d5)
        self.deconv2_1 = DeconvBlock(d5, d4, kernel_size=4, stride=2, padding=1, negative_slope=slope)
        self.deconv2_2 = block(d4, d4)
        self.deconv3_1 = DeconvBlock(d4, d3, kernel_size=4, stride=2, padding=1, negative_slope=slope)
        self.deconv3_2 = block(d3, d3)
        self.deconv4_1 = DeconvBlock(d3, d2, kernel_size=4, stride=2, padding=1, negative_slope=slope)
        self.deconv4_2 = block(d2, d2)
        self.deconv5_1 = DeconvBlock(d2, d1, kernel_size=4, stride=2, padding=1, negative_slope=slope)
        self.deconv5_2 = block(d1, d1)
        self.deconv6 = ConvTanhBlock(d1, 1)

    def center_crop(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, D) -> (B, C, V, V), D = decoder_size; OpenFWI's F.pad(x, [-5] * 4) natively."""
        top = (self.config.decoder_size - self.config.velocity_size) // 2
        v = self.config.velocity_size
        return x[:, :, top:top + v, top:top + v]

    def forward(self, seismic: torch.Tensor) -> torch.Tensor:
        expected = self.config.seismic_shape
        if tuple(seismic.shape[1:]) != expected:
            raise ValueError(f"InversionNet expects seismic (B, {', '.join(map(str, expected))}), got {tuple(seismic.shape)}")
        # encoder
        x = self.convblock1(seismic)  # (B, 32, 500, 70)
        x = self.convblock2_1(x)  # (B, 64, 250, 70)
        x = self.convblock2_2(x)  # (B, 64, 250, 70)
        x = self.convblock3_1(x)  # (B, 64, 125, 70)
        x = self.convblock3_2(x)  # (B, 64, 125, 70)
        x = self.convblock4_1(x)  # (B, 128, 63, 70)
        x = self.convblock4_2(x)  # (B, 128, 63, 70)
        x = self.convblock5_1(x)  # (B, 128, 32, 35)
        x = self.convblock5_2(x)  # (B, 128, 32, 35)
        x = self.convblock6_1(x)  # (B, 256, 16, 18)
        x = self.convblock6_2(x)  # (B, 256, 16, 18)
        x = self.convblock7_1(x)  # (B, 256, 8, 9)
        x = self.convblock7_2(x)  # (B, 256, 8, 9)
        x = self.convblock8(x)  # (B, 512, 1, 1): the code
        # decoder
        x = self.deconv1_1(x)  # (B, 512, 5, 5)
        x = self.deconv1_2(x)  # (B, 512, 5, 5)
        x = self.deconv2_1(x)  # (B, 256, 10, 10)
        x = self.deconv2_2(x)  # (B, 256, 10, 10)
        x = self.deconv3_1(x)  # (B, 128, 20, 20)
        x = self.deconv3_2(x)  # (B, 128, 20, 20)
        x = self.deconv4_1(x)  # (B, 64, 40, 40)
        x = self.deconv4_2(x)  # (B, 64, 40, 40)
        x = self.deconv5_1(x)  # (B, 32, 80, 80)
        x = self.deconv5_2(x)  # (B, 32, 80, 80)
        x = self.center_crop(x)  # (B, 32, 70, 70)
        return self.deconv6(x)  # (B, 1, 70, 70), in [-1, 1]
