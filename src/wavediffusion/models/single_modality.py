"""One modality's own VQ autoencoder: the baselines of the paper's Table 8 (joint vs separate diffusion).

The joint model (autoencoder.VQAutoencoder) encodes the seismic and decodes *both* modalities
from one latent. A single-modality autoencoder keeps only one side of it -- its encoder, one
codebook, its decoder -- at the joint model's latent shape, so the same Stage-2 UNet models
its latents:

- "seismic": the joint model's seismic encoder and seismic decoder;
- "velocity": a velocity encoder (autoencoder.VelocityEncoder, the velocity decoder's levels
  mirrored) and the joint model's velocity decoder.

Its AutoencoderConfig is the joint model's (variant "1vq": one codebook); the fields of the
other modality's networks go unused. Details: docs/architecture.md, 'Single-modality autoencoders'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .autoencoder import (
    AutoencoderConfig,
    SeismicDecoder,
    SeismicEncoder,
    VelocityDecoder,
    VelocityEncoder,
    parameter_count,
)
from .quantizer import QuantizerInfo, VectorQuantizer

MODALITIES = ("seismic", "velocity")


@dataclass
class SingleModalityOutput:
    reconstruction: torch.Tensor  # (B, C, H, W) of the model's modality, unclamped
    vq_loss: torch.Tensor  # ()
    info: QuantizerInfo
    latent: torch.Tensor  # (B, C, h, w) continuous encoder output


class SingleModalityAutoencoder(nn.Module):
    """Encoder -> one vector quantiser -> decoder, all of one modality."""

    def __init__(self, config: AutoencoderConfig, modality: str):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if config.variant != "1vq":
            raise ValueError(f"a single-modality autoencoder has one codebook (variant 1vq), got {config.variant!r}")
        self.config = config
        self.modality = modality
        seismic = modality == "seismic"
        self.encoder = SeismicEncoder(config) if seismic else VelocityEncoder(config)
        self.quantizer = VectorQuantizer(config.codebook_size, config.codebook_dim, config.beta, config.dead_code_steps)
        self.decoder = SeismicDecoder(config) if seismic else VelocityDecoder(config)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what it encodes and decodes."""
        return self.config.seismic_shape if self.modality == "seismic" else self.config.velocity_shape

    @property
    def variant(self) -> str:
        """What the latents store and the tables call it: "seismic-only" or "velocity-only"."""
        return f"{self.modality}-only"

    @property
    def input_modality(self) -> str:
        """The modality its encoder reads (encode_latents)."""
        return self.modality

    def compile(self, *args, **kwargs) -> None:
        """torch.compile as VQAutoencoder.compile does: the encoder, and the decoder up to its
        output conv (the adaptive GAN weight differentiates with respect to that conv)."""
        self.encoder.compile(*args, **kwargs)
        self.decoder.features = torch.compile(self.decoder.features, *args, **kwargs)

    def quantizers(self) -> dict[str, VectorQuantizer]:
        return {self.modality: self.quantizer}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) of its modality -> continuous latent (B, C', h, w)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> SingleModalityOutput:
        """Training/evaluation pass: reconstruction, VQ loss, codebook info."""
        z = self.encode(x)
        z_q, loss, info = self.quantizer(z)
        return SingleModalityOutput(reconstruction=self.decoder(z_q), vq_loss=loss, info=info, latent=z)

    def latent_for_diffusion(self, x: torch.Tensor) -> torch.Tensor:
        """The latent Stage 2 learns: the encoder's continuous output (as VQAutoencoder's)."""
        return self.encode(x)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """A (generated) latent (B, C', h, w) -> its modality (B, C, H, W) in [-1, 1]: snapped to
        the codebook, decoded, clamped, as VQAutoencoder.decode_latent does. No side effects."""
        return self.decoder(self.quantizer.lookup(self.quantizer.nearest(z))).clamp(-1.0, 1.0)

    def parameter_counts(self) -> dict[str, int]:
        return {"encoder": parameter_count(self.encoder), "codebook": parameter_count(self.quantizer),
                "decoder": parameter_count(self.decoder), "total": parameter_count(self)}
