"""Where a job runs when its caller does not say: the GPU if there is one, else the CPU."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device; None means CUDA when available, else the CPU."""
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
