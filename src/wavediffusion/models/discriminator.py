"""PatchGAN discriminator and VQGAN's adversarial losses (one discriminator per modality).

The paper adds an adversarial term to Stage 1 from step 50 001 on with weight 0.5, as
VQGAN does (Esser et al. 2021).  This file holds:

- :class:`PatchDiscriminator`: pix2pix's N-layer PatchGAN (4x4 convs, LeakyReLU 0.2,
  BatchNorm), which scores overlapping patches instead of the whole image, so it judges
  local texture (wavelets, layer edges) and works for any input size large enough for its
  stride.  The seismic discriminator gets 3 channels, the velocity one 1.
- :func:`hinge_d_loss`, :func:`generator_adversarial_loss`: VQGAN's hinge objective.
- :func:`adaptive_weight`: VQGAN's balance between reconstruction and adversarial
  gradients, measured at the decoder's last layer.

Under DDP the adaptive weight is computed from the gradients of the global batch (each
rank's two gradients are averaged over ranks first; taming uses each rank's own), so N
processes weigh the adversarial term as one process does.  BatchNorm normalises with
batch statistics: the loop turns it into SyncBatchNorm on GPUs, so the statistics are
the global batch's there; on CPU (gloo) torch has no SyncBatchNorm, each rank normalises
with its own B/N samples, and from `disc_start` on an N-process CPU run departs from the
1-process run (before it the discriminators are not called and do not matter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiscriminatorConfig:
    """PatchGAN size.  The convs halve the input n_layers times and the two final 4x4
    stride-1 convs each take one pixel off, so each input side must be at least
    3 * 2**n_layers (24 for n_layers=3; the paper's smallest side, 64 receivers, gives 6
    logits across).  Receptive field: 70 pixels for n_layers=3, 34 for n_layers=2."""

    in_channels: int = 3
    base_channels: int = 64
    n_layers: int = 3

    @classmethod
    def paper(cls, in_channels: int) -> DiscriminatorConfig:
        """VQGAN's default: 64 base channels, 3 layers (70x70 receptive field)."""
        return cls(in_channels=in_channels)

    @classmethod
    def tiny(cls, in_channels: int) -> DiscriminatorConfig:
        """For the tiny autoencoder's 16-pixel-wide inputs."""
        return cls(in_channels=in_channels, base_channels=16, n_layers=2)


class PatchDiscriminator(nn.Module):
    """(B, C, H, W) -> patch logits (B, 1, H', W'); positive = judged real."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        base = config.base_channels
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, base, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, config.n_layers + 1):
            previous, mult = mult, min(2**n, 8)
            stride = 2 if n < config.n_layers else 1  # the last block keeps the resolution (pix2pix)
            layers += [
                nn.Conv2d(base * previous, base * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(base * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(base * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.n_layers = config.n_layers
        self.min_size = 3 * 2**config.n_layers
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, H', W')
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"input {tuple(x.shape)} too small for a {self.n_layers}-layer PatchGAN (sides >= {self.min_size})")
        return self.net(x)


def _init_weights(module: nn.Module) -> None:
    """pix2pix / VQGAN initialisation: conv N(0, 0.02), BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]).

    Zero once real patches score >= 1 and fakes <= -1: the discriminator stops pushing
    patches it already classifies with margin.
    """
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge game: -E[D(G(z))] (VQGAN)."""
    return -fake_logits.mean()


def adaptive_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """VQGAN's lambda = ||grad_L rec_loss|| / (||grad_L g_loss|| + 1e-4), clamped to [0, max_weight], detached.

    L is the decoder's last layer weight (``decoder.last_layer``).  Scaling the adversarial
    loss by lambda makes its gradient at the output as large as the reconstruction
    loss's, whatever the two losses' raw scales; the caller multiplies by the configured
    discriminator weight (paper: 0.5) and by 0 before the discriminator start step.
    Both losses must still have their graphs (it uses ``retain_graph=True``).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # the gradients of the GLOBAL batch's losses (the mean of the ranks' equal-sized
        # batches), so that N processes weigh the adversarial term as one process does
        grads = torch.stack([rec_grad.float(), g_grad.float()])
        dist.all_reduce(grads)
        rec_grad, g_grad = grads / dist.get_world_size()
    weight = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
