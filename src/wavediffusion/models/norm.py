"""Group normalisation for bf16 activations: the UNet and the autoencoder normalise through it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics, output in the input's dtype — ADM's GroupNorm32.

    ADM casts bf16 input to float32 and the result back; torch's GPU kernel already
    accumulates bf16 input in float32, so it is called on the input as it is (outside
    autocast, which would upcast the whole tensor): the same statistics, two fewer passes
    over the activations. The affine weights are rounded to the input's dtype for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
