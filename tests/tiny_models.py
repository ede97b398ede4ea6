"""Tiny, untrained Stage-1 and Stage-2 weights files in the formats the rules read
(load_autoencoder, load_stage2), for tests of what comes after training."""

from __future__ import annotations

from pathlib import Path

import torch

from wavediffusion.models.autoencoder import AutoencoderConfig, VQAutoencoder
from wavediffusion.models.unet import UNet, UNetConfig
from wavediffusion.training.stage1 import save_autoencoder
from wavediffusion.training.stage2 import DiffusionSettings, save_stage2


def save_tiny_autoencoder(path: Path, seed: int = 0) -> VQAutoencoder:
    """AutoencoderConfig.tiny() (latents 8 x 8 x 8), seeded, saved as train_stage1 would."""
    torch.manual_seed(seed)
    config = AutoencoderConfig.tiny()
    autoencoder = VQAutoencoder(config).eval()
    save_autoencoder(autoencoder, path)
    return autoencoder


def save_tiny_stage2(path: Path, num_steps: int, scale_factor: float) -> None:
    """A tiny UNet over the tiny latents, saved as train_stage2 would (its EMA weights)."""
    unet_config = UNetConfig(in_channels=8, out_channels=8, image_size=8, model_channels=32, channel_mult=(1, 2),
                             num_res_blocks=1, attention_resolutions=(4,), num_heads=2, norm_groups=8)
    unet = UNet(unet_config)
    with torch.no_grad():  # the head starts at zero (ε ≡ 0); give it something to say
        for p in unet.parameters():
            if not p.abs().sum():
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(2))
    save_stage2(unet, DiffusionSettings(num_steps=num_steps), scale_factor, path)
